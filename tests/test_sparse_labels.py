"""The sparse label store: dense round trips, batches of rows, entries in any order, refusals,
and a memory-mapped folder."""

import json

import numpy as np
import pytest

from mlrkit.data.sparse_labels import SparseLabels


def random_labels(n=50, c=7, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(n, c), p=[0.7, 0.2, 0.1])
    labels[3] = -1  # an image with nothing known
    return labels


def test_dense_round_trip_and_rows():
    labels = random_labels()
    store = SparseLabels.from_dense(labels)
    assert store.shape == labels.shape and store.nnz == int((labels >= 0).sum())
    np.testing.assert_array_equal(store.to_dense(), labels)
    index = np.array([5, 3, 5, 0, 49])
    np.testing.assert_array_equal(store.rows(index), labels[index])
    assert repr(store) == f"SparseLabels(50 images x 7 classes, {store.nnz} known)"


def test_entries_in_any_order_make_the_same_store():
    labels = random_labels(seed=1)
    rows, columns = np.nonzero(labels >= 0)
    order = np.random.default_rng(2).permutation(len(rows))
    store = SparseLabels.from_entries(rows[order], columns[order], labels[rows, columns][order],
                                      num_images=50, num_classes=7)
    np.testing.assert_array_equal(store.to_dense(), labels)
    expected = SparseLabels.from_dense(labels)
    for name in ("indptr", "classes", "values"):
        np.testing.assert_array_equal(getattr(store, name), getattr(expected, name))


def test_bad_entries_are_refused_naming_the_entry():
    with pytest.raises(ValueError, match="entry 1: image 2, class 0 is given twice"):
        SparseLabels.from_entries([2, 2], [0, 0], [1, 1], num_images=3, num_classes=2)
    with pytest.raises(ValueError, match="entry 0: class index 5 outside 0 .. 1"):
        SparseLabels.from_entries([0], [5], [1], num_images=3, num_classes=2)
    with pytest.raises(ValueError, match="entry 1: value -1"):
        SparseLabels.from_entries([0, 1], [0, 1], [1, -1], num_images=3, num_classes=2)


def test_a_saved_store_loads_memory_mapped(tmp_path):
    labels = random_labels(seed=3)
    SparseLabels.from_dense(labels).save(tmp_path / "store")
    store = SparseLabels.load(tmp_path / "store")
    assert isinstance(store.classes, np.memmap)
    np.testing.assert_array_equal(store.to_dense(), labels)
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        SparseLabels.load(tmp_path)


@pytest.mark.parametrize("ties", [False, True])
def test_known_entry_metrics_equal_the_dense_ones(ties):
    import torch

    from mlrkit import metrics

    labels = random_labels(n=300, c=9, seed=4)
    labels[:, 8] = np.where(labels[:, 8] == 1, 0, labels[:, 8])  # a class without a positive
    rng = np.random.default_rng(5)
    scores = rng.normal(size=labels.shape).astype(np.float32)
    if ties:
        scores = np.round(scores, 1)
    store = SparseLabels.from_dense(labels)
    known = metrics.KnownEntryScores(store)
    for rows in np.array_split(rng.permutation(300), 7):  # batches in any order
        known.update(rows, torch.from_numpy(scores[rows]))
    want = metrics.average_precision(torch.from_numpy(scores), torch.from_numpy(labels)).numpy()
    np.testing.assert_allclose(known.average_precision(), want, rtol=0, atol=1e-12)
    assert np.isnan(known.average_precision()[8])
    dense_map = metrics.mean_average_precision(scores, labels)
    assert known.mean_average_precision().value == pytest.approx(dense_map.value, abs=1e-12)
    got = known.precision_recall_f1(threshold=0.0)
    np.testing.assert_allclose(got, metrics.precision_recall_f1(scores, labels, threshold=0.0),
                               rtol=0, atol=1e-12)
    sklearn = pytest.importorskip("sklearn.metrics")
    column = labels[:, 2] >= 0
    assert known.average_precision()[2] == pytest.approx(
        sklearn.average_precision_score(labels[column, 2], scores[column, 2]), abs=1e-6)


def test_unscored_entries_are_refused():
    from mlrkit import metrics

    known = metrics.KnownEntryScores(SparseLabels.from_dense(random_labels()))
    known.update([0, 1], np.zeros((2, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="never scored"):
        known.average_precision()


def write_openimages(folder, rows, header=True):
    descriptions = folder / "oidv6-class-descriptions.csv"
    descriptions.write_text(("LabelName,DisplayName\n" if header else "")
                            + "/m/01yrx,Cat\n/m/0bt9lr,Dog\n/m/0k4j,Car\n")
    labels = folder / "oidv6-train-annotations-human-imagelabels.csv"
    labels.write_text("ImageID,Source,LabelName,Confidence\n" + "".join(f"{r}\n" for r in rows))
    return labels, descriptions


@pytest.mark.parametrize("header", [True, False])
def test_openimages_labels_read_into_the_store(tmp_path, header):
    from mlrkit.data.openimages import read_openimages

    labels, descriptions = write_openimages(tmp_path, [
        "000a1,verification,/m/0bt9lr,1", "000a1,verification,/m/01yrx,0",
        "000b2,crowdsource-verification,/m/0k4j,1",
        "000a1,crowdsource-verification,/m/0bt9lr,1",  # verified twice, the same: counted once
    ], header)
    read = read_openimages(labels, descriptions)
    assert read.image_ids == ["000a1", "000b2"] and read.class_names == ["Cat", "Dog", "Car"]
    assert read.class_ids == ["/m/01yrx", "/m/0bt9lr", "/m/0k4j"] and read.repeated_rows == 1
    np.testing.assert_array_equal(read.labels.to_dense(), [[0, 1, -1], [-1, -1, 1]])


@pytest.mark.parametrize("row, message", [
    ("000a1,verification,/m/zzz,1", r"labels.csv:3: label '/m/zzz' is not in"),
    ("000a1,verification,/m/01yrx,0.5", r"labels.csv:3: confidence '0.5'"),
    ("000a1,verification,/m/0bt9lr,0", r"labels.csv:3: the same photo and label as line 2"),
])
def test_bad_openimages_rows_name_the_line(tmp_path, row, message):
    from mlrkit.data.files import DataFormatError
    from mlrkit.data.openimages import read_openimages

    labels, descriptions = write_openimages(tmp_path, ["000a1,verification,/m/0bt9lr,1", row])
    with pytest.raises(DataFormatError, match=message.replace("labels.csv", "imagelabels.csv")):
        read_openimages(labels, descriptions)


def test_sparse_and_dense_paths_agree_on_voc2007():
    """The partial-label mask, every training batch and loss, and the test metrics are the same
    from the sparse store as from the dense matrix, on VOC 2007's labels."""
    import torch
    from conftest import real_data

    from mlrkit import metrics
    from mlrkit.data import create_dataset
    from mlrkit.data.protocols import partial_labels, partial_labels_sparse
    from mlrkit.engine.batches import FeatureBatches, SparseFeatureBatches
    from mlrkit.methods import TaskSpec, create_method

    data = create_dataset("voc2007", real_data("voc2007"))
    train, test = data.subset("train").labels, data.subset("val").labels  # val: the test split
    mask = partial_labels(train, 0.1, seed=3)
    dense = np.where(mask.known, train, -1).astype(np.int8)
    sparse = partial_labels_sparse(SparseLabels.from_dense(train), 0.1, seed=3, chunk_rows=97)
    np.testing.assert_array_equal(sparse.to_dense(), dense)

    rng = np.random.default_rng(0)
    features = rng.normal(size=(len(train), 32)).astype(np.float32)
    spec = TaskSpec(20, (32,), dense)
    heads = [create_method("linear", spec) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    sources = [FeatureBatches(features, dense), SparseFeatureBatches(features, sparse)]
    optimisers = [torch.optim.SGD(h.parameters(), lr=0.5) for h in heads]
    for batch in np.array_split(rng.permutation(len(train)), 20):
        losses = []
        for head, source, optimiser in zip(heads, sources, optimisers, strict=True):
            inputs, targets, index = source[batch]
            loss = head(inputs, targets, index).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss))
        assert losses[0] == losses[1]

    test_features = rng.normal(size=(len(test), 32)).astype(np.float32)
    with torch.no_grad():
        logits = heads[1](torch.from_numpy(test_features)).logits
    known = metrics.KnownEntryScores(SparseLabels.from_dense(test))
    for rows in np.array_split(np.arange(len(test)), 5):
        known.update(rows, logits[rows])
    dense_map = metrics.mean_average_precision(logits, test)
    assert known.mean_average_precision().value == pytest.approx(dense_map.value, abs=1e-6)
    np.testing.assert_allclose(known.precision_recall_f1(threshold=0.0),
                               metrics.precision_recall_f1(logits, test, threshold=0.0),
                               rtol=0, atol=1e-6)


def test_sharded_features_index_like_an_array(tmp_path):
    from mlrkit.data.sharded_features import ShardedFeatures, write_sharded_features

    rows = np.random.default_rng(0).normal(size=(23, 4, 2)).astype(np.float16)
    written = write_sharded_features(tmp_path, np.array_split(rows, 4), shard_rows=5)
    assert [stop - start for _, start, stop in written.shards] == [5, 5, 5, 5, 3]
    features = ShardedFeatures(tmp_path)
    picked = np.array([22, 0, 7, 7, 13])
    np.testing.assert_array_equal(features[picked], rows[picked])
    ranks = [features.rows_of_rank(r, 2) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(ranks), np.arange(23))
    assert len(features.rows_of_rank(1, 2)) == 13  # shards 2..4: whole shards only
    with pytest.raises(IndexError):
        features[np.array([23])]


def test_torchrun_training_from_shards_and_a_sparse_store_equals_one_process(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from mlrkit.data.sharded_features import write_sharded_features

    rng = np.random.default_rng(1)
    truth = rng.random((96, 6)) < 0.3
    features = (truth @ rng.normal(size=(6, 8)) + 0.3 * rng.normal(size=(96, 8)))
    # each image has its own number of known labels: the ranks' halves of a batch hold different
    # counts, and the losses' mean over the known entries is taken over the global batch
    labels = np.where(rng.random((96, 6)) < 0.4, truth, -1).astype(np.int8)
    SparseLabels.from_dense(labels).save(tmp_path / "data" / "labels")
    write_sharded_features(tmp_path / "data" / "features",
                           np.array_split(features.astype(np.float32), 3), shard_rows=20)
    script = Path(__file__).parent / "scripts" / "ddp_sparse.py"
    launchers = {"one": [], "two": ["-m", "torch.distributed.run", "--standalone",
                                    "--nproc_per_node=2"]}
    for name, launcher in launchers.items():
        done = subprocess.run([sys.executable, *launcher, str(script), str(tmp_path / "data"),
                               str(tmp_path / name)], check=False, timeout=300,
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
    one, two = (load_file(tmp_path / n / "head.safetensors") for n in launchers)
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    figures = [json.loads((tmp_path / n / "figures.json").read_text()) for n in launchers]
    assert figures[1]["mAP"] == pytest.approx(figures[0]["mAP"], abs=1e-6) and figures[0]["mAP"] > 0.6
    assert figures[1]["OF1"] == pytest.approx(figures[0]["OF1"], abs=1e-6)
