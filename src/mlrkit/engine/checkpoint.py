"""Atomic, pickle-free checkpoints: safetensors for tensors, JSON for everything else.

Layout of ``run_dir/checkpoints``::

    epoch-0007/model.safetensors       weights and buffers (per-sample state included)
    epoch-0007/optimizer.safetensors   optimizer tensors (moments, steps)
    epoch-0007/ema.safetensors         the weight average, with train.ema_decay (engine.ema)
    epoch-0007/state.json              epoch, optimizer hyperparameters, early-stopping state
    best/...                           the validated weights (the average with train.ema_eval)
                                       and state of the best validation epoch
    last.json                          {"name": "epoch-0007"}: the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed when complete, and ``last.json``
is replaced atomically afterwards, so a run killed at any moment resumes from the last finished epoch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from mlrkit.atomic import atomic_write
from mlrkit.loaders import read_json, read_safetensors

MODEL_FILE, OPTIMIZER_FILE, EMA_FILE, STATE_FILE, LAST_FILE = (
    "model.safetensors",
    "optimizer.safetensors",
    "ema.safetensors",
    "state.json",
    "last.json",
)
DAMAGED = "train the run again (mlrkit train ... --overwrite)"


def _write_json(path: Path, payload: dict) -> None:
    with atomic_write(path, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)


def _write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file, fsynced; a failed write names the file (see atomic_write)."""
    with atomic_write(path) as f:
        f.write(save(tensors))


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into named tensors and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return _tensors(tensors), {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *rest["scalars"].items()]:
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})


def save_checkpoint(
    ckpt_dir: Path,
    name: str,
    model: nn.Module | dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    state: dict,
    make_last: bool = True,
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``ckpt_dir/name`` atomically; point ``last.json`` at it if ``make_last``.

    ``model``: the module, or the ``state_dict`` to save as its weights.
    ``ema``: the weight average (:class:`~mlrkit.engine.ema.WeightEma` ``state``), saved as
    ``ema.safetensors`` when given."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / name
    tmp = ckpt_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    _write_tensors(tmp / MODEL_FILE, _tensors(weights))
    payload = dict(state)
    if optimizer is not None:
        tensors, rest = optimizer_to_flat(optimizer)
        _write_tensors(tmp / OPTIMIZER_FILE, tensors)
        payload["optimizer"] = rest
    if ema is not None:
        _write_tensors(tmp / EMA_FILE, _tensors(ema))
    _write_json(tmp / STATE_FILE, payload)
    if final.exists():
        old = ckpt_dir / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    if make_last:
        previous = last_checkpoint(ckpt_dir)
        _write_json(ckpt_dir / LAST_FILE, {"name": name})
        if previous is not None and previous.name != name and previous.name != "best":
            shutil.rmtree(previous, ignore_errors=True)
    return final


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or ``None``."""
    pointer = Path(ckpt_dir) / LAST_FILE
    if not pointer.is_file():
        return None
    path = Path(ckpt_dir) / read_json(pointer, DAMAGED)["name"]
    return path if (path / STATE_FILE).is_file() else None


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    map_location: str | torch.device = "cpu",
) -> dict:
    """Load weights (strictly) and optimizer state from ``path``; returns the JSON state."""
    path = Path(path)
    if not (path / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {MODEL_FILE}; is this an mlrkit checkpoint folder?")
    weights = read_safetensors(path / MODEL_FILE, DAMAGED, device=str(map_location))
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a tensor of another shape
        raise ValueError(
            f"{path / MODEL_FILE} does not fit this model ({' '.join(str(err).split())}); was it "
            f"written for another method or config?"
        ) from err
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path / MODEL_FILE} does not fit this model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}; was it written for another method or config?"
        )
    state = read_json(path / STATE_FILE, DAMAGED)
    if optimizer is not None and "optimizer" in state:
        tensors = read_safetensors(path / OPTIMIZER_FILE, DAMAGED, device=str(map_location))
        optimizer_from_flat(optimizer, tensors, state["optimizer"])
    return state


def load_ema(path: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The weight average saved in checkpoint ``path`` (``ema.safetensors``)."""
    file = Path(path) / EMA_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no weight average in this checkpoint; was the run "
                                f"trained without train.ema_decay?")
    return read_safetensors(file, DAMAGED, device=str(map_location))
