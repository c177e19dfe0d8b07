"""From a recipe to a finished run folder: data → protocol mask → features or images → method → fit.

A run folder holds everything needed to repeat, evaluate or use the run::

    config.yaml      the resolved recipe
    run.json         what eval and predict need without the data (see engine.run_folder)
    label_embeddings.safetensors   the (C, E) label embeddings the method was built with, if any
    mask.npz         the protocol's known-label mask of the training split (ProtocolMask)
    metrics.jsonl    one line per epoch
    checkpoints/     best/ and the last epoch (see engine.checkpoint)
    results.json     best epoch, validation and test metrics, the source_hash of the code that
                     finished the run (mlrkit.provenance)
    train.lock       while a process trains into the folder (see engine.run_lock)

One process trains into a folder at a time, and a folder holds one run (see
:func:`~mlrkit.engine.run_folder.open_run_folder`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from mlrkit.atomic import atomic_write, naming_errors
from mlrkit.distributed import current_info, init_distributed, resolve_device
from mlrkit.engine.calibrate import fit_run_calibration
from mlrkit.engine.inference import scores_report
from mlrkit.engine.prepare import PreparedRun, prepare
from mlrkit.engine.recipe import load_recipe, save_recipe
from mlrkit.engine.recipe_schema import Recipe
from mlrkit.engine.run_files import (
    CONFIG_FILE,
    MASK_FILE,
    METRICS_FILE,
    PSEUDO_FILE,
    RESULTS_FILE,
    RUN_FILE,
    SPLIT_FILE,
)
from mlrkit.engine.run_folder import (
    open_run_folder,
    remove_run_files,
    write_checksums,
    write_run_files,
)
from mlrkit.engine.run_lock import run_lock
from mlrkit.engine.trainer import TrainConfig, evaluate_logits, fit
from mlrkit.provenance import source_hash

logger = logging.getLogger(__name__)


def train_run(recipe: dict, run_dir: str | Path, *, resume: bool = False,
              overwrite: bool = False) -> dict:
    """Train the recipe into ``run_dir`` and return the results (also written to results.json).

    The folder is locked for the whole call (a second process stops at once, see
    :mod:`mlrkit.engine.run_lock`). ``resume`` continues the run of this same recipe in
    ``run_dir`` from its last finished epoch, or starts one where the folder has no config.yaml;
    a new run into a folder that holds one needs ``overwrite``, which removes the old run's files
    once the new recipe's data has been read (:func:`~mlrkit.engine.run_folder.open_run_folder`):
    a recipe or data error leaves the old run as it was. A run that fails before its
    first epoch is logged removes the folder if this call created it.
    """
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cfg = Recipe.from_dict(recipe).train
    info = init_distributed(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
    try:
        with run_lock(run_dir) if info.is_main else nullcontext():
            replaced: list[str] = []
            if info.is_main:  # the other torchrun ranks follow rank 0's folder
                resume, replaced = open_run_folder(run_dir, recipe, resume=resume,
                                                   overwrite=overwrite)
            return _train(recipe, run_dir, cfg, resume, started, replaced)
    except BaseException:
        if created and info.is_main and not (run_dir / METRICS_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before its first epoch
        raise


def _train(recipe: dict, run_dir: Path, cfg: TrainConfig, resume: bool, started: float,
           replaced: list[str]) -> dict:
    """The body of :func:`train_run`, once the folder is locked and checked; the old run's files
    ``replaced`` go once the new run's data has been read."""
    info = current_info()
    prepared = prepare(Recipe.from_dict(recipe))
    if info.is_main:
        remove_run_files(run_dir, replaced)
        with naming_errors(run_dir / CONFIG_FILE):
            save_recipe(recipe, run_dir / CONFIG_FILE)
        if prepared.mask is not None:
            prepared.mask.save(run_dir / MASK_FILE)
        if prepared.class_split is not None:
            prepared.class_split.save(run_dir / SPLIT_FILE)
        if prepared.pseudo_labels is not None:
            prepared.pseudo_labels.save(run_dir / PSEUDO_FILE)
        write_run_files(run_dir, prepared.run_info, prepared.spec.label_embeddings,
                        prepared.eval_embeddings if prepared.class_split is not None else None)
    result = fit(prepared.method, prepared.sources["train"], prepared.sources.get("val"),
                 prepared.labels.get("val"), cfg, run_dir, resume=resume)
    results = {
        "name": prepared.recipe.name,
        "method": prepared.recipe.method_name,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "threads": torch.get_num_threads(),
        "source_hash": source_hash(),
        **result.best_val,
    }
    if prepared.class_split is not None:
        results["dropped_train_images"] = prepared.dropped_train_images
    if "val" in prepared.sources:
        _calibrate(prepared, cfg, run_dir)
    if "test" in prepared.sources:
        results.update(_evaluate(prepared, "test", cfg))
    results["seconds"] = time.perf_counter() - started
    if info.is_main:  # written last and atomically: its presence means the run is complete
        write_checksums(run_dir)  # the run is used only as written from here on
        with atomic_write(run_dir / RESULTS_FILE, "w") as f:
            json.dump(results, f, indent=1)
    return results


def _evaluate(prepared: PreparedRun, split: str, cfg: TrainConfig) -> dict[str, float]:
    """The test metrics: :func:`score_report`, or for the zero-shot protocol the ZSL / GZSL
    figures over all classes (:func:`~mlrkit.metrics.zero_shot_metrics`)."""
    device = resolve_device(cfg.device, current_info().local_rank)
    return scores_report(prepared.method, prepared.sources[split], prepared.labels[split],
                          cfg.eval_batch_size, device, f"{split}_", prepared.class_split,
                          prepared.eval_embeddings)


def _calibrate(prepared: PreparedRun, cfg: TrainConfig, run_dir: Path) -> None:
    """Fit the run's calibration and thresholds on its validation split and save them
    (:mod:`mlrkit.engine.calibrate`); a split that cannot be fitted on is logged and skipped."""
    device = resolve_device(cfg.device, current_info().local_rank)
    logits = evaluate_logits(prepared.method, prepared.sources["val"], cfg.eval_batch_size, device)
    if not current_info().is_main:
        return
    try:
        fitted = fit_run_calibration(logits, prepared.labels["val"], list(prepared.class_names))
    except ValueError as err:
        logger.warning("%s: no calibration (%s); predict and recover use the sigmoid", run_dir, err)
        return
    fitted.save(run_dir)


def upgrade_run_folder(run_dir: str | Path) -> Path:
    """Write ``run.json`` (and the label embeddings) of a run trained before run folders had
    them, from its ``config.yaml`` and its data, read from the working directory it was trained
    in; returns the path of ``run.json``. An explicit step: loading a run never prepares one.

    Raises:
        FileExistsError: the run already has a ``run.json``.
    """
    run_dir = Path(run_dir)
    if (run_dir / RUN_FILE).is_file():
        raise FileExistsError(f"{run_dir / RUN_FILE} exists: the run needs no upgrade")
    recipe = load_recipe(run_dir / CONFIG_FILE)
    if (run_dir / MASK_FILE).is_file():
        recipe["protocol"]["mask_file"] = str(run_dir / MASK_FILE)
    prepared = prepare(Recipe.from_dict(recipe))
    with run_lock(run_dir):
        write_run_files(run_dir, prepared.run_info, prepared.spec.label_embeddings,
                        prepared.eval_embeddings if prepared.class_split is not None else None)
    return run_dir / RUN_FILE
