"""The loss registry: every registered loss equals its functional form, ASL against a written-out
reference, errors of ``create_loss``, and losses plugged into every head (ROLE under SARB, LL-R
under ssgrl, the estimator's optimizer group)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlrkit.engine.trainer import TrainConfig, build_optimizer
from mlrkit.methods import StepInfo, TaskSpec, create_method
from mlrkit.methods.losses import (
    Loss,
    an_loss,
    an_ls_loss,
    assume_negative_bce,
    asymmetric_loss,
    create_loss,
    em_apl_loss,
    em_loss,
    em_pl_asl_loss,
    em_pl_loss,
    epr_loss,
    list_losses,
    ll_loss,
    partial_bce,
    rank_loss,
    register_loss,
    role_loss,
    wan_loss,
)
from mlrkit.methods.sarb import SARB
from mlrkit.methods.semantic_graph import SemanticGraphHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Two images, five classes: known positives, known negatives and unknown (-1) entries. Unknown
# logits 3 > 2 > 1 > 0.5 > 0 > -1 > -2 rank their assume-negative losses the same way.
LOGITS = np.array([[-5.0, 3.0, -1.0, 0.5, 4.0], [2.0, 1.0, -2.0, 1.0, 0.0]])
TARGETS = np.array([[1, -1, -1, -1, 0], [-1, 1, -1, -1, -1]], dtype=np.int8)
TRAIN = np.array(
    [[1, -1, -1, -1, 0], [0, 1, -1, 1, -1], [-1, 1, -1, -1, -1], [1, 0, 1, -1, -1]],
    dtype=np.int8,
)
INDEX = torch.tensor([0, 2])  # the batch is training rows 0 and 2
# Teacher pseudo-labels of the training rows (1 positive, 0 negative, -1 none).
PSEUDO = np.array(
    [[-1, 1, 0, -1, -1], [1, -1, -1, -1, 0], [1, -1, 1, 0, -1], [-1, -1, -1, 1, 1]],
    dtype=np.int8,
)
NAMES = ["an", "an_ls", "asl", "assume_negative", "em", "em_apl", "em_pl", "em_pl_asl", "epr",
         "ll_cp", "ll_ct", "ll_r", "partial_bce", "rank", "role", "wan"]


def sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


def tensors(logits=LOGITS, targets=TARGETS) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(targets)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.item() == pytest.approx(float(expected), rel=1e-6, abs=1e-6)


def step(epoch: int) -> StepInfo:
    return StepInfo(epoch=epoch, step=0, steps_per_epoch=1, epochs=10)


def spec(dim: int = 5, spatial: bool = False) -> TaskSpec:
    embeddings = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    shape = (dim, 3, 3) if spatial else (dim,)
    return TaskSpec(5, shape, TRAIN, embeddings, pseudo_labels=PSEUDO)


# ---------------------------------------------------------------- registry and functional forms


def test_registered_names() -> None:
    assert list_losses() == NAMES


def _role(loss, s, y):
    estimates = torch.sigmoid(loss.label_logits[INDEX])
    return role_loss(s, estimates, y, 1.5)


# name: (options, the functional form given the built loss, logits and targets)
FUNCTIONAL = {
    "partial_bce": ({}, lambda loss, s, y: partial_bce(s, y)),
    "assume_negative": ({}, lambda loss, s, y: assume_negative_bce(s, y)),
    "an": ({}, lambda loss, s, y: an_loss(s, y)),
    "an_ls": ({"ls_coef": 0.2}, lambda loss, s, y: an_ls_loss(s, y, 0.2)),
    "wan": ({}, lambda loss, s, y: wan_loss(s, y)),
    "epr": ({"expected_positives": "coco"}, lambda loss, s, y: epr_loss(s, y, 2.9)),
    "em": ({"alpha": 0.2}, lambda loss, s, y: em_loss(s, y, 0.2)),
    "role": ({"expected_positives": "voc"}, _role),
    "ll_r": ({"delta_rel": 10}, lambda loss, s, y: ll_loss(s, y, "LL-R", 3, 10).loss),
    "ll_ct": ({"delta_rel": 10}, lambda loss, s, y: ll_loss(s, y, "LL-Ct", 3, 10).loss),
    "ll_cp": ({"delta_rel": 10}, lambda loss, s, y: ll_loss(s, y, "LL-Cp", 3, 10).loss),
    "asl": ({"gamma_neg": 2.0, "clip": 0.1},
            lambda loss, s, y: asymmetric_loss(s, y, gamma_neg=2.0, clip=0.1)),
    "rank": ({"margin": 2.0}, lambda loss, s, y: rank_loss(s, y, 2.0)),
    "em_pl": ({"alpha": 0.3, "beta_pos": 0.5},
              lambda loss, s, y: em_pl_loss(s, y, torch.as_tensor(PSEUDO)[INDEX], 0.3, 0.5)),
    "em_pl_asl": ({"clip": 0.1},
                  lambda loss, s, y: em_pl_asl_loss(s, y, torch.as_tensor(PSEUDO)[INDEX],
                                                    clip=0.1)),
    "em_apl": ({"beta": 0.5},
               lambda loss, s, y: em_apl_loss(s, y, loss.soft_negatives[INDEX], 0.2, 0.5)),
}


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_loss_equals_its_functional_form(name: str) -> None:
    options, functional = FUNCTIONAL[name]
    torch.manual_seed(0)
    loss = create_loss(name, spec(), **options)
    assert isinstance(loss, Loss) and loss.registered_name == name
    logits, targets = tensors()
    out = loss(logits, targets, INDEX, step(3))
    expected = functional(loss, logits, targets)
    assert out.loss.ndim == 0
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=0)


def test_assume_negative_bce_value() -> None:
    expected = np.where(TARGETS == 1, softplus(-LOGITS), softplus(LOGITS)).mean()
    close(assume_negative_bce(*tensors()), expected)


def test_large_losses_log_the_selected_share() -> None:
    loss = create_loss("ll_r", spec(), delta_rel=10)
    # Epoch 3 handles ceil(10 * 0.3) = 3 of the 10 entries.
    assert loss(*tensors(), None, step(3)).logs == {"ll_selected_share": pytest.approx(0.3)}
    assert create_loss("an", spec())(*tensors()).logs == {}


@pytest.mark.parametrize(
    ("name", "options", "index", "the_step", "match"),
    [
        ("role", {"expected_positives": 1.5}, None, step(1), "index"),
        ("ll_r", {}, INDEX, None, "StepInfo"),
        ("ll_ct", {}, INDEX, None, "StepInfo"),
        ("ll_cp", {}, None, step(1), "index"),
        ("ll_cp", {}, INDEX, None, "StepInfo"),
    ],
)
def test_per_sample_and_scheduled_losses_need_index_and_step(
    name, options, index, the_step, match
) -> None:
    loss = create_loss(name, spec(), **options)
    with pytest.raises(ValueError, match=f"loss '{name}' .*{match}"):
        loss(*tensors(), index, the_step)


def test_create_loss_errors_list_what_is_valid() -> None:
    with pytest.raises(ValueError, match="unknown loss 'focal'; available: " + ", ".join(NAMES)):
        create_loss("focal", spec())
    with pytest.raises(ValueError, match=r"takes no option \['ls'\]; its options: \['ls_coef'\]"):
        create_loss("an_ls", spec(), ls=0.1)
    with pytest.raises(ValueError, match=r"'an' takes no option \['alpha'\]; its options: none"):
        create_loss("an", spec(), alpha=0.1)
    with pytest.raises(ValueError, match=r"'role' needs option \['expected_positives'\]"):
        create_loss("role", spec())
    with pytest.raises(ValueError, match=r"one of \['coco', 'cub', 'nuswide', 'voc'\]"):
        create_loss("epr", spec(), expected_positives="imagenet")
    with pytest.raises(ValueError, match="percentage"):
        create_loss("ll_r", spec(), delta_rel=0)
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum'\)"):
        create_loss("asl", spec(), reduction="none")
    with pytest.raises(ValueError, match="clip"):
        create_loss("asl", spec(), clip=1.0)
    with pytest.raises(ValueError, match="gamma_neg and gamma_pos"):
        create_loss("asl", spec(), gamma_neg=-1.0)
    with pytest.raises(ValueError, match="registered twice"):
        register_loss("an")(Loss)
    assert list_losses() == NAMES


def test_heads_reject_bad_losses() -> None:
    with pytest.raises(ValueError, match="unknown loss 'bce'"):
        create_method("mlp", spec(), loss="bce")
    with pytest.raises(ValueError, match=r"takes no option \['bogus'\]"):
        create_method("linear", spec(), loss="an", loss_options={"bogus": 1})
    with pytest.raises(ValueError, match="needs option"):
        create_method("ssgrl", spec(spatial=True), loss="epr", image_dim=None, inter_dim=4)


# ---------------------------------------------------------------- ASL


def asl_reference(logits, targets, gamma_neg=4.0, gamma_pos=1.0, clip=0.05, eps=1e-8,
                  reduction="mean") -> float:
    """ASL written out entry by entry in float64 (the paper's formula, unknown entries skipped)."""
    total, count = 0.0, 0
    for s, t in zip(np.ravel(logits), np.ravel(targets), strict=True):
        if t < 0:
            continue
        p = 1 / (1 + math.exp(-s))
        p_m = max(p - clip, 0.0)
        ce = -(t * math.log(max(p, eps)) + (1 - t) * math.log(max(1 - p_m, eps)))
        p_t = p * t + (1 - p_m) * (1 - t)
        total += ce * (1 - p_t) ** (gamma_pos * t + gamma_neg * (1 - t))
        count += 1
    return total / max(count, 1) if reduction == "mean" else total


ASL_LOGITS = np.array([[2.0, -1.0, 0.5, -3.0, 30.0], [0.0, 1.5, -0.5, 3.0, -2.5],
                       [-4.0, 0.02, 1.0, -0.1, 6.0]])
HARD = np.array([[1, 0, -1, 0, 0], [-1, 1, 0, -1, 1], [0, 0, 1, 1, -1]], dtype=np.int8)
SOFT = np.array([[0.7, 0.0, -1, 0.25, 1.0], [-1, 1.0, 0.5, -1, 0.9], [0.1, 0.0, 0.6, 1.0, -1]])


@pytest.mark.parametrize("targets", [HARD, SOFT], ids=["int8", "soft"])
@pytest.mark.parametrize(
    "options",
    [
        {},  # the ASL paper's defaults
        {"gamma_neg": 2.0, "gamma_pos": 0.0, "clip": 0.0, "eps": 1e-5},  # CLSL
        {"gamma_neg": 3.0, "gamma_pos": 2.0, "clip": 0.2, "eps": 1e-8},
        {"gamma_neg": 0.0, "gamma_pos": 0.0, "clip": 0.05},
        {"reduction": "sum"},
    ],
)
def test_asl_matches_written_out_reference(targets: np.ndarray, options: dict) -> None:
    dtype = torch.int8 if targets.dtype == np.int8 else torch.float32
    value = asymmetric_loss(torch.tensor(ASL_LOGITS, dtype=torch.float32),
                            torch.tensor(targets, dtype=dtype), **options)
    assert value.item() == pytest.approx(asl_reference(ASL_LOGITS, targets, **options), rel=1e-6,
                                         abs=1e-6)


def test_asl_ignores_unknown_entries() -> None:
    logits = torch.tensor(ASL_LOGITS, dtype=torch.float32, requires_grad=True)
    targets = torch.tensor(SOFT, dtype=torch.float32)
    value = asymmetric_loss(logits, targets)
    value.backward()
    unknown, saturated = targets < 0, logits.detach() > 20  # sigmoid(30) is 1 in float32
    assert (logits.grad[unknown] == 0).all() and (logits.grad[~unknown & ~saturated] != 0).all()
    moved = logits.detach().masked_fill(unknown, -7.0)
    torch.testing.assert_close(asymmetric_loss(moved, targets), value.detach())
    assert asymmetric_loss(logits, torch.full_like(targets, -1)).item() == 0.0


def test_asl_without_focusing_or_clip_is_partial_bce() -> None:
    logits, targets = tensors()
    close(asymmetric_loss(logits, targets, gamma_neg=0.0, gamma_pos=0.0, clip=0.0),
          partial_bce(logits, targets).item())


def test_asl_focus_grad_changes_the_gradient_not_the_value() -> None:
    targets = torch.tensor(SOFT, dtype=torch.float32)
    grads, values = {}, {}
    for focus_grad in (False, True):
        logits = torch.tensor(ASL_LOGITS, dtype=torch.float32, requires_grad=True)
        values[focus_grad] = asymmetric_loss(logits, targets, clip=0.1, focus_grad=focus_grad)
        values[focus_grad].backward()
        grads[focus_grad] = logits.grad.numpy()
    torch.testing.assert_close(values[False], values[True])
    # Without focus_grad the weight w is a constant: d/ds of -[t log p + (1 - t) log(1 - p_m)] * w.
    t, known = np.clip(SOFT, 0, None), SOFT >= 0
    p = sig(ASL_LOGITS)
    p_m = np.maximum(p - 0.1, 0)
    w = (1 - p * t - (1 - p_m) * (1 - t)) ** (1.0 * t + 4.0 * (1 - t))
    shifted = p > 0.1
    d_ce = -(t * (1 - p) - (1 - t) * np.where(shifted, p * (1 - p) / (1 - p_m), 0.0))
    np.testing.assert_allclose(grads[False], np.where(known, d_ce * w, 0) / known.sum(),
                               rtol=1e-5, atol=1e-7)
    # With focus_grad the weight is differentiated too: central differences of the reference.
    h, numeric = 1e-5, np.zeros_like(ASL_LOGITS)
    for i, j in np.ndindex(*ASL_LOGITS.shape):
        up, down = ASL_LOGITS.copy(), ASL_LOGITS.copy()
        up[i, j] += h
        down[i, j] -= h
        numeric[i, j] = (asl_reference(up, SOFT, clip=0.1) - asl_reference(down, SOFT, clip=0.1))
    np.testing.assert_allclose(grads[True], numeric / (2 * h), rtol=1e-3, atol=1e-6)
    assert not np.allclose(grads[True], grads[False])


# ---------------------------------------------------------------- losses under the heads


def sarb(**hparams) -> SARB:
    torch.manual_seed(0)
    return SARB(spec(6, spatial=True), image_dim=8, inter_dim=6, class_chunk=2, num_prototypes=3,
                **hparams)


def test_sarb_trains_with_role_as_its_main_term() -> None:
    model = sarb(loss="role", loss_options={"expected_positives": 1.5}).train()
    logits = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    model.classify = lambda states, features: logits  # hand-built logits for the main term
    inputs = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor(TARGETS)
    torch.manual_seed(0)
    out = model(inputs, targets, INDEX, step(1))  # before mixup_epoch: main + w_c contrastive
    estimates = torch.sigmoid(model.loss.label_logits[INDEX])
    expected = role_loss(logits, estimates, targets, 1.5)
    close(torch.tensor(out.logs["main"]), expected.item())
    close(out.loss, expected.item() + 0.05 * out.logs["contrastive"])
    out.loss.backward()
    expected_grad, = torch.autograd.grad(role_loss(logits, estimates.detach(), targets, 1.5),
                                         logits)
    torch.testing.assert_close(logits.grad, expected_grad)
    touched = model.loss.label_logits.grad.abs().sum(dim=1) > 0
    assert touched.tolist() == [True, False, True, False]
    assert "loss.label_logits" in model.state_dict()


def test_sarb_blending_keeps_partial_bce_under_another_main_loss() -> None:
    model = sarb(loss="an").train()
    inputs = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[1, -1, 0, -1, 1], [-1, 1, 1, 0, -1]], dtype=torch.int8)
    torch.manual_seed(0)
    out = model(inputs, targets, INDEX, step(5))  # ILRB on; no prototypes yet, so no PLRB
    close(torch.tensor(out.logs["main"]), an_loss(out.logits, targets).item())
    assert out.logs["inst"] > 0 and out.logs["proto"] == 0
    expected = out.logs["main"] + 0.05 * out.logs["contrastive"] + out.logs["inst"]
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    out.loss.backward()
    assert model.alpha.grad is not None and model.alpha.grad != 0


def test_ssgrl_trains_with_ll_r() -> None:
    torch.manual_seed(0)
    head = SemanticGraphHead(spec(6, spatial=True), image_dim=8, inter_dim=6, class_chunk=2,
                             loss="ll_r", loss_options={"delta_rel": 10})
    logits = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    head.classify = lambda states, features: logits
    inputs = torch.randn(2, 6, 3, 3)
    out = head(inputs, torch.tensor(TARGETS), None, step(2))
    # Epoch 2 rejects ceil(10 * 0.2) = 2 entries: the largest unknown losses, logits 3 and 2.
    rejected = np.zeros_like(TARGETS, dtype=bool)
    rejected[0, 1] = rejected[1, 0] = True
    base = np.where(TARGETS == 1, softplus(-LOGITS), softplus(LOGITS))
    close(out.loss, np.where(rejected, 0.0, base).mean())
    assert out.logs == {"ll_selected_share": pytest.approx(0.2)}
    out.loss.backward()
    assert (logits.grad[torch.from_numpy(rejected)] == 0).all()
    assert (logits.grad[torch.from_numpy(~rejected)] != 0).all()
    with pytest.raises(ValueError, match="StepInfo"):
        head(inputs, torch.tensor(TARGETS))


@pytest.mark.parametrize("name", ["ssgrl", "sarb"])
def test_role_estimator_joins_the_heads_optimizer_groups(name: str) -> None:
    torch.manual_seed(0)
    method = create_method(name, spec(6, spatial=True), image_dim=None, inter_dim=4, loss="role",
                           loss_options={"expected_positives": 1.5, "estimator_lr_mult": 5.0})
    groups = method.param_groups()
    estimator = method.loss.label_logits
    assert groups[-1] == {"params": [estimator], "lr_mult": 5.0, "weight_decay": 0.0}
    assert len(groups) == 2 and all(p is not estimator for p in groups[0]["params"])
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    optimizer = build_optimizer(method, TrainConfig(lr=1e-3, weight_decay=0.01, device="cpu"))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 5e-3])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]


def test_losses_without_parameters_add_no_optimizer_group() -> None:
    method = create_method("mlp", spec(), loss="ll_cp")
    assert len(method.param_groups()) == 1 and create_loss("ll_cp", spec()).param_groups() == []


HEADS = {
    "linear": ({}, False),
    "mlp": ({"hidden_dim": 7}, False),
    "ssgrl": ({"image_dim": None, "inter_dim": 4}, True),
}


@pytest.mark.parametrize("loss", NAMES)
@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_trains_with_every_loss(head: str, loss: str) -> None:
    hparams, spatial = HEADS[head]
    torch.manual_seed(0)
    method = create_method(head, spec(6, spatial), loss=loss, loss_options=FUNCTIONAL[loss][0],
                           **hparams)
    inputs = torch.randn(2, 6, 3, 3) if spatial else torch.randn(2, 6)
    targets = torch.tensor(TARGETS)
    method.eval()  # deterministic, and LL-Cp writes nothing back
    out = method(inputs, targets, INDEX, step(3))
    torch.testing.assert_close(out.loss, method.loss(out.logits, targets, INDEX, step(3)).loss)
    method.train()
    method(inputs, targets, INDEX, step(3)).loss.backward()
    loss_params = {id(p) for p in method.loss.parameters()}
    grads = [p.grad for p in method.parameters() if id(p) not in loss_params]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


# ---------------------------------------------------------------- the ranking loss


def test_rank_loss_sums_hinges_over_violated_pairs_per_image() -> None:
    logits = torch.tensor([[2.0, 0.5, 1.8, 0.0], [0.0, 1.0, 3.0, -1.0], [1.0, 2.0, 0.0, 0.0]])
    targets = torch.tensor([[1, 0, 0, -1], [1, 1, 0, 0], [-1, -1, 1, -1]], dtype=torch.int8)
    # image 0: pairs (0,1) hinge 0, (0,2) 0.8 -> 0.8 / 1 violated pair;
    # image 1: positives 0, 1 vs negatives 2, 3: (0,2) 4, (0,3) 0, (1,2) 3, (1,3) 0 -> 7 / 2;
    # image 2: no negative -> 0. The mean runs over all three images.
    expected = (0.8 + 3.5 + 0.0) / 3
    assert float(rank_loss(logits, targets)) == pytest.approx(expected, rel=1e-6)
    assert float(rank_loss(logits, targets, margin=0.5)) == pytest.approx(
        (0.3 + (3.5 + 2.5) / 2) / 3, rel=1e-6)


def test_rank_loss_ignores_unknown_entries_and_matches_a_pair_loop() -> None:
    torch.manual_seed(0)
    logits = torch.randn(7, 6, requires_grad=True)
    targets = torch.randint(-1, 2, (7, 6), dtype=torch.int8)
    per_image = []
    for s, y in zip(logits.tolist(), targets.tolist(), strict=True):
        hinges = [max(0.0, 1 + s[j] - s[i]) for i in range(6) for j in range(6)
                  if y[i] == 1 and y[j] == 0]
        violated = sum(h > 0 for h in hinges)
        per_image.append(sum(hinges) / (violated + 1e-8))
    loss = rank_loss(logits, targets)
    assert float(loss) == pytest.approx(sum(per_image) / 7, rel=1e-6)
    loss.backward()
    unknown = targets == -1
    assert (logits.grad[unknown] == 0).all() and logits.grad.abs().sum() > 0
    module = create_loss("rank", spec(), margin=1.0)
    assert float(module(logits, targets).loss) == pytest.approx(float(loss), rel=1e-7)
    with pytest.raises(ValueError, match="margin"):
        rank_loss(logits, targets, margin=0.0)
