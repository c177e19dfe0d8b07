"""Shared by the accuracy benchmarks: run a recipe with overrides, tune lr and weight decay on the
validation split with the same grid for every method, and write tables with their provenance.

Reuse rule: a run folder's name carries a fingerprint of the fully resolved recipe and the hash of
mlrkit's source (:func:`mlrkit.provenance.source_hash`), and a finished run (``results.json``) is
read back only when the ``config.yaml`` inside equals the recipe asked for now and its
``results.json`` was written by the same source; anything else trains anew (an interrupted run of
the same recipe and source resumes). So a result is never reused after the recipe, the code's
defaults, an override or any file of ``src/mlrkit/`` changed. Every table records the commit and
the source hash it was made at.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from mlrkit.atomic import atomic_write
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.run import train_run
from mlrkit.engine.trainer import TrainConfig
from mlrkit.provenance import git_commit, source_hash

ROOT = Path(__file__).resolve().parents[1]

#: The tuning grid every method gets, the same size for all: lr x weight decay (AdamW, decoupled).
LRS = (5e-4, 1e-3)
WEIGHT_DECAYS = (1e-4, 0.5)


def recipe_fingerprint(recipe: dict) -> str:
    """First 10 hex digits of the SHA-256 of the resolved recipe (``train.progress`` left out)."""
    clean = json.loads(json.dumps(recipe))
    clean["train"].pop("progress", None)
    clean.pop("run_dir", None)
    return hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:10]


def run_recipe(config: str | Path, overrides: list[str], parent: Path) -> dict:
    """Train ``configs/<config>.yaml`` (or the recipe file ``config``) with ``overrides`` into
    ``parent/<recipe fingerprint>-<source hash>``.

    A finished run of the very same resolved recipe made by the same source is read back; a killed
    one resumes. The results carry the run folder and the run's lr and weight decay.
    """
    path = config if isinstance(config, Path) else ROOT / "configs" / f"{config}.yaml"
    recipe = load_recipe(path, ["train.progress=false", *overrides])
    fingerprint, code = recipe_fingerprint(recipe), source_hash()
    run_dir = parent / f"{fingerprint}-{code}"
    done, saved = run_dir / "results.json", run_dir / "config.yaml"
    fresh = not (done.is_file() and saved.is_file()
                 and recipe_fingerprint(yaml.safe_load(saved.read_text())) == fingerprint
                 and json.loads(done.read_text()).get("source_hash") == code)
    results = train_run(recipe, run_dir, resume=saved.is_file()) if fresh else json.loads(
        done.read_text())
    train = TrainConfig(**recipe["train"])
    return {**results, "run_dir": str(run_dir), "lr": train.lr,
            "weight_decay": train.weight_decay, "reused": not fresh}


@dataclass
class Tuned:
    """The runs of one (method, setting): every grid point at the tuning seed, then the other seeds
    at the chosen point."""

    grid: list[dict]
    chosen: dict
    runs: list[dict]


def grid_overrides(tune: bool) -> list[list[str]]:
    """The lr x weight-decay grid as override lists (one empty list without tuning)."""
    if not tune:
        return [[]]
    return [[f"train.lr={lr}", f"train.weight_decay={wd}"]
            for lr, wd in itertools.product(LRS, WEIGHT_DECAYS)]


def tuned_runs(config: str, overrides: list[str], seeds: list[int], parent: Path,
               tune: bool = True) -> Tuned:
    """Tune on the first seed (best validation mAP over the grid, epoch chosen by each run's early
    selection), then train the remaining seeds at the chosen lr and weight decay."""
    first, *others = seeds
    grid = []
    for point in grid_overrides(tune):
        result = run_recipe(config, [*overrides, *point, f"train.seed={first}"], parent)
        grid.append({"overrides": point, **result})
    best = max(grid, key=lambda r: r["val_mAP"])
    runs = [best] + [
        run_recipe(config, [*overrides, *best["overrides"], f"train.seed={s}"], parent)
        for s in others
    ]
    chosen = {"lr": best["lr"], "weight_decay": best["weight_decay"],
              "best_epoch": best["best_epoch"]}
    return Tuned(grid, chosen, runs)


def mean_std(values: list[float]) -> tuple[float, str]:
    """Mean of fractions in percent, and its text with the std when there are several values."""
    mean = 100 * statistics.fmean(values)
    spread = f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return mean, f"{mean:.1f}{spread}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def machine() -> str:
    """One line naming the machine and the software that made a result."""
    return (f"{platform.node() or 'host'}: {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python "
            f"{platform.python_version()}")


def command() -> str:
    """The command line that is running, as a user would type it from the project root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def write_result(out_dir: Path, stem: str, title: str, body: list[str], data: object) -> str:
    """Write ``<stem>.md`` (title, command, machine, body) and ``<stem>.json`` atomically; return
    the markdown text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    commit, code = git_commit(ROOT), source_hash()
    lines = [f"# {title}", "", f"Command: `{command()}`", "", f"Machine: {machine()}", "",
             f"Code: commit {commit}, mlrkit source {code}", "", *body]
    text = "\n".join(lines) + "\n"
    with atomic_write(out_dir / f"{stem}.md", "w") as f:
        f.write(text)
    with atomic_write(out_dir / f"{stem}.json", "w") as f:
        json.dump({"command": command(), "machine": machine(), "commit": commit,
                   "source_hash": code, "results": data}, f, indent=1)
    return text
