"""CLIP via open_clip: global embedding, projected patch tokens, text embeddings, local weights.

No CLIP weights can be installed here, so the tests use randomly initialised models: mostly a
ViT-B-16 shrunk through open_clip's config overrides (16-pixel patches, 64-pixel inputs, 2 narrow
blocks per tower), and the real ViT-S-16 config for SigRL's 224-pixel, 196-patch layout.
"""

import hashlib

import pytest
import torch
from safetensors.torch import save_file

from mlrkit.encoders import create_clip

TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
SMALL_VIT_B_16 = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "head_width": 32, "layers": 2},
    "text_cfg": TEXT_CFG,
}


@pytest.fixture(scope="module")
def clip():
    return create_clip("ViT-B-16", seed=0, **SMALL_VIT_B_16).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_global_embedding_equals_open_clip_encode_image(clip, images):
    with torch.no_grad():
        embedding, _ = clip.encode_image(images)
        reference = clip.model.encode_image(images)
    assert embedding.shape == (2, clip.embed_dim) == (2, 32)
    torch.testing.assert_close(embedding, reference, rtol=0, atol=1e-5)


def test_patch_tokens_are_ln_post_tokens_through_the_projection(clip, images):
    visual = clip.model.visual
    visual.output_tokens = True  # open_clip's own forward then also returns the ln_post tokens
    try:
        with torch.no_grad():
            _, tokens = visual(images)
    finally:
        visual.output_tokens = False
    with torch.no_grad():
        patches = clip.encode_image(images).patch_tokens
    assert patches.shape == (2, (64 // 16) * (64 // 16), 32)
    torch.testing.assert_close(patches, tokens @ visual.proj, rtol=0, atol=1e-5)


def test_vit_s_16_at_224_gives_sigrl_196_patch_tokens():
    clip = create_clip("ViT-S-16", seed=0).eval()
    assert clip.input_size == (3, 224, 224)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        embedding, patches = clip.encode_image(images)
        reference = clip.model.encode_image(images)
    assert embedding.shape == (1, 384) and patches.shape == (1, 196, 384)
    torch.testing.assert_close(embedding, reference, rtol=0, atol=1e-5)


def test_text_embeddings_are_unit_rows_averaged_over_templates(clip):
    names = ["cat", "dining table", "person"]
    templates = ("a photo of a {}.", "a blurry photo of the {}.")
    emb = clip.text_embeddings(names, templates)
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        per_template = [
            clip.encode_text(clip.tokenize([t.format(n) for n in names])) for t in templates
        ]
    expected = torch.stack([torch.nn.functional.normalize(f, dim=-1) for f in per_template]).mean(0)
    torch.testing.assert_close(emb, torch.nn.functional.normalize(expected, dim=-1))
    raw = clip.text_embeddings(names, templates, normalize=False)
    torch.testing.assert_close(raw, torch.stack(per_template).mean(0))


def test_text_embeddings_reject_a_template_without_a_slot(clip):
    with pytest.raises(ValueError, match="templates"):
        clip.text_embeddings(["cat"], ["a photo"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_file_gives_identical_outputs(clip, images, tmp_path, suffix):
    path = tmp_path / f"clip{suffix}"
    state = clip.model.state_dict()
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    reloaded = create_clip("ViT-B-16", weights=path, seed=1, **SMALL_VIT_B_16).eval()
    tokens = clip.tokenize(["a photo of a dog."])
    with torch.no_grad():
        for got, want in zip(reloaded.encode_image(images), clip.encode_image(images), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(reloaded.encode_text(tokens), clip.encode_text(tokens))
    assert reloaded.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert reloaded.model_id == f"open_clip:ViT-B-16:{reloaded.weights_id}"


def test_random_init_is_seeded(clip):
    assert clip.weights_id == "random:seed=0"
    again = create_clip("ViT-B-16", seed=0, **SMALL_VIT_B_16)
    torch.testing.assert_close(again.model.visual.proj, clip.model.visual.proj, rtol=0, atol=0)


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="CLIP weights"):
        create_clip("ViT-S-16", weights="no/such/clip.safetensors")


def test_resnet_clip_has_no_patch_tokens():
    small = {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8}
    clip = create_clip("RN50", seed=0, embed_dim=32, vision_cfg=small, text_cfg=TEXT_CFG)
    with pytest.raises(NotImplementedError, match="ViT image tower.*ModifiedResNet"):
        clip.encode_image(torch.zeros(1, 3, 64, 64))
