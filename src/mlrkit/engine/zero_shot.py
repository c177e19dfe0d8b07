"""The zero-shot protocol in the engine: seen / unseen classes, training on the seen ones only,
ZSL / GZSL evaluation (``docs/protocols.md``, "Zero-shot").

A recipe's ``protocol: {name: zero_shot, ...}`` names the unseen classes in one of three ways:
``unseen: [names]``, ``fraction: 0.25`` with ``seed`` (a seeded random draw), ``unseen: dataset``
(the reader's own ``seen`` / ``unseen`` groups, NUS-WIDE's 925 / 81), or ``split_file`` (a
``class_split.json`` saved by an earlier run). Then:

- training and validation labels keep the seen columns only (the unseen columns are removed, not
  made unknown), and training images without a seen positive are dropped (as MKT and SigRL do),
  their number recorded in ``run.json``;
- the epoch is chosen on the validation split's seen-class mAP;
- the test split is scored over every class (the open-vocabulary method gets the embeddings of
  all ``C`` classes) and reported as ZSL (unseen columns only) and GZSL (all columns): mAP and
  P / R / F1 at top-3 and top-5, plus the AP of every unseen class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from torch import Tensor

from mlrkit import metrics
from mlrkit.data import MultiLabelData
from mlrkit.data.protocols import ClassSplit, seen_unseen_split, split_from_groups
from mlrkit.methods import Method, OpenVocabularyMethod

SPLIT_FILE = "class_split.json"
TOP_KS = (3, 5)


def class_split(protocol: dict, data: MultiLabelData) -> ClassSplit:
    """The seen / unseen split that a resolved ``zero_shot`` protocol section describes."""
    if protocol.get("split_file"):
        split = ClassSplit.load(protocol["split_file"])
        if split.class_names != list(data.class_names):
            raise ValueError(f"protocol.split_file {protocol['split_file']}: its classes are not "
                             f"the dataset's {data.num_classes} classes in the dataset's order")
        return split
    if protocol.get("unseen") == "dataset":
        return split_from_groups(list(data.class_names), data.class_groups)
    if protocol.get("unseen") is not None:
        try:
            return seen_unseen_split(list(data.class_names), unseen=list(protocol["unseen"]))
        except ValueError as err:
            raise ValueError(f"protocol.unseen: {err}; the classes are "
                             f"{', '.join(data.class_names)}") from None
    return seen_unseen_split(list(data.class_names), fraction=protocol["fraction"],
                             seed=protocol["seed"])


def seen_training_rows(split: ClassSplit, labels: np.ndarray) -> np.ndarray:
    """Rows of ``labels`` ``(N, C)`` kept for training: those with a seen positive."""
    return split.training_images(labels)


def open_vocabulary_part(model: Method) -> OpenVocabularyMethod:
    """The open-vocabulary method of ``model`` (itself, or the method of an EncoderHead)."""
    core = getattr(model, "method", model)
    if not isinstance(core, OpenVocabularyMethod):
        name = getattr(type(core), "registered_name", type(core).__name__)
        raise TypeError(f"method {name!r} is closed-set: it scores only the classes it was "
                         f"built for; use an open-vocabulary method (devise, conse)")
    return core


@contextmanager
def scoring_classes(model: Method, embeddings: Tensor, names: Sequence[str]) -> Iterator[None]:
    """Within the block ``model`` scores ``embeddings`` ``(C', E)``; its classes are restored
    after."""
    core = open_vocabulary_part(model)
    before = (core.class_embeddings, core.class_names)
    core.set_classes(embeddings, names)
    try:
        yield
    finally:
        core.set_classes(*before)


def zero_shot_metrics(logits: Tensor, labels: np.ndarray, split: ClassSplit,
                      prefix: str = "") -> dict:
    """ZSL and GZSL figures of ``logits`` ``(N, C)`` over all classes against ``labels``.

    Keys (after ``prefix``): ``zsl_mAP``, ``gzsl_mAP``, ``seen_mAP``, ``*_classes_averaged``
    (the classes with a test positive); ``zsl_mAP_5pos`` and
    ``gzsl_mAP_5pos`` over the classes with at least ``metrics.FEW_POSITIVES`` test positives (their
    number: ``*_classes_averaged_5pos``); for each ``k`` of
    :data:`TOP_KS` (capped at the unseen class count), ``zsl_P@k``, ``zsl_R@k``, ``zsl_F1@k``
    and the ``gzsl_`` ones; ``zsl_AP``: ``{unseen class: AP}``; ``zsl_positives``: ``{unseen
    class: test positives}``. Fractions, as the other metrics.
    """
    scores = logits.double()
    ks = sorted({min(k, len(split.unseen)) for k in TOP_KS})
    report = metrics.zero_shot_report(scores, labels, split.unseen, ks=ks)
    per_class = report.gzsl.mean_ap.per_class  # (C,) AP of every column, NaN without a positive
    out: dict = {"zsl_mAP": report.zsl.mean_ap.value, "gzsl_mAP": report.gzsl.mean_ap.value,
                 "seen_mAP": metrics.mean_of_class_aps(per_class[split.seen],
                                                       labels[:, split.seen]).value,
                 "zsl_classes_averaged": report.zsl.mean_ap.num_classes_averaged,
                 "gzsl_classes_averaged": report.gzsl.mean_ap.num_classes_averaged}
    for setting, columns in (("zsl", split.unseen), ("gzsl", slice(None))):
        frequent = metrics.mean_of_class_aps(per_class[columns], labels[:, columns],
                                             min_positives=metrics.FEW_POSITIVES)
        out[f"{setting}_mAP_5pos"] = frequent.value
        out[f"{setting}_classes_averaged_5pos"] = frequent.num_classes_averaged
    for setting, part in (("zsl", report.zsl), ("gzsl", report.gzsl)):
        for k, top in part.at_k.items():
            out.update({f"{setting}_P@{k}": top.precision, f"{setting}_R@{k}": top.recall,
                        f"{setting}_F1@{k}": top.f1})
    positives = (np.asarray(labels)[:, split.unseen] == 1).sum(0)
    out["zsl_AP"] = {split.class_names[c]: float(per_class[c]) for c in split.unseen}
    out["zsl_positives"] = {split.class_names[c]: int(n)
                            for c, n in zip(split.unseen, positives.tolist(), strict=True)}
    return {f"{prefix}{k}": v for k, v in out.items()}


def zero_shot_info(split: ClassSplit, dropped: int) -> dict:
    """``run.json``'s ``zero_shot`` entry: the split file, all class names (the order the test
    split is scored in), the unseen ones, and the training images dropped."""
    return {"split": SPLIT_FILE, "class_names": list(split.class_names),
            "unseen": [split.class_names[c] for c in split.unseen],
            "dropped_train_images": int(dropped)}
