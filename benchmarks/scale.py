"""Past one machine's memory: the sparse label store, one training epoch of a linear head and a
full evaluation on an OpenImages-sized synthetic collection, each stage in a fresh process.

The collection: ``N`` images x ``C`` classes (default 10,000), random features (``--dim``, float16
on disk, memory-mapped) and OpenImages-like labels: each image gets ``1 + Poisson(7)`` draws of
classes from a power law (class ``c`` drawn with probability proportional to ``1 / (c + 1)``;
repeats collapse, ~7.5 known labels per image), each known label positive with probability 0.5.

Stages (``docs/scaling.md``):

- ``store``: the entries drawn a chunk of images at a time, then
  ``SparseLabels.from_entries`` and ``save`` (what a reader of OpenImages' CSV does after parsing);
- ``epoch``: one epoch of the ``linear`` head (partial BCE over the known entries) on
  ``SparseFeatureBatches``, batch 1,024, AdamW;
- ``eval``: the logits of every image, batch 4,096, kept at the known entries only
  (``metrics.KnownEntryScores``), then mAP and CF1 / OF1 (never an ``(N, C)`` array).

Each stage reports its wall time and its peak resident memory (``ru_maxrss``). Memory per image
is the growth of the peak between two sizes divided by the images added (a batch buffer or the
imports cost the same at every size and cancel): it must stay flat as ``N`` grows, i.e. the same
from 100k to 500k as from 500k to 1M (within 20%).

    python benchmarks/scale.py [--sizes 100000 500000 1000000] [--classes 10000]

Writes ``benchmarks/results/scale.md`` / ``.json``; the table ends with ``label_store_peak_gib_1m=``
and ``eval_peak_gib_1m=`` (the 1M run's peaks; bar 4 and 6 GiB).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GIB = 1024**3
CHUNK = 100_000


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def draw_entries(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenImages-like known entries (module docstring), drawn ``CHUNK`` images at a time."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, classes + 1)
    cumulative = np.cumsum(weights / weights.sum())
    keys = []
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        draws = 1 + rng.poisson(7, size=count)
        images = np.repeat(np.arange(start, start + count, dtype=np.int64), draws)
        picked = np.searchsorted(cumulative, rng.random(len(images)))
        keys.append(np.unique(images * classes + np.minimum(picked, classes - 1)))
    key = np.concatenate(keys)
    values = (rng.random(len(key)) < 0.5).astype(np.int8)
    return key // classes, key % classes, values


def stage_store(args: argparse.Namespace) -> dict:
    from mlrkit.data.sparse_labels import SparseLabels

    images, classes, values = draw_entries(args.n, args.classes, seed=0)
    store = SparseLabels.from_entries(images, classes, values, num_images=args.n,
                                      num_classes=args.classes)
    del images, classes, values
    store.save(args.work / "labels")
    return {"known": store.nnz}


def features(args: argparse.Namespace) -> np.ndarray:
    """The ``(N, dim)`` float16 features, written once in chunks, memory-mapped."""
    path = args.work / f"features-{args.dim}.npy"
    if not path.is_file():
        rng = np.random.default_rng(1)
        out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+",
                                        dtype=np.float16, shape=(args.n, args.dim))
        for start in range(0, args.n, CHUNK):
            out[start : start + CHUNK] = rng.normal(size=(min(CHUNK, args.n - start), args.dim))
        out.flush()
        del out
        path.with_suffix(".tmp.npy").rename(path)
    return np.load(path, mmap_mode="r")


def stage_epoch(args: argparse.Namespace) -> dict:
    import torch

    from mlrkit.data.sparse_labels import SparseLabels
    from mlrkit.engine.batches import SparseFeatureBatches
    from mlrkit.methods import TaskSpec, create_method

    labels = SparseLabels.load(args.work / "labels")
    source = SparseFeatureBatches(features(args), labels)
    torch.manual_seed(0)
    head = create_method("linear", TaskSpec(args.classes, (args.dim,), labels))
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3)
    order = np.random.default_rng(0).permutation(args.n)
    started, losses = time.perf_counter(), []
    for batch in np.array_split(order, max(1, args.n // 1024)):
        inputs, targets, index = source[np.sort(batch)]
        loss = head(inputs, targets, index).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    torch.save(head.state_dict(), args.work / "head.pt")
    return {"train_seconds": time.perf_counter() - started, "last_loss": losses[-1]}


def stage_eval(args: argparse.Namespace) -> dict:
    import torch

    from mlrkit import metrics
    from mlrkit.data.sparse_labels import SparseLabels
    from mlrkit.methods import TaskSpec, create_method

    labels = SparseLabels.load(args.work / "labels")
    feats = features(args)
    head = create_method("linear", TaskSpec(args.classes, (args.dim,), labels))
    head.load_state_dict(torch.load(args.work / "head.pt", weights_only=True))
    head.eval()
    known = metrics.KnownEntryScores(labels)
    with torch.inference_mode():
        for start in range(0, args.n, 4096):
            rows = np.arange(start, min(start + 4096, args.n))
            known.update(rows, head(torch.from_numpy(np.asarray(feats[rows], np.float32))).logits)
    result = known.mean_average_precision()
    f1 = known.precision_recall_f1(threshold=0.0)
    return {"mAP": result.value, "classes_averaged": result.num_classes_averaged,
            "CF1": f1.class_f1, "OF1": f1.overall_f1}


STAGES = {"store": stage_store, "epoch": stage_epoch, "eval": stage_eval}


def run_stage(args: argparse.Namespace) -> None:
    """One stage in this (fresh) process: its figures as one JSON line on stdout."""
    import torch  # noqa: F401 (every stage's floor: what the baseline includes)

    import mlrkit.metrics  # noqa: F401

    baseline = current_bytes()
    started = time.perf_counter()
    figures = STAGES[args.stage](args)
    figures.update(seconds=time.perf_counter() - started, peak_bytes=peak_bytes(),
                   baseline_bytes=baseline)
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 500_000, 1_000_000])
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("runs/bench/scale"))
    parser.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        run_stage(args)
        return
    from recipe_grid import ROOT, markdown_table, write_result

    rows, data = [], {}
    for n in args.sizes:
        work = (ROOT / args.work if not args.work.is_absolute() else args.work) / f"n{n}"
        for stage in STAGES:
            command = [sys.executable, __file__, "--stage", stage, "--n", str(n), "--classes",
                       str(args.classes), "--dim", str(args.dim), "--work", str(work)]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            data[f"{n} {stage}"] = figures
            rows.append([f"{n:,}", stage, f"{figures['seconds']:.1f}",
                         f"{figures['peak_bytes'] / GIB:.2f}",
                         ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in figures.items()
                                   if k not in ("seconds", "peak_bytes", "baseline_bytes"))])
            print(rows[-1], flush=True)
    body = [
        (f"Synthetic collection: {args.classes:,} classes, {args.dim}-d float16 features, "
         "OpenImages-like labels (power-law classes, ~7.5 known per image). Each stage in a fresh "
         "process; peak = its peak resident memory. The machine's load moves the seconds, not "
         "the memory."),
        "",
        *markdown_table(["images", "stage", "seconds", "peak GiB", "figures"], rows),
        "",
        ("Memory per image: the growth of each stage's peak between consecutive sizes, per "
         "image added (bytes); flat when the ratio of the last to the first is within 0.8 .. 1.2."),
        "",
    ]
    sizes = sorted(args.sizes)
    growth = {stage: [(data[f"{b} {stage}"]["peak_bytes"] - data[f"{a} {stage}"]["peak_bytes"])
                      / (b - a) for a, b in itertools.pairwise(sizes)]
              for stage in STAGES}
    data["bytes_per_image_added"] = growth
    if len(sizes) > 1:
        spans = [f"{a:,} -> {b:,}" for a, b in itertools.pairwise(sizes)]
        body += [*markdown_table(["stage", *spans, "last / first"], [
            [stage, *[f"{g:.0f}" for g in steps], f"{steps[-1] / steps[0]:.2f}"]
            for stage, steps in growth.items()]), ""]
    million = 1_000_000
    if million in args.sizes:
        body += [f"label_store_peak_gib_1m={data[f'{million} store']['peak_bytes'] / GIB:.2f}",
                 f"eval_peak_gib_1m={data[f'{million} eval']['peak_bytes'] / GIB:.2f}"]
    if len(sizes) > 2:
        body += [f"memory_per_image_ratio_{stage}={steps[-1] / steps[0]:.2f}"
                 for stage, steps in growth.items()]
    print(write_result(ROOT / "benchmarks" / "results", "scale",
                       "Scale: sparse labels, one epoch and evaluation without (N, C) arrays",
                       body, data))


if __name__ == "__main__":
    main()
