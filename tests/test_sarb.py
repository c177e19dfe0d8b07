"""SARB (``docs/methods.md`` §1): ILRB and PLRB blending, alpha/beta clamping, warm-up and ramp,
prototype schedule and k-means, the contrastive loss, ablation flags and prototypes in
checkpoints."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mlrkit.engine.batches import FeatureBatches
from mlrkit.engine.trainer import TrainConfig, fit
from mlrkit.methods.base import StepInfo, TaskSpec, create_method
from mlrkit.methods.kmeans import batched_kmeans
from mlrkit.methods.sarb import SARB, contrastive_loss, instance_blend, prototype_blend

C, D, SIDE, N = 4, 6, 3, 12

# Observed training labels (1 / 0 / -1): class 3 has no observed positive.
TRAIN_TARGETS = np.array(
    [
        [1, 0, -1, -1],
        [1, 1, 0, 0],
        [-1, 1, 1, -1],
        [0, -1, 1, 0],
        [1, -1, -1, -1],
        [-1, 1, 0, -1],
        [1, 0, 1, 0],
        [0, 0, -1, -1],
        [-1, -1, -1, -1],
        [1, 1, 1, 0],
        [0, 1, -1, -1],
        [-1, 0, 1, 0],
    ],
    dtype=np.int8,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_spec(targets: np.ndarray = TRAIN_TARGETS) -> TaskSpec:
    embeddings = torch.randn(targets.shape[1], 5, generator=torch.Generator().manual_seed(0))
    return TaskSpec(targets.shape[1], (D, SIDE, SIDE), targets, embeddings)


def make_sarb(spec: TaskSpec | None = None, **hparams) -> SARB:
    torch.manual_seed(0)
    defaults = {"image_dim": 8, "inter_dim": 6, "class_chunk": 2, "num_prototypes": 3}
    return SARB(spec or make_spec(), **{**defaults, **hparams})


def train_inputs() -> torch.Tensor:
    return torch.randn(N, D, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def batches_of(inputs: torch.Tensor, targets: np.ndarray, calls: list[int] | None = None):
    """A ``train_batches`` callable over ``inputs`` in batches of 5; counts its passes."""

    def train_batches():
        if calls is not None:
            calls.append(1)
        labels = torch.from_numpy(targets)
        for start in range(0, len(inputs), 5):
            rows = torch.arange(start, min(start + 5, len(inputs)))
            yield inputs[rows], labels[rows], rows

    return train_batches


def step_at(epoch: int, step: int = 0, steps: int = 10) -> StepInfo:
    return StepInfo(epoch=epoch, step=step, steps_per_epoch=steps, epochs=20)


# ---------------------------------------------------------------- ILRB


def test_instance_blend_mixes_exactly_unknown_entries_whose_partner_is_positive() -> None:
    targets = torch.tensor(
        [[-1, -1, 0, 1], [-1, 1, -1, 0], [1, -1, -1, 1], [1, 0, 1, -1]], dtype=torch.int8
    )  # partners: 0 <-> 3, 1 <-> 2
    expected_mask = torch.tensor(
        [
            [True, False, False, False],  # partner [1, 0, 1, -1]: class 1's partner is negative
            [True, False, False, False],  # partner [1, -1, -1, 1]: class 3 is a known negative
            [False, True, False, False],  # partner [-1, 1, -1, 0]: class 2's partner is unknown
            [False, False, False, True],  # partner [-1, -1, 0, 1]
        ]
    )
    features = torch.randn(4, C, 5)
    alpha = torch.tensor(0.3, requires_grad=True)
    blend = instance_blend(features, targets, alpha)
    assert torch.equal(blend.mask, expected_mask)
    partner = features.flip(0)
    expected = torch.where(expected_mask[..., None], 0.3 * features + 0.7 * partner, features)
    torch.testing.assert_close(blend.features, expected)
    assert torch.equal(blend.features[~expected_mask], features[~expected_mask])
    expected_targets = torch.where(expected_mask, torch.tensor(0.7), targets.float())
    torch.testing.assert_close(blend.targets, expected_targets)
    # Gradients reach alpha through the soft targets alone too.
    F.binary_cross_entropy_with_logits(torch.ones(4, C), blend.targets.clamp(min=0)).backward()
    assert alpha.grad is not None and alpha.grad != 0


def test_instance_blend_with_alpha_one_leaves_entries_unknown() -> None:
    targets = torch.tensor([[-1, 0], [1, 1]], dtype=torch.int8)
    features = torch.randn(2, 2, 3)
    blend = instance_blend(features, targets, torch.tensor(1.0))
    assert blend.mask[0, 0]
    torch.testing.assert_close(blend.features, features)
    assert blend.targets[0, 0] == -1  # soft target 0 is the reference's "unknown", not a negative


def test_instance_blend_odd_batch_middle_image_is_its_own_partner() -> None:
    targets = torch.tensor([[1, -1], [-1, 1], [-1, 1]], dtype=torch.int8)
    blend = instance_blend(torch.randn(3, 2, 4), targets, torch.tensor(0.5))
    assert blend.mask.tolist() == [[False, True], [False, False], [True, False]]


# ---------------------------------------------------------------- PLRB

PROTO_TARGETS = torch.tensor(
    [
        [-1, 1, -1, 0],  # eligible: 0, 2
        [1, 1, 0, 0],  # no unknown: not blended
        [1, 0, 1, -1],  # only unknown is class 3, which has no prototype: not blended
        [-1, -1, -1, -1],  # eligible: 0, 1, 2
    ],
    dtype=torch.int8,
)
HAS_PROTOTYPE = torch.tensor([True, True, True, False])


def test_prototype_blend_picks_one_eligible_unknown_class_per_image() -> None:
    features = torch.randn(4, C, 5)
    prototypes = torch.randn(C, 3, 5)
    eligible = (PROTO_TARGETS < 0) & HAS_PROTOTYPE
    beta = torch.tensor(0.25)
    picked, indices = set(), set()
    torch.manual_seed(0)
    for _ in range(60):
        blend, k = prototype_blend(features, PROTO_TARGETS, prototypes, HAS_PROTOTYPE, beta)
        assert blend.mask.sum(1).tolist() == [1, 0, 0, 1]
        assert not (blend.mask & ~eligible).any()
        mixed = 0.25 * features + 0.75 * prototypes[:, int(k)]
        expected = torch.where(blend.mask[..., None], mixed, features)
        torch.testing.assert_close(blend.features, expected)
        expected_targets = torch.where(blend.mask, torch.tensor(0.75), PROTO_TARGETS.float())
        torch.testing.assert_close(blend.targets, expected_targets)
        picked |= {(i, c) for i, c in blend.mask.nonzero().tolist()}
        indices.add(int(k))
    assert picked == {(0, 0), (0, 2), (3, 0), (3, 1), (3, 2)}  # uniform choice covers them all
    assert indices == {0, 1, 2}


def test_prototype_blend_gradients_reach_beta_through_features_and_targets() -> None:
    beta = torch.tensor(0.5, requires_grad=True)
    features = torch.randn(4, C, 5)
    torch.manual_seed(0)
    blend, _ = prototype_blend(features, PROTO_TARGETS, torch.randn(C, 3, 5), HAS_PROTOTYPE, beta)
    blend.features.sum().backward(retain_graph=True)
    from_features = beta.grad.clone()
    beta.grad = None
    blend.targets.clamp(min=0).sum().backward()
    assert from_features != 0 and beta.grad == -2.0  # two blended entries, each 1 - beta


# ---------------------------------------------------------------- contrastive loss


def contrastive_by_loops(features: torch.Tensor, targets: torch.Tensor, mine: bool) -> float:
    """Independent version: explicit loops over pairs and classes; mining without the random
    part, valid when ``2 n_pp`` covers each list (the random subset is then the whole list)."""
    pos_pos, pos_neg, neg_neg = [], [], []
    for i, j in itertools.combinations(range(len(features)), 2):
        for c in range(features.shape[1]):
            d = F.cosine_similarity(features[i, c], features[j, c], dim=0, eps=1e-9).item()
            a, b = int(targets[i, c]), int(targets[j, c])
            if a == 1 and b == 1:
                pos_pos.append(1 - d)
            elif {a, b} == {0, 1}:
                pos_neg.append(1 + d)
            elif a == 0 and b == 0:
                neg_neg.append(1 + d)
    if mine and pos_pos:
        n = len(pos_pos)
        assert 2 * n >= max(len(neg_neg), len(pos_neg)), "mining would be random"
        neg_neg = neg_neg + sorted(neg_neg, reverse=True)[:n]
        pos_neg = pos_neg + sorted(pos_neg, reverse=True)[:n]
    terms = pos_pos + pos_neg + neg_neg
    return sum(terms) / len(terms) if terms else 0.0


CONTRAST_TARGETS = torch.tensor(
    [[1, 0, -1], [1, 1, 0], [0, 1, -1], [1, -1, 0]], dtype=torch.int8
)


def test_contrastive_loss_without_mining_matches_loops() -> None:
    features = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(3))
    expected = contrastive_by_loops(features, CONTRAST_TARGETS, mine=False)
    got = contrastive_loss(features, CONTRAST_TARGETS, hard_mining=False)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_contrastive_loss_with_mining_matches_loops_when_deterministic() -> None:
    # pos-pos: (0,1,c0) (0,3,c0) (1,3,c0) (1,2,c1) -> n_pp = 4 >= half of each other list.
    features = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(4))
    expected = contrastive_by_loops(features, CONTRAST_TARGETS, mine=True)
    torch.manual_seed(0)
    got = contrastive_loss(features, CONTRAST_TARGETS)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() != pytest.approx(contrastive_by_loops(features, CONTRAST_TARGETS, False))


def test_contrastive_loss_mining_keeps_random_subset_plus_hardest() -> None:
    # One pos-pos pair, six neg-neg terms: 2 random + the largest one are kept.
    targets = torch.tensor([[1, 0], [1, 0], [-1, 0], [-1, 0]], dtype=torch.int8)
    features = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(5))
    cos = [
        F.cosine_similarity(features[i, 1], features[j, 1], dim=0).item()
        for i, j in itertools.combinations(range(4), 2)
    ]
    pos_pos = 1 - F.cosine_similarity(features[0, 0], features[1, 0], dim=0).item()
    neg_neg = [1 + d for d in cos]
    for seed in range(5):
        torch.manual_seed(seed)
        got = contrastive_loss(features, targets).item() * 4  # pos-pos, 2 random, hardest
        random_two = got - pos_pos - max(neg_neg)
        sums = {a + b for a, b in itertools.combinations(neg_neg, 2)}
        assert min(abs(random_two - s) for s in sums) < 1e-5


def test_contrastive_loss_is_zero_without_pairs() -> None:
    features = torch.randn(3, 2, 4, requires_grad=True)
    unknown = torch.full((3, 2), -1, dtype=torch.int8)
    loss = contrastive_loss(features, unknown)
    assert loss.item() == 0.0
    loss.backward()  # keeps a gradient path
    assert contrastive_loss(features[:1], unknown[:1]).item() == 0.0


# ---------------------------------------------------------------- k-means


def test_kmeans_recovers_well_separated_centres_per_group() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 4, 5, generator=gen) * 20  # 3 groups x 4 clusters
    points, groups = [], []
    for g in range(3):
        for j in range(4):
            points.append(centres[g, j] + 0.05 * torch.randn(25, 5, generator=gen))
            groups.append(torch.full((25,), g))
    order = torch.randperm(300, generator=gen)  # groups interleaved
    points, groups = torch.cat(points)[order], torch.cat(groups)[order]
    result = batched_kmeans(points, groups, 3, 4, generator=torch.Generator().manual_seed(1))
    assert result.counts.tolist() == [100, 100, 100]
    for g in range(3):
        distance = torch.cdist(result.centroids[g], centres[g])  # (found, true)
        match = distance.argmin(1)
        assert sorted(match.tolist()) == [0, 1, 2, 3]
        assert distance.min(1).values.max() < 0.05


def test_kmeans_small_and_empty_groups() -> None:
    points = torch.arange(12.0).reshape(6, 2)
    groups = torch.tensor([2, 0, 2, 0, 0, 2])  # group 1 empty; groups 0 and 2 have 3 points
    result = batched_kmeans(points, groups, 3, 4)
    assert result.counts.tolist() == [3, 0, 3]
    assert torch.equal(result.centroids[0], points[[1, 3, 4, 1]])  # points repeated in order
    assert torch.equal(result.centroids[1], torch.zeros(4, 2))
    assert torch.equal(result.centroids[2], points[[0, 2, 5, 0]])


def test_kmeans_is_reproducible_with_a_generator() -> None:
    points, groups = torch.randn(80, 3), torch.randint(0, 2, (80,))
    runs = [
        batched_kmeans(points, groups, 2, 5, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].centroids, runs[1].centroids)


# ---------------------------------------------------------------- the method


def test_registered_as_spatial_method_with_reference_defaults() -> None:
    model = create_method("sarb", make_spec(), image_dim=None, inter_dim=4)
    assert isinstance(model, SARB) and model.input_kind == "spatial"
    assert model.contrastive_weight == 0.05 and model.mixup_epoch == 5
    assert model.prototype_interval == 5 and model.prototypes.shape == (C, 10, D)
    assert model.alpha.item() == 0.5 and model.beta.item() == 0.5
    assert model.alpha.requires_grad and model.beta.requires_grad
    with pytest.raises(ValueError, match="alpha and beta"):
        make_sarb(alpha=1.5)


def test_prototypes_recomputed_at_mixup_epoch_and_every_interval() -> None:
    model, calls, computed_at = make_sarb(), [], []
    batches = batches_of(train_inputs(), TRAIN_TARGETS, calls)
    for epoch in range(20):
        before = len(calls)
        model.on_train_epoch_start(epoch, batches)
        if len(calls) > before:
            computed_at.append(epoch)
            assert int(model.prototype_epoch) == epoch
    assert computed_at == [5, 10, 15]
    once, calls = make_sarb(prototype_interval=0), []
    for epoch in range(20):
        once.on_train_epoch_start(epoch, batches_of(train_inputs(), TRAIN_TARGETS, calls))
    assert len(calls) == 1 and int(once.prototype_epoch) == 5


def test_prototypes_come_from_observed_positives_only() -> None:
    model = make_sarb(num_prototypes=5)  # every class has <= 5 observed positives
    model.train()
    inputs = train_inputs()
    model.compute_prototypes(batches_of(inputs, TRAIN_TARGETS))
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        features = model.decouple(inputs)
    assert model.has_prototype.tolist() == [True, True, True, False]
    for c in range(3):
        rows = np.flatnonzero(TRAIN_TARGETS[:, c] == 1)
        repeated = [rows[j % len(rows)] for j in range(5)]
        torch.testing.assert_close(model.prototypes[c], features[repeated, c])
    assert torch.equal(model.prototypes[3], torch.zeros(5, 8))


def test_prototypes_are_computed_in_eval_mode() -> None:
    model = make_sarb(image_dim=4)  # a 1x1 conv + BatchNorm projection: mode matters
    modes = []
    model.decouple = lambda x: (modes.append(model.training), SARB.decouple(model, x))[1]
    model.train()
    model.compute_prototypes(batches_of(train_inputs(), TRAIN_TARGETS))
    assert modes and not any(modes)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.randn(4, D, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    return inputs, PROTO_TARGETS


def test_warm_up_has_no_blending_losses_before_mixup_epoch() -> None:
    model = make_sarb()
    inputs, targets = batch()
    for epoch in range(5):
        model.on_train_epoch_start(epoch, batches_of(train_inputs(), TRAIN_TARGETS))
        model.train()
        out = model(inputs, targets, None, step_at(epoch, 3))
        assert out.logs["inst"] == 0 and out.logs["proto"] == 0
        out.loss.backward()
        assert model.alpha.grad is None and model.beta.grad is None
    model.on_train_epoch_start(5, batches_of(train_inputs(), TRAIN_TARGETS))
    model.train()
    out = model(inputs, targets, None, step_at(5, 3))
    assert out.logs["inst"] > 0 and out.logs["proto"] > 0
    out.loss.backward()
    assert model.alpha.grad != 0 and model.beta.grad != 0


def test_loss_is_the_sum_of_its_parts_with_ramped_contrastive_weight() -> None:
    model = make_sarb().train()
    inputs, targets = batch()
    for epoch, step, weight in [(0, 0, 0.0), (0, 4, 0.02), (0, 9, 0.045), (1, 0, 0.05)]:
        torch.manual_seed(0)
        out = model(inputs, targets, None, step_at(epoch, step))
        logs = out.logs
        assert logs["contrastive"] > 0
        expected = logs["main"] + weight * logs["contrastive"]
        assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    model.on_train_epoch_start(5, batches_of(train_inputs(), TRAIN_TARGETS))
    out = model.train()(inputs, targets, None, step_at(7))
    logs = out.logs
    expected = logs["main"] + 0.05 * logs["contrastive"] + logs["inst"] + logs["proto"]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(logs) == {"main", "contrastive", "inst", "proto", "alpha", "beta"}


def test_alpha_and_beta_are_clamped_after_a_step_pushes_them_out() -> None:
    model = make_sarb()
    model.on_train_epoch_start(5, batches_of(train_inputs(), TRAIN_TARGETS))
    optimizer = torch.optim.SGD([model.alpha, model.beta], lr=1.0)
    model.alpha.grad, model.beta.grad = torch.tensor(2.0), torch.tensor(-2.0)
    optimizer.step()
    assert model.alpha.item() < 0 and model.beta.item() > 1
    inputs, targets = batch()
    out = model.train()(inputs, targets, None, step_at(5))
    assert model.alpha.item() == 0.0 and model.beta.item() == 1.0
    assert out.logs["alpha"] == 0.0 and out.logs["beta"] == 1.0
    out.loss.backward()  # the clamp happened before use: autograd is intact
    assert model.alpha.grad is not None


def test_eval_mode_and_inference_do_not_blend() -> None:
    model = make_sarb()
    model.on_train_epoch_start(5, batches_of(train_inputs(), TRAIN_TARGETS))
    inputs, targets = batch()
    model.eval()
    out = model(inputs, targets, None, step_at(8))
    assert out.logs["inst"] == 0 and out.logs["proto"] == 0
    torch.testing.assert_close(model(inputs).logits, out.logits)


@pytest.mark.parametrize(("use_ilrb", "use_plrb"), [(False, True), (True, False), (False, False)])
def test_ablation_flags_switch_off_their_branch(use_ilrb: bool, use_plrb: bool) -> None:
    model, calls = make_sarb(use_ilrb=use_ilrb, use_plrb=use_plrb), []
    model.on_train_epoch_start(5, batches_of(train_inputs(), TRAIN_TARGETS, calls))
    assert len(calls) == int(use_plrb)
    inputs, targets = batch()
    out = model.train()(inputs, targets, None, step_at(6))
    out.loss.backward()
    assert (out.logs["inst"] > 0) == use_ilrb and (out.logs["proto"] > 0) == use_plrb
    assert (model.alpha.grad is not None) == use_ilrb
    assert (model.beta.grad is not None) == use_plrb


def test_fixed_alpha_and_beta_are_not_trained() -> None:
    model = make_sarb(learn_alpha=False, learn_beta=False, alpha=0.2)
    params = [p for group in model.param_groups() for p in group["params"]]
    assert all(p is not model.alpha and p is not model.beta for p in params)
    assert model.alpha.item() == pytest.approx(0.2)


def test_prototypes_survive_a_safetensors_round_trip(tmp_path) -> None:
    model = make_sarb()
    model.on_train_epoch_start(5, batches_of(train_inputs(), TRAIN_TARGETS))
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    restored = make_sarb()
    restored.load_state_dict(load_file(str(path)))
    assert torch.equal(restored.prototypes, model.prototypes)
    assert model.prototypes.abs().sum() > 0
    assert torch.equal(restored.has_prototype, model.has_prototype)
    assert int(restored.prototype_epoch) == 5
    assert not restored.prototypes_due(6) and restored.prototypes_due(10)


def test_killed_run_resumes_with_the_same_prototypes_and_weights(tmp_path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(24, D, SIDE, SIDE)).astype(np.float32)
    observed = np.concatenate([TRAIN_TARGETS, TRAIN_TARGETS])
    train = FeatureBatches(features, observed)

    def run(folder, resume=False, on_epoch_end=None):
        model = make_sarb(mixup_epoch=1, prototype_interval=2)
        cfg = TrainConfig(epochs=4, batch_size=8, lr=0.01, progress=False, device="cpu")
        fit(model, train, None, None, cfg, tmp_path / folder, resume=resume,
            on_epoch_end=on_epoch_end)
        return model

    def kill(epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt

    full = run("full")
    with pytest.raises(KeyboardInterrupt):
        run("killed", on_epoch_end=kill)
    resumed = run("killed", resume=True)
    assert int(full.prototype_epoch) == 3
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
