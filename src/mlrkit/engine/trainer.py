"""The training and evaluation loop shared by every method.

``fit`` trains a :class:`~mlrkit.methods.base.Method` on a batch source (cached features or images),
evaluates on a validation source every ``eval_every`` epochs, keeps the best checkpoint by validation
mAP, stops early, and resumes exactly after a kill: every epoch's randomness (shuffling, dropout,
augmentation) is seeded from ``(seed, epoch)``, so epochs re-run after a resume replay the same
numbers. Under ``torchrun`` it trains with DistributedDataParallel (gloo on CPU, NCCL on CUDA).
With ``train.ema_decay`` it keeps a moving average of the weights (:mod:`mlrkit.engine.ema`),
validates it and keeps it as the best checkpoint (unless ``train.ema_eval`` is false).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from mlrkit import metrics
from mlrkit.atomic import naming_errors
from mlrkit.distributed import (
    DistInfo,
    barrier,
    current_info,
    gather_across_ranks,
    init_distributed,
    resolve_device,
)
from mlrkit.engine.batches import EpochBatchSampler, batch_loader
from mlrkit.engine.checkpoint import last_checkpoint, load_checkpoint, load_ema, save_checkpoint
from mlrkit.engine.ema import WeightEma
from mlrkit.engine.run_files import CHECKPOINTS_DIR, METRICS_FILE, TENSORBOARD_DIR
from mlrkit.methods.base import Method, StepInfo


@dataclass
class TrainConfig:
    """Optimisation settings (the ``train:`` section of a recipe).

    ``batch_size`` is global: with ``K`` torchrun processes each takes ``batch_size / K`` rows.
    ``amp``: ``"auto"`` uses bfloat16 autocast on CUDA devices that support it and full precision
    elsewhere; ``"bf16"``/``"fp16"`` force it (fp16 with a gradient scaler), ``"off"`` disables it.
    ``patience``: stop after this many evaluations without a better validation mAP (0 = never).
    ``threads``: torch's intra-op CPU threads for the run (``None``: leave torch's setting). A
    run is reproducible to the digit for a given thread count; methods whose training selects
    entries by value (SARB's hard mining and k-means) can end elsewhere with another count,
    because float sums are split differently across threads. ``results.json`` records the count.
    ``schedule``: ``"cosine"`` (after ``warmup_epochs``, down to ``min_lr_ratio``), ``"step"``
    (times ``gamma`` every ``step_size`` epochs), ``"constant"``, or ``"onecycle"``: PyTorch's
    ``OneCycleLR`` with cosine annealing (see :func:`lr_factor`), ``lr`` being its maximum, from
    ``lr / onecycle_div`` up to ``lr`` over the first ``pct_start`` of the steps and down to
    ``lr / (onecycle_div * onecycle_final_div)`` at the last; it warms up by itself, so
    ``warmup_epochs`` must stay 0. CLSL's release: ``pct_start`` 0.2 and PyTorch's defaults 25
    and 1e4 (methods.md §3.4); PyTorch's cycling of AdamW's β₁ is not applied (β₁ stays 0.9).
    ``ema_decay``: keep an exponential moving average of the weights, updated after every
    optimizer step (:mod:`mlrkit.engine.ema`; CLSL: 0.9997 on MS-COCO, 0.9983 on VOC 2007 and
    NUS-WIDE).
    ``ema_eval``: with ``ema_decay``, validate the average instead of the raw weights, so that
    the best epoch is chosen by, and ``best/`` holds, the average (what eval, predict and recover
    then use); ``False`` validates and keeps the raw weights.
    ``no_decay_1d``: no weight decay on 1-d parameters (biases, norm scales, scalars), as timm's
    ``param_groups_weight_decay`` and SigRL's optimiser do.
    """

    epochs: int = 20
    batch_size: int = 64
    eval_batch_size: int = 256
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_size: int = 10
    gamma: float = 0.1
    min_lr_ratio: float = 0.0
    pct_start: float = 0.2
    onecycle_div: float = 25.0
    onecycle_final_div: float = 1e4
    ema_decay: float | None = None
    ema_eval: bool = True
    grad_clip: float | None = None
    amp: str = "auto"
    eval_every: int = 1
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    threads: int | None = None
    no_decay_1d: bool = False

    def __post_init__(self) -> None:
        self._coerce_numbers()
        choices = {
            "optimizer": ("adamw", "adam", "sgd"),
            "schedule": ("cosine", "step", "constant", "onecycle"),
            "amp": ("auto", "off", "bf16", "fp16"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"train.threads={self.threads} must be >= 1 (or null)")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("train.epochs, train.batch_size and train.eval_every must be >= 1")
        self._check_ranges()
        self._check_onecycle_and_ema()

    def _check_ranges(self) -> None:
        """Numbers outside what they mean (a negative learning rate trains uphill) are errors
        naming the field and its range."""
        ranges = {  # field: (lowest, lowest allowed itself, highest or None)
            "lr": (0.0, False, None), "weight_decay": (0.0, True, None),
            "momentum": (0.0, True, 1.0), "gamma": (0.0, False, None),
            "min_lr_ratio": (0.0, True, 1.0), "warmup_epochs": (0.0, True, None),
            "step_size": (1, True, None), "eval_batch_size": (1, True, None),
            "patience": (0, True, None), "num_workers": (0, True, None),
        }
        for name, (low, inclusive, high) in ranges.items():
            value = getattr(self, name)
            if value < low or (value == low and not inclusive) or (high is not None and
                                                                   value > high):
                bound = f"{'>=' if inclusive else '>'} {low}" + (
                    f" and <= {high}" if high is not None else "")
                raise ValueError(f"train.{name}={value} must be {bound}; set it in that range")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"train.grad_clip={self.grad_clip} must be > 0; give a positive norm, "
                             f"or null for no clipping")

    def _check_onecycle_and_ema(self) -> None:
        if self.schedule == "onecycle" and self.warmup_epochs > 0:
            raise ValueError(f"train.warmup_epochs={self.warmup_epochs}: schedule onecycle warms "
                             f"up by itself over train.pct_start of the steps; set it to 0")
        if not 0 <= self.pct_start < 1:
            raise ValueError(f"train.pct_start={self.pct_start} must be in [0, 1)")
        if self.onecycle_div <= 0 or self.onecycle_final_div <= 0:
            raise ValueError("train.onecycle_div and train.onecycle_final_div must be > 0")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"train.ema_decay={self.ema_decay} must be in (0, 1), or null for "
                             f"no weight average")

    def _coerce_numbers(self) -> None:
        """Read numbers that YAML left as text (PyYAML reads ``1e-3`` as a string) by the field's
        type; anything else that is not a number is an error naming the field."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if not kind.startswith(("int", "float")) or value is None or isinstance(value, bool):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"train.{f.name}={value!r} is not a number") from None
            if kind.startswith("int"):
                if not number.is_integer():
                    raise ValueError(f"train.{f.name}={value!r} must be a whole number")
                number = int(number)
            setattr(self, f.name, number)


@dataclass
class FitResult:
    best_epoch: int
    best_val: dict[str, float]
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(cfg: TrainConfig, progress: float, steps_per_epoch: int | None = None) -> float:
    """Learning-rate multiplier at ``progress`` epochs (fractional) into training.

    ``steps_per_epoch`` matters only to ``onecycle``, whose phases end one step before
    ``pct_start`` and before the end of training (see :func:`_onecycle_factor`)."""
    if cfg.schedule == "onecycle":
        return _onecycle_factor(cfg, progress, steps_per_epoch)
    if cfg.warmup_epochs > 0 and progress < cfg.warmup_epochs:
        return (progress + 1e-8) / cfg.warmup_epochs
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** int(progress // cfg.step_size)
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
    t = min(max(progress - cfg.warmup_epochs, 0.0) / span, 1.0)
    return _cosine(1.0, cfg.min_lr_ratio, t)


def _cosine(start: float, end: float, t: float) -> float:
    """Half a cosine from ``start`` at ``t = 0`` to ``end`` at ``t = 1``."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def _onecycle_factor(cfg: TrainConfig, progress: float, steps_per_epoch: int | None) -> float:
    """``torch.optim.lr_scheduler.OneCycleLR``'s lr over ``max_lr`` (two phases, cosine), stateless.

    OneCycleLR's step ``s`` of ``T = epochs * steps_per_epoch`` goes from ``1 / onecycle_div`` at
    ``s = 0`` up to 1 at ``s = pct_start * T - 1``, then down to
    ``1 / (onecycle_div * onecycle_final_div)`` at ``s = T - 1``, each phase half a cosine in
    ``s``. Here ``s = progress * steps_per_epoch``, so the phases end one step (``1 /
    steps_per_epoch`` epochs; none without ``steps_per_epoch``) before ``pct_start * epochs`` and
    ``epochs``. Where the first phase is a single step, OneCycleLR divides by zero; this starts
    at the maximum.
    """
    step = 1.0 / steps_per_epoch if steps_per_epoch else 0.0
    initial = 1.0 / cfg.onecycle_div
    peak, end = cfg.pct_start * cfg.epochs - step, cfg.epochs - step
    if 0 < peak and progress <= peak:
        return _cosine(initial, 1.0, progress / peak)
    return _cosine(1.0, initial / cfg.onecycle_final_div, min((progress - peak) / (end - peak), 1.0))


def build_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = []
    for group in method.param_groups():
        group = dict(group)
        group["base_lr"] = cfg.lr * group.pop("lr_mult", 1.0)
        group["lr"] = group["base_lr"]
        groups += _split_1d(group) if cfg.no_decay_1d else [group]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt(groups, weight_decay=cfg.weight_decay)


def _split_1d(group: dict) -> list[dict]:
    """``group`` as its parameters of 2 or more dimensions and, with weight decay 0, the others."""
    params = list(group["params"])
    matrices = [p for p in params if p.ndim > 1]
    vectors = [p for p in params if p.ndim <= 1]
    out = [{**group, "params": matrices}] if matrices else []
    return out + ([{**group, "params": vectors, "weight_decay": 0.0}] if vectors else [])


def _autocast(cfg: TrainConfig, device: torch.device):
    mode = cfg.amp
    if mode == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        mode = "bf16" if cuda_bf16 else "off"
    if mode == "off":
        return nullcontext(), None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
    return torch.autocast(device.type, dtype=dtype), scaler


def evaluate_logits(
    model: nn.Module,
    source: torch.utils.data.Dataset,
    batch_size: int,
    device: torch.device,
    info: DistInfo | None = None,
    num_workers: int = 0,
) -> Tensor:
    """Logits ``(N, C)`` for every row of ``source``, in order (gathered across ranks)."""
    info = info or current_info()
    sampler = EpochBatchSampler(
        len(source), batch_size, shuffle=False, rank=info.rank, world_size=info.world_size,
        pad=False,
    )
    logits, index = [], []
    model.eval()
    with torch.inference_mode():
        for inputs, _, idx in batch_loader(source, sampler, num_workers):
            logits.append(model(inputs.to(device)).logits.float())
            index.append(idx.to(device))
    logits_t = gather_across_ranks(torch.cat(logits))
    index_t = gather_across_ranks(torch.cat(index))
    return logits_t[torch.argsort(index_t)].cpu()


def score_report(logits: Tensor, labels: np.ndarray, prefix: str = "") -> dict[str, float]:
    """mAP (non-interpolated and VOC-interpolated), CF1/OF1 at p >= 0.5 and top-3, as fractions;
    ``mAP_5pos``: the mAP over the ``classes_averaged_5pos`` classes with at least
    ``metrics.FEW_POSITIVES`` known positives (an AP over 1-4 positives is mostly noise)."""
    probs = torch.sigmoid(logits.double())
    per_class = metrics.average_precision(probs, labels)
    mean_ap = metrics.mean_of_class_aps(per_class, labels)
    frequent = metrics.mean_of_class_aps(per_class, labels, min_positives=metrics.FEW_POSITIVES)
    voc_ap = metrics.mean_average_precision(probs, labels, interpolation="voc")
    at_half = metrics.precision_recall_f1(probs, labels, threshold=0.5)
    top3 = metrics.precision_recall_f1(probs, labels, threshold=0.5, top_k=min(3, labels.shape[1]))
    report = {
        "mAP": mean_ap.value,
        "mAP_voc": voc_ap.value,
        "classes_averaged": mean_ap.num_classes_averaged,
        "mAP_5pos": frequent.value,
        "classes_averaged_5pos": frequent.num_classes_averaged,
        "CP": at_half.class_precision,
        "CR": at_half.class_recall,
        "CF1": at_half.class_f1,
        "OP": at_half.overall_precision,
        "OR": at_half.overall_recall,
        "OF1": at_half.overall_f1,
        "CF1_top3": top3.class_f1,
        "OF1_top3": top3.overall_f1,
    }
    return {f"{prefix}{k}": v for k, v in report.items()}


def metrics_log_records(path: Path, drop_torn_last: bool = True) -> list[tuple[str, dict]]:
    """``(line, record)`` of each line of a ``metrics.jsonl`` file. A damaged line is an error
    naming the file and line, except, with ``drop_torn_last``, a torn last line (a kill while it
    was written, before its epoch's checkpoint: a resume drops it)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append((line, json.loads(line)))
        except json.JSONDecodeError as err:
            if number < len(lines) or not drop_torn_last:
                raise ValueError(f"{path}:{number}: not a JSON record ({err}); delete "
                                 f"the damaged line or start the run again") from err
    return records


class _MetricsLog:
    """JSON-lines metrics file (and TensorBoard when installed), rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, resume_epoch: int) -> None:
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop lines of epochs that the resume will redo
            kept = [line for line, record in metrics_log_records(self.path)
                    if record.get("epoch", -1) < resume_epoch]
            self.path.write_text("".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
        except ImportError:
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with naming_errors(self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tb.add_scalar(key, value, record["epoch"])
            self.tb.flush()


def fit(
    method: Method,
    train: torch.utils.data.Dataset,
    val: torch.utils.data.Dataset | None,
    val_labels: np.ndarray | None,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train ``method`` on ``train`` and select the best epoch by validation mAP.

    Args:
        method: the model; moved to the configured device.
        train: batch source yielding ``(inputs, observed targets (B, C) int8, index)``.
        val: batch source for validation, or ``None`` to keep the last epoch.
        val_labels: ``(N_val, C)`` int8 ground truth the validation scores are compared with.
        cfg: optimisation settings.
        run_dir: checkpoints and ``metrics.jsonl`` go here.
        resume: continue from ``run_dir/checkpoints/last.json`` when present.
        on_epoch_end: called on rank 0 as ``(epoch, record)`` after each epoch.

    Returns:
        :class:`FitResult`. The best weights (the weight average with ``ema_decay`` and
        ``ema_eval``) are loaded into ``method`` on return.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = init_distributed(device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    method.to(device)
    if method.training_free:
        return _keep_untrained(method, val, val_labels, cfg, ckpt_dir, device, info)
    loop = _EpochLoop(method, train, cfg, device, info, last_checkpoint(ckpt_dir) if resume else None)
    state = loop.state
    start_epoch = state["epoch"] + 1
    log = _MetricsLog(run_dir, info.is_main, start_epoch)
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.patience and state["bad_evals"] >= cfg.patience:  # also after resuming a stopped run
            stopped_early = True
            break
        record = loop.train_epoch(epoch)
        improved = _validate(loop, val, val_labels, epoch, record, state)
        state["epoch"] = epoch
        state["history"].append(record)
        if info.is_main:  # the log line first: a resume redoes the epochs after the checkpoint
            log.write(record)
            loop.save(ckpt_dir, epoch, state, improved)
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
        barrier(info)
    load_checkpoint(ckpt_dir / "best", method, map_location=device)
    return FitResult(state["best_epoch"], state["best_val"], state["history"], stopped_early)


class _EpochLoop:
    """The moving parts of one :func:`fit`: the optimizer, the weight average, the training
    ``state`` (fresh, or of the checkpoint ``last`` the run resumes from), the (DDP-wrapped)
    model, the sampler and loader of the training batches, mixed precision."""

    def __init__(self, method: Method, train: torch.utils.data.Dataset, cfg: TrainConfig,
                 device: torch.device, info: DistInfo, last: Path | None) -> None:
        self.method, self.train, self.cfg, self.device, self.info = method, train, cfg, device, info
        self.optimizer = build_optimizer(method, cfg)
        self.ema = None if cfg.ema_decay is None else WeightEma(method, cfg.ema_decay)
        self.validated = self.ema if cfg.ema_eval else None  # the weights validated, kept in best/
        self.state = {"epoch": -1, "best_epoch": -1, "best_val": {}, "bad_evals": 0,
                      "history": []}
        if last is not None:  # before DDP wraps the method: it starts from rank 0's weights
            self.state = self._resume_from(last)
        self.model: nn.Module = method
        if info.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                method,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=method.has_unused_parameters,
            )
        self.sampler = EpochBatchSampler(
            len(train), cfg.batch_size, shuffle=True, seed=cfg.seed, rank=info.rank,
            world_size=info.world_size,
        )
        self.loader = batch_loader(train, self.sampler, cfg.num_workers,
                                   pin_memory=device.type == "cuda")
        self.autocast, self.scaler = _autocast(cfg, device)

    def _resume_from(self, last: Path) -> dict:
        """Load the weights, optimizer and weight average of checkpoint ``last``; its state."""
        state = load_checkpoint(last, self.method, self.optimizer, map_location=self.device)
        state.pop("optimizer", None)
        if self.ema is not None:
            self.ema.load(load_ema(last, map_location=self.device))
        return state

    def train_batches(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The training rows in order, unshuffled, on the device (for ``on_train_epoch_start``)."""
        ordered = EpochBatchSampler(len(self.train), self.cfg.eval_batch_size, shuffle=False,
                                    pad=False)
        for inputs, targets, idx in batch_loader(self.train, ordered, self.cfg.num_workers):
            yield inputs.to(self.device), targets.to(self.device), idx.to(self.device)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training batches; the epoch's record (lr, seconds, mean losses)."""
        cfg, steps = self.cfg, len(self.sampler)
        seed_everything(cfg.seed * 100_003 + epoch)
        self.sampler.set_epoch(epoch)
        self.method.on_train_epoch_start(epoch, self.train_batches, cfg.epochs)
        self.model.train()
        totals: dict[str, float] = {}
        seen, started = 0, time.perf_counter()
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and self.info.is_main))
        for step, batch in enumerate(bar):
            logs = self.step(StepInfo(epoch, step, steps, cfg.epochs), batch)
            seen += len(batch[2])
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value
            rate = seen * self.info.world_size / (time.perf_counter() - started)
            bar.set_postfix(loss=f"{totals['loss'] / (step + 1):.4f}", img_s=f"{rate:.0f}")
        record = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"],
                  "epoch_seconds": time.perf_counter() - started}
        record.update({f"train_{k}": v / max(steps, 1) for k, v in totals.items()})
        if self.ema is not None:
            self.ema.broadcast(self.info)
        return record

    def step(self, where: StepInfo, batch: tuple[Tensor, Tensor, Tensor]) -> dict[str, float]:
        """One optimisation step on ``batch`` ``(inputs, targets, index)``; the loss and the
        method's logs."""
        cfg, optimizer, scaler = self.cfg, self.optimizer, self.scaler
        factor = lr_factor(cfg, where.epoch + where.epoch_fraction, where.steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        inputs, targets, idx = (t.to(self.device) for t in batch)
        with self.autocast:
            out = self.model(inputs, targets, idx, where)
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.float()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {where.epoch}, step {where.step}; lower "
                f"train.lr or set train.grad_clip"
            )
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.method.parameters(), cfg.grad_clip)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if self.ema is not None:
            self.ema.update(self.method)
        return {"loss": loss.item(), **out.logs}

    def save(self, ckpt_dir: Path, epoch: int, state: dict, improved: bool) -> None:
        """The epoch's checkpoint (weights, optimizer, weight average), and ``best`` (the
        validated weights) when the epoch improved."""
        if improved:
            save_checkpoint(ckpt_dir, "best", self.validated.state if self.validated else
                            self.method, None, state, make_last=False)
        save_checkpoint(ckpt_dir, f"epoch-{epoch:04d}", self.method, self.optimizer, state,
                        ema=None if self.ema is None else self.ema.state)


def _validate(loop: _EpochLoop, val: torch.utils.data.Dataset | None,
              val_labels: np.ndarray | None, epoch: int, record: dict, state: dict) -> bool:
    """Score the validation split when due (into ``record``), update the best epoch and the
    patience count in ``state``; whether the epoch is the best so far (always, without ``val``)."""
    cfg = loop.cfg
    improved = val is None
    if val is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
        with loop.validated.applied(loop.method) if loop.validated else nullcontext():
            logits = evaluate_logits(loop.model, val, cfg.eval_batch_size, loop.device,
                                     loop.info, cfg.num_workers)
        report = score_report(logits, val_labels, prefix="val_")
        record.update(report)
        improved = state["best_epoch"] < 0 or report["val_mAP"] > state["best_val"]["val_mAP"]
        state["bad_evals"] = 0 if improved else state["bad_evals"] + 1
    if improved:
        state["best_epoch"] = epoch
        state["best_val"] = {k: v for k, v in record.items() if k.startswith("val_")}
    return improved


def _keep_untrained(method: Method, val: torch.utils.data.Dataset | None,
                    val_labels: np.ndarray | None, cfg: TrainConfig, ckpt_dir: Path,
                    device: torch.device, info) -> FitResult:
    """A training-free method (``Method.training_free``): validated once, saved as ``best``
    (epoch -1, no optimizer), no training loop."""
    record: dict = {"epoch": -1}
    if val is not None:
        logits = evaluate_logits(method, val, cfg.eval_batch_size, device, info, cfg.num_workers)
        record.update(score_report(logits, val_labels, prefix="val_"))
    state = {"epoch": -1, "best_epoch": -1, "bad_evals": 0, "history": [record],
             "best_val": {k: v for k, v in record.items() if k.startswith("val_")}}
    if info.is_main:
        _MetricsLog(ckpt_dir.parent, True, 0).write(record)
        save_checkpoint(ckpt_dir, "best", method, None, state, make_last=False)
    barrier(info)
    return FitResult(-1, state["best_val"], [record], False)
