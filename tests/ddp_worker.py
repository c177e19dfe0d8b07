"""Train a linear head on fixed synthetic data; run alone or under torchrun (see test_engine.py).

Trains twice, without and with ``train.ema_decay`` 0.8 (one launch: torchrun's start-up is most
of the time), and writes ``final.safetensors`` and ``val_logits.npy`` of each into ``raw/`` and
``ema/`` of the folder given as the argument.
Labels are fully known so the per-rank loss means average to the single-process mean exactly.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mlrkit.distributed import end_distributed_process, init_distributed
from mlrkit.engine.batches import FeatureBatches
from mlrkit.engine.trainer import TrainConfig, evaluate_logits, fit
from mlrkit.methods import TaskSpec, create_method

#: Each training's sub-folder and its ``train.ema_decay``
VARIANTS = {"raw": None, "ema": 0.8}


def train(out: Path, ema_decay: float | None) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(160, 8)).astype(np.float32)
    labels = (features @ rng.normal(size=(8, 3)) > 0).astype(np.int8)
    train = FeatureBatches(features[:128], labels[:128])
    val = FeatureBatches(features[128:], labels[128:])
    torch.manual_seed(0)
    method = create_method("linear", TaskSpec(3, (8,), labels[:128]))
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, optimizer="sgd", progress=False,
                      device="cpu", ema_decay=ema_decay)
    fit(method, train, val, labels[128:], cfg, out)
    info = init_distributed(torch.device("cpu"))
    logits = evaluate_logits(method, val, 16, torch.device("cpu"), info)
    if info.is_main:
        save_file({k: v.contiguous() for k, v in method.state_dict().items()},
                  out / "final.safetensors")
        np.save(out / "val_logits.npy", logits.numpy())


if __name__ == "__main__":
    for name, decay in VARIANTS.items():
        train(Path(sys.argv[1]) / name, decay)
    end_distributed_process(0)
