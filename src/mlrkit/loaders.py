"""Readers of the JSON and safetensors files mlrkit writes (run folders, checkpoints, caches).

A truncated, empty or foreign file (a kill mid-copy, a full disk) raises :class:`CorruptFileError`
naming the file, what is wrong and ``fix``, the caller's advice, instead of a parser's message that
names neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor


class CorruptFileError(ValueError):
    """A file is truncated or is not the kind of file its name says."""


def read_json(path: str | Path, fix: str) -> Any:
    """The parsed JSON file ``path``; ``fix`` says what to do when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{path}: not valid JSON, truncated or damaged ({err}); {fix}") from err


def read_safetensors(path: str | Path, fix: str, device: str = "cpu") -> dict[str, Tensor]:
    """The tensors of the safetensors file ``path``; ``fix`` says what to do when it is damaged."""
    try:
        return load_file(path, device=device)
    except SafetensorError as err:
        raise CorruptFileError(
            f"{path}: not a complete safetensors file, truncated or damaged ({err}); {fix}"
        ) from err
