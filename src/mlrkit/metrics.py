"""Multi-label metrics that ignore unknown labels: AP, mAP, CP/CR/CF1, OP/OR/OF1, F1@K, ZSL/GZSL.

Every function takes ``scores`` of shape ``(N, C)`` (probabilities or logits, any float dtype) and
``labels`` of shape ``(N, C)`` with the mlrkit convention ``1`` positive, ``0`` negative, ``-1``
unknown. Unknown entries are ignored by every metric: they are never a true positive, a false
positive nor a false negative. Inputs may be torch tensors (any device) or numpy arrays; the
computation is vectorised over classes and runs on the device of the scores. Counts and ratios are
computed in float64.

How the reference code bases report them:

- HCP-MLR-PL / CLSL report mAP with VOC2012 all-point interpolated AP (``interpolation="voc"``) and
  CP/CR/CF1, OP/OR/OF1 at a threshold, plus a top-3 variant (:func:`precision_recall_f1`).
- The single-positive repositories report scikit-learn's non-interpolated AP
  (``interpolation="none"``) with AP 0 for a class without positives
  (``classes_without_positive="zero"``).
- Zero-shot repositories (MKT, BiAM, SigRL OV) report non-interpolated mAP and F1@K for K = 3, 5 on
  the unseen classes (ZSL) and on all classes (GZSL) (:func:`zero_shot_report`).

Ties are deterministic everywhere: equal scores form one step of a precision-recall curve, and
top-k selection breaks ties by the lower class index.

:class:`MetricAccumulator` collects batches over an epoch (and across ranks) and calls the
functions above.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from mlrkit.distributed import gather_across_ranks

ArrayLike = Tensor | np.ndarray
Interpolation = Literal["none", "voc"]
ClassesWithoutPositive = Literal["exclude", "zero"]

_INTERPOLATIONS = ("none", "voc")
_CLASSES_WITHOUT_POSITIVE = ("exclude", "zero")


#: The fewest known positives of a class in the reports' second mean AP (``mAP_5pos``): an AP that
#: rests on 1-4 positives is mostly noise (COCO-6k's test split has 1 hair drier and 2 toasters).
FEW_POSITIVES = 5


class MAPResult(NamedTuple):
    """Mean average precision over the classes that have at least one known positive.

    Attributes:
        value: the mean, a fraction in ``[0, 1]`` (papers print ``100 * value``); NaN when no class
            was averaged.
        per_class: ``(C,)`` float64 AP per class; NaN for a class without a known positive, or 0
            under ``classes_without_positive="zero"``.
        num_classes_averaged: how many classes entered the mean.
    """

    value: float
    per_class: Tensor
    num_classes_averaged: int


class PrecisionRecallF1(NamedTuple):
    """Class-averaged (CP, CR, CF1) and overall (OP, OR, OF1) precision, recall and F1.

    Attributes:
        class_precision: CP, mean over the averaged classes of ``Nc / max(Np, 1)``.
        class_recall: CR, mean over the averaged classes of ``Nc / Ng``.
        class_f1: CF1 ``= 2 * CP * CR / (CP + CR)``.
        overall_precision: OP ``= sum_c Nc / sum_c max(Np, 1)``.
        overall_recall: OR ``= sum_c Nc / sum_c Ng``.
        overall_f1: OF1 ``= 2 * OP * OR / (OP + OR)``.
        num_classes_averaged: how many classes (those with ``Ng > 0``) entered CP and CR.
    """

    class_precision: float
    class_recall: float
    class_f1: float
    overall_precision: float
    overall_recall: float
    overall_f1: float
    num_classes_averaged: int


class TopKResult(NamedTuple):
    """P@K, R@K and F1@K: overall scores when each image's top ``k`` classes are predicted."""

    precision: float
    recall: float
    f1: float
    k: int


class ZeroShotSplit(NamedTuple):
    """mAP and ``{k: TopKResult}`` on one set of classes (the unseen ones, or all of them)."""

    mean_ap: MAPResult
    at_k: dict[int, TopKResult]


class ZeroShotReport(NamedTuple):
    """ZSL metrics (unseen columns only) and GZSL metrics (all columns)."""

    zsl: ZeroShotSplit
    gzsl: ZeroShotSplit


# --------------------------------------------------------------------------------------------------
# Validation and formatting
# --------------------------------------------------------------------------------------------------


def _to_tensor(x: ArrayLike, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(x).__name__}")


def _first_position(bad: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


def _check_scores(scores: Tensor) -> None:
    if scores.ndim != 2:
        raise ValueError(
            f"scores must be 2-D (N images, C classes), got {scores.ndim}-D of shape "
            f"{tuple(scores.shape)}"
        )
    if not scores.is_floating_point():
        raise TypeError(
            f"scores must be floating point (probabilities or logits), got dtype {scores.dtype}"
        )
    if scores.numel() == 0:
        raise ValueError(f"scores must not be empty, got shape {tuple(scores.shape)}")
    low, high = torch.aminmax(scores)  # one pass; NaN propagates
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = ~torch.isfinite(scores)
        pos = _first_position(bad)
        raise ValueError(
            f"scores must be finite, got {int(bad.sum())} NaN/inf value(s); first at "
            f"[image {pos[0]}, class {pos[1]}] = {scores[pos].item()}"
        )


def _check_labels(labels: Tensor, scores_shape: torch.Size) -> None:
    if labels.shape != scores_shape:
        raise ValueError(
            f"labels must have the shape of scores {tuple(scores_shape)}, got {tuple(labels.shape)}"
        )
    if labels.dtype == torch.bool:
        return
    if labels.is_floating_point():
        bad = (labels != labels.round()) | (labels.abs() > 1)  # NaN is caught by the first test
    elif labels.is_signed():
        low, high = torch.aminmax(labels)
        bad = (labels < -1) | (labels > 1) if low < -1 or high > 1 else None
    else:  # unsigned: comparing with -1 would wrap around
        bad = labels > 1
    if bad is not None and bad.any():
        pos = _first_position(bad)
        raise ValueError(
            f"labels must only hold 1 (positive), 0 (negative) or -1 (unknown), got "
            f"{int(bad.sum())} other value(s); first at [image {pos[0]}, class {pos[1]}] = "
            f"{labels[pos].item()}"
        )


def _format(scores: ArrayLike, labels: ArrayLike) -> tuple[Tensor, Tensor]:
    """Validate ``scores`` and ``labels`` and return them as tensors on one device, labels int8."""
    scores_t = _to_tensor(scores, "scores")
    labels_t = _to_tensor(labels, "labels")
    if isinstance(scores, Tensor) and isinstance(labels, Tensor):
        if scores_t.device != labels_t.device:
            raise ValueError(
                f"scores and labels must be on the same device, got {scores_t.device} and "
                f"{labels_t.device}"
            )
    elif isinstance(labels, Tensor):
        scores_t = scores_t.to(labels_t.device)
    else:
        labels_t = labels_t.to(scores_t.device)
    _check_scores(scores_t)
    _check_labels(labels_t, scores_t.shape)
    return scores_t, labels_t.to(torch.int8)


def _check_k(k: int, num_classes: int) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= num_classes:
        raise ValueError(f"k must satisfy 1 <= k <= C = {num_classes}, got k = {k}")


def _check_choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_threshold(threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")


def _class_index(
    index: ArrayLike | Sequence[int], num_classes: int, device: torch.device
) -> Tensor:
    """Validate a class subset (integer indices or a ``(C,)`` bool mask); return sorted indices."""
    idx = torch.as_tensor(np.asarray(index) if not isinstance(index, Tensor) else index)
    if idx.dtype == torch.bool:
        if idx.shape != (num_classes,):
            raise ValueError(
                f"a boolean class mask must have shape ({num_classes},), got {tuple(idx.shape)}"
            )
        idx = idx.nonzero().squeeze(1)
    if idx.numel() == 0:
        raise ValueError("the class subset is empty; give at least one class index")
    if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex():
        raise ValueError(
            f"class indices must be a 1-D sequence of ints or a ({num_classes},) bool mask, got "
            f"dtype {idx.dtype} and shape {tuple(idx.shape)}"
        )
    if int(idx.min()) < 0 or int(idx.max()) >= num_classes:
        raise ValueError(
            f"class indices must lie in [0, {num_classes - 1}], got min {int(idx.min())} and max "
            f"{int(idx.max())}"
        )
    if idx.unique().numel() != idx.numel():
        raise ValueError(f"class indices must be unique, got {idx.numel()} indices with duplicates")
    return idx.sort().values.to(device=device, dtype=torch.long)


def _f1(precision: float, recall: float) -> float:
    """Harmonic mean; 0 when both are 0, NaN when either is NaN."""
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------------------


def _rank_positives_by_packed_key(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rank every class at once through one int64 key; for floats of at most 32 bits.

    A float32 read as int32, with the 31 value bits flipped for negatives, orders like the float;
    taken of ``-score`` it orders by descending score. Then
    ``key = class * 2**33 + (that + 2**31) * 2 + is_positive`` is non-negative, and one ascending
    1-D sort of the known entries' keys (a radix sort on CPU) lists class 0 by descending score,
    then class 1, and so on, with the positives last among tied scores: the last positive of a
    tie group ends the group.
    """
    num_classes = scores.shape[1]
    labels_t = labels.T.contiguous()
    known = labels_t >= 0
    # 0.0 - score maps both 0.0 and -0.0 to 0.0, so that they stay one tie group
    bits = (0.0 - scores.T.to(torch.float32).contiguous()).view(torch.int32)
    descending = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    offsets = torch.arange(num_classes, device=scores.device).mul_(2**33).add_(2**32)
    key = descending.to(torch.int64).mul_(2).add_(offsets.unsqueeze(1)).add_(labels_t == 1)
    sorted_key = torch.sort(key[known]).values
    positions = (sorted_key & 1).nonzero().squeeze(1)
    groups = sorted_key[positions] >> 1
    row = groups >> 32
    positives_through_group = torch.searchsorted(groups, groups, right=True)
    ends = positions[positives_through_group - 1]
    num_known = known.sum(1)
    return row, positives_through_group, ends - (num_known.cumsum(0) - num_known)[row] + 1


def _rank_positives_by_float_sort(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sort each class by descending score, unknown entries last as ``-inf``; any float dtype."""
    n = scores.shape[0]
    masked = scores.T.masked_fill(labels.T < 0, float("-inf"))
    sorted_scores, order = torch.sort(masked, dim=1, descending=True)
    is_start = torch.ones_like(sorted_scores, dtype=torch.bool)
    is_start[:, 1:] = sorted_scores[:, 1:] != sorted_scores[:, :-1]
    group_of_entry = is_start.flatten().cumsum(0)
    positions = (torch.gather(labels.T, 1, order) == 1).flatten().nonzero().squeeze(1)
    row = torch.div(positions, n, rounding_mode="floor")
    groups = group_of_entry[positions]
    ends = torch.searchsorted(group_of_entry, groups, right=True) - 1
    return row, torch.searchsorted(groups, groups, right=True), ends - row * n + 1


def _average_precision(scores: Tensor, labels: Tensor, interpolation: Interpolation) -> Tensor:
    """Per-class AP on validated inputs; ``(N, C)`` in, ``(C,)`` float64 out (NaN: no positive).

    Both rankers sort each class by descending score and list the positives of class 0, then
    class 1, and so on, in that order. For each positive they return its class, how many listed
    positives come up to the end of its tie group (equal scores of one class), counting from the
    start of the list, and how many known entries of its class come up to that end. A positive
    then scores ``P = TP / known entries`` at its group's end, and
    ``AP = sum of P over the class's positives / #positives``, which is
    ``sum_g (R_g - R_{g-1}) P_g``. ``"voc"`` replaces ``P`` by its running max from the end of the
    class; groups without a positive can be left out there as they never raise the precision.
    """
    num_classes = scores.shape[1]
    packed = scores.element_size() <= 4
    rank = _rank_positives_by_packed_key if packed else _rank_positives_by_float_sort
    row, positives_through_group, known_through_group = rank(scores, labels)
    num_positive = torch.bincount(row, minlength=num_classes)
    tp = positives_through_group - (num_positive.cumsum(0) - num_positive)[row]
    precision = tp.to(torch.float64) / known_through_group.to(torch.float64)
    if interpolation == "voc":
        # Running max from the end within each class: shifting class r by -2r (precision lies in
        # [0, 1]) keeps one reversed cummax over all classes from leaking across them.
        shift = 2.0 * row.to(torch.float64)
        precision = (precision - shift).flip(0).cummax(0).values.flip(0) + shift
    ap_sum = torch.zeros(num_classes, dtype=torch.float64, device=scores.device)
    return ap_sum.index_add_(0, row, precision) / num_positive


def average_precision(
    scores: ArrayLike, labels: ArrayLike, interpolation: Interpolation = "none"
) -> Tensor:
    r"""Average precision of each class, ignoring unknown (``-1``) entries.

    For a class, sort its known entries by descending score and cut after each distinct score
    value (a group of tied entries is one step): cut ``g = 1..G`` gives precision
    ``P_g = TP_g / (TP_g + FP_g)`` and recall ``R_g = TP_g / #positives`` (``R_0 = 0``). Then

    - ``"none"``: :math:`AP = \sum_g (R_g - R_{g-1}) P_g`, identical to scikit-learn's
      ``average_precision_score`` on the known entries.
    - ``"voc"``: VOC2012 all-point interpolation, :math:`AP = \sum_g (R_g - R_{g-1})
      \max_{g' \ge g} P_{g'}` (the precision envelope: best precision at any recall
      ``>= R_g``), as HCP-MLR-PL's ``Compute_mAP_VOC2012`` and CLSL. Unlike that code, which
      walks the entries in ``argsort`` order so that tied scores give an order-dependent value,
      tied scores here form one step, as in ``"none"``. On tie-free scores both agree.
      ``"voc" >= "none"`` always.

    Args:
        scores: ``(N, C)`` floating scores, higher means more likely positive (probabilities or
            logits; AP depends only on the order).
        labels: ``(N, C)`` with ``1`` positive, ``0`` negative, ``-1`` unknown.
        interpolation: ``"none"`` or ``"voc"``.

    Returns:
        ``(C,)`` float64 tensor on the scores' device; NaN for a class with no known positive.

    Example:
        >>> scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.6], [0.2, 0.4]])
        >>> labels = torch.tensor([[1, 0], [0, -1], [1, 0], [-1, 0]], dtype=torch.int8)
        >>> average_precision(scores, labels)
        tensor([0.8333,    nan], dtype=torch.float64)
    """
    _check_choice(interpolation, _INTERPOLATIONS, "interpolation")
    scores_t, labels_t = _format(scores, labels)
    return _average_precision(scores_t, labels_t, interpolation)


def mean_of_class_aps(
    per_class: Tensor,
    labels: ArrayLike,
    classes_without_positive: ClassesWithoutPositive = "exclude",
    min_positives: int = 1,
) -> MAPResult:
    """The mean of per-class APs already computed (by :func:`average_precision` on ``labels``), so
    that several means (all classes, classes with enough positives, a subset of columns) cost one
    AP pass.

    Args:
        per_class: ``(C,)`` APs, NaN for a class without a known positive.
        labels: ``(N, C)`` the labels the APs were computed on (to count known positives).
        classes_without_positive: see :func:`mean_average_precision`.
        min_positives: see :func:`mean_average_precision`.

    Example:
        >>> labels = torch.tensor([[1, 1], [0, 1], [1, 0]], dtype=torch.int8)
        >>> mean_of_class_aps(torch.tensor([0.5, 1.0]), labels).value
        0.75
        >>> mean_of_class_aps(torch.tensor([0.5, 1.0]), labels, min_positives=2).value
        0.75
        >>> mean_of_class_aps(torch.tensor([0.5, 1.0]), labels, min_positives=3).num_classes_averaged
        0
    """
    _check_choice(classes_without_positive, _CLASSES_WITHOUT_POSITIVE, "classes_without_positive")
    if min_positives < 1:
        raise ValueError(f"min_positives must be >= 1, got {min_positives}")
    labels_t = _to_tensor(labels, "labels")
    if labels_t.dim() != 2 or per_class.shape != labels_t.shape[1:]:
        raise ValueError(f"per_class has shape {tuple(per_class.shape)} but labels have shape "
                         f"{tuple(labels_t.shape)}: one AP per label column is needed")
    if min_positives > 1:
        positives = (labels_t == 1).sum(0).to(per_class.device)
        per_class = per_class.masked_fill((positives > 0) & (positives < min_positives), torch.nan)
    if classes_without_positive == "zero":
        per_class = torch.nan_to_num(per_class, nan=0.0)
    averaged = ~per_class.isnan()
    count = int(averaged.sum())
    value = float(per_class[averaged].mean()) if count else float("nan")
    return MAPResult(value, per_class, count)


def mean_average_precision(
    scores: ArrayLike,
    labels: ArrayLike,
    interpolation: Interpolation = "none",
    classes_without_positive: ClassesWithoutPositive = "exclude",
    min_positives: int = 1,
) -> MAPResult:
    """Mean of :func:`average_precision` over classes, and how many classes were averaged.

    Args:
        scores: ``(N, C)`` floating scores.
        labels: ``(N, C)`` with ``1`` positive, ``0`` negative, ``-1`` unknown.
        interpolation: ``"none"`` (scikit-learn) or ``"voc"`` (VOC2012 all-point), see
            :func:`average_precision`.
        classes_without_positive: ``"exclude"`` (default): a class with no known positive has AP
            NaN and is left out of the mean. ``"zero"``: it gets AP 0 and still counts, as the
            single-positive (Cole et al., VLPL, LL) and zero-shot (MKT, SigRL OV) repositories do.
        min_positives: a class with at least one but fewer than ``min_positives`` known positives
            has AP NaN and is left out of the mean (whatever ``classes_without_positive``): with
            ``5``, the mean over the classes whose AP rests on at least 5 positives.

    Returns:
        :class:`MAPResult` ``(value, per_class, num_classes_averaged)``.

    Example:
        >>> scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.6], [0.2, 0.4]])
        >>> labels = torch.tensor([[1, 0], [0, -1], [1, 0], [-1, 0]], dtype=torch.int8)
        >>> result = mean_average_precision(scores, labels)
        >>> round(result.value, 4), result.num_classes_averaged
        (0.8333, 1)
        >>> mean_average_precision(scores, labels, classes_without_positive="zero").value
        0.41666666666666663
    """
    _check_choice(classes_without_positive, _CLASSES_WITHOUT_POSITIVE, "classes_without_positive")
    if min_positives < 1:
        raise ValueError(f"min_positives must be >= 1, got {min_positives}")
    _check_choice(interpolation, _INTERPOLATIONS, "interpolation")
    scores_t, labels_t = _format(scores, labels)
    per_class = _average_precision(scores_t, labels_t, interpolation)
    return mean_of_class_aps(per_class, labels_t, classes_without_positive, min_positives)


# --------------------------------------------------------------------------------------------------
# Thresholded and top-k metrics
# --------------------------------------------------------------------------------------------------


def _top_k_mask(scores: Tensor, k: int) -> Tensor:
    """``(N, C)`` bool, True at each row's ``k`` highest scores; ties go to the lower class index.

    The ``k``-th largest value ``t`` of a row is unique whatever the ties: every score above ``t``
    is in, and the scores equal to ``t`` fill the remaining slots from the left.
    """
    kth = scores.topk(k, dim=1).values[:, -1:]
    above, tied = scores > kth, scores == kth
    room = k - above.sum(1, keepdim=True)
    return above | (tied & (tied.cumsum(1) <= room))


def precision_recall_f1(
    scores: ArrayLike, labels: ArrayLike, *, threshold: float, top_k: int | None = None
) -> PrecisionRecallF1:
    """CP, CR, CF1 and OP, OR, OF1 (HCP-MLR-PL ``evaluation``), ignoring unknown entries.

    An entry is predicted positive when ``score >= threshold`` (scores are used as given: pass
    ``0.5`` for probabilities, ``0.0`` for logits; HCP-MLR-PL predicts at logit ``>= 0``). With
    ``top_k``, it must also be among its image's ``top_k`` highest scores over all ``C`` classes
    (ties broken by the lower class index), as HCP-MLR-PL's ``overall_topk`` and CLSL's top-3.

    Per class ``c``, over its known entries: ``Nc`` true positives, ``Np`` predicted positives,
    ``Ng`` positives. Then

    - ``CP = mean_c Nc / max(Np, 1)``, ``CR = mean_c Nc / Ng``, ``CF1 = 2 CP CR / (CP + CR)``;
    - ``OP = sum_c Nc / sum_c max(Np, 1)``, ``OR = sum_c Nc / sum_c Ng``,
      ``OF1 = 2 OP OR / (OP + OR)``.

    ``Np`` is clamped per class before summing into OP, as HCP-MLR-PL does: a class that is never
    predicted adds 1 to the OP denominator. The class means run over the classes with ``Ng > 0``
    (the classes that mAP averages; their count is returned); HCP-MLR-PL would return NaN for CR
    instead. Overall counts include every class. An F1 is 0 when precision and recall are both 0;
    OR and OF1 are NaN when there is no known positive at all. When no entry is known at all,
    nothing was measured and all six values are NaN (``num_classes_averaged`` is 0).

    Args:
        scores: ``(N, C)`` floating scores.
        labels: ``(N, C)`` with ``1`` positive, ``0`` negative, ``-1`` unknown.
        threshold: keyword-only, no default, so the caller states the scale of the scores.
        top_k: optional ``k`` with ``1 <= k <= C``.

    Returns:
        :class:`PrecisionRecallF1`.

    Example:
        >>> scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6]])
        >>> labels = torch.tensor([[1, 0, 1], [0, 1, -1]], dtype=torch.int8)
        >>> m = precision_recall_f1(scores, labels, threshold=0.5)
        >>> [round(v, 4) for v in m[:6]]  # CP, CR, CF1, OP, OR, OF1
        [0.5, 0.6667, 0.5714, 0.5, 0.6667, 0.5714]
        >>> round(precision_recall_f1(scores, labels, threshold=0.5, top_k=1).overall_precision, 4)
        0.6667
    """
    _check_threshold(threshold)
    scores_t, labels_t = _format(scores, labels)
    predicted = scores_t >= threshold
    if top_k is not None:
        _check_k(top_k, scores_t.shape[1])
        predicted &= _top_k_mask(scores_t, top_k)
    known, positive = labels_t >= 0, labels_t == 1
    if not known.any():
        nan = float("nan")
        return PrecisionRecallF1(nan, nan, nan, nan, nan, nan, 0)
    return _precision_recall_f1_of_counts((predicted & positive).sum(0, dtype=torch.float64),
                                          (predicted & known).sum(0, dtype=torch.float64),
                                          positive.sum(0, dtype=torch.float64))


def _precision_recall_f1_of_counts(n_correct: Tensor, n_predicted: Tensor,
                                   n_positive: Tensor) -> PrecisionRecallF1:
    """:func:`precision_recall_f1` from the per-class float64 counts ``(C,)`` of true positives,
    predicted positives (unclamped) and positives, over the known entries."""
    n_predicted = n_predicted.clamp(min=1)
    averaged = n_positive > 0
    cp = float((n_correct / n_predicted)[averaged].mean()) if averaged.any() else float("nan")
    cr = float((n_correct / n_positive)[averaged].mean()) if averaged.any() else float("nan")
    op = float(n_correct.sum() / n_predicted.sum())
    or_ = float(n_correct.sum() / n_positive.sum())
    return PrecisionRecallF1(cp, cr, _f1(cp, cr), op, or_, _f1(op, or_), int(averaged.sum()))


def f1_at_k(scores: ArrayLike, labels: ArrayLike, k: int) -> TopKResult:
    """P@K, R@K and F1@K: each image's top ``k`` classes are predicted positive (MKT, BiAM).

    Counted overall (micro) over all images: ``P = TP / #known entries among the top k``,
    ``R = TP / #known positives``, ``F1 = 2 P R / (P + R)``. Without unknown entries the precision
    denominator is ``N * k``, exactly the zero-shot papers' ``TP / (N k)``; an unknown entry in a
    top-k slot still takes the slot but counts in neither numerator nor denominator. Ties go to
    the lower class index. ``P`` (``R``) is NaN when no top-k entry (no entry) is a known
    (positive) one; F1 is 0 when ``P = R = 0``.

    Args:
        scores: ``(N, C)`` floating scores.
        labels: ``(N, C)`` with ``1`` positive, ``0`` negative, ``-1`` unknown.
        k: ``1 <= k <= C``.

    Example:
        >>> scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6]])
        >>> labels = torch.tensor([[1, 0, 1], [0, 1, -1]], dtype=torch.int8)
        >>> [round(v, 4) for v in f1_at_k(scores, labels, k=2)]  # P@2, R@2, F1@2, k
        [0.6667, 0.6667, 0.6667, 2]
    """
    scores_t, labels_t = _format(scores, labels)
    _check_k(k, scores_t.shape[1])
    return _f1_at_k(scores_t, labels_t, k)


def _f1_at_k(scores: Tensor, labels: Tensor, k: int) -> TopKResult:
    top = _top_k_mask(scores, k)
    tp = (top & (labels == 1)).sum(dtype=torch.float64)
    precision = float(tp / (top & (labels >= 0)).sum(dtype=torch.float64))
    recall = float(tp / (labels == 1).sum(dtype=torch.float64))
    return TopKResult(precision, recall, _f1(precision, recall), int(k))


def zero_shot_report(
    scores: ArrayLike,
    labels: ArrayLike,
    unseen_index: ArrayLike | Sequence[int],
    ks: Sequence[int] = (3, 5),
    interpolation: Interpolation = "none",
    classes_without_positive: ClassesWithoutPositive = "exclude",
) -> ZeroShotReport:
    """ZSL (unseen columns) and GZSL (all columns) mAP and F1@K, as the zero-shot papers report.

    ZSL restricts both scores and labels to the unseen columns, so the top-k is taken among unseen
    classes only; GZSL ranks all ``C`` classes. MKT and SigRL OV use non-interpolated AP with AP 0
    for classes without a positive: ``classes_without_positive="zero"``.

    Args:
        scores: ``(N, C)`` floating scores over seen and unseen classes.
        labels: ``(N, C)`` with ``1`` positive, ``0`` negative, ``-1`` unknown.
        unseen_index: unseen class indices, or a ``(C,)`` bool mask.
        ks: the ``k`` of F1@K; each must satisfy ``1 <= k <=`` the number of unseen classes.
        interpolation: AP flavour, see :func:`average_precision`.
        classes_without_positive: see :func:`mean_average_precision`.

    Example:
        >>> scores = torch.tensor([[0.9, 0.8, 0.1, 0.3], [0.2, 0.7, 0.6, 0.9]])
        >>> labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.int8)
        >>> report = zero_shot_report(scores, labels, unseen_index=[2, 3], ks=(1,))
        >>> report.zsl.mean_ap.value, report.zsl.at_k[1].f1, round(report.gzsl.at_k[1].f1, 4)
        (0.75, 0.5, 0.6667)
    """
    _check_choice(interpolation, _INTERPOLATIONS, "interpolation")
    _check_choice(classes_without_positive, _CLASSES_WITHOUT_POSITIVE, "classes_without_positive")
    scores_t, labels_t = _format(scores, labels)
    unseen = _class_index(unseen_index, scores_t.shape[1], scores_t.device)
    if isinstance(ks, int) or len(ks) == 0:
        raise ValueError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    for k in ks:
        _check_k(k, unseen.numel())

    per_class = _average_precision(scores_t, labels_t, interpolation)  # one AP per column

    def split(columns: Tensor | slice) -> ZeroShotSplit:
        s, y = scores_t[:, columns], labels_t[:, columns]
        mean_ap = mean_of_class_aps(per_class[columns], y, classes_without_positive)
        return ZeroShotSplit(mean_ap, {int(k): _f1_at_k(s, y, k) for k in ks})

    return ZeroShotReport(zsl=split(unseen), gzsl=split(slice(None)))


# --------------------------------------------------------------------------------------------------
# Accumulation over batches and ranks
# --------------------------------------------------------------------------------------------------


class MetricAccumulator:
    """Collect ``(scores, labels)`` batches, then compute metrics on everything seen.

    Each batch is validated on :meth:`update` and stored detached (labels as int8) on its device.
    At compute time the batches are concatenated and passed through ``sync`` once (cached until the
    next update): by default :func:`gather_across_ranks`, which gathers all ranks' rows under
    ``torch.distributed`` and is the identity otherwise. ``sync=None`` keeps rows local. Note that
    a ``DistributedSampler`` that pads its last batch repeats images.

    Example:
        >>> acc = MetricAccumulator()
        >>> acc.update(torch.tensor([[0.9, 0.1]]), torch.tensor([[1, 0]]))
        >>> acc.update(torch.tensor([[0.8, 0.7]]), torch.tensor([[0, 1]]))
        >>> acc.mean_average_precision().value
        1.0
    """

    def __init__(self, sync: Callable[[Tensor], Tensor] | None = gather_across_ranks) -> None:
        self.sync = sync
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        self._scores: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._cache: tuple[Tensor, Tensor] | None = None

    def update(self, scores: ArrayLike, labels: ArrayLike) -> None:
        """Add a batch: ``scores`` ``(B, C)`` floating, ``labels`` ``(B, C)`` in ``{-1, 0, 1}``."""
        scores_t, labels_t = _format(scores, labels)
        if self._scores and scores_t.shape[1] != self._scores[0].shape[1]:
            raise ValueError(
                f"batch has {scores_t.shape[1]} classes, earlier batches had "
                f"{self._scores[0].shape[1]}"
            )
        self._scores.append(scores_t.clone())
        self._labels.append(labels_t.clone())
        self._cache = None

    def gathered(self) -> tuple[Tensor, Tensor]:
        """All ``(N, C)`` scores and int8 labels seen so far, after ``sync``."""
        if not self._scores:
            raise RuntimeError("no batch was added; call update(scores, labels) first")
        if self._cache is None:
            scores, labels = torch.cat(self._scores), torch.cat(self._labels)
            if self.sync is not None:
                scores, labels = self.sync(scores), self.sync(labels)
            self._cache = (scores, labels)
        return self._cache

    def average_precision(self, interpolation: Interpolation = "none") -> Tensor:
        """:func:`average_precision` on everything seen."""
        return average_precision(*self.gathered(), interpolation=interpolation)

    def mean_average_precision(
        self,
        interpolation: Interpolation = "none",
        classes_without_positive: ClassesWithoutPositive = "exclude",
    ) -> MAPResult:
        """:func:`mean_average_precision` on everything seen."""
        return mean_average_precision(
            *self.gathered(),
            interpolation=interpolation,
            classes_without_positive=classes_without_positive,
        )

    def precision_recall_f1(
        self, *, threshold: float, top_k: int | None = None
    ) -> PrecisionRecallF1:
        """:func:`precision_recall_f1` on everything seen."""
        return precision_recall_f1(*self.gathered(), threshold=threshold, top_k=top_k)

    def f1_at_k(self, k: int) -> TopKResult:
        """:func:`f1_at_k` on everything seen."""
        return f1_at_k(*self.gathered(), k=k)

    def zero_shot_report(
        self,
        unseen_index: ArrayLike | Sequence[int],
        ks: Sequence[int] = (3, 5),
        interpolation: Interpolation = "none",
        classes_without_positive: ClassesWithoutPositive = "exclude",
    ) -> ZeroShotReport:
        """:func:`zero_shot_report` on everything seen."""
        return zero_shot_report(
            *self.gathered(), unseen_index, ks, interpolation, classes_without_positive
        )


#: The k of the ZSL / GZSL P / R / F1 at top-k of :func:`zero_shot_metrics` (MKT's, SigRL's)
ZERO_SHOT_TOP_KS = (3, 5)


def zero_shot_metrics(logits: Tensor, labels: np.ndarray, split,
                      prefix: str = "", zsl_logits: Tensor | None = None) -> dict:
    """ZSL and GZSL figures of ``logits`` ``(N, C)`` over all classes against ``labels``, for a
    seen / unseen ``split`` (a :class:`~mlrkit.data.protocols.ClassSplit`: ``class_names``,
    ``seen`` and ``unseen`` column indices). The ZSL figures come from ``zsl_logits``
    ``(N, U)`` when given (a forward over the unseen classes only, in ``split.unseen``'s order),
    else from the unseen columns of ``logits``.

    Keys (after ``prefix``): ``zsl_mAP``, ``gzsl_mAP``, ``seen_mAP``, ``*_classes_averaged``
    (the classes with a test positive); ``zsl_mAP_5pos`` and
    ``gzsl_mAP_5pos`` over the classes with at least ``FEW_POSITIVES`` test positives (their
    number: ``*_classes_averaged_5pos``); for each ``k`` of
    :data:`ZERO_SHOT_TOP_KS` (capped at the unseen class count), ``zsl_P@k``, ``zsl_R@k``, ``zsl_F1@k``
    and the ``gzsl_`` ones; ``zsl_AP``: ``{unseen class: AP}``; ``zsl_positives``: ``{unseen
    class: test positives}``; ``zsl_forward``: ``"unseen"`` or ``"slice"``. Fractions, as the
    other metrics.
    """
    scores = logits.double()
    unseen = torch.as_tensor(np.asarray(split.unseen), dtype=torch.long)
    zsl_scores = scores
    if zsl_logits is not None:
        if tuple(zsl_logits.shape) != (scores.shape[0], len(unseen)):
            raise ValueError(f"zsl_logits must be (N, U) = {(scores.shape[0], len(unseen))}, "
                             f"got {tuple(zsl_logits.shape)}")
        zsl_scores = scores.index_copy(1, unseen, zsl_logits.double())
    ks = sorted({min(k, len(split.unseen)) for k in ZERO_SHOT_TOP_KS})
    report = zero_shot_report(scores, labels, split.unseen, ks=ks)
    zsl_report = report if zsl_logits is None else zero_shot_report(zsl_scores, labels,
                                                                     split.unseen, ks=ks)
    per_class = report.gzsl.mean_ap.per_class  # (C,) AP of every column, NaN without a positive
    zsl_per_class = zsl_report.gzsl.mean_ap.per_class
    out: dict = {"zsl_mAP": zsl_report.zsl.mean_ap.value, "gzsl_mAP": report.gzsl.mean_ap.value,
                 "seen_mAP": mean_of_class_aps(per_class[split.seen],
                                                       labels[:, split.seen]).value,
                 "zsl_classes_averaged": zsl_report.zsl.mean_ap.num_classes_averaged,
                 "gzsl_classes_averaged": report.gzsl.mean_ap.num_classes_averaged}
    for setting, aps, columns in (("zsl", zsl_per_class, split.unseen),
                                  ("gzsl", per_class, slice(None))):
        frequent = mean_of_class_aps(aps[columns], labels[:, columns],
                                             min_positives=FEW_POSITIVES)
        out[f"{setting}_mAP_5pos"] = frequent.value
        out[f"{setting}_classes_averaged_5pos"] = frequent.num_classes_averaged
    for setting, part in (("zsl", zsl_report.zsl), ("gzsl", report.gzsl)):
        for k, top in part.at_k.items():
            out.update({f"{setting}_P@{k}": top.precision, f"{setting}_R@{k}": top.recall,
                        f"{setting}_F1@{k}": top.f1})
    positives = (np.asarray(labels)[:, split.unseen] == 1).sum(0)
    out["zsl_AP"] = {split.class_names[c]: float(zsl_per_class[c]) for c in split.unseen}
    out["zsl_positives"] = {split.class_names[c]: int(n)
                            for c, n in zip(split.unseen, positives.tolist(), strict=True)}
    out["zsl_forward"] = "slice" if zsl_logits is None else "unseen"
    return {f"{prefix}{k}": v for k, v in out.items()}


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, bins: int = 15) -> float:
    """Expected calibration error of probabilities ``(N, C)`` over the known entries, each entry
    a binary prediction: the entries are grouped into ``bins`` equal-width bins of ``p`` and
    ``ECE = sum_b n_b / n * |mean(y in b) - mean(p in b)|`` (Guo et al., ICML 2017, applied per
    entry as in multi-label calibration work). A bin holds ``lo < p <= hi`` (the first also
    ``p = 0``). NaN without a known entry.

    Example:
        >>> expected_calibration_error(np.array([[0.9, 0.2]]), np.array([[1, 0]]), bins=10)
        0.15
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    probs_t, labels_t = _format(probs, labels)
    if bool(((probs_t < 0) | (probs_t > 1)).any()):
        raise ValueError("probabilities must lie in [0, 1]; apply a sigmoid or a calibration first")
    known = labels_t >= 0
    p, y = probs_t[known].double(), (labels_t[known] == 1).double()
    if p.numel() == 0:
        return float("nan")
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=p.device)
    which = torch.bucketize(p, edges[1:-1], right=False)  # (n,) bin of each entry
    count = torch.bincount(which, minlength=bins).double()
    gap = torch.bincount(which, weights=y - p, minlength=bins).abs()
    return round(float(gap.sum() / count.sum()), 12)


# --- known entries only: labels too large for (N, C) ---------------------------------------------


def known_entry_average_precision(classes: np.ndarray, scores: np.ndarray, values: np.ndarray,
                                  num_classes: int) -> np.ndarray:
    """Per-class AP ``(C,)`` float64 (NaN: no positive) from the known entries alone, each given
    as its class, score and value (1 / 0): :func:`average_precision` (``"none"``, tied scores one
    step) of the dense matrix those entries make, whose other entries are unknown, without the
    matrix. Memory and time grow with the known entries, not with ``N x C``.
    """
    classes = np.asarray(classes, dtype=np.int64)
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(values) == 1
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite: a known entry was never scored, or is NaN/inf")
    order = np.lexsort((-scores, classes))  # by class, then by descending score
    klass, score, positive = classes[order], scores[order], positive[order]
    count = len(klass)
    first_of_class = np.searchsorted(klass, klass, side="left")
    new_group = np.ones(count, dtype=bool)
    new_group[1:] = (klass[1:] != klass[:-1]) | (score[1:] != score[:-1])
    group_last = np.append(np.flatnonzero(new_group)[1:], count) - 1
    end = group_last[np.cumsum(new_group) - 1]  # last entry of each entry's tie group
    positives_through = np.concatenate([[0], np.cumsum(positive)])
    true_positives = positives_through[end + 1] - positives_through[first_of_class]
    precision = true_positives / (end - first_of_class + 1)
    sums = np.bincount(klass[positive], weights=precision[positive], minlength=num_classes)
    num_positive = np.bincount(klass[positive], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_positive > 0, sums / np.maximum(num_positive, 1), np.nan)


class KnownEntryScores:
    """A model's scores at the known entries of a :class:`~mlrkit.data.sparse_labels.SparseLabels`
    store, filled a batch at a time (any order, any rank's rows): what mAP and the F1 figures need
    when the ``(N, C)`` scores would not fit. Equal to the dense metrics (tests).

        scores = KnownEntryScores(labels)
        for rows, logits in batches:          # rows (B,) image indices, logits (B, C)
            scores.update(rows, logits)
        scores.mean_average_precision(), scores.precision_recall_f1(threshold=0.0)
    """

    def __init__(self, labels) -> None:
        self.labels = labels
        self.scores = np.full(labels.nnz, np.nan, dtype=np.float32)  # aligned with the entries

    def update(self, rows: ArrayLike, logits: ArrayLike) -> None:
        """Keep ``logits`` ``(B, C)`` of images ``rows`` ``(B,)`` at their known entries."""
        from mlrkit.data.sparse_labels import entry_positions

        rows = np.asarray(rows, dtype=np.int64)
        logits = logits.detach().float().cpu().numpy() if isinstance(logits, Tensor) else \
            np.asarray(logits, dtype=np.float32)
        if logits.shape != (len(rows), self.labels.num_classes):
            raise ValueError(f"logits must be (B={len(rows)}, C={self.labels.num_classes}), got "
                             f"{logits.shape}")
        starts = self.labels.indptr[rows]
        lengths = self.labels.indptr[rows + 1] - starts
        positions = entry_positions(starts, lengths)
        self.scores[positions] = logits[np.repeat(np.arange(len(rows)), lengths),
                                        self.labels.classes[positions]]

    def merge_across_ranks(self) -> None:
        """Combine the scores every rank of the process group filled for its own rows (an
        all-reduce of ``(known entries,)`` floats; a no-op in one process)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        scored = ~np.isnan(self.scores)
        sums = torch.from_numpy(np.where(scored, self.scores, 0.0).astype(np.float32))
        counts = torch.from_numpy(scored.astype(np.int32))
        dist.all_reduce(sums)
        dist.all_reduce(counts)
        self.scores = np.where(counts.numpy() > 0, sums.numpy(), np.nan).astype(np.float32)

    def average_precision(self) -> np.ndarray:
        """``(C,)`` AP of each class (NaN without a known positive)."""
        return known_entry_average_precision(self.labels.classes, self.scores,
                                             self.labels.values, self.labels.num_classes)

    def mean_average_precision(self) -> MAPResult:
        """:func:`mean_average_precision` (``"exclude"``) of the scored entries."""
        per_class = torch.from_numpy(self.average_precision())
        averaged = ~torch.isnan(per_class)
        value = float(per_class[averaged].mean()) if averaged.any() else float("nan")
        return MAPResult(value, per_class, int(averaged.sum()))

    def precision_recall_f1(self, *, threshold: float) -> PrecisionRecallF1:
        """:func:`precision_recall_f1` without ``top_k`` (which needs every class of an image)."""
        _check_threshold(threshold)
        if np.isnan(self.scores).any():
            raise ValueError("some known entries were never scored: update with every image")
        if self.labels.nnz == 0:
            nan = float("nan")
            return PrecisionRecallF1(nan, nan, nan, nan, nan, nan, 0)
        count = self.labels.num_classes
        klass, positive = self.labels.classes, np.asarray(self.labels.values) == 1
        predicted = self.scores >= threshold
        counts = [np.bincount(klass[chosen], minlength=count).astype(np.float64)
                  for chosen in (predicted & positive, predicted, positive)]
        return _precision_recall_f1_of_counts(*map(torch.from_numpy, counts))
