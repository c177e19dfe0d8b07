"""Semantic graph head (``ssgrl``): decoupling, adjacency, gated GNN, classifier and loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlrkit.methods.base import TaskSpec, create_method
from mlrkit.methods.layers import GatedGNN, SemanticDecoupling, cooccurrence_adjacency
from mlrkit.methods.semantic_graph import SemanticGraphHead

C, D, E = 5, 12, 7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_spec(num_classes: int = C, dim: int = D, side: int = 3, seed: int = 0) -> TaskSpec:
    rng = np.random.default_rng(seed)
    train_targets = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(40, num_classes))
    embeddings = torch.randn(num_classes, E, generator=torch.Generator().manual_seed(seed))
    return TaskSpec(num_classes, (dim, side, side), train_targets, embeddings)


def make_head(spec: TaskSpec | None = None, **hparams) -> SemanticGraphHead:
    torch.manual_seed(0)
    defaults = {"image_dim": 8, "inter_dim": 6, "class_chunk": 2}
    return SemanticGraphHead(spec or make_spec(), **{**defaults, **hparams})


@pytest.mark.parametrize("class_chunk", [1, 3, 4, 11, 64])
def test_chunked_decoupling_matches_direct(class_chunk: int) -> None:
    torch.manual_seed(class_chunk)
    num_classes = 11
    layer = SemanticDecoupling(feature_dim=16, embed_dim=E, inter_dim=10, class_chunk=class_chunk)
    tokens = torch.randn(3, 9, 16)
    embeddings = torch.randn(num_classes, E)
    torch.testing.assert_close(
        layer.scores(tokens, embeddings),
        layer.scores_direct(tokens, embeddings),
        atol=1e-5,
        rtol=1e-5,
    )
    features = layer(tokens, embeddings)
    assert features.shape == (3, num_classes, 16)
    torch.testing.assert_close(
        features, layer(tokens, embeddings, direct=True), atol=1e-5, rtol=1e-5
    )


def test_chunked_decoupling_gradients_match_direct() -> None:
    torch.manual_seed(0)
    layer = SemanticDecoupling(feature_dim=16, embed_dim=E, inter_dim=10, class_chunk=3)
    tokens = torch.randn(2, 9, 16, requires_grad=True)
    embeddings = torch.randn(7, E)
    weights = torch.randn(2, 7, 16)

    def gradients(direct: bool) -> list[torch.Tensor]:
        layer.zero_grad()
        tokens.grad = None
        (layer(tokens, embeddings, direct) * weights).sum().backward()
        params = [layer.fc1.weight, layer.fc2.weight, layer.fc3.weight, layer.fc4.weight]
        return [tokens.grad.clone()] + [p.grad.clone() for p in params]

    for chunked, direct in zip(gradients(False), gradients(True), strict=True):
        torch.testing.assert_close(chunked, direct, atol=1e-5, rtol=1e-4)


def test_attention_sums_to_one_over_positions() -> None:
    layer = SemanticDecoupling(feature_dim=16, embed_dim=E, inter_dim=10, class_chunk=2)
    attention = layer.attention(torch.randn(2, 9, 16), torch.randn(C, E))
    assert attention.shape == (2, C, 9)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, C))


def test_adjacency_counts_only_observed_positives() -> None:
    targets = np.array(
        [
            [1, 1, 0, -1],
            [1, -1, 1, 0],
            [1, 1, -1, -1],
            [0, 1, -1, 0],
        ],
        dtype=np.int8,
    )
    # N_ii = 3, 3, 1, 0; class 3 has no observed positive.
    expected = torch.tensor(
        [
            [1.0, 2 / 3, 1 / 3, 0.0],
            [2 / 3, 1.0, 0.0, 0.0],
            [1.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    adjacency = cooccurrence_adjacency(targets)
    assert not adjacency.isnan().any()
    torch.testing.assert_close(adjacency, expected)


def test_head_adjacency_buffers_are_frozen_and_transposed() -> None:
    spec = make_spec()
    head = make_head(spec)
    adjacency = cooccurrence_adjacency(spec.train_targets)
    torch.testing.assert_close(head.gnn.a_in, adjacency)
    torch.testing.assert_close(head.gnn.a_out, adjacency.T)
    buffers = dict(head.named_buffers())
    assert {"gnn.a_in", "gnn.a_out", "label_embeddings"} <= set(buffers)
    assert not any(b.requires_grad for b in buffers.values())


def test_gnn_step_matches_hand_written_formula() -> None:
    torch.manual_seed(0)
    batch, nodes, dim = 2, 3, 4
    adjacency = torch.rand(nodes, nodes)
    gnn = GatedGNN(dim, adjacency, steps=1)
    h = torch.randn(batch, nodes, dim)

    def linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return layer.weight @ x + layer.bias

    expected = torch.empty_like(h)
    for b in range(batch):
        for c in range(nodes):
            incoming = sum(adjacency[c, j] * h[b, j] for j in range(nodes))
            outgoing = sum(adjacency[j, c] * h[b, j] for j in range(nodes))
            a = torch.cat((incoming, outgoing))
            z = torch.sigmoid(linear(gnn.w_z, a) + linear(gnn.u_z, h[b, c]))
            r = torch.sigmoid(linear(gnn.w_r, a) + linear(gnn.u_r, h[b, c]))
            candidate = torch.tanh(linear(gnn.w_h, a) + linear(gnn.u_h, r * h[b, c]))
            expected[b, c] = (1 - z) * h[b, c] + z * candidate
    torch.testing.assert_close(gnn.step(h), expected)
    torch.testing.assert_close(gnn(h), expected)
    assert GatedGNN(dim, adjacency, steps=3)(h).shape == h.shape


def test_stage_shapes_and_forward_composes_them() -> None:
    head = make_head().eval()
    inputs = torch.randn(2, D, 3, 3)
    features = head.decouple(inputs)
    states = head.propagate(features)
    assert features.shape == states.shape == (2, C, 8)
    logits = head.classify(states, features)
    assert logits.shape == (2, C)
    torch.testing.assert_close(head(inputs).logits, logits)
    torch.testing.assert_close(head.decouple(inputs, direct=True), features)


@pytest.mark.parametrize(
    ("image_dim", "output_dim", "expect_projection"),
    [(None, None, False), (D, 3, False), (8, 5, True)],
)
def test_projection_and_output_dims(image_dim, output_dim, expect_projection) -> None:
    head = make_head(image_dim=image_dim, output_dim=output_dim)
    assert isinstance(head.projection, torch.nn.Sequential) == expect_projection
    dim = D if image_dim is None else image_dim
    assert head.decouple(torch.randn(2, D, 3, 3)).shape == (2, C, dim)
    assert head.classifier.weight.shape == (C, output_dim or dim)
    assert head(torch.randn(2, D, 3, 3)).logits.shape == (2, C)


def test_registered_and_needs_label_embeddings() -> None:
    spec = make_spec()
    assert isinstance(create_method("ssgrl", spec, image_dim=None, inter_dim=4), SemanticGraphHead)
    no_embeddings = TaskSpec(C, (D, 3, 3), spec.train_targets, None)
    with pytest.raises(ValueError, match="label embeddings"):
        SemanticGraphHead(no_embeddings)
    with pytest.raises(ValueError, match="unknown loss"):
        make_head(loss="focal")


def test_loss_ignores_unknown_entries() -> None:
    head = make_head().eval()
    targets = torch.tensor([[1, 0, -1, 1, 0], [0, -1, 1, -1, 1]], dtype=torch.int8)
    logits = torch.randn(2, C, requires_grad=True)
    head.classify = lambda states, features: logits  # isolate the loss from the network
    inputs = torch.randn(2, D, 3, 3)
    loss = head(inputs, targets).loss
    loss.backward()
    assert (logits.grad[targets == -1] == 0).all()
    with torch.no_grad():
        logits[targets == -1] += 5.0
    torch.testing.assert_close(head(inputs, targets).loss, loss.detach())
    assert not torch.allclose(
        make_head(loss="assume_negative").eval()(inputs, targets).loss, loss.detach()
    )


def test_gradients_reach_every_trainable_parameter() -> None:
    head = make_head()
    targets = torch.tensor([[1, 0, -1, 1, 0], [0, 1, 1, -1, 1], [1, 1, 0, 0, -1]])
    head(torch.randn(3, D, 3, 3), targets.to(torch.int8)).loss.backward()
    # A constant shift of the decoupling scores cancels in the softmax over positions.
    shift_only = {"decoupling.fc3.bias", "decoupling.fc4.bias"}
    for name, param in head.named_parameters():
        assert param.grad is not None, name
        if name in shift_only:
            torch.testing.assert_close(param.grad, torch.zeros_like(param), atol=1e-6, rtol=0)
        else:
            assert param.grad.abs().sum() > 0, name


def test_training_reduces_loss_on_separable_problem() -> None:
    torch.manual_seed(0)
    num_classes, dim, batch = 4, 6, 16
    targets = (torch.rand(batch, num_classes) < 0.5).to(torch.int8)
    prototypes = torch.randn(num_classes, dim) * 3
    inputs = 0.1 * torch.randn(batch, dim, 3, 3)
    for c in range(num_classes):  # class c present: its prototype at position c
        inputs[:, :, c // 3, c % 3] += targets[:, c, None].float() * prototypes[c]
    observed = targets.clone()
    observed[torch.rand(batch, num_classes) < 0.3] = -1
    spec = make_spec(num_classes, dim)
    spec = TaskSpec(num_classes, (dim, 3, 3), observed.numpy(), spec.label_embeddings)
    head = make_head(spec, image_dim=None, inter_dim=8)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = head(inputs, observed).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_device_agnostic_on_meta_device() -> None:
    head = make_head().to("meta")
    targets = torch.zeros(2, C, dtype=torch.int8, device="meta")
    out = head(torch.empty(2, D, 3, 3, device="meta"), targets)
    assert out.logits.device.type == "meta" and out.loss.device.type == "meta"


def test_dtype_follows_module() -> None:
    head = make_head().double()
    out = head(torch.randn(2, D, 3, 3, dtype=torch.float64))
    assert out.logits.dtype == torch.float64


def test_the_residual_form_starts_as_the_linear_head_on_pooled_features_and_trains_the_graph():
    torch.manual_seed(0)
    targets = np.array([[1, 0, -1], [0, 1, 1], [1, -1, 0], [0, 0, 1]], dtype=np.int8)
    spec = TaskSpec(3, (8, 2, 2), targets, torch.randn(3, 5), ("a", "b", "c"))
    head = create_method("ssgrl", spec, image_dim=4, inter_dim=6, residual=True).eval()
    x = torch.randn(4, 8, 2, 2)
    pooled = x.mean(dim=(2, 3))
    torch.testing.assert_close(head(x).logits, head.base(pooled))  # the linear head, exactly
    head.train()
    head(x, torch.as_tensor(targets)).loss.backward()
    assert head.classifier.weight.grad.abs().sum() > 0 and head.base.weight.grad.abs().sum() > 0
    assert create_method("ssgrl", spec, image_dim=4, inter_dim=6).base is None  # the reference
    slow = create_method("ssgrl", spec, image_dim=4, inter_dim=6, residual=True,
                         graph_lr_mult=0.1)
    fast, graph = slow.param_groups()
    assert {id(p) for p in fast["params"]} == {id(p) for p in slow.base.parameters()}
    assert graph["lr_mult"] == 0.1 and len(fast["params"]) + len(graph["params"]) == len(
        [p for p in slow.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match="only with residual"):
        create_method("ssgrl", spec, image_dim=4, inter_dim=6, graph_lr_mult=0.1)
