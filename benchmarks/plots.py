"""Plots of the accuracy benchmarks, drawn from their JSON results into PNGs beside them.

- :func:`plot_partial_labels`: test mAP against the known-label proportion, one line per method
  with its ± std band over the training seeds; a method run at one proportion only (an ablation)
  is a point with an error bar; the full-label runs are the points at "full".
- :func:`plot_single_positive`: test mAP of each single-positive loss as a bar (± std), the
  full-label run as a dashed line (the upper bound).
- :func:`plot_zero_shot`: ZSL and GZSL test mAP of each method as paired bars (± std), one panel
  per class split.

``partial_labels.py``, ``single_positive.py`` and ``zero_shot.py`` call them after writing their
JSON; ``python benchmarks/plots.py`` redraws the three VOC 2007 plots from the JSON files in
``benchmarks/results/``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from mlrkit.atomic import atomic_write
from mlrkit.report.figures import png

RESULTS = Path(__file__).resolve().parent / "results"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of fractions, in percent."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return 100 * statistics.fmean(values), 100 * spread


def partial_labels_figure(data: dict) -> Figure:
    """``data``: the ``results`` of ``partial_labels_<dataset>.json`` (``{"results": {method:
    {proportion: {"runs": [...]}}}, "full_labels": {method: {"runs": [...]}}}``)."""
    fig = Figure(figsize=(9, 5.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    colours = iter(colormaps["tab10"].colors)
    full_x, single = 100.0, 0
    for method, by_known in data["results"].items():
        colour = next(colours)
        knowns = sorted(by_known, key=float)
        x = np.array([100 * float(k) for k in knowns])
        stats = np.array([mean_std([r["test_mAP"] for r in by_known[k]["runs"]]) for k in knowns])
        if len(knowns) > 1:
            ax.plot(x, stats[:, 0], marker="o", markersize=4, color=colour, label=method)
            ax.fill_between(x, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1],
                            color=colour, alpha=0.2, linewidth=0)
        else:  # side by side, right of the lines' point
            single += 1
            ax.errorbar(x + 1.2 * single, stats[:, 0], yerr=stats[:, 1], fmt="s", color=colour,
                        capsize=3, label=f"{method} (at {knowns[0]} only)")
        if method in data.get("full_labels", {}):
            mean, std = mean_std([r["test_mAP"] for r in data["full_labels"][method]["runs"]])
            ax.errorbar([full_x], [mean], yerr=[std], fmt="*", markersize=10, color=colour,
                        capsize=3)
    ticks = sorted({100 * float(k) for by_known in data["results"].values() for k in by_known})
    ax.set_xticks([*ticks, full_x], [f"{t:g}%" for t in ticks] + ["full"])
    ax.set(xlabel="known labels in the training split (stars: every label known)",
           ylabel="test mAP (%)", title="Partial labels: test mAP (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2, loc="lower right")
    return fig


def single_positive_figure(data: dict) -> Figure:
    """``data``: the ``results`` of ``single_positive_<dataset>.json`` (``{loss: {"runs":
    [...]}}``; the loss ``full`` trained on every label)."""
    losses = [loss for loss in data if loss != "full"]
    stats = np.array([mean_std([r["test_mAP"] for r in data[loss]["runs"]]) for loss in losses])
    fig = Figure(figsize=(9, 4.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    rows = np.arange(len(losses))
    ax.bar(rows, stats[:, 0], yerr=stats[:, 1], color="tab:blue", capsize=3)
    for row, (mean, _) in zip(rows, stats, strict=True):
        ax.text(row, mean + 1, f"{mean:.1f}", ha="center", fontsize="small")
    if "full" in data:
        bound, std = mean_std([r["test_mAP"] for r in data["full"]["runs"]])
        ax.axhline(bound, color="tab:red", linestyle="--",
                   label=f"full labels {bound:.1f} ± {std:.1f}")
        ax.legend(loc="lower right")
    ax.set_xticks(rows, losses, rotation=30)
    ax.set(ylabel="test mAP (%)", ylim=(0, 100),
           title="Single positive label: test mAP per loss (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def zero_shot_figure(data: dict) -> Figure:
    """``data``: the ``results`` of ``zero_shot_voc2007.json`` (``{"splits": {split: {"methods":
    {method: {"summary": {"zsl_mAP": {"values": [...]}, "gzsl_mAP": ...}}}}}}``)."""
    splits = data["splits"]
    fig = Figure(figsize=(11, 4.2 * len(splits)), dpi=110, layout="constrained")
    panels = np.atleast_1d(fig.subplots(len(splits), 1))
    for ax, (split, entry) in zip(panels, splits.items(), strict=True):
        methods = list(entry["methods"])
        rows = np.arange(len(methods))
        for offset, column, colour in ((-0.2, "zsl_mAP", "tab:orange"),
                                       (0.2, "gzsl_mAP", "tab:blue")):
            stats = np.array([mean_std(entry["methods"][m]["summary"][column]["values"])
                              for m in methods])
            ax.bar(rows + offset, stats[:, 0], width=0.4, yerr=stats[:, 1], capsize=2,
                   color=colour, label=f"{column.split('_')[0].upper()} mAP")
        ax.set_xticks(rows, methods, rotation=25, ha="right")
        ax.set(ylabel="test mAP (%)", ylim=(0, 100),
               title=f"Zero-shot, split {split} (unseen: {', '.join(entry['unseen'])})")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left")
    return fig


def _plot(json_path: Path, draw) -> Path:
    """Draw ``json_path``'s ``results`` with ``draw`` into the PNG beside it; returns its path."""
    data = json.loads(Path(json_path).read_text(encoding="utf-8"))["results"]
    out = Path(json_path).with_suffix(".png")
    with atomic_write(out) as f:
        f.write(png(draw(data)))
    return out


def plot_partial_labels(json_path: Path) -> Path:
    """``partial_labels_<dataset>.png`` from its JSON (:func:`partial_labels_figure`)."""
    return _plot(json_path, partial_labels_figure)


def plot_single_positive(json_path: Path) -> Path:
    """``single_positive_<dataset>.png`` from its JSON (:func:`single_positive_figure`)."""
    return _plot(json_path, single_positive_figure)


def plot_zero_shot(json_path: Path) -> Path:
    """``zero_shot_voc2007.png`` from its JSON (:func:`zero_shot_figure`)."""
    return _plot(json_path, zero_shot_figure)


def main() -> None:
    """Redraw the three VOC 2007 plots from the JSON files in ``benchmarks/results/``."""
    for plot, stem in ((plot_partial_labels, "partial_labels_voc2007"),
                       (plot_single_positive, "single_positive_voc2007"),
                       (plot_zero_shot, "zero_shot_voc2007")):
        print(plot(RESULTS / f"{stem}.json"))


if __name__ == "__main__":
    main()
