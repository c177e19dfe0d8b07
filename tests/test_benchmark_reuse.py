"""The accuracy benchmarks reuse a finished run only when it was made from the same recipe and
the same source of mlrkit."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from recipe_grid import run_recipe
from test_recipe_run import make_dataset

import mlrkit
from mlrkit.provenance import source_hash


def tiny_recipe(tmp_path: Path, epochs: int) -> tuple[dict, Path]:
    """A linear head on random-ResNet features of 32 coloured squares, and its recipe file."""
    make_dataset(tmp_path / "data", n=32)
    recipe = {
        "name": "tiny", "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32,
                     "cache": str(tmp_path / "cache"), "num_workers": 0},
        "method": {"name": "linear"}, "protocol": {"name": "partial"},
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.01, "device": "cpu"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return recipe, path


def test_a_run_is_reused_only_for_the_same_resolved_recipe(tmp_path):
    recipe, path = tiny_recipe(tmp_path, epochs=2)
    first = run_recipe(path, ["protocol.known=0.5"], tmp_path / "runs")
    again = run_recipe(path, ["protocol.known=0.5"], tmp_path / "runs")
    assert not first["reused"] and again["reused"] and again["test_mAP"] == first["test_mAP"]
    changed = run_recipe(path, ["protocol.known=0.3"], tmp_path / "runs")   # another mask
    assert not changed["reused"] and changed["run_dir"] != first["run_dir"]
    recipe["train"]["lr"] = 0.02                                             # the file changed
    path.write_text(yaml.safe_dump(recipe))
    edited = run_recipe(path, ["protocol.known=0.5"], tmp_path / "runs")
    assert not edited["reused"] and edited["run_dir"] != first["run_dir"]


RUN_IN_COPY = """
import json, sys
sys.path.insert(0, sys.argv[1])
import mlrkit
from recipe_grid import run_recipe
from pathlib import Path
result = run_recipe(Path(sys.argv[2]), ["protocol.known=0.5"], Path(sys.argv[3]))
print(json.dumps({"package": mlrkit.__file__, "reused": result["reused"],
                  "run_dir": result["run_dir"], "test_mAP": result["test_mAP"]}))
"""


def test_a_change_to_a_method_source_makes_the_benchmark_rerun(tmp_path):
    """A run made here is reused by a process that imports a byte-identical copy of
    ``src/mlrkit``; once a line of the linear head's module changes in the copy, it is not."""
    _, path = tiny_recipe(tmp_path, epochs=1)
    first = run_recipe(path, ["protocol.known=0.5"], tmp_path / "runs")
    package = tmp_path / "src" / "mlrkit"
    shutil.copytree(Path(mlrkit.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"

    def run() -> dict:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package.parent), str(benchmarks)])}
        done = subprocess.run([sys.executable, "-c", RUN_IN_COPY, str(package.parent), str(path),
                               str(tmp_path / "runs")], env=env, capture_output=True,
                              text=True, check=True)
        return json.loads(done.stdout.splitlines()[-1])

    again = run()
    assert Path(again["package"]).is_relative_to(package)
    assert not first["reused"] and again["reused"] and again["run_dir"] == first["run_dir"]
    head = package / "methods" / "baselines.py"
    head.write_text(head.read_text() + "\n# one more line in the linear head's module\n")
    edited = run()
    assert not edited["reused"] and edited["run_dir"] != first["run_dir"]
    saved = json.loads((Path(edited["run_dir"]) / "results.json").read_text())
    assert saved["source_hash"] == source_hash(package) != source_hash()
    assert json.loads((Path(edited["run_dir"]) / "run.json").read_text())["source_hash"] == (
        saved["source_hash"])
