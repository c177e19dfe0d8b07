"""How long the ``mlrkit`` command takes to answer: fresh processes, median of ``--repeats``.

- ``help``: ``mlrkit --help`` (no torch import);
- ``tag``: ``mlrkit tag PHOTO --labels "cat, dog, sofa"`` (ConSE; the label and ImageNet-name
  embeddings and the classifier frozen to ONNX, :mod:`mlrkit.encoders.frozen`, come from the
  on-disk cache, filled by a first, untimed call);
- ``predict``: ``mlrkit predict --checkpoint RUN PHOTO`` with a linear head trained on cached
  EfficientNet-Lite0 features of VOC 2007 (the 10%-known recipe of ``calibration.py``; trained or
  reused first, untimed);
- the floor under both: ``python -c "import torch"`` and ``"import torch, onnxruntime"``, and
  what building the encoder in torch would add, ``"import torch, timm"`` (timm imports
  torchvision, whose ops import ``torch._dynamo``), and ``tag`` with ``MLRKIT_FROZEN=0``.

Each figure is wall time of a new process from start to exit, on VOC 2007 photo 000077 (a cat).

    python benchmarks/startup.py [--repeats 5]

Writes ``benchmarks/results/startup.md`` and ``.json``; the table ends with the lines
``startup_help_s=``, ``startup_tag_s=`` and ``startup_predict_s=``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from recipe_grid import ROOT, markdown_table, run_recipe, write_result

PHOTO = ROOT.parent / "shared" / "data" / "voc2007" / "VOCdevkit" / "VOC2007" / "JPEGImages" / \
    "000077.jpg"
MLRKIT = [sys.executable, "-m", "mlrkit.cli"]


def wall_times(command: list[str], repeats: int) -> list[float]:
    """Seconds of ``repeats`` fresh runs of ``command`` (after one untimed warm-up run that
    fills the caches); a failing run stops the benchmark with its error."""
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    run = run_recipe("linear_voc2007_partial", ["protocol.known=0.1"],
                     ROOT / "runs" / "bench" / "calibration")["run_dir"]
    commands = {
        "help": [*MLRKIT, "--help"],
        "tag": [*MLRKIT, "tag", str(PHOTO), "--labels", "cat, dog, sofa", "--no-progress"],
        "predict": [*MLRKIT, "predict", "--checkpoint", str(run), str(PHOTO)],
        # the floor of any command that runs a model: the libraries it cannot do without
        "import_torch": [sys.executable, "-c", "import torch"],
        "import_torch_onnxruntime": [sys.executable, "-c", "import torch, onnxruntime"],
        "import_torch_timm": [sys.executable, "-c", "import torch, timm"],
        "tag_unfrozen": ["env", "MLRKIT_FROZEN=0", *MLRKIT, "tag", str(PHOTO), "--labels",
                         "cat, dog, sofa", "--no-progress"],
    }
    load = os.getloadavg()[0]
    rows, data = [], {}
    for name, command in commands.items():
        times = wall_times(command, args.repeats)
        median = statistics.median(times)
        shown = " ".join(["mlrkit", *command[3:]] if command[:3] == MLRKIT else
                         ["MLRKIT_FROZEN=0 mlrkit", *command[5:]] if command[0] == "env" else
                         ["python", *command[1:]])
        data[name] = {"median_s": median, "times_s": times, "command": shown}
        rows.append([name, f"{median:.2f}", " ".join(f"{t:.2f}" for t in times),
                     f"`{shown[:60]}`"])
        print(f"{name}: median {median:.2f} s", flush=True)
    body = [
        (f"Wall time of fresh `mlrkit` processes, median of {args.repeats} after one untimed run "
        "(caches filled: label embeddings, feature extractor weights, the encoders frozen to ONNX). The machine's load at the "
        f"time moves these figures: rerun on a quiet machine to compare (1-minute load average "
        f"at the start: {load:.2f} on {os.cpu_count()} cores)."),
        "",
        *markdown_table(["command", "median s", "runs s", "what"], rows),
        "",
        *(f"startup_{name}_s={data[name]['median_s']:.2f}" for name in ("help", "tag", "predict")),
    ]
    print(write_result(ROOT / "benchmarks" / "results", "startup",
                       "Start-up time of the mlrkit command", body, data))


if __name__ == "__main__":
    main()
