"""Losses over the known entries of partial labels, as pure functions: partial BCE and ASL.

Targets are ``(B, C)`` int8 (1 / 0 / -1 unknown) or float soft targets in ``[0, 1]`` with ``-1``
unknown; unknown entries contribute nothing, neither value nor gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum")


def check_pair(logits: Tensor, targets: Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` and ``targets`` are both ``(B, C)``."""
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must both be (B, C); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )


def mean_over_known(total: Tensor, known: Tensor) -> Tensor:
    """``total / known`` (at least 1): a loss summed over a batch's known entries, averaged over
    them. In a training step under DDP (a process group of ``W`` ranks, gradients on), ``known``
    is summed over the ranks first and the mean multiplied by ``W``: DDP averages the ranks'
    gradients, which then equal one process's on the whole batch even when the ranks' slices
    hold different numbers of known entries (the partial-label case; ``docs/scaling.md``).
    Every rank must reach it the same number of times per step (one all-reduce of a number)."""
    import torch.distributed as dist

    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() and \
            dist.get_world_size() > 1:
        count = known.detach().to(total.dtype).clone()
        dist.all_reduce(count)
        return total * dist.get_world_size() / count.clamp(min=1)
    return total / known.clamp(min=1)


def partial_bce(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Binary cross-entropy over the known entries only, averaged over them
    (``docs/methods.md`` §1.5).

    ``targets`` may be int8 (1 / 0 / -1) or float soft targets in ``[0, 1]`` with ``-1`` unknown.
    Returns 0 (with a gradient path) when no entry is known.

    Example:
        >>> partial_bce(torch.zeros(1, 2), torch.tensor([[1, -1]]))  # one known entry, log 2
        tensor(0.6931)
    """
    check_pair(logits, targets)
    known = targets >= 0
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits, targets.clamp(min=0).to(logits.dtype), reduction="none"
    )
    if weights is not None:
        losses = losses * weights
    return mean_over_known((losses * known).sum(), known.sum())



def assume_negative_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE-with-logits averaged over all ``B * C`` entries, unknown entries taken as negatives (the
    naive baseline of the partial- and single-positive-label papers)."""
    return partial_bce(logits, targets.clamp(min=0))

def check_asymmetric_options(
    gamma_neg: float, gamma_pos: float, clip: float, eps: float, reduction: str
) -> None:
    """Raise ``ValueError`` on options :func:`asymmetric_loss` cannot use."""
    if gamma_neg < 0 or gamma_pos < 0:
        raise ValueError(f"gamma_neg and gamma_pos must be >= 0, got {gamma_neg} and {gamma_pos}")
    if not 0 <= clip < 1:
        raise ValueError(f"clip must lie in [0, 1), got {clip}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def asymmetric_loss(
    logits: Tensor,
    targets: Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 1.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    focus_grad: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Asymmetric loss, ASL (Ridnik et al., ICCV 2021), over the known entries.

    With ``p = sigmoid(s)``, the shifted probability ``p_m = max(p - clip, 0)`` (``p_m = p`` when
    ``clip = 0``) and a target ``t`` in ``[0, 1]``, each known entry costs::

        l = -[t log(max(p, eps)) + (1 - t) log(max(1 - p_m, eps))] * w
        w = (1 - p_t) ** (gamma_pos t + gamma_neg (1 - t)),   p_t = p t + (1 - p_m)(1 - t)

    so a hard negative is weighted by ``p_m ** gamma_neg`` and a hard positive by
    ``(1 - p) ** gamma_pos`` (``w = 1`` when both gammas are 0). This is Alibaba-MIIL/ASL's
    ``AsymmetricLossOptimized`` entry by entry, soft targets included. ``reduction="mean"`` divides
    the sum by the number of known entries (0 when none is known); ``"sum"`` returns the sum, which
    is the reference's reduction (``-loss.sum()``).

    Defaults are the ASL paper's (``gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8``). CLSL
    (``docs/methods.md`` §3.3) uses ``gamma_pos=0, gamma_neg=2, clip=0, eps=1e-5`` with the weight
    computed without gradient, and reduces its main term by the SUM over the known entries x 1000;
    the mean here is a deliberate change, so the scale does not grow with ``B * C`` and the number
    of known labels (``reduction="sum"`` and a 1000 x learning-rate or loss weight recover it).

    Args:
        logits: ``(B, C)`` scores ``s``; computed in float32.
        targets: ``(B, C)`` int8 1 / 0 / -1, or float soft targets in ``[0, 1]`` with ``-1``
            unknown.
        gamma_neg, gamma_pos: focusing exponents of the negative and positive parts.
        clip: probability margin ``m`` of the negatives' shift, in ``[0, 1)``.
        eps: lower clamp inside both logs.
        focus_grad: let the gradient flow through ``w``. ``AsymmetricLossOptimized`` does by
            default (``disable_torch_grad_focal_loss=False``); CLSL passes ``True`` there, i.e.
            ``focus_grad=False``, the default here (``w`` treated as a constant).
        reduction: ``"mean"`` or ``"sum"``.

    Example:
        >>> asymmetric_loss(torch.zeros(1, 2), torch.tensor([[1, -1]]), gamma_pos=0.0)  # log 2
        tensor(0.6931)
    """
    check_pair(logits, targets)
    check_asymmetric_options(gamma_neg, gamma_pos, clip, eps, reduction)
    known = targets >= 0
    target = targets.clamp(min=0).float()
    probs = torch.sigmoid(logits.float())
    shifted = (probs - clip).clamp(min=0) if clip > 0 else probs
    losses = -(
        target * torch.log(probs.clamp(min=eps))
        + (1 - target) * torch.log((1 - shifted).clamp(min=eps))
    )
    if gamma_neg > 0 or gamma_pos > 0:
        base = 1 - probs * target - (1 - shifted) * (1 - target)  # 1 - p_t
        base = base if focus_grad else base.detach()
        losses = losses * base.pow(gamma_pos * target + gamma_neg * (1 - target))
    total = torch.where(known, losses, 0.0).sum()
    return total if reduction == "sum" else mean_over_known(total, known.sum())
