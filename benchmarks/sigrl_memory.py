"""Peak memory and time of SigRL's GZSL scoring: chunked decoupling and SVFR vs the direct form.

The released decoupling and SVFR materialise ``(B, C, P, E)`` tensors: at NUS-WIDE's GZSL size
(B = 32 images, C = 1,006 classes, P = 196 tokens, E = 512) each one holds 3.2e9 floats, 13 GB.
mlrkit's :class:`~mlrkit.methods.sigrl.SigRL` computes them ``class_chunk`` classes at a time (and
its GATv2 ``node_chunk`` target nodes at a time), so the peak does not grow with C.

Measured (eval mode, ``torch.no_grad()``, the whole head on ``(B, E, 14, 14)`` inputs, no
distillation teacher): the chunked head at every class count of ``--classes`` and at 1,006; the
direct form (``direct=True``) at the class counts that fit in this machine's memory
(``--direct-classes``). Each (variant, classes) runs in a fresh subprocess; the peak is measured
as in ``benchmarks/decoupling_memory.py`` (CPU ``ru_maxrss`` minus the resident set before the
run, glibc's mmap threshold fixed at 64 KiB; CUDA ``max_memory_allocated``), the time (median of
``--repeats``) in another fresh subprocess with glibc's default settings. The direct form's peak at
1,006 classes, which cannot run here, is extrapolated from a least-squares line through its
measured peaks (it grows linearly with C) and marked as such.

Printed last: ``sigrl_outputs_equal=`` (chunked vs direct scores at the largest direct class
count, 1e-5), ``sigrl_peak_mib=`` (chunked, 1,006 classes), ``sigrl_memory_ratio_measured_C=``
(direct / chunked at the largest class count C where both ran) and ``sigrl_memory_ratio=``
(extrapolated direct / measured chunked, 1,006 classes). Also written to ``<out-dir>/sigrl_memory.md`` and ``.json``.

    python benchmarks/sigrl_memory.py            # B 32, P 196, E 512, 1,006 classes
    python benchmarks/sigrl_memory.py --quick --out-dir /tmp/sigrl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from decoupling_memory import fresh_worker, peak_and_time, peak_then_time

from mlrkit.methods import TaskSpec, create_method

MIB = 2**20
GZSL_CLASSES = 1006
QUICK = {"batch": 2, "side": 4, "dim": 32, "classes": [8], "direct_classes": [4, 8],
         "repeats": 1}


def build(args: argparse.Namespace, classes: int) -> torch.nn.Module:
    """The SigRL head for ``classes`` label embeddings (random unit vectors, seed 0)."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(
        torch.randn(classes, args.dim, generator=generator), dim=-1)
    spec = TaskSpec(classes, (args.dim, args.side, args.side),
                    np.zeros((1, classes), dtype=np.int8), embeddings)
    torch.manual_seed(0)
    return create_method("sigrl", spec, distill_weight=0.0,
                         class_chunk=args.class_chunk).eval().to(args.device)


def inputs(args: argparse.Namespace) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(args.batch, args.dim, args.side, args.side, generator=generator).to(
        args.device)


def measure(args: argparse.Namespace, direct: bool, classes: int) -> dict:
    device = torch.device(args.device)
    model, x = build(args, classes), inputs(args)

    def run(batch: torch.Tensor) -> None:
        with torch.no_grad():
            model(batch, direct=direct)

    return peak_and_time(model, lambda: run(x), lambda: run(x[:1]), device, args.repeats)


def check(args: argparse.Namespace, classes: int) -> dict:
    model, x = build(args, classes), inputs(args)
    with torch.no_grad():
        ours, direct = model(x).logits, model(x, direct=True).logits
    return {"max_difference": float((ours - direct).abs().max()),
            "equal": bool(torch.allclose(ours, direct, atol=1e-5, rtol=1e-5))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--side", type=int, default=14, help="tokens: side x side")
    parser.add_argument("--dim", type=int, default=512, help="E (= input channels)")
    parser.add_argument("--classes", type=int, nargs="+", default=[16, 64, 256],
                        help="class counts for the chunked head (1,006 is always added)")
    parser.add_argument("--direct-classes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--class-chunk", type=int, default=4, help="the head's default: 4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes: " + json.dumps(QUICK))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.worker:
        task = json.loads(args.worker)
        result = check(args, task[1]) if task[0] == "check" else measure(args, *task)
        print(json.dumps(result))
        return

    header = (f"SigRL GZSL scoring: B={args.batch} P={args.side ** 2} E={args.dim} "
              f"class_chunk={args.class_chunk} device={args.device} "
              f"threads={torch.get_num_threads()}")
    print(header)
    largest_direct = max(args.direct_classes)
    checked = fresh_worker(__file__, ["check", largest_direct])
    print(f"chunked vs direct at C={largest_direct}: max |difference| "
          f"{checked['max_difference']:.3g} -> {'ok' if checked['equal'] else 'DIFFERENT'}")
    final = GZSL_CLASSES if not args.quick else max(args.classes)
    plan = [(False, c) for c in sorted({*args.classes, *args.direct_classes, final})]
    plan += [(True, c) for c in sorted(args.direct_classes)]
    records = []
    for direct, classes in plan:
        result = peak_then_time(__file__, [direct, classes])
        record = {"variant": "direct" if direct else "mlrkit", "classes": classes,
                  "peak_MiB": result["peak"] / MIB, "exact": result["exact"],
                  "time_s": result["time"]}
        records.append(record)
        print(f"{record['variant']:<8} C={classes:<5} peak {record['peak_MiB']:9.1f} MiB"
              f"{'' if record['exact'] else '*'}  time {record['time_s']:.3f} s", flush=True)
    ours = {r["classes"]: r for r in records if r["variant"] == "mlrkit"}
    direct = {r["classes"]: r for r in records if r["variant"] == "direct"}
    counts = sorted(direct)
    slope, intercept = np.polyfit(counts, [direct[c]["peak_MiB"] for c in counts], 1)
    direct_final = slope * final + intercept
    ratio = direct[largest_direct]["peak_MiB"] / ours[largest_direct]["peak_MiB"]
    ratio_final = direct_final / ours[final]["peak_MiB"]
    key_lines = [f"sigrl_outputs_equal={checked['equal']}",
                 f"sigrl_peak_mib={ours[final]['peak_MiB']:.1f}",
                 f"sigrl_memory_ratio_measured_{largest_direct}={ratio:.2f}",
                 f"sigrl_memory_ratio={ratio_final:.2f}"]

    from recipe_grid import ROOT, markdown_table, write_result  # after the workers (ru_maxrss)

    out_dir = args.out_dir or (Path(tempfile.gettempdir()) / "mlrkit-benchmarks" if args.quick
                               else ROOT / "benchmarks" / "results")
    rows = [[r["variant"], str(r["classes"]), f"{r['peak_MiB']:.1f}{'' if r['exact'] else '*'}",
             f"{r['time_s']:.3f}"] for r in records]
    rows.append(["direct (extrapolated)", str(final), f"{direct_final:.1f}", "-"])
    body = [
        ("Eval mode under `torch.no_grad()`, the whole SigRL head (GATv2, decoupling, text "
         "mixing, SVFR, local + global scores), no distillation teacher. Peak: extra resident "
         "memory of one forward pass after a batch-1 warm-up, each in a fresh process "
         "(`MALLOC_MMAP_THRESHOLD_=65536`); time: median in another fresh process with glibc's "
         "defaults. `*`: an upper bound. The direct form at 1,006 classes does not fit in this "
         "machine's 24 GiB: its peak is the least-squares line through its measured peaks."),
        "",
        header,
        "",
        (f"Chunked vs direct scores at C={largest_direct}: max |difference| "
         f"{checked['max_difference']:.3g} "
         f"({'equal' if checked['equal'] else 'DIFFERENT'} to 1e-5)"),
        "",
        *markdown_table(["variant", "classes", "peak MiB", "time s"], rows),
        "",
        *key_lines,
    ]
    data = {"batch": args.batch, "tokens": args.side ** 2, "dim": args.dim,
            "class_chunk": args.class_chunk, "device": args.device, "check": checked,
            "records": records, "direct_extrapolated_MiB": {str(final): direct_final},
            f"sigrl_memory_ratio_measured_{largest_direct}": ratio, "sigrl_memory_ratio": ratio_final,
            "sigrl_peak_mib": ours[final]["peak_MiB"]}
    write_result(out_dir, "sigrl_memory", "SigRL GZSL scoring: peak memory, chunked vs direct",
                 body, data)
    print(f"wrote {out_dir / 'sigrl_memory.md'} and .json")
    for line in key_lines:
        print(line)


if __name__ == "__main__":
    main()
