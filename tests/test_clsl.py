"""CLSL (``docs/methods.md`` §3): label attention over classes, self-weighted pooling, label
recovery (both rules), chunked vs direct attention, the two loss terms, ablations, the encoder's
positional encoding, a short fit and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mlrkit.engine.batches import FeatureBatches
from mlrkit.engine.trainer import TrainConfig, fit
from mlrkit.methods.base import StepInfo, TaskSpec, create_method
from mlrkit.methods.clsl import (
    CLSL,
    BilinearLabelAttention,
    PositionalEncoderLayer,
    recover_targets,
    self_weighted_pool,
    sine_position_encoding,
)
from mlrkit.methods.layers import chunked_bilinear_scores
from mlrkit.methods.losses import partial_bce

C, D, E, SIDE = 5, 6, 7, 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGETS = torch.tensor(
    [[1, 0, -1, -1, 1], [-1, -1, 0, 1, -1], [0, 1, 1, -1, 0], [-1, -1, -1, -1, -1]],
    dtype=torch.int8,
)


def make_spec(num_classes: int = C) -> TaskSpec:
    embeddings = torch.randn(num_classes, E, generator=torch.Generator().manual_seed(0))
    train_targets = np.zeros((8, num_classes), dtype=np.int8)
    return TaskSpec(num_classes, (D, SIDE, SIDE), train_targets, embeddings)


def make_clsl(spec: TaskSpec | None = None, **hparams) -> CLSL:
    torch.manual_seed(0)
    defaults = {"image_dim": 8, "num_heads": 2, "att_dim": 6, "class_chunk": 2}
    return CLSL(spec or make_spec(), **{**defaults, **hparams})


def inputs(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, D, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def reference_asl(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CLSL's ASL (gamma+ 0, gamma- 2, clip 0, eps 1e-5, constant weight) averaged over the known
    entries, written out entry by entry."""
    total, count = 0.0, 0
    for s, t in zip(logits.flatten().tolist(), targets.float().flatten().tolist(), strict=True):
        if t < 0:
            continue
        p = 1 / (1 + math.exp(-s))
        ce = -(t * math.log(max(p, 1e-5)) + (1 - t) * math.log(max(1 - p, 1e-5)))
        p_t = p * t + (1 - p) * (1 - t)
        total += ce * (1 - p_t) ** (2 * (1 - t))
        count += 1
    return torch.tensor(total / max(count, 1))


# ---------------------------------------------------------------- attention and pooling


def test_label_attention_is_a_softmax_over_classes_at_each_position() -> None:
    layer = BilinearLabelAttention(token_dim=2, label_dim=2, att_dim=2, class_chunk=2)
    with torch.no_grad():
        for linear in (layer.linear1, layer.linear2, layer.hidden_linear):
            linear.weight.copy_(torch.eye(2))
        layer.hidden_linear.bias.fill_(0.3)
        layer.target_linear.weight.copy_(torch.tensor([[1.0, 1.0]]))
        layer.target_linear.bias.fill_(-0.2)
    tokens = torch.tensor([[[1.0, 0.0], [0.5, -2.0]]])  # (B=1, P=2, 2)
    labels = torch.tensor([[[2.0, 1.0], [-1.0, 0.0], [0.0, 3.0]]])  # (B=1, C=3, 2)
    # alpha2[p, c] = tanh(x_p0 v_c0) + tanh(x_p1 v_c1) + 2 * 0.3 - 0.2
    expected_scores = torch.tensor(
        [[[math.tanh(2.0), math.tanh(-1.0), 0.0],
          [math.tanh(1.0) + math.tanh(-2.0), math.tanh(-0.5), math.tanh(-6.0)]]]
    ) + 0.4
    torch.testing.assert_close(layer.scores(tokens, labels), expected_scores)
    torch.testing.assert_close(layer.scores_direct(tokens, labels), expected_scores)
    weights = layer(tokens, labels)
    assert weights.shape == (1, 2, 3)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(1, 2))  # over classes
    assert not torch.allclose(weights.sum(dim=1), torch.ones(1, 3))  # not over positions
    row = expected_scores[0, 0].exp()
    torch.testing.assert_close(weights[0, 0], row / row.sum())


def test_self_weighted_pooling_equals_the_formula() -> None:
    scores = torch.tensor([[[0.0, 2.0, -1.0], [math.log(3.0), 2.0, 1.0]]])  # (B=1, P=2, C=3)
    # class 0: weights (1/4, 3/4) -> 3/4 ln 3; class 1: flat -> 2; class 2: weights e^-1, e^1
    w = math.exp(1) / (math.exp(-1) + math.exp(1))
    expected = torch.tensor([[0.75 * math.log(3.0), 2.0, -(1 - w) + w]])
    torch.testing.assert_close(self_weighted_pool(scores), expected)


def test_chunked_scores_with_per_image_labels_equal_the_formula() -> None:
    image = torch.randn(2, 4, 3)
    label = torch.randn(2, 5, 3)  # per image
    gate = torch.randn(3)
    expected = torch.einsum("bpck,k->bpc", torch.tanh(image[:, :, None] * label[:, None]), gate)
    for chunk in (1, 2, 5, 9):
        torch.testing.assert_close(chunked_bilinear_scores(image, label, gate, chunk), expected)
    with pytest.raises(ValueError, match="class_chunk"):
        chunked_bilinear_scores(image, label, gate, 0)


@pytest.mark.parametrize("class_chunk", [1, 2, 3, 7])
def test_chunked_attention_matches_direct_values_and_gradients(class_chunk: int) -> None:
    model = make_clsl(class_chunk=class_chunk, dropout=0.0, mlp_dropout=0.0)
    model.train()  # BatchNorm on batch statistics; no dropout, so both passes are deterministic
    x = inputs()

    def run(direct: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        tokens = model.encode(x)
        vectors = model.label_vectors(tokens)
        scores = (model.attention.scores_direct if direct else model.attention.scores)(
            tokens, vectors
        )
        out = model(x, TARGETS, direct=direct)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return scores.detach(), out.logits.detach(), grads

    scores, logits, grads = run(direct=False)
    scores_d, logits_d, grads_d = run(direct=True)
    torch.testing.assert_close(scores, scores_d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, logits_d, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_d.keys()
    assert "attention.linear1.weight" in grads and "attention.linear2.weight" in grads
    for name in grads:
        torch.testing.assert_close(grads[name], grads_d[name], atol=1e-5, rtol=1e-5, msg=name)
    # The constant of the scores cancels in the softmax over classes.
    assert grads["attention.target_linear.bias"].abs().max() < 1e-6
    assert grads["attention.linear1.weight"].abs().max() > 1e-4


# ---------------------------------------------------------------- label recovery


LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-1.0, -2.0, -0.5]])
OBSERVED = torch.tensor([[1, -1, -1], [-1, 0, -1]], dtype=torch.int8)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_recovered_targets_released_rule_flips_signs_when_all_logits_are_negative() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    recovered = recover_targets(logits, OBSERVED, "released")
    # row 0: max 2 -> sigmoid(2 l); row 1: max -0.5 -> sigmoid(-0.5 l)
    expected = torch.tensor([[1.0, sigmoid(-2.0), sigmoid(1.0)],
                             [sigmoid(0.5), 0.0, sigmoid(0.25)]])
    torch.testing.assert_close(recovered, expected)
    assert not recovered.requires_grad
    assert (recovered[1, [0, 2]] > 0.5).all()  # the quirk: an "empty" image recovers positives


def test_recovered_targets_corrected_rule_keeps_the_prediction_side() -> None:
    recovered = recover_targets(LOGITS, OBSERVED, "corrected")
    expected = torch.tensor([[1.0, sigmoid(-2.0), sigmoid(1.0)],
                             [sigmoid(-0.5), 0.0, sigmoid(-0.25)]])
    torch.testing.assert_close(recovered, expected)
    unknown = OBSERVED < 0
    assert torch.equal(recovered[unknown] > 0.5, LOGITS[unknown] > 0)
    with pytest.raises(ValueError, match="recovery"):
        recover_targets(LOGITS, OBSERVED, "clamped")


# ---------------------------------------------------------------- losses


def test_loss_is_main_asl_on_known_entries_plus_weighted_aux_asl_on_recovered_targets() -> None:
    model = make_clsl(aux_weight=0.8)
    model.eval()
    x = inputs()
    out = model(x, TARGETS)
    branches = model.branches(x)
    torch.testing.assert_close(out.logits, branches.main)
    main = reference_asl(branches.main, TARGETS)
    top = branches.main.max(dim=1, keepdim=True).values
    recovered = torch.where(TARGETS >= 0, TARGETS.float(),
                            torch.sigmoid(branches.main * top.abs()))
    aux = reference_asl(branches.aux, recovered)
    assert out.logs["main"] == pytest.approx(float(main), rel=1e-5)
    assert out.logs["aux"] == pytest.approx(float(aux), rel=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(main + 0.8 * aux), rel=1e-5)


def test_main_loss_is_pluggable_and_sum_reduction_gives_the_released_scale() -> None:
    x, targets = inputs(), TARGETS
    bce = make_clsl(loss="partial_bce")
    bce.eval()
    out = bce(x, targets)
    assert out.logs["main"] == pytest.approx(float(partial_bce(out.logits.detach(), targets)), rel=1e-5)
    summed = make_clsl(loss_options={"reduction": "sum"})
    summed.eval()
    out = summed(x, targets)
    known = int((targets >= 0).sum())
    assert out.logs["main"] == pytest.approx(float(reference_asl(out.logits, targets)) * known,
                                             rel=1e-5)


@pytest.mark.parametrize(
    "loss, options",
    [("role", {"expected_positives": 1.5}), ("ll_r", {"delta_rel": 10}),
     ("epr", {"expected_positives": "voc"})],
)
def test_main_term_takes_any_registered_loss(loss: str, options: dict) -> None:
    model = make_clsl(loss=loss, loss_options=options)
    model.eval()
    index, step = torch.arange(4), StepInfo(epoch=2, step=0, steps_per_epoch=1, epochs=4)
    out = model(inputs(), TARGETS, index, step)
    main = model.loss(out.logits, TARGETS, index, step)
    assert out.logs["main"] == pytest.approx(float(main.loss.detach()), rel=1e-6)
    aux = float(out.loss.detach()) - out.logs["main"]
    assert aux == pytest.approx(0.8 * out.logs["aux"], rel=1e-4, abs=1e-6)
    if loss == "role":  # the estimator gets its own optimizer group
        assert len(model.param_groups()) == 2


def test_aux_gradient_does_not_flow_through_the_recovered_targets() -> None:
    model = make_clsl(aux_weight=1.0)
    model.eval()
    out = model.branches(inputs())
    loss, _ = model.loss_parts(out, TARGETS)
    main_grad, = torch.autograd.grad(loss, out.main, retain_graph=True)
    expected, = torch.autograd.grad(model.loss(out.main, TARGETS).loss, out.main)
    torch.testing.assert_close(main_grad, expected)


# ---------------------------------------------------------------- ablations


def test_without_srfl_label_vectors_are_the_raw_embeddings_and_aux_branch_is_dropped() -> None:
    full, plain = make_clsl(), make_clsl(use_srfl=False)
    assert full.aux_head is not None and full.label_mlp is not None
    assert plain.aux_head is None and plain.label_mlp is None
    assert plain.attention.linear2.in_features == E and plain.classifier[0].in_features == 8 + E
    tokens_a, tokens_b = torch.randn(2, 9, 8), torch.randn(2, 9, 8)
    torch.testing.assert_close(plain.label_vectors(tokens_a),
                               spec_embeddings().expand(2, -1, -1))
    full.eval()
    assert not torch.allclose(full.label_vectors(tokens_a), full.label_vectors(tokens_b))
    plain.eval()
    out = plain(inputs(), TARGETS)
    assert set(out.logs) == {"main"} and float(out.loss.detach()) == pytest.approx(out.logs["main"])


def spec_embeddings() -> torch.Tensor:
    return make_spec().label_embeddings


def test_projected_embeddings_without_srfl_do_not_depend_on_the_image() -> None:
    model = make_clsl(use_srfl=False, use_jls=False, project_embeddings=True)
    model.eval()
    vectors = model.label_vectors(torch.randn(2, 9, 8))
    assert vectors.shape == (2, C, 8)
    torch.testing.assert_close(vectors, model.label_vectors(torch.randn(2, 9, 8)))
    with pytest.raises(ValueError, match="project_embeddings"):
        make_clsl(project_embeddings=True)


def test_without_jls_the_release_drops_the_aux_branch_or_trains_it_on_known_entries() -> None:
    released = make_clsl(use_jls=False)
    released.eval()
    assert released.aux_head is None
    assert set(released(inputs(), TARGETS).logs) == {"main"}
    known = make_clsl(use_jls=False, aux_branch=True)
    known.eval()
    out = known(inputs(), TARGETS)
    aux = known.branches(inputs()).aux
    assert out.logs["aux"] == pytest.approx(float(reference_asl(aux, TARGETS)), rel=1e-5)


@pytest.mark.parametrize("bias, differ", [(-10.0, True), (10.0, False)])
def test_recovery_rules_differ_only_when_all_logits_are_negative(bias: float, differ: bool) -> None:
    losses = {}
    for rule in ("released", "corrected"):
        model = make_clsl(recovery=rule)
        with torch.no_grad():
            model.classifier[-1].bias.fill_(bias)
        model.eval()
        losses[rule] = model(inputs(), TARGETS).logs
    assert losses["released"]["main"] == losses["corrected"]["main"]
    assert (abs(losses["released"]["aux"] - losses["corrected"]["aux"]) > 1e-3) == differ


# ---------------------------------------------------------------- encoder


def test_sine_position_encoding_numbers() -> None:
    pe = sine_position_encoding(2, 3, 4)  # one frequency: [sin y, cos y, sin x, cos x]
    assert pe.shape == (6, 4)
    third = 2 * math.pi / 3
    torch.testing.assert_close(pe[0], torch.tensor([0.0, -1.0, math.sin(third), math.cos(third)]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(pe[4], torch.tensor([0.0, 1.0, math.sin(2 * third),
                                                    math.cos(2 * third)]), atol=1e-5, rtol=0)
    pe8 = sine_position_encoding(2, 3, 8)  # frequencies 1, 1, 100, 100 per half
    assert pe8[0, 2].item() == pytest.approx(math.sin(math.pi / 100), abs=1e-6)
    assert pe8[0, 7].item() == pytest.approx(math.cos(third / 100), abs=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_position_encoding(2, 2, 6)


def test_encoder_layer_without_pos_equals_torch_post_norm_layer() -> None:
    torch.manual_seed(0)
    ours = PositionalEncoderLayer(8, num_heads=2, ffn_dim=8, dropout=0.1)
    torch_layer = torch.nn.TransformerEncoderLayer(8, 2, 8, 0.1, batch_first=True)
    torch_layer.load_state_dict(ours.state_dict())
    ours.eval(), torch_layer.eval()
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ours(x), torch_layer(x))


def test_position_encoding_enters_queries_and_keys_only() -> None:
    torch.manual_seed(0)
    layer = PositionalEncoderLayer(8, num_heads=2, ffn_dim=8, dropout=0.0)
    layer.eval()
    x, pos = torch.randn(1, 5, 8), 3 * torch.randn(5, 8)
    assert not torch.allclose(layer(x, pos), layer(x))
    with torch.no_grad():  # zero query and key projections: uniform attention whatever pos is
        layer.self_attn.in_proj_weight[:16].zero_()
        layer.self_attn.in_proj_bias[:16].zero_()
    torch.testing.assert_close(layer(x, pos), layer(x))


# ---------------------------------------------------------------- training and checkpoints


def test_registered_and_validates_options() -> None:
    model = create_method("clsl", make_spec(), image_dim=8, num_heads=2, att_dim=6)
    assert isinstance(model, CLSL) and model.input_kind == "spatial"
    assert isinstance(model.projection, torch.nn.Sequential)
    assert isinstance(make_clsl(image_dim=None, num_heads=2, position_encoding=False).projection,
                      torch.nn.Identity)
    with pytest.raises(ValueError, match="recovery"):
        make_clsl(recovery="clamp")
    with pytest.raises(ValueError, match="label embeddings"):
        CLSL(TaskSpec(C, (D, SIDE, SIDE), np.zeros((2, C), np.int8)))
    with pytest.raises(ValueError, match="spatial"):
        CLSL(TaskSpec(C, (D,), np.zeros((2, C), np.int8), spec_embeddings()))


def test_short_fit_decreases_the_loss(tmp_path) -> None:
    rng = np.random.default_rng(0)
    truth = rng.random((24, C)) < 0.4
    features = rng.normal(size=(24, D, SIDE, SIDE)).astype(np.float32) * 0.3
    features[:, :C] += 2.0 * truth[:, :, None, None]  # class c lights up channel c
    observed = np.where(rng.random((24, C)) < 0.5, truth, -1).astype(np.int8)
    model = make_clsl()
    cfg = TrainConfig(epochs=6, batch_size=8, lr=0.01, progress=False, device="cpu")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = fit(model, FeatureBatches(features, observed), None, None, cfg, run_dir)
    first, last = result.history[0], result.history[-1]
    assert {"train_main", "train_aux"} <= set(first)
    assert last["train_loss"] < 0.8 * first["train_loss"]


def test_checkpoint_round_trip(tmp_path) -> None:
    model = make_clsl()
    model.train()
    model(inputs(), TARGETS)  # move the BatchNorm running statistics
    path = tmp_path / "clsl.safetensors"
    state = model.state_dict()
    assert "label_embeddings" in state
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    restored = make_clsl()
    torch.manual_seed(5)
    for p in restored.parameters():
        torch.nn.init.normal_(p)
    restored.load_state_dict(load_file(str(path)))
    model.eval(), restored.eval()
    torch.testing.assert_close(restored(inputs()).logits, model(inputs()).logits, rtol=0, atol=0)
