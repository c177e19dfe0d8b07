"""A run folder stands alone: predict and eval need neither the training data nor the working
directory of the training, and every method comes back from run.json and its checkpoint."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_recipe_run import CLASSES, make_dataset

from mlrkit.cli import main
from mlrkit.engine.checkpoint import load_checkpoint, save_checkpoint
from mlrkit.engine.inference import evaluate_run
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.run import train_run
from mlrkit.engine.run_folder import EMBEDDINGS_FILE, placeholder_spec, write_run_files
from mlrkit.methods import StepInfo, TaskSpec, create_method, method_class

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENCODER = {"weights": None, "image_size": 32, "seed": 0}
RUNS = {
    "features-linear": {"features": {"encoder": "resnet18", **ENCODER, "cache": "cache",
                                     "num_workers": 0},
                        "method": {"name": "linear"}},
    "features-ssgrl": {"features": {"encoder": "resnet18", **ENCODER, "cache": "cache",
                                    "num_workers": 0, "spatial": True},
                       "label_embeddings": {"source": "glove"},
                       "method": {"name": "ssgrl", "image_dim": 16, "inter_dim": 8,
                                  "time_steps": 1}},
    "end-to-end-linear": {"encoder": {"name": "resnet18", **ENCODER,
                                      "trainable": ["model.layer4"]},
                          "method": {"name": "linear"}},
}


def tiny_recipe(kind: str) -> dict:
    """A 2-epoch recipe whose data and cache paths are relative to the working directory."""
    return {
        "name": kind,
        "data": {"dataset": "csv", "root": "data"},
        "protocol": {"name": "partial", "known": 0.5, "seed": 0},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "progress": False, "device": "cpu"},
        **RUNS[kind],
    }


def _predict(run_dir: str, images: list[Path], capsys) -> list[dict]:
    assert main(["predict", "--checkpoint", run_dir, *map(str, images), "--top-k", "3"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind", list(RUNS))
def test_predict_and_eval_need_only_the_run_folder(kind, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    make_dataset(work / "data")
    monkeypatch.chdir(work)
    Path("recipe.yaml").write_text(yaml.safe_dump(tiny_recipe(kind)))
    results = train_run(load_recipe("recipe.yaml"), "run")
    files = {p.name for p in (work / "run").iterdir()}
    assert {"config.yaml", "run.json", "mask.npz", "checkpoints"} <= files
    assert ("label_embeddings.safetensors" in files) == (kind == "features-ssgrl")
    photos = tmp_path / "photos"
    photos.mkdir()
    images = [shutil.copy(work / "data" / "images" / f"{i}.jpg", photos) for i in (3, 7)]
    before = _predict("run", images, capsys)

    (work / "data").rename(tmp_path / "moved")
    shutil.rmtree(work / "cache", ignore_errors=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_dir = "../work/run"  # relative to the new working directory

    assert _predict(run_dir, images, capsys) == before
    assert {e["label"] for e in before[0]["labels"]} == set(CLASSES)
    moved = evaluate_run(run_dir, "test", dataset="csv", root=tmp_path / "moved")
    assert moved["test_mAP"] == pytest.approx(results["test_mAP"], abs=1e-6)
    assert main(["eval", "--checkpoint", run_dir, "--dataset", "csv", "--root",
                 str(tmp_path / "moved")]) == 0
    assert "all_mAP" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", run_dir]) == 2  # the recipe's data has moved away
    assert "is no longer there; if it moved, give the run the data where it is now: --dataset " \
           "csv --root NEW_FOLDER" in capsys.readouterr().err

    labels = tmp_path / "moved" / "labels.csv"
    labels.write_text(labels.read_text().replace("blue", "yellow", 1))
    assert main(["eval", "--checkpoint", run_dir, "--dataset", "csv", "--root",
                 str(tmp_path / "moved")]) == 2
    assert "missing ['blue'], extra ['yellow']" in capsys.readouterr().err


def test_a_run_folder_without_run_json_gets_one_from_its_recipe(tmp_path, monkeypatch, capsys):
    """Runs trained before run.json existed are described once, from their recipe and data, by
    an explicit ``mlrkit upgrade-run``; loading a run never prepares its recipe."""
    make_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    Path("recipe.yaml").write_text(yaml.safe_dump(tiny_recipe("features-linear")))
    results = train_run(load_recipe("recipe.yaml"), "run")
    written = json.loads(Path("run/run.json").read_text())
    Path("run/run.json").unlink()

    assert main(["eval", "--checkpoint", "run"]) == 2
    assert "write it once with 'mlrkit upgrade-run run'" in capsys.readouterr().err
    assert main(["upgrade-run", "run"]) == 0
    assert main(["upgrade-run", "run"]) == 2
    assert "run.json exists: the run needs no upgrade" in capsys.readouterr().err
    again = evaluate_run("run")

    assert again["test_mAP"] == pytest.approx(results["test_mAP"], abs=1e-9)
    assert json.loads(Path("run/run.json").read_text()) == written


def _nudge(method: torch.nn.Module) -> None:
    """Stand-in for training: move every float parameter and buffer, flip bool buffers."""
    with torch.no_grad():
        for tensor in [*method.parameters(), *method.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.rand_like(tensor))
            elif tensor.dtype == torch.bool:
                tensor.copy_(torch.rand(tensor.shape) < 0.5)


METHODS = {
    "linear": ("linear", {"dropout": 0.1}),
    "mlp": ("mlp", {"hidden_dim": 8}),
    "linear-role": ("linear", {"loss": "role", "loss_options": {"expected_positives": 1.5}}),
    "linear-ll_cp": ("linear", {"loss": "ll_cp", "loss_options": {"delta_rel": 20.0}}),
    "ssgrl": ("ssgrl", {"image_dim": 8, "inter_dim": 4, "time_steps": 2}),
    "sarb": ("sarb", {"image_dim": 8, "inter_dim": 4, "time_steps": 2, "num_prototypes": 2}),
}


@pytest.mark.parametrize(("name", "hparams"), list(METHODS.values()), ids=list(METHODS))
def test_a_method_built_on_the_placeholder_spec_loads_into_the_trained_one(name, hparams,
                                                                            tmp_path):
    """What a method derives from the training targets (adjacency, label estimates, corrections)
    is state: built on all-unknown targets of the same shape and loaded, it is the same model."""
    rng = np.random.default_rng(0)
    targets = rng.integers(-1, 2, (12, 4)).astype(np.int8)
    spatial = method_class(name).input_kind == "spatial"
    shape = (6, 2, 2) if spatial else (6,)
    spec = TaskSpec(4, shape, targets, torch.randn(4, 5), ("a", "b", "c", "d"))
    torch.manual_seed(0)
    trained = create_method(name, spec, **hparams)
    _nudge(trained)
    save_checkpoint(tmp_path / "checkpoints", "best", trained, None, {})
    info = {"spec": {"num_classes": 4, "feature_shape": list(shape), "num_train": 12},
            "label_embeddings": EMBEDDINGS_FILE, "class_names": list(spec.class_names)}
    write_run_files(tmp_path, info, spec.label_embeddings)

    torch.manual_seed(1)
    rebuilt = create_method(name, placeholder_spec(tmp_path, info), **hparams)
    load_checkpoint(tmp_path / "checkpoints" / "best", rebuilt)

    inputs = torch.randn(5, *shape)
    batch, index = torch.as_tensor(targets[:5]), torch.arange(5)
    step = StepInfo(epoch=1, step=0, steps_per_epoch=1, epochs=2)
    outputs = []
    for method in (trained, rebuilt):
        torch.manual_seed(2)  # SARB's hard mining draws
        outputs.append(method.eval()(inputs, batch, index, step))
    a, b = outputs
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=0)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=0)
