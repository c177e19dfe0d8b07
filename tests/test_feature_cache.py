"""Feature cache: exact features, reuse, stale-cache refusal, resume, bad images, read-only load.

Everything runs on a few tiny generated JPEGs with a randomly initialised resnet10t at 64 px, so
the file runs offline in a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlrkit.cli import main
from mlrkit.data.dataset import MultiLabelData
from mlrkit.data.feature_cache import (
    StaleCacheError,
    extract_features,
    load_features,
)
from mlrkit.data.images import UnreadableImagesError
from mlrkit.encoders.image import create_image_encoder

NUM_IMAGES = 7
IMAGE_SIZE = 64


def _write_jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = 40 + 4 * seed, 56 - 2 * seed
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def _make_data(root: Path, n: int = NUM_IMAGES) -> MultiLabelData:
    (root / "images").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / "images" / f"img_{i}.jpg"
        _write_jpeg(path, i)
        paths.append(path)
    labels = np.random.default_rng(0).integers(-1, 2, (n, 3)).astype(np.int8)
    splits = np.array(["train", "test"] * n)[:n]
    return MultiLabelData("tiny", root, ["cat", "dog", "person"], paths, labels, splits)


def _encoder(name: str = "resnet10t", image_size: int = IMAGE_SIZE):
    return create_image_encoder(name, image_size=image_size, seed=0)


def _direct_forward(encoder, data: MultiLabelData) -> tuple[np.ndarray, np.ndarray]:
    """Pooled (N, D) and spatial (N, D, h, w) float32 from a plain forward pass, no cache."""
    transform = encoder.transform(train=False)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in data.image_paths])
    with torch.inference_mode():
        out = encoder.eval()(images)
    return out.pooled.numpy(), out.spatial.numpy()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def encoder():
    return _encoder()


@pytest.fixture
def data(tmp_path: Path) -> MultiLabelData:
    return _make_data(tmp_path / "data")


def test_features_equal_direct_forward_and_load_memory_mapped_read_only(encoder, data, tmp_path):
    out = tmp_path / "cache"
    summary = extract_features(data, encoder, out, batch_size=3, num_workers=0, spatial=True)
    assert summary.computed == NUM_IMAGES and not summary.reused

    cache = load_features(out, data=data, encoder=encoder)
    pooled, spatial = _direct_forward(encoder, data)
    assert isinstance(cache.pooled, np.memmap) and isinstance(cache.spatial, np.memmap)
    assert cache.pooled.dtype == np.float32 and cache.spatial.dtype == np.float16
    np.testing.assert_allclose(cache.pooled, pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cache.spatial.astype(np.float32), spatial, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(cache.labels, data.labels)
    assert cache.image_ids == [f"images/img_{i}.jpg" for i in range(NUM_IMAGES)]
    assert cache.class_names == data.class_names
    np.testing.assert_array_equal(cache.split_index("test"), [1, 3, 5])
    for array in (cache.pooled, cache.spatial, cache.labels):
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 0

    meta = json.loads((out / "meta.json").read_text())
    assert meta["encoder"]["name"] == "resnet10t"
    assert meta["encoder"]["input_size"] == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert meta["features"]["spatial_dtype"] == "float16"
    assert meta["progress"] == {"done": NUM_IMAGES, "failed": [], "complete": True}


def test_second_identical_run_reuses_the_cache(encoder, data, tmp_path):
    out = tmp_path / "cache"
    extract_features(data, encoder, out, num_workers=0, progress=False)
    before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}

    again = extract_features(data, encoder, out, num_workers=0, progress=False)

    assert again.reused and again.computed == 0
    assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("encoder", "encoder.name"),
        ("image_size", "encoder.input_size"),
        ("weights", "encoder.weights_id"),
        ("image_order", "image list"),
        ("image_count", "image list"),
        ("spatial", "features.spatial"),
    ],
)
def test_stale_cache_is_refused_naming_the_field(encoder, data, tmp_path, change, field):
    out = tmp_path / "cache"
    extract_features(data, encoder, out, num_workers=0, progress=False)
    other_encoder, other_data, spatial = encoder, data, False
    if change == "encoder":
        other_encoder = _encoder("mobilenetv3_small_050")
    elif change == "image_size":
        other_encoder = _encoder(image_size=IMAGE_SIZE + 16)
    elif change == "weights":
        other_encoder = _encoder()
        other_encoder.weights_id = "sha256:0123"
    elif change == "image_order":
        other_data = data.select(np.array([0, 2, 1, 3, 4, 5, 6]))
    elif change == "image_count":
        other_data = data.select(np.arange(NUM_IMAGES - 1))
    else:
        spatial = True

    with pytest.raises(StaleCacheError, match=field) as err:
        extract_features(other_data, other_encoder, out, spatial=spatial, num_workers=0)
    assert "--overwrite" in str(err.value) and "--out" in str(err.value)
    if change != "spatial":
        with pytest.raises(StaleCacheError, match=field):
            load_features(out, data=other_data, encoder=other_encoder)


def test_overwrite_rebuilds_a_stale_cache(encoder, data, tmp_path):
    out = tmp_path / "cache"
    extract_features(data, encoder, out, num_workers=0, progress=False)
    other = _encoder(image_size=IMAGE_SIZE + 16)

    rebuilt = extract_features(data, other, out, num_workers=0, progress=False, overwrite=True)

    assert rebuilt.computed == NUM_IMAGES
    assert load_features(out, data=data, encoder=other).pooled.shape == (NUM_IMAGES, 512)


def test_changed_labels_are_rewritten_without_recomputing(encoder, data, tmp_path):
    out = tmp_path / "cache"
    extract_features(data, encoder, out, num_workers=0, progress=False)
    relabelled = replace(data, labels=-data.labels)
    with pytest.raises(StaleCacheError, match="labels"):
        load_features(out, data=relabelled)

    summary = extract_features(relabelled, encoder, out, num_workers=0, progress=False)

    assert summary.computed == 0
    np.testing.assert_array_equal(load_features(out, data=relabelled).labels, -data.labels)


def test_replaced_image_is_refused_on_load_and_extract_recomputes_only_it(encoder, data, tmp_path):
    out = tmp_path / "cache"
    extract_features(data, encoder, out, num_workers=0, progress=False)
    _write_jpeg(data.image_paths[3], seed=20)  # another picture under the same name

    with pytest.raises(StaleCacheError, match=r"1 image file\(s\) changed on disk.*img_3\.jpg.*"
                                              r"recomputes only these rows.*--overwrite"):
        load_features(out, data=data)
    summary = extract_features(data, encoder, out, num_workers=0, progress=False)

    assert summary.computed == 1
    pooled, _ = _direct_forward(encoder, data)
    np.testing.assert_allclose(load_features(out, data=data).pooled, pooled, rtol=1e-5, atol=1e-5)


def test_cache_from_before_file_records_gets_them_once_without_recomputing(
    encoder, data, tmp_path, caplog
):
    out = tmp_path / "cache"
    extract_features(data, encoder, out, num_workers=0, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    del meta["images"]["files"]  # as written by mlrkit before the records existed
    (out / "meta.json").write_text(json.dumps(meta))
    load_features(out, data=data)  # still readable as it is

    with caplog.at_level("WARNING"):
        summary = extract_features(data, encoder, out, num_workers=0, progress=False)

    assert summary.reused and "predates per-image size" in caplog.text
    recorded = json.loads((out / "meta.json").read_text())["images"]["files"]
    assert recorded == [[p.stat().st_size, p.stat().st_mtime_ns] for p in data.image_paths]
    _write_jpeg(data.image_paths[0], seed=10)
    with pytest.raises(StaleCacheError, match="img_0.jpg"):
        load_features(out, data=data)


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_and_computes_only_the_rest(encoder, data, tmp_path):
    full = tmp_path / "full"
    extract_features(data, encoder, full, batch_size=2, num_workers=0, spatial=True)

    out = tmp_path / "cache"

    def stop_after_two_batches(committed: int, total: int) -> None:
        if committed == 4:
            raise Interrupt

    with pytest.raises(Interrupt):
        extract_features(
            data, encoder, out, batch_size=2, num_workers=0, spatial=True,
            on_batch=stop_after_two_batches,
        )  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["progress"] == {"done": 4, "failed": [], "complete": False}
    with pytest.raises(StaleCacheError, match="incomplete"):
        load_features(out)

    calls = []
    summary = extract_features(
        data, encoder, out, batch_size=2, num_workers=0, spatial=True,
        on_batch=lambda committed, total: calls.append((committed, total)),
    )  # fmt: skip

    assert summary.computed == NUM_IMAGES - 4
    assert calls == [(2, 3), (3, 3)]
    resumed, reference = load_features(out, data=data), load_features(full, data=data)
    np.testing.assert_array_equal(resumed.pooled, reference.pooled)
    np.testing.assert_array_equal(resumed.spatial, reference.spatial)


KILLED_CHILD = """
import sys, time
from pathlib import Path
import numpy as np, torch
from mlrkit.data.dataset import MultiLabelData
from mlrkit.data.feature_cache import extract_features
from mlrkit.encoders.image import create_image_encoder

root, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(1)
data = MultiLabelData(
    "tiny", root, ["cat", "dog", "person"], sorted((root / "images").glob("*.jpg")),
    np.load(root / "labels.npy"), np.load(root / "splits.npy"),
)
encoder = create_image_encoder("resnet10t", image_size=%d, seed=0)
extract_features(data, encoder, out, batch_size=1, num_workers=0, progress=False,
                 on_batch=lambda committed, total: time.sleep(0.3))
"""


def test_killed_run_resumes_from_its_committed_rows(encoder, data, tmp_path):
    np.save(data.root / "labels.npy", data.labels)
    np.save(data.root / "splits.npy", data.splits)
    out = tmp_path / "cache"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHILD % IMAGE_SIZE, str(data.root), str(out)]
    )
    deadline = time.monotonic() + 60
    while not (out / "meta.json").exists() or _progress(out)["done"] < 2:
        assert child.poll() is None and time.monotonic() < deadline, "child ended early"
        time.sleep(0.02)
    child.kill()  # SIGKILL: no exception handler, no flush, no cleanup
    child.wait()
    done = _progress(out)["done"]
    assert 2 <= done < NUM_IMAGES

    summary = extract_features(data, encoder, out, num_workers=0, progress=False)

    assert summary.computed == NUM_IMAGES - done
    pooled, _ = _direct_forward(encoder, data)
    np.testing.assert_allclose(load_features(out, data=data).pooled, pooled, rtol=1e-5, atol=1e-5)


def _progress(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())["progress"]


def test_missing_and_unreadable_files_are_all_listed_before_computing(encoder, data, tmp_path):
    data.image_paths[1].unlink()
    data.image_paths[4].write_bytes(b"not a jpeg at all")
    out = tmp_path / "cache"

    with pytest.raises(UnreadableImagesError) as err:
        extract_features(data, encoder, out, num_workers=0, progress=False)

    problems = err.value.problems
    assert problems == {
        str(data.image_paths[1]): "file not found",
        str(data.image_paths[4]): problems[str(data.image_paths[4])],
    }
    assert "UnidentifiedImageError" in problems[str(data.image_paths[4])]
    assert str(data.image_paths[1]) in str(err.value) and "nothing was computed" in str(err.value)
    assert not (out / "pooled.npy").exists()


def test_truncated_jpeg_is_reported_after_the_run_and_a_rerun_computes_only_it(
    encoder, data, tmp_path
):
    good_bytes = data.image_paths[2].read_bytes()
    data.image_paths[2].write_bytes(good_bytes[: len(good_bytes) // 2])
    out = tmp_path / "cache"

    with pytest.raises(UnreadableImagesError) as err:
        extract_features(data, encoder, out, batch_size=3, num_workers=1, progress=False)
    assert list(err.value.problems) == [str(data.image_paths[2])]
    assert "truncated" in err.value.problems[str(data.image_paths[2])]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["progress"]["done"] == NUM_IMAGES and not meta["progress"]["complete"]
    with pytest.raises(StaleCacheError, match="1 failed"):
        load_features(out)

    data.image_paths[2].write_bytes(good_bytes)
    summary = extract_features(data, encoder, out, batch_size=3, num_workers=1, progress=False)

    assert summary.computed == 1
    pooled, _ = _direct_forward(encoder, data)
    np.testing.assert_allclose(load_features(out).pooled, pooled, rtol=1e-5, atol=1e-5)


def test_cli_extract_writes_a_cache_of_the_chosen_split(tmp_path, capsys):
    root = tmp_path / "data"
    data = _make_data(root, n=4)
    rows = ["image,cat,dog,person"] + [
        f"img_{i}.jpg," + ",".join(str(max(v, 0)) for v in data.labels[i]) for i in range(4)
    ]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "split.csv").write_text("image,split\n" + "".join(
        f"img_{i}.jpg,{'train' if i < 3 else 'test'}\n" for i in range(4)
    ))  # fmt: skip
    out = tmp_path / "cache"
    argv = ["extract", "--dataset", "csv", "--root", str(root), "--encoder", "resnet10t",
            "--image-size", str(IMAGE_SIZE), "--out", str(out), "--split", "train",
            "--workers", "0", "--spatial"]  # fmt: skip

    assert main(argv) == 0
    cache = load_features(out)
    assert cache.pooled.shape[0] == 3 and cache.spatial is not None
    assert cache.image_ids == [f"images/img_{i}.jpg" for i in range(3)]

    assert main(argv) == 0
    assert "reused" in capsys.readouterr().out


def test_two_torchrun_ranks_share_the_work_and_resume_to_the_one_process_cache(
    encoder, data, tmp_path
):
    """Rank r computes batches r, r + 2, ...; interrupted after a round and resumed on two ranks,
    the cache equals the single-process one byte for byte."""
    np.save(data.root / "labels.npy", data.labels)
    np.save(data.root / "splits.npy", data.splits)
    reference = tmp_path / "one"
    extract_features(data, encoder, reference, batch_size=2, num_workers=0, spatial=True,
                     progress=False)
    out = tmp_path / "two" / "cache"

    def torchrun(stop_after: int) -> subprocess.CompletedProcess:
        worker = Path(__file__).resolve().parent / "extract_worker.py"
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(worker), str(data.root), str(out), "2", str(stop_after)],
            check=False, capture_output=True, text=True, timeout=300,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip

    stopped = torchrun(stop_after=4)  # batches [0, 1] and [2, 3]: one round of two ranks
    assert stopped.returncode != 0 and "stopped after 4 rows" in stopped.stderr
    assert _progress(out) == {"done": 4, "failed": [], "complete": False}
    encoded = {r: tmp_path / "two" / f"encoded-{r}.txt" for r in range(2)}
    assert encoded[1].read_text() == "2"  # rows 2 and 3 (rank 0: the shape probe, rows 0 and 1)
    resumed = torchrun(stop_after=0)  # [4, 5] on rank 0, [6] on rank 1
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (tmp_path / "two" / "computed.txt").read_text() == str(NUM_IMAGES - 4)
    assert [encoded[r].read_text() for r in range(2)] == ["2", "1"]
    for name in ("pooled.npy", "spatial.npy", "labels.npy"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert json.loads((out / "meta.json").read_text()) == json.loads(
        (reference / "meta.json").read_text()
    )
