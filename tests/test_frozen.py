"""Encoders frozen to ONNX: the same preprocessing, outputs, ConSE probabilities and run
predictions as torch, from a cache that is used without building the torch model again.

The rest of the suite runs with ``MLRKIT_FROZEN=0`` (conftest): the torch path is the reference
these tests compare the frozen one to.
"""

import json

import numpy as np
import pytest
import torch
from conftest import real_data
from PIL import Image
from test_recipe_run import make_dataset, recipe_file  # noqa: F401 (a fixture)

from mlrkit.cli import main
from mlrkit.encoders import create_image_encoder
from mlrkit.encoders.frozen import Preprocess, _key, frozen_encoder
from mlrkit.encoders.imagenet import CLASSIFIER, imagenet_classifier, imagenet_head
from mlrkit.encoders.weights import PYPI_WEIGHTS
from mlrkit.engine.inference import load_run
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.run import train_run
from mlrkit.zero_shot import imagenet_probabilities

PHOTOS = ["000077.jpg", "000005.jpg", "000016.jpg", "000020.jpg"]  # portrait and landscape


def voc_photos() -> list:
    folder = real_data("voc2007") / "VOCdevkit" / "VOC2007" / "JPEGImages"
    return [folder / name for name in PHOTOS]


@pytest.fixture
def frozen_on(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRKIT_FROZEN", "1")
    monkeypatch.setenv("MLRKIT_CACHE", str(tmp_path / "mlrkit-cache"))
    return tmp_path / "mlrkit-cache" / "frozen"


@pytest.mark.parametrize("config", [
    PYPI_WEIGHTS[CLASSIFIER].data_config,  # bicubic, crop 0.875 of 256
    {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.9,
     "crop_mode": "center", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
    {"input_size": (3, 96, 96), "interpolation": "bicubic", "crop_pct": 1.0,
     "crop_mode": "center", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4)},
])
def test_preprocess_equals_timms_evaluation_transform(config):
    from timm.data import create_transform

    theirs, ours = create_transform(**config, is_training=False), Preprocess.from_data_config(config)
    for path in voc_photos():
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        want, got = theirs(rgb), ours(rgb)
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_preprocess_refuses_what_it_does_not_reproduce():
    base = dict(PYPI_WEIGHTS[CLASSIFIER].data_config)
    assert Preprocess.from_data_config({**base, "crop_mode": "squash"}) is None
    assert Preprocess.from_data_config({**base, "crop_pct": 1.1}) is None  # would pad
    assert Preprocess.from_data_config({**base, "input_size": (3, 224, 160)}) is None


def no_build():
    raise AssertionError("the torch encoder is not built when the cache (or nothing) serves")


@pytest.fixture(scope="module")
def small_encoder(tmp_path_factory):
    """timm's ``test_resnet`` at 64 px, and its frozen copy in a cache folder of the module."""
    torch_encoder = create_image_encoder("test_resnet", weights=None, seed=3, image_size=64)
    cache = tmp_path_factory.mktemp("frozen")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLRKIT_FROZEN", "1")
        frozen = frozen_encoder("test_resnet", torch_encoder.weights_id, 64,
                                lambda: torch_encoder, cache_dir=cache)
    return torch_encoder.eval(), frozen, cache


def test_a_frozen_encoder_equals_torch_and_is_reused_from_the_cache(small_encoder, monkeypatch):
    torch_encoder, frozen, cache = small_encoder
    assert frozen is not None and len(list(cache.glob("*.onnx"))) == 1
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = torch_encoder(images)
    got = frozen(images)
    for ours, theirs in zip(got, want, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(frozen(images[:1]).pooled, want.pooled[:1], rtol=1e-4, atol=1e-5)
    monkeypatch.setenv("MLRKIT_FROZEN", "1")
    again = frozen_encoder("test_resnet", torch_encoder.weights_id, 64, no_build, cache_dir=cache)
    torch.testing.assert_close(again(images).pooled, got.pooled, rtol=0, atol=0)
    assert _key("test_resnet", "random:seed=3", 64) != _key("test_resnet", "random:seed=4", 64)
    assert _key("test_resnet", "random:seed=3", 64) != _key("test_resnet", "random:seed=3", 96)
    with pytest.raises(ValueError, match="not trained"):
        frozen.transform(train=True)


def test_freezing_is_off_with_the_environment_switch_and_for_clip(small_encoder, monkeypatch):
    cache = small_encoder[2]
    monkeypatch.setenv("MLRKIT_FROZEN", "1")
    assert frozen_encoder("clip:ViT-B-32", "random:seed=0", None, no_build) is None
    monkeypatch.setenv("MLRKIT_FROZEN", "0")
    assert frozen_encoder("test_resnet", "random:seed=3", 64, no_build, cache_dir=cache) is None


def test_a_damaged_cache_entry_falls_back_and_is_removed(small_encoder, tmp_path, monkeypatch):
    for path in small_encoder[2].iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    [onnx] = tmp_path.glob("*.onnx")
    onnx.write_bytes(b"not an onnx file")
    monkeypatch.setenv("MLRKIT_FROZEN", "1")
    assert frozen_encoder("test_resnet", "random:seed=3", 64, no_build, cache_dir=tmp_path) is None
    assert not onnx.exists()  # the next call exports it afresh


def test_imagenet_head_is_the_classifiers_own():
    head, theirs = imagenet_head(), imagenet_classifier().model.get_classifier()
    assert torch.equal(head.weight, theirs.weight) and torch.equal(head.bias, theirs.bias)


def test_frozen_conse_probabilities_equal_the_torch_classifiers(frozen_on, monkeypatch):
    photos = voc_photos()
    frozen = imagenet_probabilities(photos)
    assert len(list(frozen_on.glob("*.onnx"))) == 1
    monkeypatch.setenv("MLRKIT_FROZEN", "0")
    np.testing.assert_allclose(frozen, imagenet_probabilities(photos), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(frozen, imagenet_probabilities(photos, imagenet_classifier()),
                               rtol=1e-4, atol=1e-6)


def test_predict_through_the_frozen_encoder_equals_torch(recipe_file, tmp_path,  # noqa: F811
                                                         frozen_on, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("MLRKIT_FROZEN", "0")
    train_run(load_recipe(recipe_file), run_dir)
    images = sorted((tmp_path / "data" / "images").glob("*.jpg"))[:6]
    want = load_run(run_dir).predict(images)
    monkeypatch.setenv("MLRKIT_FROZEN", "1")
    run = load_run(run_dir)
    assert type(run.scoring_model().encoder).__name__ == "FrozenEncoder"
    torch.testing.assert_close(run.predict(images), want, rtol=1e-5, atol=1e-6)
    assert main(["predict", "--checkpoint", str(run_dir), str(images[0])]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["labels"][0]["score"] == pytest.approx(float(want[0].max()), abs=1e-5)
