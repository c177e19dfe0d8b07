"""Shared by the accuracy benchmarks: run a recipe with overrides (reusing finished runs), pick
the learning rate on val, and format mean ± std tables."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.run import train_run

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(config: str, overrides: list[str], run_dir: Path) -> dict:
    """Train ``configs/<config>.yaml`` with ``overrides`` into ``run_dir``; a finished run (with
    ``results.json``) is read back instead of retrained, a killed one resumes."""
    done = run_dir / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    recipe = load_recipe(ROOT / "configs" / f"{config}.yaml", ["train.progress=false", *overrides])
    return train_run(recipe, run_dir, resume=True)


def tuned_run(config: str, overrides: list[str], lrs: list[float] | None, run_dir: Path) -> dict:
    """The run with the best validation mAP over ``lrs`` (``None``: the recipe's own lr)."""
    runs = [
        run_recipe(config, overrides + ([f"train.lr={lr}"] if lr else []), run_dir / f"lr{lr}")
        for lr in (lrs or [None])
    ]
    return max(runs, key=lambda r: r["val_mAP"])


def mean_std(values: list[float]) -> tuple[float, str]:
    """Mean of fractions in percent, and its text with the std when there are several values."""
    mean = 100 * statistics.fmean(values)
    spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return mean, f"{mean:.1f}{spread}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
