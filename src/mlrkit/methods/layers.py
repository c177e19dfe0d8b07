"""Layers shared by the semantic-graph family (SSGRL, SARB, SST, HST): semantic decoupling, the
label co-occurrence adjacency, the gated graph network and the per-class classifier; the chunked
low-rank bilinear scores are shared with CLSL.

Shapes: ``B`` batch, ``P`` spatial positions (``h * w``), ``C`` classes, ``D`` feature channels,
``E`` label-embedding size, ``K`` the decoupling's intermediate size, ``N`` training images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def cooccurrence_adjacency(targets: np.ndarray) -> Tensor:
    """Conditional co-occurrence matrix ``A[i, j] = N_ij / N_ii`` from observed labels.

    Args:
        targets: ``(N, C)`` observed labels; only entries equal to 1 (known positives) count, so
            unknown (-1) and negative (0) entries are ignored alike.

    Returns:
        ``(C, C)`` float32, ``A[i, j]`` = fraction of the images with ``i`` observed positive that
        also have ``j`` observed positive (``P(j | i)``); the diagonal is 1. A class with no
        observed positive gets an all-zero row (the reference code leaves NaN there, because its
        ``np.nan_to_num`` result is discarded).

    Example:
        >>> cooccurrence_adjacency(np.array([[1, 1], [1, -1]]))
        tensor([[1.0000, 0.5000],
                [1.0000, 1.0000]])
    """
    if targets.ndim != 2:
        raise ValueError(f"targets must be (N, C), got shape {targets.shape}")
    positive = (targets == 1).astype(np.float64)
    counts = positive.T @ positive  # (C, C): N_ij
    diag = np.diag(counts)
    adjacency = np.divide(counts, diag[:, None], out=np.zeros_like(counts), where=diag[:, None] > 0)
    return torch.from_numpy(adjacency.astype(np.float32))


def channel_projection(in_dim: int, out_dim: int) -> nn.Module:
    """``(B, in_dim, h, w)`` -> ``(B, out_dim, h, w)``: a 1x1 conv without bias + BatchNorm2d (the
    reference's ``changeChannel``), or the identity when the sizes already agree."""
    if in_dim == out_dim:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, kernel_size=1, bias=False),
                         nn.BatchNorm2d(out_dim))


class SemanticDecoupling(nn.Module):
    """Class-specific attention pooling of a feature map, guided by label embeddings.

    For position ``p`` with feature ``x_p`` (``D``) and class ``c`` with embedding ``w_c`` (``E``)::

        e[c, p] = fc4(fc3(tanh(fc1(x_p) * fc2(w_c))))     fc1, fc2 without bias
        a[c, p] = softmax_p(e[c, p])
        f_c     = sum_p a[c, p] x_p

    There is no non-linearity between ``fc3`` and ``fc4``, so ``fc4 . fc3`` is one affine map
    ``K -> 1``: ``e = tanh(...) @ g + b`` with ``g = fc3.weight^T fc4.weight^T`` and
    ``b = fc4(fc3.bias)``. :meth:`scores` uses that form, one chunk of ``class_chunk`` classes at a
    time, and under autograd recomputes each chunk in the backward pass (activation
    checkpointing), so at most ``(B, P, class_chunk, K)`` is alive at once instead of several
    ``(B, P, C, K)`` tensors. :meth:`scores_direct` is the literal, fully materialised formula,
    kept as the reference for tests and benchmarks. The bias ``b`` shifts all scores of a
    ``(b, c)`` row equally and cancels in the softmax: ``fc3.bias`` and ``fc4.bias`` get zero
    gradient. They are kept for parity with the reference layer.
    """

    def __init__(
        self, feature_dim: int, embed_dim: int, inter_dim: int = 512, class_chunk: int = 16
    ) -> None:
        super().__init__()
        if class_chunk < 1:
            raise ValueError(f"class_chunk must be >= 1, got {class_chunk}")
        self.class_chunk = class_chunk
        self.fc1 = nn.Linear(feature_dim, inter_dim, bias=False)
        self.fc2 = nn.Linear(embed_dim, inter_dim, bias=False)
        self.fc3 = nn.Linear(inter_dim, inter_dim)
        self.fc4 = nn.Linear(inter_dim, 1)

    def scores(self, tokens: Tensor, embeddings: Tensor) -> Tensor:
        """Attention scores ``e``, ``(B, C, P)``, computed class chunk by class chunk.

        Args:
            tokens: ``(B, P, D)`` position features.
            embeddings: ``(C, E)`` label embeddings.
        """
        image = self.fc1(tokens)  # (B, P, K)
        label = self.fc2(embeddings)  # (C, K)
        gate = (self.fc4.weight @ self.fc3.weight).squeeze(0)  # (K,): fc4 . fc3 without bias
        offset = self.fc4(self.fc3.bias)  # (1,): shifts every score alike
        scores = chunked_bilinear_scores(image, label, gate, self.class_chunk)  # (B, P, C)
        return scores.transpose(1, 2) + offset  # (B, C, P)

    def scores_direct(self, tokens: Tensor, embeddings: Tensor) -> Tensor:
        """Reference for :meth:`scores`: the formula with ``(B, P, C, K)`` materialised."""
        joint = torch.tanh(self.fc1(tokens)[:, :, None, :] * self.fc2(embeddings))  # (B, P, C, K)
        return self.fc4(self.fc3(joint)).squeeze(-1).transpose(1, 2)  # (B, C, P)

    def attention(self, tokens: Tensor, embeddings: Tensor, direct: bool = False) -> Tensor:
        """Attention weights ``a``, ``(B, C, P)``, summing to 1 over positions."""
        scores = self.scores_direct if direct else self.scores
        return scores(tokens, embeddings).softmax(dim=-1)

    def forward(self, tokens: Tensor, embeddings: Tensor, direct: bool = False) -> Tensor:
        """Class features ``F``, ``(B, C, D)``, from ``tokens`` ``(B, P, D)`` and ``embeddings``
        ``(C, E)``; ``direct`` selects the fully materialised reference computation."""
        return self.attention(tokens, embeddings, direct) @ tokens


def chunked_bilinear_scores(
    image: Tensor, label: Tensor, gate: Tensor, class_chunk: int
) -> Tensor:
    """Low-rank bilinear scores ``s[b, p, c] = tanh(image[b, p] * label[c]) @ gate``, ``(B, P, C)``,
    without materialising ``(B, P, C, K)``.

    The classes are taken ``class_chunk`` at a time; under autograd each chunk is recomputed in the
    backward pass (activation checkpointing), so at most one ``(B, P, class_chunk, K)`` tensor is
    alive at once, whatever ``C``. Used by :class:`SemanticDecoupling` (label embeddings shared by
    the batch) and by CLSL's label attention (:mod:`mlrkit.methods.clsl`, label vectors conditioned
    on each image).

    Args:
        image: ``(B, P, K)`` projected position features.
        label: ``(C, K)`` projected label vectors shared by the batch, or ``(B, C, K)`` per image.
        gate: ``(K,)`` the linear read-out of the ``tanh`` features.
        class_chunk: classes per chunk, ``>= 1``.
    """
    if class_chunk < 1:
        raise ValueError(f"class_chunk must be >= 1, got {class_chunk}")
    recompute = torch.is_grad_enabled() and (
        image.requires_grad or label.requires_grad or gate.requires_grad
    )
    chunks = []
    for label_chunk in label.split(class_chunk, dim=-2):
        if recompute:
            chunk = checkpoint(_chunk_scores, image, label_chunk, gate, use_reentrant=False)
        else:
            chunk = _chunk_scores(image, label_chunk, gate)
        chunks.append(chunk)
    return torch.cat(chunks, dim=2)


def _chunk_scores(image: Tensor, label: Tensor, gate: Tensor) -> Tensor:
    """``tanh(image_p * label_c) @ gate`` for ``image`` ``(B, P, K)``, ``label`` ``(c, K)`` or
    ``(B, c, K)``, ``gate`` ``(K,)`` → ``(B, P, c)``. The product is a fresh tensor, so ``tanh``
    runs in place; autograd then keeps only that one ``(B, P, c, K)`` tensor for the backward
    pass."""
    if label.ndim == 3:
        label = label[:, None]  # (B, 1, c, K): one set of label vectors per image
    return torch.tanh_(image[:, :, None, :] * label) @ gate


class GatedGNN(nn.Module):
    """Gated graph network over the ``C`` class nodes, with fixed in- and out-adjacency.

    Per step, for node states ``h`` ``(B, C, d)``::

        a = [A_in h ; A_out h]                  (B, C, 2d)
        z = sigmoid(W_z a + U_z h)
        r = sigmoid(W_r a + U_r h)
        h_new = tanh(W_h a + U_h (r * h))
        h <- (1 - z) * h + z * h_new

    ``A_in = A`` and ``A_out = A^T`` are buffers (not trained). Every ``W`` is
    ``Linear(2d, d)`` and every ``U`` is ``Linear(d, d)``, all with bias.
    """

    def __init__(self, dim: int, adjacency: Tensor, steps: int = 3) -> None:
        super().__init__()
        if adjacency.ndim != 2 or adjacency.shape[0] != adjacency.shape[1]:
            raise ValueError(f"adjacency must be (C, C), got shape {tuple(adjacency.shape)}")
        self.steps = steps
        self.register_buffer("a_in", adjacency.detach().clone().float())
        self.register_buffer("a_out", adjacency.detach().t().contiguous().float())
        self.w_z, self.u_z = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.w_r, self.u_r = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.w_h, self.u_h = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)

    def step(self, h: Tensor) -> Tensor:
        """One propagation step, ``(B, C, d)`` → ``(B, C, d)``."""
        a = torch.cat((self.a_in @ h, self.a_out @ h), dim=-1)  # (B, C, 2d)
        z = torch.sigmoid(self.w_z(a) + self.u_z(h))
        r = torch.sigmoid(self.w_r(a) + self.u_r(h))
        candidate = torch.tanh(self.w_h(a) + self.u_h(r * h))
        return (1 - z) * h + z * candidate

    def forward(self, h: Tensor) -> Tensor:
        """``steps`` propagation steps from initial states ``h`` ``(B, C, d)``."""
        for _ in range(self.steps):
            h = self.step(h)
        return h


class ElementWiseClassifier(nn.Module):
    """Per-class linear score ``s_c = <w_c, o_c> + b_c`` for ``o`` ``(B, C, d)`` → ``(B, C)``.

    ``weight`` ``(C, d)`` and ``bias`` ``(C,)`` are initialised ``U(-1/sqrt(d), 1/sqrt(d))``.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, features: Tensor) -> Tensor:
        return (features * self.weight).sum(dim=-1) + self.bias
