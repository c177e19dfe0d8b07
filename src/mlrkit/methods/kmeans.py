"""k-means run for many groups of points at once: one clustering per group, one tensor program.

SARB's prototypes (``docs/methods.md`` §1.8) are ``K`` centroids per class, found by clustering the class
features of the images where that class is an observed positive. The reference fits scikit-learn's
``KMeans(n_clusters=K)`` once per class. :func:`batched_kmeans` runs the same algorithm for every
class at once on the device of the points:

- greedy k-means++ initialisation, as in scikit-learn: the first centre is a uniformly drawn point;
  each further centre is the best of ``2 + floor(log K)`` candidates drawn with probability
  proportional to ``D(x)^2`` (the squared distance to the nearest centre so far), "best" meaning the
  lowest potential ``sum_x min(D(x)^2, |x - candidate|^2)``;
- Lloyd iterations until each group's total squared centre shift ``sum_k |c_k' - c_k|^2`` is at most
  ``tol`` times the mean per-feature variance of that group's points (scikit-learn's criterion),
  or ``max_iter`` iterations. A group that has converged stops moving while the others go on.

Distances are ``|x|^2 - 2 x.c + |c|^2`` on points centred on their group's mean (scikit-learn
centres too), with the points packed into one-group tiles so that they take one batched matmul.

Shapes: ``M`` points, ``d`` features, ``G`` groups, ``K`` clusters per group.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class KMeansResult(NamedTuple):
    """Output of :func:`batched_kmeans`.

    Attributes:
        centroids: ``(G, K, d)``. A group with no point has all-zero centroids; a group with
            ``1 <= n <= K`` points has its points as centroids, repeated in order
            (``centroids[g, j] = x_{j mod n}``).
        counts: ``(G,)`` int64, the number of points of each group.
    """

    centroids: Tensor
    counts: Tensor


def batched_kmeans(
    points: Tensor,
    groups: Tensor,
    num_groups: int,
    k: int,
    max_iter: int = 300,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> KMeansResult:
    """Cluster the points of every group into ``k`` clusters, all groups together.

    Args:
        points: ``(M, d)`` float points; computed in at least float32.
        groups: ``(M,)`` int64 group of each point, in ``[0, num_groups)``.
        num_groups: ``G``.
        k: clusters per group, ``K >= 1``.
        max_iter: most Lloyd iterations (scikit-learn's default 300).
        tol: relative convergence tolerance (scikit-learn's default 1e-4).
        generator: random source on the points' device; ``None`` uses torch's global one.

    Returns:
        :class:`KMeansResult`. Groups with more than ``k`` points are clustered; smaller groups
        get their points, repeated, as centroids (there is nothing to cluster; scikit-learn would
        raise).

    Example:
        >>> pts = torch.tensor([[0.0], [0.1], [5.0], [5.1], [9.0]])
        >>> out = batched_kmeans(pts, torch.tensor([0, 0, 0, 0, 1]), num_groups=2, k=2)
        >>> out.centroids[0].sort(dim=0).values.squeeze(-1), out.counts
        (tensor([0.0500, 5.0500]), tensor([4, 1]))
    """
    _check_inputs(points, groups, num_groups, k)
    dtype = torch.promote_types(points.dtype, torch.float32)
    order = torch.argsort(groups, stable=True)  # points of a group are contiguous
    points, groups = points[order].to(dtype), groups[order]
    counts = torch.bincount(groups, minlength=num_groups)
    if points.shape[0] == 0:
        return KMeansResult(points.new_zeros(num_groups, k, points.shape[1]), counts)
    offsets = counts.cumsum(0) - counts  # (G,) first point of each group
    sizes = counts.clamp(min=1)[:, None]
    mean = points.new_zeros(num_groups, points.shape[1]).index_add_(0, groups, points) / sizes
    centred = points - mean[groups]  # as scikit-learn: keeps |x|^2 - 2 x.c + |c|^2 accurate
    variance = centred.new_zeros(mean.shape).index_add_(0, groups, centred.square()) / sizes
    tiles = _GroupTiles(centred, groups, offsets, counts)
    centroids = _kmeans_plus_plus(centred, tiles, offsets, counts, k, generator)
    centroids = _lloyd(centred, tiles, centroids, counts > k, max_iter, tol * variance.mean(1))
    centroids = centroids + mean[:, None]
    slots = torch.arange(k, device=points.device)
    repeated = (offsets[:, None] + slots % counts.clamp(min=1)[:, None]).clamp(max=len(points) - 1)
    small = ((counts > 0) & (counts <= k))[:, None, None]
    centroids = torch.where(small, points[repeated], centroids)
    return KMeansResult(centroids * (counts > 0)[:, None, None], counts)


def _check_inputs(points: Tensor, groups: Tensor, num_groups: int, k: int) -> None:
    if points.ndim != 2 or not points.is_floating_point():
        raise ValueError(f"points must be a float (M, d) tensor, got {points.dtype} "
                         f"{tuple(points.shape)}")
    if groups.shape != points.shape[:1] or groups.dtype != torch.int64:
        raise ValueError(f"groups must be int64 (M={points.shape[0]},), got {groups.dtype} "
                         f"{tuple(groups.shape)}")
    if k < 1 or num_groups < 1:
        raise ValueError(f"k and num_groups must be >= 1, got k={k}, num_groups={num_groups}")


class _GroupTiles:
    """Points packed into tiles of ``size`` rows, each tile holding points of one group only, so
    the distances from every point to the centres of its own group are one batched matmul
    ``(tiles, size, d) @ (tiles, d, J)``; only one copy of the centres per tile is gathered."""

    def __init__(
        self, points: Tensor, groups: Tensor, offsets: Tensor, counts: Tensor, size: int = 128
    ) -> None:
        tiles = (counts + size - 1) // size  # (G,) tiles per group
        first_tile = tiles.cumsum(0) - tiles
        rank = torch.arange(len(points), device=points.device) - offsets[groups]
        self.slot = first_tile[groups] * size + rank  # (M,) row of each point in the packing
        self.tile_group = torch.repeat_interleave(
            torch.arange(len(counts), device=points.device), tiles
        )
        packed = points.new_zeros(len(self.tile_group) * size, points.shape[1])
        packed[self.slot] = points
        self.packed = packed.view(len(self.tile_group), size, points.shape[1])
        self.groups = groups
        self.sq_norms = points.square().sum(1)  # (M,)

    def sqdist(self, centres: Tensor) -> Tensor:
        """``(M, J)`` squared distances from each point to the ``J`` centres ``(G, J, d)`` of its
        own group: ``|x|^2 - 2 x.c + |c|^2``, clamped at 0."""
        cross = torch.bmm(self.packed, centres[self.tile_group].transpose(1, 2))  # (tiles, T, J)
        cross = cross.reshape(-1, centres.shape[1])[self.slot]
        centre_sq = centres.square().sum(-1)[self.groups]  # (M, J)
        return (self.sq_norms[:, None] - 2 * cross + centre_sq).clamp(min=0)


def _sample_in_groups(
    weights: Tensor,
    offsets: Tensor,
    counts: Tensor,
    num: int,
    generator: torch.Generator | None,
) -> Tensor:
    """``(G, num)`` point indices, drawn in each group with probability proportional to
    ``weights`` ``(M,)`` (points sorted by group). A group whose weights are all zero gets its last
    point; indices of an empty group are meaningless but in range."""
    cumulative = weights.double().cumsum(0)  # float64: one running sum spans all groups
    padded = torch.nn.functional.pad(cumulative, (1, 0))
    start, end = padded[offsets], padded[offsets + counts]
    draws = torch.rand(
        len(offsets), num, generator=generator, device=weights.device, dtype=torch.float64
    )
    index = torch.searchsorted(cumulative, start[:, None] + draws * (end - start)[:, None],
                               right=True)
    last = (offsets + counts - 1).clamp(min=0)
    return torch.minimum(torch.maximum(index, offsets[:, None]), last[:, None])


def _kmeans_plus_plus(
    points: Tensor,
    tiles: _GroupTiles,
    offsets: Tensor,
    counts: Tensor,
    k: int,
    generator: torch.Generator | None,
) -> Tensor:
    """Greedy k-means++ centres ``(G, K, d)`` for every group (see the module docstring)."""
    num_groups, device = len(counts), points.device
    draws = torch.rand(num_groups, generator=generator, device=device, dtype=points.dtype)
    first = offsets + (draws * counts).long().clamp(max=(counts - 1).clamp(min=0))
    centres = [points[first.clamp(max=len(points) - 1)]]  # each (G, d)
    closest = tiles.sqdist(centres[0][:, None]).squeeze(1)  # (M,) D(x)^2
    trials = 2 + int(math.log(k))
    rows = torch.arange(num_groups, device=device)
    for _ in range(1, k):
        candidates = points[_sample_in_groups(closest, offsets, counts, trials, generator)]
        reach = torch.minimum(closest[:, None], tiles.sqdist(candidates))
        potential = reach.new_zeros(num_groups, trials).index_add_(0, tiles.groups, reach)  # (G, L)
        best = potential.argmin(1)
        centres.append(candidates[rows, best])
        closest = reach.gather(1, best[tiles.groups][:, None]).squeeze(1)
    return torch.stack(centres, dim=1)


def _lloyd(
    points: Tensor,
    tiles: _GroupTiles,
    centroids: Tensor,
    active: Tensor,
    max_iter: int,
    tol: Tensor,
) -> Tensor:
    """Lloyd iterations from ``centroids`` ``(G, K, d)`` for the groups where ``active`` ``(G,)``,
    each until its total squared centre shift is at most its ``tol`` ``(G,)``.

    A cluster that loses all its points keeps its centroid (scikit-learn moves it to a far point).
    """
    num_groups, k, dim = centroids.shape
    for _ in range(max_iter):
        if not active.any():
            break
        label = tiles.groups * k + tiles.sqdist(centroids).argmin(1)  # (M,) cluster of each point
        sums = points.new_zeros(num_groups * k, dim).index_add_(0, label, points)
        members = torch.bincount(label, minlength=num_groups * k)[:, None]
        flat = centroids.reshape(num_groups * k, dim)
        updated = torch.where(members > 0, sums / members.clamp(min=1), flat)
        updated = torch.where(active[:, None, None], updated.view_as(centroids), centroids)
        shift = (updated - centroids).square().sum((1, 2))
        centroids = updated
        active = active & (shift > tol)
    return centroids
