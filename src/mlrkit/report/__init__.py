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


def build_report(run_dirs: Sequence[str | Path], out: str | Path,
                 overwrite: bool = False) -> Path:
    """Write the report of the run folders ``run_dirs`` to the HTML file ``out``, atomically;
    returns ``out``. ``out`` must be named ``.html``; an existing file is replaced only with
    ``overwrite`` (never one that is not HTML, such as a label file given by mistake).

    Raises:
        ValueError: no run folder given, or one is not a finished run folder (the message names
            the path and what to do), or ``out`` is not an ``.html`` name.
        FileExistsError: ``out`` exists and ``overwrite`` is not set, or it is not HTML.
    """
    if not run_dirs:
        raise ValueError("no run folder given; give one or more folders that 'mlrkit train' wrote")
    _check_html_out(Path(out), overwrite)
    for run_dir in run_dirs:  # every folder is checked before the first one is scored
        check_run_folder(Path(run_dir))
    page = render([read_run(run_dir) for run_dir in run_dirs])
    out = Path(out)
    with atomic_write(out, "w") as f:
        f.write(page)
    return out


def _check_html_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is not ``.html``, or an existing one without ``overwrite`` or that
    does not hold HTML."""
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {out}: the report is an HTML page; name it .html")
    if not out.exists():
        return
    head = out.read_bytes()[:512].lstrip().lower()
    if not head.startswith((b"<!doctype html", b"<html")):
        raise FileExistsError(f"--out {out}: exists and is not an HTML page; give another --out "
                              f"(nothing was written)")
    if not overwrite:
        raise FileExistsError(f"--out {out}: exists; add --overwrite to replace it, or give "
                              f"another --out")
