"""Peak memory and time of the semantic decoupling: chunked vs. fully materialised ("direct").

Each (path, mode) variant runs in a fresh subprocess, so one variant's allocator state cannot hide
another's peak. The peak is measured against a baseline taken after the model and inputs exist and
after a batch-1 warm-up of the same variant (lazy initialisation out of the way):

- CPU: ``ru_maxrss`` after the run minus the resident set size before it. If the run does not
  raise ``ru_maxrss`` above its earlier value the figure is only an upper bound (flagged ``*``).
  The workers run with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``): by
  default glibc raises the threshold up to 32 MiB after the first large free and serves later
  blocks from a heap that it does not give back, so the resident set would measure the
  allocator's fragmentation rather than the tensors alive at once.
- CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before the run.

Modes: ``forward`` runs under ``torch.no_grad()`` (inference); ``fwd+bwd`` runs the forward with
autograd and backpropagates a scalar through it (training). The last line printed is
``decoupling_memory_ratio=X.XX``: direct peak / chunked peak for ``fwd+bwd``.

The table, the ratios, that line, the command and the machine are also written to
``<out-dir>/decoupling_memory.md`` and ``.json`` (default ``benchmarks/results/``). For a smoke
test with small sizes (e.g. ``--batch 4 --dim 256 --repeats 1``) give another ``--out-dir``.

Usage: ``python benchmarks/decoupling_memory.py [--device cuda] [--class-chunks 8,16] [--out-dir DIR]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mlrkit.methods.base import TaskSpec
from mlrkit.methods.semantic_graph import SemanticGraphHead

MODES = ("forward", "fwd+bwd")
MIB = 2**20


def build(args: argparse.Namespace, class_chunk: int) -> SemanticGraphHead:
    """The head with ``image_dim = dim``, so the ``(B, dim, side, side)`` input is decoupled as is."""
    rng = np.random.default_rng(0)
    train_targets = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(64, args.classes))
    embeddings = torch.randn(args.classes, args.embed_dim)
    spec = TaskSpec(args.classes, (args.dim, args.side, args.side), train_targets, embeddings)
    return SemanticGraphHead(
        spec, image_dim=args.dim, inter_dim=args.inter_dim, class_chunk=class_chunk
    )


def run_once(head: SemanticGraphHead, inputs: torch.Tensor, direct: bool, mode: str) -> None:
    """One decoupling pass: ``forward`` without autograd, or ``fwd+bwd`` to the parameters."""
    if mode == "forward":
        with torch.no_grad():
            head.decouple(inputs, direct=direct)
        return
    head.zero_grad(set_to_none=True)
    head.decouple(inputs, direct=direct).square().mean().backward()


def resident_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``; else the peak so far)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * resource.getpagesize()
    return max_resident_bytes()


def max_resident_bytes() -> int:
    """``ru_maxrss`` in bytes (kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_and_time(model: torch.nn.Module, run: Callable[[], None], warm_up: Callable[[], None],
                  device: torch.device, repeats: int) -> dict:
    """Peak extra memory (bytes) of one ``run()`` after ``warm_up()`` (lazy initialisation, kernel
    selection), and the median time (s) of ``repeats`` more runs, in this process."""
    warm_up()
    model.zero_grad(set_to_none=True)
    gc.collect()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before, peak_before = resident_bytes(), max_resident_bytes()
    run()
    synchronize(device)
    if device.type == "cuda":
        peak, exact = torch.cuda.max_memory_allocated(device) - before, True
    else:
        peak_after = max_resident_bytes()
        peak, exact = peak_after - before, peak_after > peak_before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"peak": peak, "exact": exact, "time": statistics.median(times)}


def measure(args: argparse.Namespace, direct: bool, mode: str, class_chunk: int) -> dict:
    """Peak extra memory (bytes) and median time (s) of one variant, in this process."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    head = build(args, class_chunk).to(device)
    inputs = torch.randn(args.batch, args.dim, args.side, args.side, device=device)
    return peak_and_time(head, lambda: run_once(head, inputs, direct, mode),
                         lambda: run_once(head, inputs[:1], direct, mode), device, args.repeats)


def fresh_worker(script: str, task: list, fixed_mmap_threshold: bool = True) -> dict:
    """Run ``script`` again with its arguments plus ``--worker TASK`` in a fresh interpreter (so
    that its peak memory is its own) and return its last output line, read as JSON.

    ``fixed_mmap_threshold`` fixes glibc's mmap threshold at 64 KiB (see the module docstring),
    which the resident-set peak needs; it also makes every large allocation a fresh ``mmap`` with
    its page faults, so times are better taken without it (glibc's default, as users run).
    """
    command = [sys.executable, script, *sys.argv[1:], "--worker", json.dumps(task)]
    env = dict(os.environ)
    if fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(output.strip().splitlines()[-1])


def peak_then_time(script: str, task: list) -> dict:
    """``fresh_worker``'s result for ``task`` with its peak taken under the fixed mmap threshold
    and its time from a second worker with glibc's defaults."""
    result = fresh_worker(script, task)
    result["time"] = fresh_worker(script, task, fixed_mmap_threshold=False)["time"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--side", type=int, default=7, help="feature map is side x side")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--dim", type=int, default=1280, help="input channels = image_dim")
    parser.add_argument("--inter-dim", type=int, default=512)
    parser.add_argument("--embed-dim", type=int, default=300)
    parser.add_argument("--class-chunks", default="16", help="comma-separated chunk sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where decoupling_memory.md and .json go (default: benchmarks/results)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        direct, mode, class_chunk = json.loads(args.worker)
        print(json.dumps(measure(args, direct, mode, class_chunk)))
        return

    chunks = [int(c) for c in args.class_chunks.split(",")]
    header = (
        f"semantic decoupling: B={args.batch} P={args.side**2} C={args.classes} D={args.dim} "
        f"K={args.inter_dim} E={args.embed_dim} device={args.device} threads={torch.get_num_threads()}"
    )
    print(header)
    print(f"{'path':<14} {'mode':<8} {'peak MiB':>10} {'time s':>8}")
    peaks: dict[tuple[str, str], float] = {}
    records, rows = [], []
    for mode in MODES:
        variants = [(f"chunked({c})", False, c) for c in chunks] + [("direct", True, chunks[0])]
        for name, direct, class_chunk in variants:
            result = fresh_worker(__file__, [direct, mode, class_chunk])
            peaks[name, mode] = result["peak"]
            flag = "" if result["exact"] else "*"
            print(
                f"{name:<14} {mode:<8} {result['peak'] / MIB:>9.1f}{flag:1} {result['time']:>8.3f}"
            )
            records.append({"path": name, "mode": mode, "direct": direct,
                            "class_chunk": class_chunk, "peak_bytes": result["peak"],
                            "peak_MiB": result["peak"] / MIB, "exact": result["exact"],
                            "time_s": result["time"]})
            rows.append([name, mode, f"{result['peak'] / MIB:.1f}{flag}", f"{result['time']:.3f}"])
    ratios = {mode: peaks["direct", mode] / peaks[f"chunked({chunks[0]})", mode] for mode in MODES}
    ratio_lines = [f"direct / chunked({chunks[0]}) peak, {mode}: {ratio:.2f}"
                   for mode, ratio in ratios.items()]
    for line in ratio_lines:
        print(line)
    key_line = f"decoupling_memory_ratio={ratios['fwd+bwd']:.2f}"

    # Imported only now that every worker has run: a worker's ru_maxrss starts at this process's
    # peak resident set (Linux carries it over fork and exec), and recipe_grid's imports (the
    # training engine) add some 250 MiB, enough to turn the small CPU peaks into upper bounds.
    from recipe_grid import ROOT, markdown_table, write_result

    out_dir = args.out_dir if args.out_dir is not None else ROOT / "benchmarks" / "results"

    device = args.device
    if torch.device(device).type == "cuda":
        device += f" ({torch.cuda.get_device_name(torch.device(device))})"
    peak_source = ("`torch.cuda.max_memory_allocated()` minus `memory_allocated()` before the run"
                   if torch.device(args.device).type == "cuda" else
                   "CPU `ru_maxrss` after the run minus the resident set size before it "
                   "(`MALLOC_MMAP_THRESHOLD_=65536`)")
    body = [
        (f"Device {device}. Each (path, mode) runs in a fresh subprocess; peak extra memory: "
         f"{peak_source}, after a batch-1 warm-up. `*`: an upper bound (the run did not raise "
         f"`ru_maxrss`). Time: median of {args.repeats}. `forward` under `torch.no_grad()`, "
         "`fwd+bwd` backpropagates a scalar."),
        "",
        header,
        "",
        *markdown_table(["path", "mode", "peak MiB", "time s"], rows),
        "",
        *[f"- {line}" for line in ratio_lines],
        "",
        key_line,
    ]
    data = {
        "batch": args.batch, "side": args.side, "classes": args.classes, "dim": args.dim,
        "inter_dim": args.inter_dim, "embed_dim": args.embed_dim, "class_chunks": chunks,
        "repeats": args.repeats, "device": device, "torch_threads": torch.get_num_threads(),
        "variants": records, "direct_over_chunked_peak": ratios,
        "decoupling_memory_ratio": ratios["fwd+bwd"],
    }
    write_result(out_dir, "decoupling_memory",
                 "Semantic decoupling: peak memory, chunked vs fully materialised", body, data)
    print(f"wrote {out_dir / 'decoupling_memory.md'} and .json")
    print(key_line)


if __name__ == "__main__":
    main()
