"""Where mlrkit keeps what it computes once per machine (label embeddings, frozen encoders)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MLRKIT_CACHE``, or ``~/.cache/mlrkit``."""
    return Path(os.environ.get("MLRKIT_CACHE") or Path.home() / ".cache" / "mlrkit")
