"""mlrkit: multi-label image recognition with incomplete labels.

    import mlrkit
    run = mlrkit.load_run("runs/my_run")          # a trained run folder
    probs = run.predict(["a.jpg", "b.jpg"])       # (2, C) calibrated probabilities
    run.class_names, run.thresholds               # the C classes, where each label is on
"""

from typing import Any

from mlrkit._version import __version__

__all__ = ["LoadedRun", "__version__", "load_run"]


def __getattr__(name: str) -> Any:
    # load_run needs torch: imported on first use, so that ``import mlrkit`` stays light
    if name in ("load_run", "LoadedRun"):
        from mlrkit.engine import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'mlrkit' has no attribute {name!r}")
