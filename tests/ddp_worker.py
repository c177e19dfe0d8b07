"""Train a linear head on fixed synthetic data; run alone or under torchrun (see test_engine.py).

Writes ``final.safetensors`` and ``val_logits.npy`` into the folder given as the first argument;
a second argument is ``train.ema_decay``.
Labels are fully known so the per-rank loss means average to the single-process mean exactly.
"""

import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mlrkit.engine.batches import FeatureBatches
from mlrkit.engine.distributed import end_distributed_process, init_distributed
from mlrkit.engine.trainer import TrainConfig, evaluate_logits, fit
from mlrkit.methods import TaskSpec, create_method


def main(out: Path, ema_decay: float | None) -> None:
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
    end_distributed_process(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else None)
