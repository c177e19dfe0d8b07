"""Recipes and runs: overrides, run folder contents, eval and predict from the folder alone."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mlrkit.cli import main
from mlrkit.data.protocols import ProtocolMask
from mlrkit.engine.inference import evaluate_run, predict_images
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.run import train_run

CLASSES = ["red", "green", "blue"]


def make_dataset(root: Path, n: int = 48) -> None:
    """Coloured squares: class c is present when channel c is bright."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows, splits = [], []
    for i in range(n):
        present = rng.random(3) < 0.5
        pixel = np.where(present, 220, 30).astype(np.uint8)
        noise = rng.integers(0, 20, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(np.clip(pixel + noise, 0, 255).astype(np.uint8)).save(
            root / "images" / f"{i}.jpg")
        rows.append(f"{i}.jpg," + ",".join(str(int(p)) for p in present))
        splits.append(f"{i}.jpg,{['train', 'train', 'val', 'test'][i % 4]}")
    (root / "labels.csv").write_text("image," + ",".join(CLASSES) + "\n" + "\n".join(rows) + "\n")
    (root / "split.csv").write_text("image,split\n" + "\n".join(splits) + "\n")


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    make_dataset(tmp_path / "data")
    recipe = {
        "name": "tiny",
        "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32, "seed": 0,
                     "cache": str(tmp_path / "cache"), "num_workers": 0, "spatial": False},
        "protocol": {"name": "partial", "known": 0.5, "seed": 0},
        "method": {"name": "linear"},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "progress": False, "device": "cpu"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_overrides_are_typed_and_unknown_keys_rejected(recipe_file):
    recipe = load_recipe(recipe_file, ["train.lr=0.5", "protocol.known=0.3", "method.dropout=0.1"])
    assert recipe["train"]["lr"] == 0.5 and recipe["protocol"]["known"] == 0.3
    assert recipe["method"] == {"name": "linear", "dropout": 0.1}
    with pytest.raises(KeyError, match="datset"):
        load_recipe(recipe_file, ["datset.root=x"])
    with pytest.raises(ValueError, match="key=value"):
        load_recipe(recipe_file, ["train.lr"])


def test_run_folder_is_complete_and_reusable(recipe_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    results = train_run(load_recipe(recipe_file), run_dir)
    assert {"config.yaml", "mask.npz", "metrics.jsonl", "results.json", "checkpoints"} <= {
        p.name for p in run_dir.iterdir()}
    assert results["test_mAP"] == pytest.approx(_sklearn_test_map(run_dir, tmp_path), abs=1e-9)
    assert results["test_classes_averaged"] == 3
    mask = ProtocolMask.load(run_dir / "mask.npz")
    assert mask.params == {"known": 0.5, "mode": "bernoulli"} and mask.shape == (24, 3)
    again = evaluate_run(run_dir)
    assert again["test_mAP"] == pytest.approx(results["test_mAP"], abs=1e-9)
    assert json.loads((run_dir / "results.json").read_text())["test_mAP"] == results["test_mAP"]

    image = tmp_path / "data" / "images" / "3.jpg"
    predictions = predict_images(run_dir, [image], top_k=2)
    assert predictions[0]["image"] == str(image) and len(predictions[0]["labels"]) == 2
    assert {e["label"] for e in predictions[0]["labels"]} <= set(CLASSES)
    assert main(["predict", "--checkpoint", str(run_dir), str(image), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "image,rank,label,score,on"


def test_a_run_is_calibrated_on_validation_and_predict_marks_the_labels_on(recipe_file, tmp_path):
    import torch

    from mlrkit.calibration import fit_platt
    from mlrkit.engine.inference import load_run, prepare_from_run
    from mlrkit.engine.trainer import evaluate_logits

    run_dir = tmp_path / "run"
    train_run(load_recipe(recipe_file), run_dir)
    saved = json.loads((run_dir / "calibration.json").read_text())
    run = load_run(run_dir)
    prepared = prepare_from_run(run)
    logits = evaluate_logits(run.method, prepared.sources["val"], 64, torch.device("cpu"))
    again = fit_platt(logits.numpy(), prepared.labels["val"])  # the same fit, done here
    assert saved["calibration"]["a"] == pytest.approx(again.a, rel=1e-6)
    assert saved["calibration"]["b"] == pytest.approx(again.b, abs=1e-6)
    assert saved["calibration"]["ece_after"] <= saved["calibration"]["ece_before"]
    assert [row["class"] for row in saved["thresholds"]] == CLASSES
    image = tmp_path / "data" / "images" / "3.jpg"
    [prediction] = predict_images(run_dir, [image], top_k=3)
    bars = {r["class"]: r["positive_threshold"] if r["chosen"] else 0.5
            for r in saved["thresholds"]}
    for entry in prediction["labels"]:
        assert entry["on"] == (entry["score"] >= round(bars[entry["label"]], 6) - 1e-6)
    for name in ("calibration.json", "checksums.json"):  # a run from before both existed
        (run_dir / name).unlink()
    assert main(["calibrate", "--checkpoint", str(run_dir)]) == 0
    assert json.loads((run_dir / "calibration.json").read_text()) == saved
    out = tmp_path / "predictions.json"  # a folder of photos, written to a file
    assert main(["predict", "--checkpoint", str(run_dir), str(tmp_path / "data" / "images"),
                 "--out", str(out), "--top-k", "1"]) == 0
    written = json.loads(out.read_text())
    assert len(written) == 48 and all(len(r["labels"]) == 1 for r in written)
    model = run.image_model()  # eval mode: the same image scores the same twice
    photo = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert not model.training and torch.equal(model(photo).logits, model(photo).logits)


def _sklearn_test_map(run_dir: Path, tmp_path: Path) -> float:
    """The test mAP of the run's best checkpoint, from the cached features and scikit-learn's
    average precision: independent of mlrkit's metrics and evaluation loop."""
    import torch
    from sklearn.metrics import average_precision_score

    from mlrkit.data import create_dataset
    from mlrkit.data.feature_cache import load_features
    from mlrkit.engine.inference import load_run

    data = create_dataset("csv", tmp_path / "data")
    test = data.split_index("test")
    features = load_features(tmp_path / "cache", data=data).pooled[test]
    with torch.no_grad():
        logits = load_run(run_dir).method.eval()(torch.as_tensor(np.asarray(features))).logits
    labels = data.labels[test]
    return float(np.mean([average_precision_score(labels[:, c], logits[:, c].numpy())
                          for c in range(labels.shape[1])]))


def test_cli_train_and_eval(recipe_file, tmp_path, capsys):
    run_dir = tmp_path / "cli-run"
    assert main(["train", "--config", str(recipe_file), "--run-dir", str(run_dir),
                 "--set", "train.epochs=1"]) == 0
    assert "test_mAP" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(run_dir)]) == 0
    assert "test_mAP" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_end_to_end_head_trains_only_the_listed_encoder_parts():
    import torch

    from mlrkit.encoders import create_image_encoder
    from mlrkit.methods import TaskSpec, create_method
    from mlrkit.methods.encoder_head import EncoderHead

    encoder = create_image_encoder("resnet18", weights=None, image_size=32, seed=0)
    spec = TaskSpec(3, (encoder.feature_dim,), np.zeros((4, 3), dtype=np.int8))
    head = EncoderHead(encoder, create_method("linear", spec), lr_mult=0.1,
                       trainable=["model.layer4"])
    head.train()
    trainable = {n for n, p in head.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layer4.") for n in trainable)
    assert head.encoder.model.layer4[0].bn1.training
    assert not head.encoder.model.bn1.training and not head.encoder.model.layer1[0].bn1.training
    groups = head.param_groups()
    assert groups[-1]["lr_mult"] == 0.1 and len(groups[-1]["params"]) == len(trainable)
    out = head(torch.zeros(2, 3, 32, 32), torch.ones(2, 3, dtype=torch.int8))
    out.loss.backward()
    assert head.encoder.model.layer4[0].conv1.weight.grad is not None
    assert head.encoder.model.conv1.weight.grad is None


def test_sigkilled_cli_training_resumes_to_the_uninterrupted_result(recipe_file, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    def train(run_dir: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "mlrkit.cli", "train", "--config", str(recipe_file),
             "--run-dir", str(run_dir), "--set", "train.epochs=40", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )

    assert train(tmp_path / "whole").wait(timeout=300) == 0
    killed = train(tmp_path / "killed")
    pointer = tmp_path / "killed" / "checkpoints" / "last.json"
    deadline = time.monotonic() + 240
    while not (pointer.is_file() and json.loads(pointer.read_text())["name"] >= "epoch-0003"):
        assert killed.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    assert train(tmp_path / "killed", "--resume").wait(timeout=300) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())
    for key in ("best_epoch", "val_mAP", "test_mAP", "test_CF1", "test_OF1"):
        assert resumed[key] == whole[key], key


def test_torchrun_cli_training_matches_one_process(recipe_file, tmp_path):
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    # validated only after the last epoch, so that both pick it: no near-tie can differ
    common = ["-m", "mlrkit.cli", "train", "--config", str(recipe_file),
              "--set", "protocol.name=full", "--set", "train.epochs=2",
              "--set", "train.eval_every=2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    launchers = {"one": [], "two": ["-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node=2"]}
    for name, launcher in launchers.items():
        command = [sys.executable, *launcher, *common, "--run-dir", str(tmp_path / name)]
        done = subprocess.run(command, check=False, env=env, timeout=300, capture_output=True,
                              text=True)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    last = ("checkpoints", "epoch-0001", "model.safetensors")
    one, two = (load_file(tmp_path.joinpath(n, *last)) for n in launchers)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    one, two = (json.loads((tmp_path / n / "results.json").read_text()) for n in launchers)
    assert two["test_classes_averaged"] == one["test_classes_averaged"] == 3
    assert two["best_epoch"] == one["best_epoch"] == 1
    assert two["test_mAP"] == pytest.approx(one["test_mAP"], abs=1e-6)


def test_a_recipe_without_a_protocol_trains_on_every_label_the_user_gave(tmp_path, caplog):
    """A user's own CSV with empty cells: no protocol section means the labels as given, none
    hidden (run.json counts them); naming a simulated protocol hides some and says so."""
    make_dataset(tmp_path / "data")
    csv_file = tmp_path / "data" / "labels.csv"
    lines = csv_file.read_text().splitlines()
    rng = np.random.default_rng(1)
    rows = [[cell if j == 0 or rng.random() > 0.6 else "" for j, cell in enumerate(line.split(","))]
            for line in lines[1:]]  # 60% of the cells emptied: unknown
    csv_file.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    splits = [line.split(",")[1] for line in (tmp_path / "data" / "split.csv").read_text()
              .splitlines()[1:]]
    given = sum(cell != "" for row, split in zip(rows, splits, strict=True) if split == "train"
                for cell in row[1:])
    recipe = {
        "name": "own", "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32,
                     "cache": str(tmp_path / "cache"), "num_workers": 0},
        "train": {"epochs": 1, "batch_size": 8, "progress": False, "device": "cpu"},
    }
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(recipe))
    resolved = load_recipe(tmp_path / "own.yaml")
    assert resolved["protocol"] == {"name": "observed"}
    train_run(resolved, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["train_labels"] == {"given": given, "used": given} and 0 < given
    assert not (tmp_path / "run" / "mask.npz").exists()
    caplog.set_level("INFO", logger="mlrkit.engine.prepare")
    simulated = load_recipe(tmp_path / "own.yaml", ["protocol.name=partial"])
    train_run(simulated, tmp_path / "run-partial")
    info = json.loads((tmp_path / "run-partial" / "run.json").read_text())
    assert info["train_labels"]["given"] == given > info["train_labels"]["used"]
    hidden = given - info["train_labels"]["used"]
    warned = [r for r in caplog.records
              if r.levelname == "WARNING" and r.name == "mlrkit.engine.prepare"]
    assert len(warned) == 1 and f"protocol partial hides {hidden:,} of the {given:,}" in (
        warned[0].getMessage())


def test_the_readme_python_example_runs_on_a_trained_run(recipe_file, tmp_path, monkeypatch,
                                                        capsys):
    """The README's Python example, executed as written with its two photos and run folder in
    place (the working folder is a scratch one holding them)."""
    import re
    import shutil

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"<!-- python-api-example -->\n```python\n(.*?)```", readme,
                        re.DOTALL)[1]
    train_run(load_recipe(recipe_file), tmp_path / "work" / "runs" / "my_run")
    for name, source in (("a.jpg", "1.jpg"), ("b.jpg", "2.jpg")):
        shutil.copy(tmp_path / "data" / "images" / source, tmp_path / "work" / name)
    monkeypatch.chdir(tmp_path / "work")
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)  # noqa: S102 (the project's own README)
    run, probs, on = scope["run"], scope["probs"], scope["on"]
    assert tuple(probs.shape) == (2, 3) and probs.dtype == torch.float64
    assert ((probs >= 0) & (probs <= 1)).all()
    assert np.array_equal(on, probs.numpy() >= run.thresholds) and run.thresholds.shape == (3,)
    assert run.class_names == CLASSES and not run.image_model().training
    assert "'on':" in capsys.readouterr().out
