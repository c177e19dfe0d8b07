"""The report page: one self-contained HTML file, figures embedded as base64 PNG data URIs, no
script. Every string read from a user's file (recipe, class and run names, paths) is escaped.

Section ids, for readers and tests: ``comparison`` (several runs), and per run ``run-<i>`` with
``run-<i>-recipe``, ``-curves``, ``-ap``, ``-pr``, ``-cooccurrence`` and, for a run with hidden
training labels, ``-recovery``.
"""

from __future__ import annotations

import base64
import statistics
from collections.abc import Sequence
from html import escape

import numpy as np
from matplotlib.figure import Figure

from mlrkit.report import figures
from mlrkit.report.runs import RunData, differing_settings, seed_groups

#: The classes drawn in each panel of the precision-recall figure.
PR_CLASSES = 3
#: The global thresholds of the recovery figure.
RECOVERY_THRESHOLDS = np.linspace(0.01, 0.99, 99)
#: The most differing recipe entries listed per group in the comparison table.
SHOWN_SETTINGS = 6
#: ``results.json`` figures of the comparison table, when any run has them.
COMPARED = ("val_mAP", "test_mAP_voc", "test_CF1", "test_OF1", "test_zsl_mAP", "test_gzsl_mAP")

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #aaa; margin-top: 2.5em; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; display: block;
        overflow-x: auto; max-width: 100%; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.comparison-table td:nth-child(-n+3), .comparison-table th:nth-child(-n+3) { text-align: left; }
.comparison-table td:nth-child(n+4) { white-space: nowrap; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
"""


def render(runs: Sequence[RunData]) -> str:
    """The whole page for ``runs``: the comparison (with several runs), then each run."""
    body = ["<h1>mlrkit report</h1>", _contents(runs)]
    if len(runs) > 1:
        body.append(_comparison(runs))
    body += [_run_section(i, run) for i, run in enumerate(runs, start=1)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>mlrkit report</title><link rel=\"icon\" href=\"data:,\">"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _image(fig: Figure, alt: str) -> str:
    """``<img>`` of ``fig`` as a PNG data URI."""
    data = base64.b64encode(figures.png(fig)).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str) -> str:
    """A table of escaped cells; ``css`` is its class."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    lines = ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    return f'<table class="{css}"><tr>{head}</tr>' + "".join(lines) + "</table>"


def _percent(value: float | None) -> str:
    """A fraction in percent with 2 decimals; ``-`` for none or NaN."""
    return "-" if value is None or np.isnan(value) else f"{100 * value:.2f}"


def _mean_std(values: Sequence[float]) -> str:
    """Fractions as ``mean ± std`` in percent (sample std), or the one value."""
    if len(values) == 1:
        return _percent(values[0])
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def _contents(runs: Sequence[RunData]) -> str:
    """The list of runs with links to their sections."""
    items = "".join(f'<li><a href="#run-{i}">{escape(run.name)}</a> '
                    f'<span class="note">{escape(str(run.run_dir))}</span></li>'
                    for i, run in enumerate(runs, start=1))
    extra = '<li><a href="#comparison">comparison</a></li>' if len(runs) > 1 else ""
    return f"<ul>{extra}{items}</ul>"


def _comparison(runs: Sequence[RunData]) -> str:
    """One table and one chart of the runs, grouped where they differ only by seed."""
    groups = seed_groups([run.recipe for run in runs])
    settings = differing_settings([runs[g[0]].recipe for g in groups])
    compared = [k for k in COMPARED if any(k in run.results for run in runs)]
    header = ["group", "runs", "differs in", "best epoch", "test mAP", *compared]
    rows, labels = [], []
    for number, (group, differs) in enumerate(zip(groups, settings, strict=True), start=1):
        members = [runs[i] for i in group]
        labels.append(f"G{number} {members[0].recipe.get('name', '?')} (n={len(group)})")
        cells = [_mean_std([r.results[k] for r in members]) if all(k in r.results
                 for r in members) else "-" for k in compared]
        rows.append([
            labels[-1], ", ".join(r.run_dir.name for r in members),
            _settings(differs),
            ", ".join(str(r.results.get("best_epoch", "-")) for r in members),
            _mean_std([r.mean_ap for r in members]), *cells,
        ])
    chart = figures.comparison(labels, [[runs[i].mean_ap for i in g] for g in groups])
    return ('<section id="comparison"><h2>Comparison</h2>'
            '<p class="note">Runs whose recipes are equal except for their seed fields form one '
            'group: mean ± standard deviation over its runs. Percent; test mAP is recomputed '
            'from the best checkpoints, the other columns come from results.json.</p>'
            + _table(header, rows, "comparison-table")
            + _image(chart, "test mAP per group") + "</section>")


def _settings(differs: dict) -> str:
    """``key=value; ...`` of a group's differing recipe entries that its recipe sets (not null),
    at most :data:`SHOWN_SETTINGS` of them."""
    items = [f"{k}={v}" for k, v in differs.items() if v is not None]
    more = len(items) - SHOWN_SETTINGS
    return "; ".join(items[:SHOWN_SETTINGS]) + (f"; (+{more} more)" if more > 0 else "") or "-"


def _run_section(index: int, run: RunData) -> str:
    """Every figure and table of one run."""
    anchor = f"run-{index}"
    parts = [f'<section class="run" id="{anchor}"><h2>{escape(run.name)}</h2>',
             f'<p class="note">{escape(str(run.run_dir))}</p>',
             _recipe(anchor, run), _curves(anchor, run), _per_class(anchor, run),
             _pr(anchor, run), _cooccurrence(anchor, run)]
    if run.recovered is not None:
        parts.append(_recovery(anchor, run))
    return "\n".join(parts) + "</section>"


def _recipe(anchor: str, run: RunData) -> str:
    """config.yaml, the mask statistics and the run's headline numbers."""
    stats = run.mask_stats
    if stats is None:
        protocol = run.recipe.get("protocol", {}).get("name", "?")
        mask = (f'<p class="mask-stats">No protocol mask (protocol: {escape(str(protocol))}): no '
                f'training label was hidden.</p>')
    else:
        known = stats["known_positives"] + stats["known_negatives"]
        mask = _table(["training labels (saved mask)", "count"], [
            ["images x classes", f"{stats['images']:,} x {stats['classes']:,}"],
            ["known", f"{known:,} ({100 * stats['known_fraction']:.1f}%)"],
            ["known positive", f"{stats['known_positives']:,}"],
            ["known negative", f"{stats['known_negatives']:,}"],
            ["unknown", f"{stats['unknown']:,}"],
            ["images without a known label", f"{stats['images_without_known_label']:,}"],
        ], "mask-stats")
    results = run.results
    headline = _table(["result", "value"], [
        ["method", str(results.get("method", "-"))],
        ["best (selected) epoch", str(results.get("best_epoch", "-"))],
        ["val mAP (%)", _percent(results.get("val_mAP"))],
        ["test mAP (%)", _percent(run.mean_ap)],
    ], "headline")
    return (f'<section id="{anchor}-recipe"><h3>Recipe and labels</h3>{headline}{mask}'
            f'<pre class="recipe">{escape(run.recipe_text)}</pre></section>')


def _curves(anchor: str, run: RunData) -> str:
    """The training curves, or why there are none."""
    best = int(run.results.get("best_epoch", -1))
    if not figures.loss_keys(run.history):
        content = '<p class="note">Training-free method: nothing was trained.</p>'
    else:
        content = _image(figures.training_curves(run.history, best), "training curves")
    return f'<section id="{anchor}-curves"><h3>Training curves</h3>{content}</section>'


def _per_class(anchor: str, run: RunData) -> str:
    """Per-class AP bars and the table of the same values (4 decimals of a percent)."""
    ap, positives = run.average_precision, figures.positives_per_class(run.labels)
    known = (run.labels >= 0).sum(axis=0)
    rows = [[name, "-" if np.isnan(value) else f"{100 * value:.4f}", str(n), str(k)]
            for name, value, n, k in zip(run.class_names, ap, positives, known, strict=True)]
    chart = figures.per_class_ap(run.class_names, ap, positives)
    return (f'<section id="{anchor}-ap"><h3>Average precision per class (test split)</h3>'
            + _image(chart, "per-class AP")
            + _table(["class", "AP (%)", "test positives", "known test labels"], rows,
                     "ap-table") + "</section>")


def _pr(anchor: str, run: RunData) -> str:
    """Precision-recall curves of the best and the worst classes."""
    best, worst = figures.best_and_worst(run.average_precision, PR_CLASSES)
    chart = figures.pr_curves(run.probabilities, run.labels, run.class_names, best, worst)
    return (f'<section id="{anchor}-pr"><h3>Precision-recall curves</h3>'
            + _image(chart, "precision-recall curves") + "</section>")


def _cooccurrence(anchor: str, run: RunData) -> str:
    """The predicted label co-occurrence next to the true one."""
    chart = figures.cooccurrence_matrices(
        figures.cooccurrence(run.labels),
        figures.cooccurrence(figures.predicted_labels(run.probabilities)), run.class_names)
    return (f'<section id="{anchor}-cooccurrence"><h3>Label co-occurrence (test split)</h3>'
            + _image(chart, "label co-occurrence") + "</section>")


def _recovery(anchor: str, run: RunData) -> str:
    """Precision and recall of the recovered training labels against the threshold."""
    rec = run.recovered
    precision, recall = figures.recovery_curve(rec.probabilities, rec.observed, rec.truth,
                                               RECOVERY_THRESHOLDS)
    chosen = figures.recovered_precision_recall(rec.observed, rec.truth, rec.recovered)
    hidden = int(((rec.observed < 0) & (rec.truth >= 0)).sum())
    chart = figures.recovery_vs_threshold(RECOVERY_THRESHOLDS, precision, recall, chosen)
    return (f'<section id="{anchor}-recovery"><h3>Recovered training labels</h3>'
            f'<p class="note">The {hidden:,} training entries the mask hid, completed as '
            f"'mlrkit recover --checkpoint RUN' completes them and scored against the "
            f"dataset's labels.</p>" + _image(chart, "recovered labels") + "</section>")
