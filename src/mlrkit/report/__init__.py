"""``mlrkit report``: pictures of finished runs in one self-contained HTML file.

    from mlrkit.report import build_report
    build_report(["runs/linear_voc2007_partial"], "report.html")

Per run: the recipe and mask statistics, the training curves with the selected epoch, per-class
test AP, precision-recall curves of the best and worst classes, the predicted label co-occurrence
next to the true one and, where the mask hid training labels, the recovered labels' precision and
recall against the threshold; with several runs a comparison table and chart (see
``docs/report.md``). Modules: :mod:`~mlrkit.report.runs` reads a run folder,
:mod:`~mlrkit.report.figures` draws, :mod:`~mlrkit.report.html` assembles the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlrkit.atomic import atomic_write
from mlrkit.report.html import render
from mlrkit.report.runs import check_run_folder, read_run


def build_report(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the report of the run folders ``run_dirs`` to the HTML file ``out``, atomically;
    returns ``out``.

    Raises:
        ValueError: no run folder given, or one is not a finished run folder (the message names
            the path and what to do).
    """
    if not run_dirs:
        raise ValueError("no run folder given; give one or more folders that 'mlrkit train' wrote")
    for run_dir in run_dirs:  # every folder is checked before the first one is scored
        check_run_folder(Path(run_dir))
    page = render([read_run(run_dir) for run_dir in run_dirs])
    out = Path(out)
    with atomic_write(out, "w") as f:
        f.write(page)
    return out
