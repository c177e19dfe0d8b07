"""The pairwise ranking loss of the zero-shot multi-label methods (BiAM, MKT, SigRL).

For image ``n`` with known positives ``P_n`` and known negatives ``N_n`` (unknown entries take no
part)::

    h_n(i, j) = max(0, margin + s_nj - s_ni)          i in P_n, j in N_n
    L = mean_n [ sum_{i, j} h_n(i, j) / (#{(i, j): h_n(i, j) > 0} + 1e-8) ]

Each image's hinge sum is divided by its number of violated pairs (not by all its pairs), and the
mean runs over every image of the batch: an image without a positive or a negative, or without a
violated pair, contributes 0. This is ``ranking_lossT`` of MKT (sunanhe/MKT
``models/rank_loss.py``, from BiAM), which SigRL imports but does not ship (``docs/methods.md``
§4.2); its first step, keeping the classes known somewhere in the batch, changes no pair and is
not needed here.
"""

from __future__ import annotations

from torch import Tensor

EPS = 1e-8


def rank_loss(logits: Tensor, targets: Tensor, margin: float = 1.0) -> Tensor:
    """The loss above for ``logits`` ``(B, C)`` and ``targets`` ``(B, C)`` (1 / 0 / -1).

    Memory ``B x C x C``; the pairs of one image are its (positive, negative) classes.

    Example:
        >>> rank_loss(torch.tensor([[2.0, 0.5, 1.8]]), torch.tensor([[1, 0, 0]]))
        tensor(0.8000)
    """
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"logits and targets must both be (B, C); got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    scores = logits.float()
    pairs = (targets == 1)[:, :, None] & (targets == 0)[:, None, :]  # (B, i positive, j negative)
    hinge = (margin + scores[:, None, :] - scores[:, :, None]).clamp(min=0) * pairs
    violated = (hinge > 0).sum(dim=(1, 2))
    return (hinge.sum(dim=(1, 2)) / (violated + EPS)).mean()
