"""Tests for mlrkit.metrics: AP against scikit-learn and a loop reference, hand-computed counts,
validation messages, and the accumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from sklearn.metrics import average_precision_score

from mlrkit.metrics import (
    MetricAccumulator,
    average_precision,
    f1_at_k,
    gather_across_ranks,
    mean_average_precision,
    mean_of_class_aps,
    precision_recall_f1,
    zero_shot_report,
)


def _random_problem(
    seed: int, n: int = 300, c: int = 12, unknown: float = 0.3, decimals: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0, 1) and labels with about 20% positives and ``unknown`` unknowns."""
    rng = np.random.default_rng(seed)
    scores = rng.random((n, c))
    if decimals is not None:
        scores = scores.round(decimals)
    labels = (rng.random((n, c)) < 0.2).astype(np.int8)
    labels[rng.random((n, c)) < unknown] = -1
    return scores, labels


def _sklearn_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """scikit-learn AP per class on the known entries of that class."""
    out = []
    for j in range(labels.shape[1]):
        known = labels[:, j] >= 0
        out.append(average_precision_score(labels[known, j], scores[known, j]))
    return np.array(out)


def _voc_ap_loop(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """VOC2012 all-point AP, one class and one entry at a time (tie-free scores only)."""
    out = []
    for j in range(labels.shape[1]):
        known = labels[:, j] >= 0
        y = labels[known, j][np.argsort(-scores[known, j])]
        tp = fp = 0
        recall, precision = [0.0], [0.0]
        for is_positive in y:
            tp += int(is_positive == 1)
            fp += int(is_positive == 0)
            recall.append(tp / int((y == 1).sum()))
            precision.append(tp / (tp + fp))
        recall.append(1.0)
        precision.append(0.0)
        for i in range(len(precision) - 2, -1, -1):
            precision[i] = max(precision[i], precision[i + 1])
        ap = 0.0
        for i in range(len(recall) - 1):
            if recall[i + 1] != recall[i]:
                ap += (recall[i + 1] - recall[i]) * precision[i + 1]
        out.append(ap)
    return np.array(out)


# --------------------------------------------------------------------------------------------------
# Average precision
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_non_interpolated_ap_equals_sklearn_on_random_scores(seed, dtype):
    scores, labels = _random_problem(seed)
    scores = scores.astype(dtype)
    ours = average_precision(scores, labels, interpolation="none").numpy()
    np.testing.assert_allclose(ours, _sklearn_ap(scores, labels), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_non_interpolated_ap_equals_sklearn_on_heavily_tied_scores(seed, dtype):
    scores, labels = _random_problem(seed, decimals=1)
    scores = scores.astype(dtype)
    assert len(np.unique(scores)) <= 11
    ours = average_precision(scores, labels).numpy()
    np.testing.assert_allclose(ours, _sklearn_ap(scores, labels), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("as_torch", [False, True])
def test_ap_accepts_numpy_and_torch_in_each_float_dtype(dtype, as_torch):
    scores, labels = _random_problem(3, decimals=2)
    scores = scores.astype(dtype)
    inputs = (torch.from_numpy(scores), torch.from_numpy(labels)) if as_torch else (scores, labels)
    ours = average_precision(*inputs)
    assert ours.shape == (12,) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), _sklearn_ap(scores, labels), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ap_orders_negative_zero_and_extreme_scores_like_sklearn(dtype):
    scores, labels = _random_problem(4, decimals=1)
    logits = scores - 0.5  # tied negative and positive values
    logits[0, 0], logits[1, 0] = -0.0, 0.0  # equal, so one step
    logits[2:6, 1] = [-3e38, 3e38, 1e-40, -1e-40]  # extremes and subnormals
    logits = logits.astype(dtype)
    for interpolation in ("none", "voc"):
        packed_or_float = average_precision(logits, labels, interpolation).numpy()
        float_path = average_precision(logits.astype(np.float64), labels, interpolation).numpy()
        np.testing.assert_array_equal(packed_or_float, float_path)
    np.testing.assert_allclose(
        average_precision(logits, labels).numpy(), _sklearn_ap(logits, labels), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voc_ap_equals_loop_reference_and_bounds_non_interpolated(seed, dtype):
    scores, labels = _random_problem(seed)
    scores = scores.astype(dtype)
    assert all(len(np.unique(column)) == len(column) for column in scores.T)  # tie-free classes
    voc = average_precision(scores, labels, interpolation="voc").numpy()
    np.testing.assert_allclose(voc, _voc_ap_loop(scores, labels), atol=1e-9, rtol=0)
    assert np.all(voc >= average_precision(scores, labels).numpy() - 1e-12)


def test_ap_hand_example():
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.5]])
    labels = torch.tensor([[0], [1], [0], [1], [1]])
    # precision at the positives: 1/2, 2/4, 3/5; envelope: 3/5 for all three
    assert average_precision(scores, labels).item() == pytest.approx((0.5 + 0.5 + 0.6) / 3)
    assert average_precision(scores, labels, interpolation="voc").item() == pytest.approx(0.6)


@pytest.mark.parametrize("interpolation", ["none", "voc"])
def test_tied_scores_form_one_step_whatever_the_row_order(interpolation):
    scores = torch.tensor([[0.9], [0.5], [0.5], [0.1]])
    labels = torch.tensor([[1], [1], [0], [0]])
    # threshold 0.9: P = 1, R = 1/2; threshold 0.5: P = 2/3, R = 1
    expected = 0.5 * 1 + 0.5 * 2 / 3
    assert average_precision(scores, labels, interpolation).item() == pytest.approx(expected)
    swapped = labels[[0, 2, 1, 3]]
    assert average_precision(scores, swapped, interpolation).item() == pytest.approx(expected)


def test_unknown_entries_do_not_change_ap():
    scores, labels = _random_problem(5, unknown=0.0)
    hidden = labels.copy()
    hidden[::3, :] = -1
    kept = np.ones(len(labels), dtype=bool)
    kept[::3] = False
    np.testing.assert_allclose(
        average_precision(scores, hidden).numpy(),
        average_precision(scores[kept], labels[kept]).numpy(),
        atol=1e-12,
    )


def test_classes_without_known_positive_are_nan_excluded_and_counted():
    scores, labels = _random_problem(6, c=5)
    labels[:, 1] = np.where(labels[:, 1] == 1, 0, labels[:, 1])  # no positive
    labels[:, 3] = -1  # nothing known
    per_class = average_precision(scores, labels)
    assert torch.isnan(per_class[[1, 3]]).all() and not torch.isnan(per_class[[0, 2, 4]]).any()

    result = mean_average_precision(scores, labels)
    assert result.num_classes_averaged == 3
    assert result.value == pytest.approx(float(per_class[[0, 2, 4]].mean()))

    zero = mean_average_precision(scores, labels, classes_without_positive="zero")
    assert zero.num_classes_averaged == 5
    assert zero.value == pytest.approx(float(per_class[[0, 2, 4]].sum()) / 5)
    assert zero.per_class[1].item() == 0.0


def test_map_of_a_class_with_only_positives_is_one_and_all_excluded_is_nan():
    scores = torch.tensor([[0.2, 0.3], [0.1, 0.4]])
    assert mean_average_precision(scores, torch.tensor([[1, -1], [1, 0]])).value == 1.0
    empty = mean_average_precision(scores, torch.tensor([[0, -1], [0, 0]]))
    assert math.isnan(empty.value) and empty.num_classes_averaged == 0


# --------------------------------------------------------------------------------------------------
# CP / CR / CF1, OP / OR / OF1
# --------------------------------------------------------------------------------------------------

# 3 images x 4 classes; threshold 0.5 predicts the entries marked *
#   class:        0       1       2       3
#   image 0:   .9*/1   .6*/0   .2/1    .7*/-1
#   image 1:   .8*/0   .4/1    .3/0    .1/0
#   image 2:   .1/1    .9*/1   .7*/-1  .2/0
SCORES = torch.tensor([[0.9, 0.6, 0.2, 0.7], [0.8, 0.4, 0.3, 0.1], [0.1, 0.9, 0.7, 0.2]])
LABELS = torch.tensor([[1, 0, 1, -1], [0, 1, 0, 0], [1, 1, -1, 0]], dtype=torch.int8)


def test_precision_recall_f1_hand_example():
    m = precision_recall_f1(SCORES, LABELS, threshold=0.5)
    # Nc = (1, 1, 0, 0); Np = (2, 2, 0 -> 1, 0 -> 1) (predicted unknowns ignored); Ng = (2, 2, 1, 0)
    # class 3 has Ng = 0: out of CP and CR, still in the overall counts
    assert m.num_classes_averaged == 3
    assert m.class_precision == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert m.class_recall == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert m.class_f1 == pytest.approx(1 / 3)
    assert m.overall_precision == pytest.approx(2 / 6)
    assert m.overall_recall == pytest.approx(2 / 5)
    assert m.overall_f1 == pytest.approx(2 * (1 / 3) * (2 / 5) / (1 / 3 + 2 / 5))


def test_precision_recall_f1_top_k_hand_example():
    m = precision_recall_f1(SCORES, LABELS, threshold=0.5, top_k=1)
    # top-1 per image: class 0 (.9), class 0 (.8), class 1 (.9); all above 0.5
    # Nc = (1, 1, 0, 0); Np = (2, 1, 1, 1); Ng = (2, 2, 1, 0)
    assert m.class_precision == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m.class_recall == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert m.overall_precision == pytest.approx(2 / 5)
    assert m.overall_recall == pytest.approx(2 / 5)


@pytest.mark.parametrize("top_k", [None, 2])
def test_precision_recall_f1_with_nothing_known_is_nan_everywhere(top_k):
    scores = torch.tensor([[0.9, 0.2, 0.7], [0.6, 0.8, 0.1]])
    labels = torch.full((2, 3), -1, dtype=torch.int8)
    m = precision_recall_f1(scores, labels, threshold=0.5, top_k=top_k)
    assert all(math.isnan(v) for v in m[:6]), m  # OP was 0.0 while OR and OF1 were NaN
    assert m.num_classes_averaged == 0


def test_top_k_needs_the_threshold_too_and_breaks_ties_by_lower_class_index():
    scores = torch.tensor([[0.3, 0.3, 0.3], [0.6, 0.6, 0.6]])
    labels = torch.tensor([[0, 1, 1], [0, 1, 1]])
    # image 0: top-1 is class 0 but below 0.5; image 1: top-1 is class 0 (tie, lowest index)
    m = precision_recall_f1(scores, labels, threshold=0.5, top_k=1)
    assert (m.overall_precision, m.overall_recall, m.overall_f1) == (0.0, 0.0, 0.0)
    # top-2: image 1 predicts classes 0 and 1. Nc = (0, 1, 0); Np = (1, 1, 0 -> 1); Ng = (0, 2, 2)
    m = precision_recall_f1(scores, labels, threshold=0.5, top_k=2)
    assert m.overall_precision == pytest.approx(1 / 3)
    assert m.overall_recall == pytest.approx(1 / 4)
    assert m.class_precision == pytest.approx(1 / 2)


def test_top_k_ties_match_a_stable_sort_by_descending_score():
    scores, labels = _random_problem(10, n=200, c=9, decimals=1)
    labels[labels == -1] = 1
    for k in (1, 4, 9):
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        hits = np.take_along_axis(labels, top, axis=1).sum()
        assert f1_at_k(scores, labels, k).precision == pytest.approx(hits / (200 * k))


def test_threshold_applies_to_scores_as_given():
    logits = torch.logit(SCORES.double())
    at_half = precision_recall_f1(SCORES, LABELS, threshold=0.5)
    assert precision_recall_f1(logits, LABELS, threshold=0.0) == at_half
    assert precision_recall_f1(SCORES, LABELS, threshold=0.0) != at_half


def test_class_never_predicted_adds_one_to_the_overall_precision_denominator():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    labels = torch.tensor([[1, 1], [0, 0]])
    m = precision_recall_f1(scores, labels, threshold=0.5)
    assert m.overall_precision == pytest.approx(1 / 3)  # HCP-MLR-PL: sum(Nc) / sum(max(Np, 1))
    assert m.class_precision == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------------
# F1@K and zero-shot
# --------------------------------------------------------------------------------------------------


def test_f1_at_k_hand_example():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.2, 0.7, 0.6, 0.1], [0.3, 0.3, 0.3, 0.3]])
    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]])
    # top-2: image 0 -> {0, 1}: 1 hit; image 1 -> {1, 2}: 2 hits; image 2 -> {0, 1} (ties): 0 hits
    r = f1_at_k(scores, labels, k=2)
    assert r.precision == pytest.approx(3 / 6)  # TP / (N k)
    assert r.recall == pytest.approx(3 / 7)
    assert r.f1 == pytest.approx(2 * (3 / 6) * (3 / 7) / (3 / 6 + 3 / 7))
    assert r.k == 2


def test_f1_at_k_counts_only_known_entries_among_the_top_k():
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6]])
    labels = torch.tensor([[1, -1, 1], [0, 1, -1]])
    # top-2: image 0 -> {0: pos, 1: unknown}; image 1 -> {1: pos, 2: unknown}
    r = f1_at_k(scores, labels, k=2)
    assert (r.precision, r.recall) == (1.0, pytest.approx(2 / 3))


def test_zero_shot_report_restricts_zsl_to_unseen_columns():
    scores, labels = _random_problem(7, c=10)
    unseen = [2, 5, 7, 9]
    labels[:, 5] = np.minimum(labels[:, 5], 0)  # an unseen class without a positive
    report = zero_shot_report(scores, labels, unseen, ks=(3, 4), classes_without_positive="zero")
    zsl_map = mean_average_precision(scores[:, unseen], labels[:, unseen], "none", "zero")
    assert (
        report.zsl.mean_ap.value == zsl_map.value and report.zsl.mean_ap.num_classes_averaged == 4
    )
    gzsl_map = mean_average_precision(scores, labels, "none", "zero")
    assert report.gzsl.mean_ap.value == gzsl_map.value
    assert report.zsl.at_k[3] == f1_at_k(scores[:, unseen], labels[:, unseen], 3)
    assert report.gzsl.at_k[4] == f1_at_k(scores, labels, 4)
    mask = np.zeros(10, dtype=bool)
    mask[unseen] = True
    by_mask = zero_shot_report(scores, labels, mask, ks=(3, 4), classes_without_positive="zero")
    assert by_mask.zsl.at_k == report.zsl.at_k and by_mask.zsl.mean_ap.value == zsl_map.value


# --------------------------------------------------------------------------------------------------
# Validation messages
# --------------------------------------------------------------------------------------------------


def test_non_finite_scores_are_rejected_with_count_and_first_position():
    scores = torch.rand(4, 3)
    scores[1, 2] = float("nan")
    scores[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 NaN/inf value\(s\); first at \[image 1, class 2\]"):
        average_precision(scores, torch.zeros(4, 3, dtype=torch.int8))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.zeros(4, 2), r"labels must have the shape of scores \(4, 3\), got \(4, 2\)"),
        (torch.full((4, 3), 2), r"1 \(positive\), 0 \(negative\) or -1 \(unknown\), got 12 other"),
        (torch.full((4, 3), 0.5), r"first at \[image 0, class 0\] = 0.5"),
    ],
)
def test_bad_labels_are_rejected(labels, message):
    with pytest.raises(ValueError, match=message):
        mean_average_precision(torch.rand(4, 3), labels)


def test_unsigned_and_bool_labels_are_accepted():
    scores, labels = _random_problem(11, unknown=0.0)
    expected = average_precision(scores, labels).numpy()
    for dtype in (np.uint8, bool):
        np.testing.assert_array_equal(average_precision(scores, labels.astype(dtype)), expected)
    with pytest.raises(ValueError, match=r"first at \[image \d+, class \d+\] = 2"):
        average_precision(scores, labels.astype(np.uint8) * 2)


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match=r"scores must be 2-D .* got 1-D of shape \(4,\)"):
        average_precision(torch.rand(4), torch.zeros(4))
    with pytest.raises(TypeError, match=r"scores must be floating point .* got dtype torch\.int64"):
        average_precision(torch.ones(4, 3, dtype=torch.long), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"must not be empty, got shape \(0, 3\)"):
        average_precision(torch.rand(0, 3), torch.zeros(0, 3))
    with pytest.raises(TypeError, match=r"torch\.Tensor or a numpy\.ndarray, got list"):
        average_precision([[0.1, 0.2]], np.zeros((1, 2)))


def test_bad_arguments_are_rejected():
    scores, labels = torch.rand(4, 3), torch.ones(4, 3)
    with pytest.raises(ValueError, match=r"1 <= k <= C = 3, got k = 4"):
        f1_at_k(scores, labels, 4)
    with pytest.raises(ValueError, match=r"got k = 0"):
        precision_recall_f1(scores, labels, threshold=0.5, top_k=0)
    with pytest.raises(TypeError, match="threshold"):
        precision_recall_f1(scores, labels)  # the caller must say which scale
    with pytest.raises(
        ValueError, match=r"interpolation must be one of \('none', 'voc'\), got 'v'"
    ):
        average_precision(scores, labels, interpolation="v")
    with pytest.raises(ValueError, match="classes_without_positive must be one of"):
        mean_average_precision(scores, labels, classes_without_positive="skip")
    with pytest.raises(
        ValueError, match=r"class indices must lie in \[0, 2\], got min 1 and max 3"
    ):
        zero_shot_report(scores, labels, [1, 3], ks=(1,))
    with pytest.raises(ValueError, match="class indices must be unique"):
        zero_shot_report(scores, labels, [1, 1], ks=(1,))
    with pytest.raises(ValueError, match="the class subset is empty"):
        zero_shot_report(scores, labels, np.zeros(3, dtype=bool), ks=(1,))
    with pytest.raises(ValueError, match=r"1 <= k <= C = 2, got k = 3"):
        zero_shot_report(scores, labels, [0, 1], ks=(3,))


# --------------------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------------------


def test_accumulator_over_batches_equals_one_call():
    scores, labels = _random_problem(8, decimals=2)
    acc = MetricAccumulator()
    for start in range(0, len(scores), 64):
        acc.update(torch.from_numpy(scores[start : start + 64]), labels[start : start + 64])
    accumulated, direct = (
        acc.mean_average_precision("voc"),
        mean_average_precision(scores, labels, "voc"),
    )
    assert accumulated.value == direct.value
    np.testing.assert_array_equal(accumulated.per_class.numpy(), direct.per_class.numpy())
    assert acc.precision_recall_f1(threshold=0.5, top_k=3) == precision_recall_f1(
        scores, labels, threshold=0.5, top_k=3
    )
    assert acc.f1_at_k(3) == f1_at_k(scores, labels, 3)
    acc.reset()
    with pytest.raises(RuntimeError, match="no batch was added"):
        acc.f1_at_k(3)


def test_accumulator_applies_the_sync_hook_once_per_tensor():
    calls = []

    def twice(rows):
        calls.append(rows.shape)
        return torch.cat([rows, rows])

    acc = MetricAccumulator(sync=twice)
    acc.update(torch.tensor([[0.9, 0.2]]), torch.tensor([[1, 0]]))
    assert acc.gathered()[0].shape == (2, 2)
    acc.f1_at_k(1)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="batch has 3 classes, earlier batches had 2"):
        acc.update(torch.rand(1, 3), torch.zeros(1, 3))


def test_gather_across_ranks_in_a_one_process_group(tmp_path):
    rows = torch.arange(6.0).view(3, 2)
    assert gather_across_ranks(rows) is rows
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        assert torch.equal(gather_across_ranks(rows), rows)
        labels = torch.tensor([[1, -1], [0, 1]], dtype=torch.int8)
        assert torch.equal(gather_across_ranks(labels), labels)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_run_on_cuda():
    scores, labels = _random_problem(9, decimals=1)
    scores_cuda, labels_cuda = torch.from_numpy(scores).cuda(), torch.from_numpy(labels).cuda()
    cpu = mean_average_precision(scores, labels, "voc")
    cuda = mean_average_precision(scores_cuda, labels_cuda, "voc")
    assert cuda.per_class.is_cuda and cuda.value == pytest.approx(cpu.value, abs=1e-12)
    at_half = precision_recall_f1(scores, labels, threshold=0.5, top_k=3)
    assert precision_recall_f1(scores_cuda, labels, threshold=0.5, top_k=3) == at_half
    assert f1_at_k(scores_cuda, labels_cuda, 3) == f1_at_k(scores, labels, 3)


def test_min_positives_leaves_rare_classes_out_of_the_mean_as_scikit_learn_would():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 5)) < np.array([0.5, 0.05, 0.3, 0.0, 0.08])).astype(np.int8)
    labels[rng.random(labels.shape) < 0.1] = -1  # unknown entries are ignored in counts too
    scores = rng.random((60, 5))
    positives = (labels == 1).sum(0)
    frequent = [c for c in range(5) if positives[c] >= 5]
    assert 0 < len(frequent) < 4  # the draw has rare and empty classes
    want = np.mean([average_precision_score(labels[labels[:, c] >= 0, c],
                                            scores[labels[:, c] >= 0, c]) for c in frequent])
    result = mean_average_precision(scores, labels, min_positives=5)
    assert result.num_classes_averaged == len(frequent)
    assert abs(result.value - want) < 1e-6
    assert mean_average_precision(scores, labels).num_classes_averaged == (positives > 0).sum()
    with pytest.raises(ValueError, match="min_positives must be >= 1"):
        mean_average_precision(scores, labels, min_positives=0)


def test_means_of_one_set_of_class_aps_equal_the_direct_means():
    rng = np.random.default_rng(1)
    labels = (rng.random((80, 6)) < np.array([0.5, 0.04, 0.3, 0.0, 0.1, 0.6])).astype(np.int8)
    labels[rng.random(labels.shape) < 0.1] = -1
    scores = rng.random((80, 6))
    per_class = average_precision(scores, labels)
    for without in ("exclude", "zero"):
        for fewest in (1, 5):
            direct = mean_average_precision(scores, labels, classes_without_positive=without,
                                            min_positives=fewest)
            reused = mean_of_class_aps(per_class, labels, without, fewest)
            assert reused.num_classes_averaged == direct.num_classes_averaged
            assert abs(reused.value - direct.value) < 1e-12
    columns = [0, 2, 5]
    assert abs(mean_of_class_aps(per_class[columns], labels[:, columns]).value
               - mean_average_precision(scores[:, columns], labels[:, columns]).value) < 1e-12
    with pytest.raises(ValueError, match=r"labels have shape \(80, 5\)"):
        mean_of_class_aps(per_class, labels[:, :5], min_positives=5)
