"""Every recipe in configs/ loads, names a registered method and passes only known options."""

import inspect
from pathlib import Path

import pytest

from mlrkit.data import list_datasets
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.recipe_schema import Recipe
from mlrkit.engine.trainer import TrainConfig
from mlrkit.methods import method_class

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


#: Every recipe configs/ ships: adding or removing one means updating this set.
EXPECTED = {
    "clsl_coco2014-6k_partial",
    "clsl_voc2007_partial",
    "conse_coco2014-6k_zero-shot",
    "conse_voc2007_zero-shot",
    "dense-conse_coco2014-6k_zero-shot",
    "dense-conse_voc2007_zero-shot",
    "devise-conse_coco2014-6k_zero-shot",
    "devise-conse_voc2007_zero-shot",
    "devise_coco2014-6k_zero-shot",
    "devise_voc2007_zero-shot",
    "linear-an_coco2014-6k_partial",
    "linear-an_miml_partial",
    "linear-an_voc2007_partial",
    "linear_coco2014-6k_partial",
    "linear_coco2014-6k_single-positive",
    "linear_miml_partial",
    "linear_miml_single-positive",
    "linear_voc2007_partial",
    "linear_voc2007_single-positive",
    "mlp_coco2014-6k_partial",
    "mlp_miml_partial",
    "mlp_voc2007_partial",
    "sarb_coco2014-6k_partial",
    "sarb_coco2014_partial",
    "sarb_miml_partial",
    "sarb_vg200_partial",
    "sarb_voc2007_partial",
    "sarb_voc2007_partial-published",
    "sigrl_coco2014-6k_single-positive",
    "sigrl-conse_coco2014-6k_zero-shot",
    "sigrl-conse_voc2007_zero-shot",
    "sigrl_coco2014-6k_zero-shot",
    "sigrl_nus-wide_zero-shot-clip",
    "sigrl_voc2007_single-positive",
    "sigrl_voc2007_zero-shot",
    "ssgrl_coco2014-6k_partial",
    "ssgrl_miml_partial",
    "ssgrl_voc2007_partial",
}


def test_configs_holds_exactly_the_expected_recipes():
    assert {p.stem for p in CONFIGS} == EXPECTED


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_is_consistent(path):
    recipe = load_recipe(path)
    assert recipe["name"] == path.stem
    assert recipe["data"]["dataset"] in list_datasets()
    cls = method_class(recipe["method"]["name"])
    accepted = inspect.signature(cls.__init__).parameters
    unknown = set(recipe["method"]) - {"name"} - set(accepted)
    assert not unknown, f"{path.name}: {cls.__name__} takes no {sorted(unknown)}"
    TrainConfig(**recipe["train"])
    if cls.input_kind == "spatial" and recipe["features"] is not None:
        assert recipe["features"]["spatial"], f"{path.name}: the method needs spatial features"


def test_nus_wide_clip_recipe_builds_and_trains_a_step_with_a_random_tower():
    """The published SigRL setting without its data and weights: the recipe's encoder and method
    on a randomly initialised ViT-B/16, one AdamW step on two 224-pixel images and 5 classes."""
    import numpy as np
    import torch

    from mlrkit.engine.sources import create_encoder
    from mlrkit.engine.trainer import build_optimizer
    from mlrkit.methods import TaskSpec, create_method
    from mlrkit.methods.encoder_head import EncoderHead

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "configs"
                         / "sigrl_nus-wide_zero-shot-clip.yaml")
    assert recipe["protocol"]["unseen"] == "dataset"
    assert recipe["data"]["options"]["label_set"] == "tags1006"
    section = Recipe.from_dict(recipe).encoder
    encoder = create_encoder(section.model_copy(update={"weights": None}))  # no CLIP weights here
    assert encoder.name == "clip:ViT-B-16-quickgelu" and encoder.input_size == (3, 224, 224)
    generator = torch.Generator().manual_seed(0)
    assert (2 + encoder.num_patches, encoder.feature_dim) == (2 + 196, 512)  # the teacher's row
    spec = TaskSpec(5, (2 + 196, 512), np.zeros((2, 5), dtype=np.int8),
                    torch.randn(5, 512, generator=generator), tuple("abcde"))
    hparams = {k: v for k, v in recipe["method"].items() if k != "name"}
    head = EncoderHead(encoder, create_method("sigrl", spec, **hparams), lr_mult=section.lr_mult,
                       trainable=section.trainable, lr_decay=section.lr_decay)
    cfg = TrainConfig(**recipe["train"])
    optimizer = build_optimizer(head, cfg)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    visual = encoder.model.visual
    blocks = visual.transformer.resblocks
    assert lrs[id(blocks[10].attn.in_proj_weight)] == pytest.approx(1e-4 * 0.65**2, rel=1e-12)
    assert lrs[id(blocks[11].mlp.c_fc.bias)] == pytest.approx(1e-4 * 0.65, rel=1e-12)
    assert lrs[id(visual.proj)] == lrs[id(visual.ln_post.weight)] == pytest.approx(1e-4)
    assert lrs[id(head.method.key.weight)] == pytest.approx(1e-4)

    images = torch.randn(2, 3, 224, 224, generator=generator)
    targets = torch.tensor([[1, 0, -1, 0, 0], [0, 1, 0, 0, 1]], dtype=torch.int8)
    teacher = {k: v.clone() for k, v in encoder.teacher.state_dict().items()}
    head.train()
    out = head(images, targets)
    assert torch.isfinite(out.loss)
    assert out.logs["distill"] == pytest.approx(0.0, abs=1e-5)  # student = teacher at first
    out.loss.backward()
    assert all(blocks[i].attn.in_proj_weight.grad is not None for i in (10, 11))
    assert visual.proj.grad is not None and float(visual.proj.grad.abs().sum()) > 0
    assert all(p.grad is None for i in range(10) for p in blocks[i].parameters())
    assert all(p.grad is None for p in encoder.teacher.parameters())
    optimizer.step()
    for key, value in encoder.teacher.state_dict().items():
        assert torch.equal(value, teacher[key]), key
