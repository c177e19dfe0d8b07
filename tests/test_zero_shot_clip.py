"""CLIP zero-shot scores: ``clip_scores`` against a direct computation, and ``mlrkit tag
--zero-shot clip`` end to end with a local weights file, and its option errors.

No CLIP weights can be installed here: the model is the randomly initialised ViT-B-16 of
test_encoders_clip shrunk to 64-pixel inputs, so the scores are exact numbers, not good tags.
"""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import real_data
from PIL import Image
from safetensors.torch import save_file
from test_cli_tag import CAT_1, DOG, VOC_PHOTOS, ranks, tag
from test_encoders_clip import SMALL_VIT_B_16

import mlrkit.encoders.clip as clip_module
from mlrkit.cli import main
from mlrkit.encoders import create_clip
from mlrkit.prompts import CLIP_ENSEMBLE
from mlrkit.zero_shot import clip_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ["cat", "dog", "dining table"]


@pytest.fixture(scope="module")
def clip():
    return create_clip("ViT-B-16", seed=0, **SMALL_VIT_B_16).eval()


@pytest.fixture
def photos():
    images = real_data("voc2007") / VOC_PHOTOS
    return [images / CAT_1, images / DOG]


def image_embeddings(clip, paths) -> torch.Tensor:
    """``(N, E)`` unit rows of ``clip.model.encode_image`` of the transformed photos."""
    transform = clip.transform(train=False)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return F.normalize(clip.model.encode_image(batch), dim=-1)


def test_scores_are_cosines_with_the_prompt_ensemble(clip, photos):
    scores = clip_scores(photos, LABELS, clip, batch_size=1)
    expected = image_embeddings(clip, photos) @ clip.text_embeddings(LABELS, CLIP_ENSEMBLE).T
    assert scores.shape == (2, 3) and scores.dtype == "float32"
    torch.testing.assert_close(torch.from_numpy(scores), expected, rtol=0, atol=1e-5)


def test_two_templates_average_the_unit_prompt_embeddings(clip, photos):
    templates = ["a photo of a {}.", "art of the {}."]
    scores = clip_scores([Image.open(p) for p in photos], LABELS, clip, templates=templates)
    with torch.no_grad():
        prompts = [F.normalize(clip.encode_text(clip.tokenize([t.format(n) for n in LABELS])),
                               dim=-1) for t in templates]  # 2 x (L, E)
    texts = F.normalize((prompts[0] + prompts[1]) / 2, dim=-1)
    expected = image_embeddings(clip, photos) @ texts.T
    torch.testing.assert_close(torch.from_numpy(scores), expected, rtol=0, atol=1e-5)


def test_template_list_has_the_notebooks_seven():
    assert len(CLIP_ENSEMBLE) == 7 and all(t.count("{}") == 1 for t in CLIP_ENSEMBLE)


@pytest.fixture
def calls(monkeypatch) -> list:
    """The ``(model_name, weights)`` the CLI asks ``create_clip`` for; it gets the small
    architecture built from those weights (the CLI has no option for a config)."""
    real, asked = clip_module.create_clip, []

    def small(name, weights=None, **kwargs):
        asked.append((name, weights))
        return real("ViT-B-16", weights, seed=1, **SMALL_VIT_B_16, **kwargs)

    monkeypatch.setattr(clip_module, "create_clip", small)
    return asked


@pytest.fixture
def weights(clip, tmp_path, calls):
    """The small model's weights in a ``.safetensors`` file."""
    path = tmp_path / "small_clip.safetensors"
    save_file(clip.model.state_dict(), path)
    return path


def test_cli_ranks_as_the_scores_do(capsys, clip, photos, weights, calls):
    code, out, err = tag(capsys, *photos, "--labels", ", ".join(LABELS), "--zero-shot", "clip",
                         "--weights", weights, "--format", "json", "--top-k", "3")
    assert code == 0 and "CLIP" in err and "2/2" in err
    assert calls == [("ViT-B-32", weights)]
    scores = clip_scores(photos, LABELS, clip)
    results = json.loads(out)
    assert [r["image"] for r in results] == [str(p) for p in photos]
    for entry, row in zip(results, scores, strict=True):
        order = sorted(range(3), key=lambda c: -row[c])
        assert ranks(entry) == {LABELS[c]: i for i, c in enumerate(order)}
        assert [e["score"] for e in entry["labels"]] == pytest.approx(
            [float(row[c]) for c in order], abs=1e-5)


def test_cli_template_and_clip_model(capsys, clip, photos, weights, calls):
    code, out, _ = tag(capsys, photos[0], "--labels", "cat, dog", "--zero-shot", "clip",
                       "--weights", weights, "--clip-model", "ViT-B-32-quickgelu",
                       "--template", "art of the {}.", "--no-progress")
    assert code == 0 and calls == [("ViT-B-32-quickgelu", weights)]
    row = clip_scores(photos[:1], ["cat", "dog"], clip, templates=["art of the {}."])[0]
    assert [e["score"] for e in json.loads(out)[0]["labels"]] == pytest.approx(
        sorted(row.tolist(), reverse=True), abs=1e-5)


@pytest.mark.parametrize(("args", "message"), [
    (["--zero-shot", "clip"], ("--zero-shot clip needs --weights FILE: no CLIP weights ship "
                               "with mlrkit; .* e.g. --weights ViT-B-32.safetensors "
                               "--clip-model ViT-B-32-quickgelu")),
    (["--weights", "w.safetensors"], "--weights applies to --zero-shot clip, not conse"),
    (["--zero-shot", "conse", "--clip-model", "RN50"],
     "--clip-model applies to --zero-shot clip, not conse"),
    (["--zero-shot", "clip", "--weights", "no/such.safetensors"],
     "--weights no/such.safetensors: not a file; give a local open_clip checkpoint"),
    (["--zero-shot", "clip", "--weights", "w", "--embeddings", "minilm"],
     "--embeddings applies to --zero-shot conse"),
    (["--zero-shot", "clip", "--weights", __file__, "--clip-model", "ViT-Q-99"],
     "--clip-model ViT-Q-99: not an open_clip architecture; give one of open_clip.list_models()"),
])
def test_option_errors_are_one_line(capsys, photos, args, message):
    code, out, err = tag(capsys, photos[0], "--labels", "cat", *args)
    assert code == 2 and out == ""
    assert err.startswith("mlrkit: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_weights_of_another_architecture_are_one_line(capsys, photos, tmp_path):
    path = tmp_path / "rn.safetensors"
    save_file({"logit_scale": torch.ones(())}, path)
    code = main(["tag", str(photos[0]), "--labels", "cat", "--zero-shot", "clip",
                 "--weights", str(path), "--clip-model", "ViT-S-16"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err == (f"mlrkit: error: --weights {path}: its tensors do not fit --clip-model "
                   f"ViT-S-16 (missing, unexpected or misshapen); name the file's architecture "
                   f"with --clip-model\n")
