"""Single-positive losses (``docs/methods.md`` §6) and the ``linear`` head trained with them:
values, unknown entries, LL rejection and correction, ROLE's estimator and the per-sample state in
checkpoints."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mlrkit.engine.batches import FeatureBatches
from mlrkit.engine.trainer import TrainConfig, build_optimizer, fit
from mlrkit.methods.base import StepInfo, TaskSpec, create_method
from mlrkit.methods.losses import (
    an_loss,
    an_ls_loss,
    em_loss,
    epr_loss,
    expected_positive_regularizer,
    large_loss_count,
    list_losses,
    ll_loss,
    partial_bce,
    role_loss,
    wan_loss,
)

# Two images, four classes: one known positive each, one known negative, the rest unknown (-1).
LOGITS = np.array([[2.0, -1.0, 0.5, -3.0], [0.0, 1.5, -0.5, 3.0]])
TARGETS = np.array([[1, -1, -1, 0], [-1, 1, -1, -1]], dtype=np.int8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def nl(x: np.ndarray) -> np.ndarray:
    """The reference's guarded log: -log(x + 1e-5)."""
    return -np.log(x + 1e-5)


def softplus(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.exp(x))


def tensors(logits=LOGITS, targets=TARGETS) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(targets)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.item() == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def identity_head(spec: TaskSpec, loss: str, **options):
    """A ``linear`` head trained with ``loss`` whose logits equal its inputs (``D == C``, identity
    weight, no bias)."""
    method = create_method("linear", spec, loss=loss, loss_options=options)
    with torch.no_grad():
        method.head[1].weight.copy_(torch.eye(spec.num_classes))
        method.head[1].bias.zero_()
    return method


def step(epoch: int) -> StepInfo:
    return StepInfo(epoch=epoch, step=0, steps_per_epoch=1, epochs=10)


# ---------------------------------------------------------------- values of the Cole et al. losses


def test_an_value_by_hand() -> None:
    # sigmoid(0) = 0.5 on both entries: -log(0.5 + 1e-5) = 0.69312718 each.
    close(an_loss(torch.zeros(1, 2), torch.tensor([[1, -1]])), 0.69312718)


def test_an_value() -> None:
    p = sig(LOGITS)
    expected = np.where(TARGETS == 1, nl(p), nl(1 - p)).sum() / LOGITS.size
    close(an_loss(*tensors()), expected)


def test_an_treats_unknown_as_negative() -> None:
    logits, targets = tensors()
    close(an_loss(logits, targets), an_loss(logits, targets.clamp(min=0)).item())


def test_partial_bce_ignores_unknown_entries() -> None:
    logits, targets = tensors()
    moved = logits.masked_fill(targets < 0, 7.0)
    close(partial_bce(moved, targets), partial_bce(logits, targets).item())
    p = sig(LOGITS)
    known = TARGETS >= 0
    bce = np.where(TARGETS == 1, -np.log(p), -np.log(1 - p))
    close(partial_bce(logits, targets), bce[known].mean())


def test_an_ls_value() -> None:
    p = sig(LOGITS)
    positive = 0.9 * nl(p) + 0.1 * nl(1 - p)
    negative = 0.9 * nl(1 - p) + 0.1 * nl(p)
    expected = np.where(TARGETS == 1, positive, negative).sum() / LOGITS.size
    close(an_ls_loss(*tensors()), expected)


def test_wan_value() -> None:
    p = sig(LOGITS)
    weight = np.where(TARGETS == -1, 1 / 3, 1.0)  # gamma = 1 / (C - 1), C = 4
    expected = (weight * np.where(TARGETS == 1, nl(p), nl(1 - p))).sum() / LOGITS.size
    close(wan_loss(*tensors()), expected)


def test_wan_down_weights_unknown_entries_by_one_over_c_minus_one() -> None:
    logits, targets = tensors()
    grads = {}
    for name, fn in (("an", an_loss), ("wan", wan_loss)):
        x = logits.clone().requires_grad_()
        fn(x, targets).backward()
        grads[name] = x.grad
    unknown = targets < 0
    torch.testing.assert_close(grads["wan"][unknown], grads["an"][unknown] / 3)
    torch.testing.assert_close(grads["wan"][~unknown], grads["an"][~unknown])


def test_expected_positive_regularizer_by_hand() -> None:
    # Row sums 1.5 and 0.6, mean 1.05; (1.05 - 1.5)^2 / 3^2 = 0.0225.
    probs = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
    close(expected_positive_regularizer(probs, 1.5), 0.0225)


def test_epr_value() -> None:
    p = sig(LOGITS)
    observed = np.where(TARGETS == 1, nl(p), np.where(TARGETS == 0, nl(1 - p), 0.0))
    regularizer = (p.sum(axis=1).mean() - 2.9) ** 2 / 16
    close(epr_loss(*tensors(), expected_positives=2.9), observed.sum() / LOGITS.size + regularizer)


def test_em_value() -> None:
    p = sig(LOGITS)
    entropy = p * nl(p) + (1 - p) * nl(1 - p)
    entries = np.where(
        TARGETS == 1, nl(p), np.where(TARGETS == 0, nl(1 - p), -0.2 * entropy)
    )
    close(em_loss(*tensors(), alpha=0.2), entries.sum() / LOGITS.size)


ESTIMATES = np.array([[0.9, 0.3, 0.6, 0.05], [0.4, 0.99, 0.2, 0.7]])


def test_role_value() -> None:
    p, y = sig(LOGITS), ESTIMATES

    def observed(x):
        return np.where(TARGETS == 1, nl(x), np.where(TARGETS == 0, nl(1 - x), 0.0))

    def reg(x):
        return (x.sum(axis=1).mean() - 1.5) ** 2 / 16

    cross = y * nl(p) + (1 - y) * nl(1 - p) + p * nl(y) + (1 - p) * nl(1 - y)
    expected = 0.5 * (observed(p) + observed(y) + cross).sum() / LOGITS.size
    expected += 0.5 * (reg(p) + reg(y))
    logits, targets = tensors()
    close(role_loss(logits, torch.tensor(ESTIMATES), targets, 1.5), expected)


def test_role_stop_gradients() -> None:
    """The classifier learns from fixed estimates and the estimator from fixed predictions."""
    logits, targets = tensors()
    estimates = torch.tensor(ESTIMATES, dtype=torch.float32)
    s, y = logits.clone().requires_grad_(), estimates.clone().requires_grad_()
    role_loss(s, y, targets, 1.5).backward()

    def half(x, other):  # 1/2 [l_obs(x) + BCE(x; other)] / (B C) + 1/2 R(x), written out
        pos, neg = (targets == 1).float(), (targets == 0).float()
        obs = -pos * torch.log(x + 1e-5) - neg * torch.log(1 - x + 1e-5)
        bce = -other * torch.log(x + 1e-5) - (1 - other) * torch.log(1 - x + 1e-5)
        reg = (x.sum(1).mean() - 1.5) ** 2 / 16
        return 0.5 * (obs + bce).sum() / x.numel() + 0.5 * reg

    s2, y2 = logits.clone().requires_grad_(), estimates.clone().requires_grad_()
    half(torch.sigmoid(s2), estimates).backward()
    half(y2, torch.sigmoid(logits)).backward()
    torch.testing.assert_close(s.grad, s2.grad)
    torch.testing.assert_close(y.grad, y2.grad)


# ------------------------------------------------------------------------------ Large Loss Matters

# Ten entries, seven unknown; unknown logits 3 > 2 > 1 > 0.5 > 0 > -1 > -2, so their AN losses
# softplus(s) rank the same way. The known positive (-5) and the known negative (4) have the largest
# losses of all and must never be selected.
LL_LOGITS = np.array([[-5.0, 3.0, -1.0, 0.5, 4.0], [2.0, 1.0, -2.0, 1.0, 0.0]])
LL_TARGETS = np.array([[1, -1, -1, -1, 0], [-1, 1, -1, -1, -1]], dtype=np.int8)
LL_BASE = np.where(LL_TARGETS == 1, softplus(-LL_LOGITS), softplus(LL_LOGITS))


@pytest.mark.parametrize(
    ("entries", "epoch", "delta_rel", "mode", "expected"),
    [
        (10, 0, 10, "LL-R", 0),
        (10, 0, 10, "LL-Cp", 0),
        (10, 1, 10, "LL-R", 1),
        (10, 3, 10, "LL-Ct", 3),
        (10, 3, 10, "LL-Cp", 1),
        (320, 1, 0.2, "LL-R", 1),  # ceil(0.64)
        (320, 4, 0.2, "LL-R", 3),  # ceil(2.56)
        (500, 1, 0.2, "LL-R", 1),  # exactly 1.0: no float round-up to 2
        (500, 3, 0.2, "LL-Cp", 1),
    ],
)
def test_large_loss_count(entries, epoch, delta_rel, mode, expected) -> None:
    assert large_loss_count(entries, epoch, delta_rel, mode) == expected


@pytest.mark.parametrize("mode", ["LL-R", "LL-Ct", "LL-Cp"])
def test_ll_is_plain_assume_negative_at_epoch_0(mode: str) -> None:
    out = ll_loss(*tensors(LL_LOGITS, LL_TARGETS), mode=mode, epoch=0, delta_rel=10)
    assert not out.selected.any()
    close(out.loss, LL_BASE.mean())


@pytest.mark.parametrize(("epoch", "expected_count"), [(1, 1), (2, 2), (3, 3), (5, 5)])
def test_ll_r_rejects_the_planned_share_of_the_largest_unknown_losses(epoch, expected_count):
    out = ll_loss(*tensors(LL_LOGITS, LL_TARGETS), mode="LL-R", epoch=epoch, delta_rel=10)
    ranked = [(0, 1), (1, 0), (1, 3), (0, 3), (1, 4)]  # unknown entries by decreasing loss
    expected = np.zeros_like(LL_TARGETS, dtype=bool)
    for row, col in ranked[:expected_count]:
        expected[row, col] = True
    np.testing.assert_array_equal(out.selected.numpy(), expected)
    close(out.loss, np.where(expected, 0.0, LL_BASE).mean())


def test_ll_never_selects_known_entries() -> None:
    # 100 % per epoch at epoch 1 asks for all 10 entries; only the 7 unknown ones are selected.
    out = ll_loss(*tensors(LL_LOGITS, LL_TARGETS), mode="LL-R", epoch=1, delta_rel=100)
    np.testing.assert_array_equal(out.selected.numpy(), LL_TARGETS == -1)
    close(out.loss, np.where(LL_TARGETS == -1, 0.0, LL_BASE).mean())


def test_ll_ct_replaces_selected_losses_with_positive_bce() -> None:
    out = ll_loss(*tensors(LL_LOGITS, LL_TARGETS), mode="LL-Ct", epoch=2, delta_rel=10)
    selected = out.selected.numpy()
    assert selected.sum() == 2 and selected[0, 1] and selected[1, 0]
    close(out.loss, np.where(selected, softplus(-LL_LOGITS), LL_BASE).mean())


def ll_spec() -> TaskSpec:
    train = np.full((4, 5), -1, dtype=np.int8)
    train[[0, 1, 2, 3], [3, 1, 0, 4]] = 1
    train[2] = LL_TARGETS[1]
    train[0] = LL_TARGETS[0]
    return TaskSpec(5, (5,), train)


def test_ll_ct_correction_lasts_one_step() -> None:
    method = identity_head(ll_spec(), loss="ll_ct", delta_rel=10)
    assert "loss.corrected" not in method.state_dict()
    inputs, targets = tensors(LL_LOGITS, LL_TARGETS)
    index = torch.tensor([0, 2])
    selected = np.zeros_like(LL_TARGETS, dtype=bool)
    selected[0, 1] = True  # k = ceil(10 * 0.1) = 1: the largest unknown loss
    corrected = method(inputs, targets, index, step(1))
    close(corrected.loss, np.where(selected, softplus(-LL_LOGITS), LL_BASE).mean())
    close(method(inputs, targets, index, step(0)).loss, LL_BASE.mean())


def test_ll_cp_writes_corrections_back_permanently() -> None:
    method = identity_head(ll_spec(), loss="ll_cp", delta_rel=10)
    inputs, targets = tensors(LL_LOGITS, LL_TARGETS)
    index = torch.tensor([0, 2])  # batch rows are training rows 0 and 2
    out = method(inputs, targets, index, step(1))  # k = ceil(10 * 0.1) = 1: entry (0, 1)
    assert out.logs["ll_selected_share"] == pytest.approx(0.1)
    expected = torch.zeros(4, 5, dtype=torch.bool)
    expected[0, 1] = True
    torch.testing.assert_close(method.loss.corrected, expected)
    # Epoch 0 selects nothing new, yet (0, 1) is now a positive: BCE(s, 1) there.
    now_positive = LL_TARGETS.copy()
    now_positive[0, 1] = 1
    base = np.where(now_positive == 1, softplus(-LL_LOGITS), softplus(LL_LOGITS))
    close(method(inputs, targets, index, step(0)).loss, base.mean())
    # The corrected entry is no longer a candidate: the next largest unknown, (1, 0) in the batch,
    # i.e. training row 2, is corrected next, still k = 1 at a later epoch.
    method(inputs, targets, index, step(4))
    expected[2, 0] = True
    torch.testing.assert_close(method.loss.corrected, expected)
    # No write-back in eval mode.
    method.eval()
    method(inputs, targets, index, step(4))
    torch.testing.assert_close(method.loss.corrected, expected)


def test_ll_needs_the_step_and_ll_cp_the_index() -> None:
    method = identity_head(ll_spec(), loss="ll_cp")
    inputs, targets = tensors(LL_LOGITS, LL_TARGETS)
    with pytest.raises(ValueError, match="StepInfo"):
        method(inputs, targets, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="index"):
        method(inputs, targets, None, step(1))


# ---------------------------------------------------------------------------------------- ROLE

ROLE_TRAIN = np.array(
    [[1, -1, -1, 0], [-1, 1, -1, -1], [0, -1, 1, -1], [-1, -1, -1, 1], [1, 0, -1, -1]],
    dtype=np.int8,
)


def role_head(seed: int = 0):
    torch.manual_seed(seed)
    spec = TaskSpec(4, (6,), ROLE_TRAIN)
    return create_method("linear", spec, loss="role", loss_options={"expected_positives": "voc"})


def test_role_estimator_initialisation() -> None:
    logits = role_head().loss.label_logits.detach()
    assert logits.shape == ROLE_TRAIN.shape
    pos, neg, unknown = ROLE_TRAIN == 1, ROLE_TRAIN == 0, ROLE_TRAIN == -1
    torch.testing.assert_close(logits[pos], torch.full((int(pos.sum()),), math.log(0.995 / 0.005)))
    torch.testing.assert_close(logits[neg], torch.full((int(neg.sum()),), math.log(0.005 / 0.995)))
    q = math.log(0.6 / 0.4)
    assert (logits[unknown].abs() < q).all() and logits[unknown].std() > 0.05
    torch.testing.assert_close(role_head().loss.label_logits, role_head().loss.label_logits)  # RNG


def test_role_estimates_stay_in_unit_interval_under_large_steps() -> None:
    method = role_head()
    optimizer = build_optimizer(method, TrainConfig(lr=5.0, optimizer="sgd", device="cpu"))
    inputs = torch.randn(5, 6)
    for _ in range(5):
        out = method(inputs, torch.tensor(ROLE_TRAIN), torch.arange(5))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert torch.isfinite(out.loss)
    logits = method.loss.label_logits.detach()
    assert torch.isfinite(logits).all()  # the estimates sigmoid(logits) are then in [0, 1]
    moved = (logits - role_head().loss.label_logits.detach()).abs()
    assert moved.max() > 1.0  # the large steps did reach the estimator


def test_role_estimator_has_its_own_10x_learning_rate() -> None:
    method = role_head()
    groups = method.param_groups()
    assert groups[1]["params"] == [method.loss.label_logits] and groups[1]["lr_mult"] == 10.0
    optimizer = build_optimizer(method, TrainConfig(lr=1e-3, weight_decay=0.01, device="cpu"))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-2])
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert n_params == len(list(method.parameters()))


def test_role_only_updates_the_rows_in_the_batch() -> None:
    method = role_head()
    index = torch.tensor([3, 1])
    method(torch.randn(2, 6), torch.tensor(ROLE_TRAIN[[3, 1]]), index).loss.backward()
    touched = method.loss.label_logits.grad.abs().sum(dim=1) > 0
    assert touched.tolist() == [False, True, False, True, False]


@pytest.mark.parametrize("loss", ["role", "ll_cp"])
def test_per_sample_state_survives_a_safetensors_round_trip(loss: str, tmp_path) -> None:
    if loss == "role":
        method, other = role_head(seed=0), role_head(seed=1)
        inputs, targets, index = torch.randn(5, 6), torch.tensor(ROLE_TRAIN), torch.arange(5)
        with torch.no_grad():
            method.loss.label_logits[2, 1] = 3.0  # a learned estimate
        name = "label_logits"
    else:
        method = identity_head(ll_spec(), loss="ll_cp", delta_rel=10)
        other = identity_head(ll_spec(), loss="ll_cp", delta_rel=10)
        inputs, targets = tensors(LL_LOGITS, LL_TARGETS)
        index = torch.tensor([0, 2])
        method(inputs, targets, index, step(1))
        name = "corrected"
    assert not torch.equal(getattr(method.loss, name), getattr(other.loss, name))
    save_file(method.state_dict(), tmp_path / "model.safetensors")
    other.load_state_dict(load_file(tmp_path / "model.safetensors"))
    torch.testing.assert_close(getattr(other.loss, name), getattr(method.loss, name))
    s = step(0)
    close(other(inputs, targets, index, s).loss, method(inputs, targets, index, s).loss.item())


# ------------------------------------------------------------------------------ the linear head


def options_for(loss: str, expected_positives: float, delta_rel: float) -> dict:
    """The options ``loss`` needs in these tests."""
    if loss in ("epr", "role"):
        return {"expected_positives": expected_positives}
    return {"delta_rel": delta_rel} if loss.startswith("ll_") else {}


@pytest.mark.parametrize("loss", [name for name in list_losses() if name != "rank"])
def test_gradients_flow_for_every_loss(loss: str) -> None:
    """Single positive labels and no known negative: every loss but ``rank`` (which ranks known
    positives above known negatives, ``tests/test_losses.py``) has a gradient."""
    torch.manual_seed(0)
    targets = np.full((6, 5), -1, dtype=np.int8)
    targets[np.arange(6), [0, 1, 2, 3, 4, 0]] = 1
    pseudo = np.full((6, 5), -1, dtype=np.int8)  # a teacher's: some positives, some negatives
    pseudo[np.arange(6), [1, 2, 3, 4, 0, 2]] = 1
    pseudo[np.arange(6), [4, 4, 0, 0, 1, 1]] = 0
    method = create_method("linear", TaskSpec(5, (8,), targets, pseudo_labels=pseudo), loss=loss,
                           loss_options=options_for(loss, 1.9, 20))
    out = method(torch.randn(6, 8), torch.tensor(targets), torch.arange(6), step(2))
    assert out.logits.shape == (6, 5) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grad = method.head[1].weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_hyperparameters_are_rejected() -> None:
    spec = TaskSpec(3, (4,), np.array([[1, -1, -1]], dtype=np.int8))
    with pytest.raises(ValueError, match="unknown loss"):
        create_method("linear", spec, loss="bce")
    with pytest.raises(ValueError, match="expected_positives"):
        create_method("linear", spec, loss="epr")
    with pytest.raises(ValueError, match="expected_positives"):
        create_method("linear", spec, loss="epr", loss_options={"expected_positives": "imagenet"})
    epr = create_method("linear", spec, loss="epr", loss_options={"expected_positives": "coco"})
    assert epr.loss.options == {"expected_positives": 2.9}
    with pytest.raises(ValueError, match="percentage"):
        ll_loss(torch.zeros(1, 3), torch.tensor([[1, -1, -1]]), "LL-R", 1, delta_rel=0)


@pytest.mark.parametrize("loss", ["ll_cp", "role"])
def test_killed_run_resumes_with_the_same_per_sample_state(loss: str, tmp_path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(96, 8)).astype(np.float32)
    labels = (features @ rng.normal(size=(8, 4)) > 0.3).astype(np.int8)
    labels[labels.sum(1) == 0, 0] = 1
    observed = np.full_like(labels, -1)
    for row in range(len(labels)):  # one positive per image, the rest unknown
        observed[row, rng.choice(np.flatnonzero(labels[row]))] = 1
    train = FeatureBatches(features, observed)

    def run(folder, resume=False, on_epoch_end=None):
        torch.manual_seed(0)
        method = create_method("linear", TaskSpec(4, (8,), observed), loss=loss,
                               loss_options=options_for(loss, 1.5, 5))
        cfg = TrainConfig(epochs=3, batch_size=16, lr=0.01, progress=False, device="cpu")
        fit(method, train, None, None, cfg, tmp_path / folder, resume=resume,
            on_epoch_end=on_epoch_end)
        return method

    def kill(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    full = run("full")
    with pytest.raises(KeyboardInterrupt):
        run("killed", on_epoch_end=kill)
    resumed = run("killed", resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    if loss == "ll_cp":
        assert full.loss.corrected.sum() > 0
