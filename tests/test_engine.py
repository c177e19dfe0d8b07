"""The training loop: learns, resumes exactly after a kill, checkpoints atomically, DDP == 1 process."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mlrkit.engine.batches import EpochBatchSampler, FeatureBatches
from mlrkit.engine.checkpoint import last_checkpoint
from mlrkit.engine.ema import WeightEma
from mlrkit.engine.trainer import TrainConfig, evaluate_logits, fit, lr_factor, score_report
from mlrkit.methods import TaskSpec, create_method

HERE = Path(__file__).resolve().parent


def synthetic(n: int = 256, d: int = 16, c: int = 5, seed: int = 0):
    """Linearly separable multi-label data: labels = (features @ W > 0.5)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d)).astype(np.float32)
    labels = (features @ rng.normal(size=(d, c)) > 0.5).astype(np.int8)
    return features, labels


def make_linear(train_targets: np.ndarray, d: int, seed: int = 0):
    torch.manual_seed(seed)
    spec = TaskSpec(train_targets.shape[1], (d,), train_targets)
    return create_method("linear", spec, dropout=0.1)


def run(tmp: Path, epochs: int = 4, resume: bool = False, on_epoch_end=None, known: float = 0.5,
        **train_options):
    features, labels = synthetic()
    observed = np.where(np.random.default_rng(1).random(labels.shape) < known, labels, -1)
    train = FeatureBatches(features[:192], observed[:192].astype(np.int8))
    val = FeatureBatches(features[192:], labels[192:])
    cfg = TrainConfig(**{"epochs": epochs, "batch_size": 32, "lr": 0.05, "progress": False,
                         "device": "cpu", **train_options})
    method = make_linear(train.targets, features.shape[1])
    result = fit(method, train, val, labels[192:], cfg, tmp, resume=resume,
                 on_epoch_end=on_epoch_end)
    return method, result


def test_fit_learns_a_separable_problem(tmp_path):
    _, result = run(tmp_path, epochs=6)
    first, best = result.history[0]["val_mAP"], result.best_val["val_mAP"]
    assert best > 0.9 and best >= first
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 6
    assert last_checkpoint(tmp_path / "checkpoints").name == "epoch-0005"


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize("options", [{}, {"ema_decay": 0.9, "schedule": "onecycle"}],
                         ids=["plain", "ema-onecycle"])
def test_killed_run_resumes_to_the_same_weights_and_metrics(tmp_path, options):
    full, full_result = run(tmp_path / "full", **options)

    def kill_after_epoch_1(epoch, record):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path / "killed", on_epoch_end=kill_after_epoch_1, **options)
    assert last_checkpoint(tmp_path / "killed" / "checkpoints").name == "epoch-0001"
    resumed, resumed_result = run(tmp_path / "killed", resume=True, **options)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert resumed_result.best_val == full_result.best_val
    assert resumed_result.history == [{**r, "epoch_seconds": s["epoch_seconds"]} for r, s in
                                      zip(full_result.history, resumed_result.history, strict=True)]
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    last = [tmp_path / name / "checkpoints" / "epoch-0003" for name in ("full", "killed")]
    files = ["model.safetensors", *(["ema.safetensors"] if options else [])]
    for file in files:
        a, b = (load_file(folder / file) for folder in last)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{file} {key}")
    if options:  # OneCycleLR ends at max_lr / (div_factor * final_div_factor)
        assert resumed_result.history[-1]["lr"] == pytest.approx(0.05 / 25 / 1e4, rel=1e-9)


def test_half_written_checkpoint_is_ignored(tmp_path):
    run(tmp_path, epochs=2)
    ckpt = tmp_path / "checkpoints"
    (ckpt / ".epoch-0002.tmp").mkdir()  # a crash while writing the next checkpoint
    assert last_checkpoint(ckpt).name == "epoch-0001"
    weights = load_file(ckpt / "epoch-0001" / "model.safetensors")
    assert set(weights) == {"head.1.weight", "head.1.bias"}


def test_sampler_splits_global_batches_across_ranks():
    one = list(EpochBatchSampler(10, 4, shuffle=True, seed=3))
    ranks = [list(EpochBatchSampler(10, 4, shuffle=True, seed=3, rank=r, world_size=2))
             for r in range(2)]
    for k, batch in enumerate(one):
        together = np.concatenate([ranks[0][k], ranks[1][k]])
        np.testing.assert_array_equal(together[: len(batch)], batch)
    assert len(ranks[0][-1]) == len(ranks[1][-1]) == 1


def test_lr_schedules():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine")
    assert lr_factor(cfg, 1.0) == pytest.approx(0.5)
    assert lr_factor(cfg, 2.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 10.0) == pytest.approx(0.0)
    step = TrainConfig(epochs=20, schedule="step", step_size=10, gamma=0.1)
    assert lr_factor(step, 9.9) == 1.0 and lr_factor(step, 10.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="train.optimizer"):
        TrainConfig(optimizer="lbfgs")


@pytest.mark.parametrize(("epochs", "steps", "pct_start", "div", "final_div"), [
    (60, 7, 0.2, 25.0, 1e4),  # CLSL's release (methods.md §3.4), fewer steps
    (3, 5, 0.3, 10.0, 100.0),  # pct_start * T = 4.5 steps: the peak falls between two steps
    (2, 3, 0.1, 25.0, 1e4),  # pct_start * T - 1 < 0: no rising phase
])
def test_onecycle_follows_torch_onecycle_lr_step_by_step(epochs, steps, pct_start, div,
                                                         final_div):
    max_lr = 3e-4
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps, pct_start=pct_start,
        div_factor=div, final_div_factor=final_div,
    )
    cfg = TrainConfig(epochs=epochs, schedule="onecycle", pct_start=pct_start, onecycle_div=div,
                      onecycle_final_div=final_div, lr=max_lr)
    for s in range(epochs * steps):
        epoch, step = divmod(s, steps)
        ours = max_lr * lr_factor(cfg, epoch + step / steps, steps)  # as fit calls it
        assert abs(ours - optimizer.param_groups[0]["lr"]) <= 1e-9 * max_lr, s
        optimizer.step()
        scheduler.step()


def test_onecycle_and_ema_settings_are_checked():
    cfg = TrainConfig(epochs=10, schedule="onecycle")  # without steps: the continuous limit
    assert lr_factor(cfg, 0.0) == pytest.approx(1 / 25)
    assert lr_factor(cfg, 2.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 10.0) == pytest.approx(1 / 25 / 1e4)
    with pytest.raises(ValueError, match="train.warmup_epochs=1.*onecycle"):
        TrainConfig(schedule="onecycle", warmup_epochs=1)
    with pytest.raises(ValueError, match="train.pct_start"):
        TrainConfig(pct_start=1.0)
    with pytest.raises(ValueError, match=r"train.ema_decay=1.0 must be in \(0, 1\)"):
        TrainConfig(ema_decay=1)


def test_weight_ema_update_is_decay_times_average_plus_the_rest_times_weights():
    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.BatchNorm1d(1))
    state = model.state_dict()
    for value in state.values():
        value.fill_(1)  # weight, bias, running mean and var 1; num_batches_tracked 1
    ema = WeightEma(model, decay=0.75)
    for step, value in enumerate((3.0, 5.0), start=2):
        for entry in state.values():
            entry.fill_(value if entry.is_floating_point() else step)
        ema.update(model)
    expected = 0.75 * (0.75 * 1 + 0.25 * 3) + 0.25 * 5  # 2.375, exact in binary
    for key, average in ema.state.items():
        want = expected if average.is_floating_point() else 3  # integer buffers: copied
        assert torch.all(average == want), key
    with ema.applied(model):
        assert torch.all(model[0].weight == expected)
    assert torch.all(model[0].weight == 5)  # its own weights back


def test_fit_validates_and_keeps_the_weight_average(tmp_path):
    """One step per epoch: after epoch k the average is 0.5 * average + 0.5 * weights_k."""
    features, labels = synthetic()
    train = FeatureBatches(features[:192], labels[:192])
    val = FeatureBatches(features[192:], labels[192:])
    cfg = TrainConfig(epochs=3, batch_size=192, lr=0.5, ema_decay=0.5, progress=False,
                      device="cpu")
    method = make_linear(train.targets, 16)
    average = [{k: v.clone() for k, v in method.state_dict().items()}]  # it starts at init

    def follow(epoch, record):
        weights = method.state_dict()  # the raw weights: training goes on from them
        average.append({k: 0.5 * average[-1][k] + 0.5 * weights[k] for k in weights})

    result = fit(method, train, val, labels[192:], cfg, tmp_path, on_epoch_end=follow)
    saved = load_file(tmp_path / "checkpoints" / "epoch-0002" / "ema.safetensors")
    for key, value in saved.items():
        torch.testing.assert_close(value, average[3][key], rtol=1e-6, atol=1e-7)
    for key, value in load_file(tmp_path / "checkpoints" / "best" / "model.safetensors").items():
        torch.testing.assert_close(value, average[result.best_epoch + 1][key])
    logits = evaluate_logits(method, val, 64, torch.device("cpu"))  # best/, loaded by fit
    assert score_report(logits, labels[192:])["mAP"] == result.best_val["val_mAP"]


def test_two_process_torchrun_equals_single_process(tmp_path):
    """Without and with ``ema_decay`` (``final`` is then the best weight average, validated on
    both ranks); ddp_worker.py trains both in one launch."""
    worker = HERE / "ddp_worker.py"
    single = tmp_path / "single"
    subprocess.run([sys.executable, str(worker), str(single)], check=True, timeout=300)
    ddp = tmp_path / "ddp"
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(worker), str(ddp)],
        check=True, timeout=300,
    )
    from ddp_worker import VARIANTS

    for variant in VARIANTS:
        a = load_file(single / variant / "final.safetensors")
        b = load_file(ddp / variant / "final.safetensors")
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
        la, lb = (np.load(p / variant / "val_logits.npy") for p in (single, ddp))
        np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-5)


def test_early_stopping_after_patience_evaluations_without_gain(tmp_path):
    features, labels = synthetic()
    train = FeatureBatches(features[:192], labels[:192])
    val = FeatureBatches(features[192:], labels[192:])
    # steps of lr 1e-30 vanish in float32: the weights, and so validation, never change
    cfg = TrainConfig(epochs=10, batch_size=32, lr=1e-30, patience=2, progress=False,
                      device="cpu")
    result = fit(make_linear(train.targets, 16), train, val, labels[192:], cfg, tmp_path)
    assert result.stopped_early and result.best_epoch == 0 and len(result.history) == 3
    again = fit(make_linear(train.targets, 16), train, val, labels[192:], cfg, tmp_path,
                resume=True)
    assert again.stopped_early and len(again.history) == 3


def test_image_batches_name_the_missing_or_corrupt_file(tmp_path):
    from PIL import Image

    from mlrkit.data import DataFormatError
    from mlrkit.engine.batches import ImageBatches

    good, broken = tmp_path / "good.jpg", tmp_path / "broken.jpg"
    Image.new("RGB", (8, 8)).save(good)
    broken.write_bytes(good.read_bytes()[:40])
    source = ImageBatches([good, broken, tmp_path / "gone.jpg"], np.zeros((3, 2), np.int8),
                          lambda image: torch.zeros(3, 8, 8))
    images, targets, index = source[np.array([0])]
    assert targets.dtype == torch.int8
    assert images.shape == (1, 3, 8, 8) and index.tolist() == [0]
    with pytest.raises(DataFormatError, match="broken.jpg"):
        source[np.array([1])]
    with pytest.raises(DataFormatError, match="gone.jpg: file not found"):
        source[np.array([2])]


def test_two_process_torchrun_trains_end_to_end_sarb_across_its_warm_up(tmp_path):
    """SARB's alpha and beta get no gradient before ``mixup_epoch`` and one after; the
    ``EncoderHead`` around it must tell DDP so (``find_unused_parameters``).

    Exact equality with one process is not possible here: each rank draws its own training
    augmentation, and the contrastive loss and the blending partners are batch-local."""
    import json
    import os

    import yaml
    from test_recipe_run import make_dataset

    make_dataset(tmp_path / "data")
    recipe = {
        "name": "sarb-end-to-end",
        "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "encoder": {"name": "resnet18", "weights": None, "image_size": 64, "seed": 0,
                    "trainable": ["model.layer4"]},
        "protocol": {"name": "partial", "known": 0.5, "seed": 0},
        "label_embeddings": {"source": "glove"},
        "method": {"name": "sarb", "image_dim": 16, "inter_dim": 8, "output_dim": 16,
                   "time_steps": 1, "mixup_epoch": 1, "num_prototypes": 2, "kmeans_iters": 10},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "progress": False, "device": "cpu"},
    }
    config = tmp_path / "sarb.yaml"
    config.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    launchers = {"one": [], "two": ["-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node=2"]}
    for name, launcher in launchers.items():
        command = [sys.executable, *launcher, "-m", "mlrkit.cli", "train", "--config", str(config),
                   "--run-dir", str(tmp_path / name)]
        done = subprocess.run(command, check=False, env=env, timeout=600, capture_output=True,
                              text=True)
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    results = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in launchers}
    assert results["two"]["best_epoch"] == results["one"]["best_epoch"]
    last = load_file(tmp_path / "two" / "checkpoints" / "epoch-0001" / "model.safetensors")
    assert last["method.alpha"].item() != 0.5 and last["method.beta"].item() != 0.5  # blended
