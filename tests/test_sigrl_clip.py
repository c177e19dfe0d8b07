"""SigRL on CLIP image towers: the token layout, the student and its frozen teacher, layer-wise lr
decay, and a zero-shot run whose folder alone evaluates and tags.

No CLIP weights exist here: a tiny ViT config is registered with open_clip (``clip:mlrkit-tiny``,
3 blocks, 64-pixel inputs, 4 x 4 patches, 32-d embeddings) and randomly initialised with a seed.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open

from mlrkit.encoders import create_clip, create_image_encoder
from mlrkit.encoders.clip import clip_token_layout, split_clip_tokens
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.trainer import TrainConfig, build_optimizer
from mlrkit.methods import TaskSpec, create_method
from mlrkit.methods.encoder_head import EncoderHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCH = "mlrkit-tiny"
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "head_width": 32, "layers": 3},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
BLOCKS = "model.visual.transformer.resblocks"


@pytest.fixture(scope="module", autouse=True)
def tiny_arch(tmp_path_factory):
    """``mlrkit-tiny`` in open_clip's registry, so that recipes and run folders can name it."""
    import open_clip

    path = tmp_path_factory.mktemp("open_clip") / f"{ARCH}.json"
    path.write_text(json.dumps(TINY))
    open_clip.add_model_config(path)


def encoder(teacher: bool = False):
    return create_image_encoder(f"clip:{ARCH}", seed=0, teacher=teacher)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def sigrl(feature_shape, classes: int = 5, width: int = 32, **options):
    torch.manual_seed(0)
    spec = TaskSpec(classes, tuple(feature_shape), np.zeros((4, classes), dtype=np.int8),
                    torch.randn(classes, width), tuple(f"c{i}" for i in range(classes)))
    options = {"student": "clip", "distill_weight": 0.0, "gat_dropout": 0.0, "gat_hidden": 8,
               "top_k": 3, **options}
    return create_method("sigrl", spec, **options)


def test_token_layout_is_the_embedding_then_the_patch_tokens_of_encode_image(images):
    clip = create_clip(ARCH, seed=0).eval()
    tower = encoder().eval()
    with torch.no_grad():
        out = tower(images)
        embedding, patches = clip.encode_image(images)
    assert out.spatial.shape == (2, 1 + 16, 32) and tower.num_patches == 16
    torch.testing.assert_close(out.spatial[:, 0], embedding, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.spatial[:, 1:], patches, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pooled, embedding, rtol=0, atol=1e-6)
    with torch.no_grad():
        taught = encoder(teacher=True).eval()(images).spatial
    assert taught.shape == (2, 2 + 16, 32)
    parts = split_clip_tokens(taught)
    torch.testing.assert_close(parts.teacher, embedding, rtol=0, atol=1e-6)  # initial = student
    torch.testing.assert_close(parts.patches, patches, rtol=0, atol=1e-6)
    assert split_clip_tokens(out.spatial).teacher is None
    assert tower.name == f"clip:{ARCH}" and tower.weights_id == "random:seed=0"
    assert not any(n.startswith("model.transformer") or "token_embedding" in n
                   for n, _ in tower.named_parameters())  # no text tower


def test_row_count_tells_whether_the_teacher_row_is_there():
    assert clip_token_layout(197) == (False, 196) and clip_token_layout(198) == (True, 196)
    assert clip_token_layout(2) == (False, 1) and clip_token_layout(3) == (True, 1)
    with pytest.raises(ValueError, match="199 rows are no CLIP token layout"):
        clip_token_layout(199)
    with pytest.raises(ValueError, match="square patch grid"):
        create_image_encoder(f"clip:{ARCH}", seed=0, image_size=(64, 32))
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        create_image_encoder("clip:ViT-Q-99")
    with pytest.raises(FileNotFoundError, match="CLIP weights file not found"):
        create_image_encoder(f"clip:{ARCH}", weights="no/such.safetensors")


def test_clip_student_scores_are_sigrls_formula_on_the_clip_tokens(images):
    clip = create_clip(ARCH, seed=0).eval()
    with torch.no_grad():
        tokens = encoder().eval()(images).spatial
        embedding, patches = clip.encode_image(images)
    model = sigrl(tokens.shape[1:]).eval()
    assert not hasattr(model, "projection")  # CLIP's own W_proj, trained through the encoder
    text = model.class_embeddings
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits,
                                   model.scores_from(patches, embedding, text), rtol=0, atol=1e-6)
        glob = sigrl(tokens.shape[1:], branches="global").eval()
        torch.testing.assert_close(glob(tokens).logits, F.normalize(embedding @ text.T, dim=-1),
                                   rtol=0, atol=1e-6)


def test_distillation_is_the_mean_l1_of_z_g_to_the_teacher_row(images):
    tower = encoder(teacher=True)
    with torch.no_grad():
        tower.model.visual.proj.mul_(1.5)  # the student moves off the teacher
        tokens = tower.eval()(images).spatial
    model = sigrl(tokens.shape[1:], distill_weight=0.5)
    targets = torch.tensor([[1, 0, 0, -1, 0], [0, 0, 1, 0, 1]], dtype=torch.int8)
    out = model(tokens, targets)
    initial = create_clip(ARCH, seed=0).model.eval()
    with torch.no_grad():
        by_hand = (tokens[:, 0] - initial.encode_image(images)).abs().mean()
    assert float(by_hand) > 0.01
    assert out.logs["distill"] == pytest.approx(float(by_hand), abs=1e-6)
    assert float(out.loss) == pytest.approx(out.logs["rank"] + 0.5 * float(by_hand), abs=1e-6)


def test_the_teacher_stays_the_initial_tower_while_the_student_trains(images):
    head = EncoderHead(encoder(teacher=True), sigrl((18, 32), distill_weight=1.0),
                       trainable=[f"{BLOCKS}.2", "model.visual.ln_post", "model.visual.proj"])
    initial = create_clip(ARCH, seed=0).model.eval()
    reference = {k: v.clone() for k, v in initial.visual.state_dict().items()}
    optimizer = build_optimizer(head, TrainConfig(lr=0.05))
    targets = torch.tensor([[1, 0, 0, -1, 0], [0, 0, 1, 0, 1]], dtype=torch.int8)
    head.train()
    for _ in range(3):
        optimizer.zero_grad()
        head(images, targets).loss.backward()
        assert all(p.grad is None for p in head.encoder.teacher.parameters())
        optimizer.step()
    teacher = head.encoder.teacher
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0)
    assert not torch.equal(head.encoder.model.visual.proj, reference["proj"])  # it trained
    head.eval()
    with torch.no_grad():
        parts = split_clip_tokens(head.encoder(images).spatial)
        torch.testing.assert_close(parts.teacher, initial.encode_image(images), rtol=0, atol=1e-6)
        assert float((parts.embedding - parts.teacher).abs().mean()) > 1e-3
    # checkpoints hold the student only; loading one keeps the teacher as built
    state = head.encoder.state_dict()
    assert not any(k.startswith("teacher.") for k in state) and f"{BLOCKS}.2.ln_1.weight" in state
    fresh = encoder(teacher=True)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.model.visual.proj, head.encoder.model.visual.proj)
    torch.testing.assert_close(fresh.teacher.proj, reference["proj"], rtol=0, atol=0)
    encoder().load_state_dict(state)  # and a tower without a teacher takes it as well


def test_layer_wise_lr_decay_groups_have_the_exact_learning_rates():
    tower = encoder()
    head = EncoderHead(tower, sigrl((17, 32)), lr_mult=2.0, lr_decay=0.5,
                       trainable=[f"{BLOCKS}.1", f"{BLOCKS}.2", "model.visual.ln_post",
                                  "model.visual.proj"])
    cfg = TrainConfig(lr=1e-4, weight_decay=0.05, no_decay_1d=True)
    groups = build_optimizer(head, cfg).param_groups
    names = {id(p): n for n, p in head.named_parameters()}
    lrs = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    for name, param in head.named_parameters():
        if not param.requires_grad:
            assert name not in lrs
            continue
        if name.startswith(f"encoder.{BLOCKS}.1."):
            scale = 2.0 * 0.5**2  # block 1 of L = 3: lr_decay ** (3 - 1)
        elif name.startswith(f"encoder.{BLOCKS}.2."):
            scale = 2.0 * 0.5
        elif name.startswith("encoder."):
            scale = 2.0  # ln_post, proj
        else:
            scale = 1.0  # the head
        assert lrs[name] == (pytest.approx(1e-4 * scale, rel=1e-12), 0.0 if param.ndim <= 1
                             else 0.05), name
    assert not any(n.startswith(f"encoder.{BLOCKS}.0.") for n in lrs)
    # everything trainable (the teacher never): the stem is depth 0, at lr_decay ** (L + 1)
    head = EncoderHead(encoder(teacher=True), sigrl((18, 32)), lr_decay=0.5)
    names = {id(p): n for n, p in head.named_parameters()}
    mults = {names[id(p)]: g.get("lr_mult", 1.0) for g in head.param_groups() for p in g["params"]}
    assert mults["encoder.model.visual.conv1.weight"] == 0.5**4
    assert mults["encoder.model.visual.positional_embedding"] == 0.5**4
    assert mults[f"encoder.{BLOCKS}.0.attn.in_proj_weight"] == 0.5**3
    assert mults[f"encoder.{BLOCKS}.2.mlp.c_fc.bias"] == 0.5
    assert mults["encoder.model.visual.proj"] == mults["method.decouple_fc.weight"] == 1.0
    assert not any(n.startswith("encoder.teacher.") for n in mults)
    assert len(mults) == sum(p.requires_grad for p in head.parameters())


@pytest.mark.parametrize(("options", "message"), [
    ({"lr_decay": 0.0}, r"encoder\.lr_decay is 0\.0; give a value in \(0, 1\]"),
    ({"trainable": ["teacher.conv1"]}, r"'teacher\.conv1' covers the encoder's frozen 'teacher'"),
    ({"trainable": ["model.visual.blocks.2"]},
     r"'model\.visual\.blocks\.2' names no parameter of encoder 'clip:mlrkit-tiny'.*model\.visual"),
])
def test_bad_encoder_options_name_the_recipe_field(options, message):
    with pytest.raises(ValueError, match=message):
        EncoderHead(encoder(teacher=True), sigrl((18, 32)), **options)


def test_lr_decay_needs_numbered_blocks():
    timm = create_image_encoder("resnet18", weights=None, image_size=32, seed=0)
    spec = TaskSpec(3, (timm.feature_dim,), np.zeros((4, 3), dtype=np.int8))
    with pytest.raises(ValueError, match=r"encoder\.lr_decay: encoder 'resnet18' has no numbered"):
        EncoderHead(timm, create_method("linear", spec), lr_decay=0.65)


@pytest.mark.parametrize(("shape", "options", "message"), [
    ((17, 32), {"distill_weight": 1.0}, r"no teacher row: set encoder\.teacher: true"),
    ((17, 16), {}, r"CLIP's 16-d image tokens with the label embeddings, which are 32-d"),
    ((32, 4, 4), {}, r"needs the CLIP tokens \(R, E\).*student: projection"),
    ((19, 32), {}, r"19 rows are no CLIP token layout"),
    ((17, 32), {"student": "projection"}, r"student 'projection' needs spatial.*student: clip"),
    ((17, 32), {"student": "vit"}, r"student must be one of \('projection', 'clip', 'conse'\)"),
])
def test_sigrl_refuses_what_its_student_cannot_read(shape, options, message):
    with pytest.raises(ValueError, match=message):
        sigrl(shape, **options)


def test_a_layout_without_the_teacher_row_is_refused_when_distilling(images):
    model = sigrl((18, 32), distill_weight=1.0)
    with torch.no_grad():
        tokens = encoder().eval()(images).spatial  # (2, 17, 32): no teacher row
    assert model(tokens).logits.shape == (2, 5)  # scoring needs no teacher
    with pytest.raises(ValueError, match=r"no teacher row: set encoder\.teacher: true"):
        model(tokens, torch.zeros(2, 5, dtype=torch.int8))


@pytest.mark.parametrize(("overrides", "message"), [
    (["encoder.name=resnet18"],
     r"lr_decay: Value error, an option of CLIP .* 'resnet18'; remove it .*encoder\.teacher: Val"),
    (["encoder.lr_decay=1.5"], r"encoder\.lr_decay: Input should be less than or equal to 1"),
    (["label_embeddings.clip_model=null"], r"label_embeddings\.clip_model is required"),
    (["label_embeddings.source=glove"],
     r"label_embeddings\.clip_model only applies to source clip, not glove"),
])
def test_recipe_checks_the_clip_options(tmp_path, overrides, message):
    recipe = run_recipe(tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ValueError, match=message):
        load_recipe(path, overrides)


def run_recipe(tmp_path) -> dict:
    """A one-epoch zero-shot SigRL run through the tiny CLIP tower, as the NUS-WIDE recipe sets
    it up (teacher, last block + ln_post + proj trainable, layer-wise decay, CLIP labels)."""
    return {
        "name": "tiny-sigrl-clip",
        "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "encoder": {"name": f"clip:{ARCH}", "weights": None, "seed": 0, "teacher": True,
                    "trainable": [f"{BLOCKS}.2", "model.visual.ln_post", "model.visual.proj"],
                    "lr_decay": 0.65},
        "protocol": {"name": "zero_shot", "unseen": ["blue"]},
        "label_embeddings": {"source": "clip", "clip_model": ARCH, "weights": None,
                             "cache_dir": str(tmp_path / "emb")},
        "method": {"name": "sigrl", "student": "clip", "distill_weight": 1.0, "top_k": 4,
                   "gat_hidden": 8},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.001, "progress": False, "device": "cpu",
                  "no_decay_1d": True, "weight_decay": 0.05},
    }


def test_a_clip_run_folder_alone_evaluates_and_tags(tmp_path):
    from test_recipe_run import make_dataset

    from mlrkit.engine.inference import evaluate_run, load_run, score_label_names
    from mlrkit.engine.run import train_run

    make_dataset(tmp_path / "data", n=24)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(run_recipe(tmp_path)))
    results = train_run(load_recipe(path), tmp_path / "run")
    assert math.isfinite(results["test_gzsl_mAP"])
    with safe_open(tmp_path / "run" / "checkpoints" / "best" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert f"encoder.{BLOCKS}.2.ln_1.weight" in keys
    assert not any(k.startswith("encoder.teacher.") for k in keys)  # rebuilt, never saved
    run = load_run(tmp_path / "run")
    assert run.method.encoder.teacher is None  # inference needs no teacher
    again = evaluate_run(tmp_path / "run")
    for key in ("test_zsl_mAP", "test_gzsl_mAP"):
        assert again[key] == pytest.approx(results[key], abs=1e-9)
    images = sorted((tmp_path / "data" / "images").glob("*.jpg"))[:2]
    scores = score_label_names(tmp_path / "run", images, ["blue", "navy", "crimson"])
    assert scores.shape == (2, 3) and np.isfinite(scores).all()


def test_cached_frozen_clip_tokens_train_the_head_alone(tmp_path):
    from test_recipe_run import make_dataset

    from mlrkit.data.feature_cache import load_features
    from mlrkit.engine.inference import score_label_names
    from mlrkit.engine.run import train_run

    make_dataset(tmp_path / "data", n=24)
    recipe = run_recipe(tmp_path)
    del recipe["encoder"]
    recipe["features"] = {"encoder": f"clip:{ARCH}", "weights": None, "seed": 0, "spatial": True,
                          "cache": str(tmp_path / "cache"), "num_workers": 0}
    recipe["method"]["distill_weight"] = 0.0  # frozen tokens: z_g is its own teacher
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    results = train_run(load_recipe(path), tmp_path / "run")
    assert math.isfinite(results["test_gzsl_mAP"])
    cache = load_features(tmp_path / "cache")
    assert cache.spatial.shape == (24, 1 + 16, 32) and cache.pooled.shape == (24, 32)
    # row 0 is z_g, the pooled feature (the tokens are stored as float16)
    np.testing.assert_array_equal(cache.pooled.astype(np.float16), cache.spatial[:, 0])
    images = sorted((tmp_path / "data" / "images").glob("*.jpg"))[:2]
    scores = score_label_names(tmp_path / "run", images, ["blue", "navy"])
    assert scores.shape == (2, 2) and np.isfinite(scores).all()
