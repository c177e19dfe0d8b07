"""Label protocols: reproduce the published generators exactly, save/reload, report gaps."""

from pathlib import Path

import numpy as np
import pytest
from conftest import real_data

from mlrkit.data import DataFormatError, MultiLabelData, create_dataset
from mlrkit.data.protocols import (
    ClassSplit,
    ProtocolMask,
    partial_labels,
    seen_unseen_split,
    single_positive,
    split_from_groups,
)


@pytest.fixture(scope="module")
def coco_labels() -> np.ndarray:
    """The (6168, 80) 0/1 labels of coco2014-6k (every entry known)."""
    labels = create_dataset("csv", real_data("coco2014-6k")).labels
    assert labels.shape == (6168, 80) and set(np.unique(labels)) == {0, 1}
    return labels


def hcp_reference(labels_pm1: np.ndarray, proportion: float) -> np.ndarray:
    """HCP-MLR-PL's changeLabelProportion, as published (labels in 1/-1, 0 = unknown)."""
    np.random.seed(0)
    mask = np.random.random(labels_pm1.shape)
    mask[mask < proportion] = 1
    mask[mask < 1] = 0
    return mask * labels_pm1


def cole_reference(labels01: np.ndarray, seed: int = 1200) -> np.ndarray:
    """Cole et al.'s observe_uniform(num_pos=1, num_neg=0), as published (returns 1 / 0 / -1)."""
    label_matrix = labels01.astype(float).copy()
    label_matrix[label_matrix == 0] = -1
    rng = np.random.RandomState(seed)
    obs = np.zeros_like(label_matrix)
    for i in range(label_matrix.shape[0]):
        for value, num_sel, mark in ((1.0, 1, 1.0), (-1.0, 0, -1.0)):
            idx_all = np.nonzero(label_matrix[i, :] == value)[0]
            rng.shuffle(idx_all)
            obs[i, idx_all[:num_sel]] = mark
    return obs


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_hcp_partial_mask_equals_reference_rule(coco_labels: np.ndarray, p: float) -> None:
    reference = hcp_reference(np.where(coco_labels == 1, 1, -1), p)
    mask = partial_labels(coco_labels, p, seed=0, mode="hcp")
    np.testing.assert_array_equal(mask.known, reference != 0)
    observed = mask.observed(coco_labels)
    np.testing.assert_array_equal(observed == 1, reference == 1)
    np.testing.assert_array_equal(observed == 0, reference == -1)


def test_partial_mask_keeps_about_p_and_drops_positives_and_negatives_alike(coco_labels):
    mask = partial_labels(coco_labels, 0.3, seed=7)
    assert mask.known.mean() == pytest.approx(0.3, abs=0.01)
    pos = coco_labels == 1
    assert mask.known[pos].mean() == pytest.approx(0.3, abs=0.03)
    assert mask.known[~pos].mean() == pytest.approx(0.3, abs=0.01)


def test_partial_mask_is_deterministic_from_seed(coco_labels):
    a = partial_labels(coco_labels, 0.1, seed=3)
    b = partial_labels(coco_labels, 0.1, seed=3)
    c = partial_labels(coco_labels, 0.1, seed=4)
    assert a.checksum == b.checksum != c.checksum


def test_cole_single_positive_equals_published_generator_for_every_image(coco_labels):
    reference = cole_reference(coco_labels)
    mask = single_positive(coco_labels, seed=1200, mode="cole")
    observed = mask.observed(coco_labels)
    np.testing.assert_array_equal(observed == 1, reference == 1)
    assert not (observed == 0).any()


def test_single_positive_keeps_exactly_one_true_positive_per_image(coco_labels):
    mask = single_positive(coco_labels, seed=0)
    observed = mask.observed(coco_labels)
    has_pos = (coco_labels == 1).any(axis=1)
    assert ((observed == 1).sum(axis=1) == has_pos).all()
    assert (coco_labels[observed == 1] == 1).all()
    assert (observed != 1).sum() == (observed == -1).sum()


def test_single_positive_choice_is_uniform_among_positives():
    labels = np.zeros((30000, 4), dtype=np.int8)
    labels[:, :3] = 1
    counts = single_positive(labels, seed=1).known.sum(axis=0)
    assert counts[3] == 0
    np.testing.assert_allclose(counts[:3] / 30000, 1 / 3, atol=0.01)


@pytest.mark.parametrize("mode", ["uniform", "cole"])
def test_images_without_positive_are_reported_not_dropped(mode):
    labels = np.array([[1, 0], [0, 0], [0, 1], [-1, 0]], dtype=np.int8)
    mask = single_positive(labels, mode=mode)
    assert mask.known.shape == (4, 2)
    np.testing.assert_array_equal(mask.no_positive, [1, 3])
    assert mask.stats(labels)["images_without_positive"] == 2
    assert not mask.known[[1, 3]].any()


def test_mask_round_trips_through_file_and_refuses_other_labels(tmp_path, coco_labels):
    mask = partial_labels(coco_labels, 0.1, seed=0, mode="hcp")
    path = mask.save(tmp_path / "masks" / "voc_p0.1.npz")
    loaded = ProtocolMask.load(path)
    np.testing.assert_array_equal(loaded.known, mask.known)
    assert (loaded.seed, loaded.params, loaded.protocol) == (0, {"known": 0.1, "mode": "hcp"},
                                                             "partial")
    assert loaded.checksum == mask.checksum
    np.testing.assert_array_equal(loaded.observed(coco_labels), mask.observed(coco_labels))
    other = coco_labels.copy()
    other[0, 0] = 1 - other[0, 0]
    with pytest.raises(ValueError, match="checksum"):
        loaded.observed(other)
    with pytest.raises(ValueError, match="shape"):
        loaded.observed(coco_labels[:10])


def test_single_positive_mask_round_trip_keeps_no_positive_list(tmp_path):
    labels = np.array([[1, 1], [0, 0]], dtype=np.int8)
    mask = single_positive(labels, mode="cole")
    loaded = ProtocolMask.load(mask.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(loaded.no_positive, [1])


def test_corrupt_or_missing_mask_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        ProtocolMask.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="bad.npz"):
        ProtocolMask.load(bad)


def test_bad_protocol_arguments_are_rejected():
    labels = np.zeros((2, 2), dtype=np.int8)
    with pytest.raises(ValueError, match="known must be"):
        partial_labels(labels, 0.0)
    with pytest.raises(ValueError, match="mode"):
        partial_labels(labels, 0.5, mode="dualcoop")
    with pytest.raises(ValueError, match="empty"):
        single_positive(np.zeros((0, 3), dtype=np.int8))
    with pytest.raises(ValueError, match="only contain|contain only"):
        single_positive(np.full((2, 2), 2, dtype=np.int8))


def test_seen_unseen_split_by_name_and_at_random(tmp_path):
    names = ["cat", "dog", "car", "bus", "sky"]
    split = seen_unseen_split(names, unseen=["bus", "cat"])
    np.testing.assert_array_equal(split.unseen, [0, 3])
    np.testing.assert_array_equal(split.seen, [1, 2, 4])
    with pytest.raises(ValueError, match="zebra"):
        seen_unseen_split(names, unseen=["zebra"])
    rand = seen_unseen_split(names, fraction=0.4, seed=1)
    assert len(rand.unseen) == 2 and len(rand.seen) == 3
    np.testing.assert_array_equal(seen_unseen_split(names, fraction=0.4, seed=1).unseen,
                                  rand.unseen)
    loaded = ClassSplit.load(rand.save(tmp_path / "split.json"))
    np.testing.assert_array_equal(loaded.unseen, rand.unseen)
    labels = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]], dtype=np.int8)
    np.testing.assert_array_equal(split.training_images(labels), [1])


def test_split_from_reader_groups():
    names = ["a", "b", "c"]
    split = split_from_groups(names, {"seen": np.array([2, 0]), "unseen": np.array([1])})
    np.testing.assert_array_equal(split.seen, [0, 2])
    with pytest.raises(DataFormatError, match="seen/unseen"):
        split_from_groups(names, {"concepts81": np.array([0])})


def test_data_and_masks_print_as_one_line():
    labels = np.array([[1, 0, -1], [0, 1, 1], [1, -1, 0], [0, 0, 1]], dtype=np.int8)
    data = MultiLabelData("toy", Path("."), ["a", "b", "c"], [Path(f"{i}.jpg") for i in range(4)],
                          labels, splits=np.array(["train", "train", "val", "test"]))
    assert repr(data) == ("MultiLabelData(name='toy', images=4, classes=3, splits={train: 2, "
                          "val: 1, test: 1}, known=83.3%)")
    mask = partial_labels(labels, known=0.5, seed=0)
    text = repr(mask)
    assert "\n" not in text and text.startswith("ProtocolMask(protocol='partial', shape=(4, 3), ")
    assert f"known={mask.known.mean():.1%}" in text and "seed=0" in text
