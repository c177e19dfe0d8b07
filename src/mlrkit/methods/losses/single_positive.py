"""Single-positive multi-label losses (``docs/methods.md`` §6) as pure functions.

Each maps ``(B, C)`` logits and ``(B, C)`` int8 observed targets to a scalar, usable under any head
(:mod:`mlrkit.methods.losses.modules` registers them; the per-sample state that ROLE and LL-Cp need
lives there).

Conventions. mlrkit targets are 1 (known positive) / 0 (known negative) / -1 (unknown). The papers
write the single-positive protocol as 1 / 0 with 0 = unknown; here that is 1 / -1, and a known
negative (absent from that protocol) is the counterpart of the known positive: wherever a loss
applies ``-log p`` to known positives only, known negatives get ``-log(1 - p)``. ``p = sigmoid(s)``
for logits ``s``; the Cole et al. losses take ``-log(x + 1e-5)`` (the reference adds the epsilon, it
does not clamp), sum over the ``B x C`` entries, divide by ``B * C`` and add any regulariser on top.
The LL losses use BCE-with-logits instead, as their reference does. Losses are computed in float32
whatever the autocast dtype of the logits. Soft targets are not supported: only exact 1 and 0 count
as known.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mlrkit.methods.losses.partial_label import check_pair

LOG_EPS = 1e-5

# Average number of positives per training image (Cole et al. ``train.py``), the ``k`` of EPR/ROLE.
EXPECTED_POSITIVES = {"voc": 1.5, "coco": 2.9, "nuswide": 1.9, "cub": 31.4}

LL_MODES = ("LL-R", "LL-Ct", "LL-Cp")


def neg_log(x: Tensor) -> Tensor:
    """``-log(x + 1e-5)``, the reference's guarded log for ``x`` in ``[0, 1]``."""
    return -torch.log(x + LOG_EPS)


def _split(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``p = sigmoid(logits)`` in float32 and the positive / negative / unknown masks."""
    check_pair(logits, targets)
    return torch.sigmoid(logits.float()), targets == 1, targets == 0, targets < 0


def resolve_expected_positives(value: float | str) -> float:
    """EPR/ROLE's ``k``: a number, or a key of :data:`EXPECTED_POSITIVES` (e.g. ``"voc"``)."""
    if isinstance(value, str):
        if value not in EXPECTED_POSITIVES:
            choices = sorted(EXPECTED_POSITIVES)
            raise ValueError(f"expected_positives={value!r}: give a number or one of {choices}")
        return EXPECTED_POSITIVES[value]
    return float(value)


def expected_positive_regularizer(probs: Tensor, expected_positives: float) -> Tensor:
    """``R(p) = (mean_i sum_c p_ic - k)^2 / C^2`` for ``probs`` ``(B, C)`` in ``[0, 1]``.

    Example:
        >>> expected_positive_regularizer(torch.tensor([[0.5, 0.5], [0.0, 1.0]]), 2.0)
        tensor(0.2500)
    """
    num_classes = probs.shape[1]
    return (probs.sum(dim=1).mean() - expected_positives) ** 2 / num_classes**2


def _observed_term(probs: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """``(B, C)``: ``-log p`` on known positives, ``-log(1 - p)`` on known negatives, else 0."""
    return positive * neg_log(probs) + negative * neg_log(1 - probs)


def an_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Assume negative: ``-log p`` on known positives, ``-log(1 - p)`` on every other entry.

    Args:
        logits: ``(B, C)`` scores ``s``.
        targets: ``(B, C)`` int8 observed labels, 1 / 0 / -1 (unknown, assumed negative).

    Returns:
        Scalar, the entry losses summed and divided by ``B * C``.

    Example:
        >>> an_loss(torch.zeros(1, 2), torch.tensor([[1, -1]]))  # both entries -log(0.5 + 1e-5)
        tensor(0.6931)
    """
    probs, positive, _, _ = _split(logits, targets)
    return torch.where(positive, neg_log(probs), neg_log(1 - probs)).mean()


def an_ls_loss(logits: Tensor, targets: Tensor, ls_coef: float = 0.1) -> Tensor:
    """Assume negative with label smoothing ``e = ls_coef`` (reference 0.1).

    Known positives: ``(1 - e)(-log p) + e(-log(1 - p))``; every other entry (unknown or known
    negative): ``(1 - e)(-log(1 - p)) + e(-log p)``. Shapes and reduction as :func:`an_loss`.
    """
    probs, positive, _, _ = _split(logits, targets)
    as_positive = (1 - ls_coef) * neg_log(probs) + ls_coef * neg_log(1 - probs)
    as_negative = (1 - ls_coef) * neg_log(1 - probs) + ls_coef * neg_log(probs)
    return torch.where(positive, as_positive, as_negative).mean()


def wan_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Weak assume negative: AN with the unknown entries weighted by ``gamma = 1 / (C - 1)``.

    Known positives ``-log p``, known negatives ``-log(1 - p)`` (full weight), unknown entries
    ``gamma * (-log(1 - p))``. Shapes and reduction as :func:`an_loss`.
    """
    probs, positive, negative, unknown = _split(logits, targets)
    gamma = 1.0 / max(logits.shape[1] - 1, 1)
    entries = _observed_term(probs, positive, negative) + gamma * unknown * neg_log(1 - probs)
    return entries.mean()


def epr_loss(logits: Tensor, targets: Tensor, expected_positives: float) -> Tensor:
    """Expected positive regularisation: known entries only, plus ``R(p)``.

    ``sum(-log p over known positives, -log(1 - p) over known negatives) / (B * C) + R(p)`` with
    ``R`` of :func:`expected_positive_regularizer`; unknown entries enter only through ``R``.
    ``expected_positives`` is ``k``, the expected positives per image (:data:`EXPECTED_POSITIVES`).
    """
    probs, positive, negative, _ = _split(logits, targets)
    observed = _observed_term(probs, positive, negative).mean()
    return observed + expected_positive_regularizer(probs, expected_positives)


def em_loss(logits: Tensor, targets: Tensor, alpha: float = 0.1) -> Tensor:
    """Entropy maximisation (AckTheUnknown): known entries as EPR, ``-alpha * H(p)`` on unknowns.

    ``H(p) = p(-log p) + (1 - p)(-log(1 - p))`` with the guarded log; the loss can be negative.
    Reference ``alpha``: VOC 0.2, COCO 0.1, NUS-WIDE 0.1, CUB 0.01. Reduction as :func:`an_loss`.
    """
    probs, positive, negative, unknown = _split(logits, targets)
    entropy = probs * neg_log(probs) + (1 - probs) * neg_log(1 - probs)
    return (_observed_term(probs, positive, negative) - alpha * unknown * entropy).mean()


def role_loss(
    logits: Tensor, estimates: Tensor, targets: Tensor, expected_positives: float
) -> Tensor:
    """ROLE: classifier ``p`` and label estimates ``y`` teach each other (Cole et al.).

    With ``sg`` the stop-gradient, ``l_obs`` the known-entry term of :func:`epr_loss` and
    ``BCE(a; b) = b(-log a) + (1 - b)(-log(1 - a))`` over all entries::

        L = [1/2 (l_obs(p) + l_obs(y)) + 1/2 (BCE(p; sg(y)) + BCE(y; sg(p)))].sum() / (B * C)
            + 1/2 (R(p) + R(y))

    so the classifier learns from ``sg(y)`` and the estimator from ``sg(p)``.

    Args:
        logits: ``(B, C)`` classifier scores.
        estimates: ``(B, C)`` estimated labels ``y`` in ``[0, 1]`` for the same images.
        targets: ``(B, C)`` int8 observed labels.
        expected_positives: ``k`` of the regulariser ``R``.
    """
    probs, positive, negative, _ = _split(logits, targets)
    estimates = estimates.float()
    fixed_probs, fixed_estimates = probs.detach(), estimates.detach()
    observed = _observed_term(probs, positive, negative) + _observed_term(
        estimates, positive, negative
    )
    cross = (
        fixed_estimates * neg_log(probs) + (1 - fixed_estimates) * neg_log(1 - probs)
        + fixed_probs * neg_log(estimates) + (1 - fixed_probs) * neg_log(1 - estimates)
    )
    regularizer = expected_positive_regularizer(probs, expected_positives)
    regularizer = regularizer + expected_positive_regularizer(estimates, expected_positives)
    return 0.5 * (observed + cross).mean() + 0.5 * regularizer


def _logit(prob: float) -> float:
    return math.log(prob / (1 - prob))


def role_initial_logits(targets: Tensor) -> Tensor:
    """ROLE's initial label-estimator logits ``(N, C)`` float32 for observed targets ``(N, C)``.

    ``logit(0.995)`` on known positives, ``logit(0.005)`` on known negatives and ``U(-q, q)``,
    ``q = logit(0.6)``, elsewhere, drawn from torch's global RNG (Cole et al., ``docs/methods.md``
    §6.2).
    """
    bound = _logit(0.6)
    init = bound * (2 * torch.rand(targets.shape) - 1)
    init[targets == 1] = _logit(0.995)
    init[targets == 0] = _logit(0.005)
    return init


def large_loss_count(num_entries: int, epoch: int, delta_rel: float, mode: str) -> int:
    """How many unknown entries LL handles in a batch of ``num_entries = B * C`` entries.

    ``clean_rate = 1 - epoch * delta_rel / 100`` (``epoch`` 0-based, so the first epoch is
    unmodified); LL-R and LL-Ct take ``ceil(B * C * (1 - clean_rate))``, LL-Cp takes
    ``ceil(B * C * delta_rel / 100)`` from the second epoch on. The share is computed directly (the
    reference subtracts ``delta_rel`` once per epoch, whose float error can add one entry when the
    product is an integer) and capped at 1.

    Example:
        >>> large_loss_count(320, 2, 0.2, "LL-R"), large_loss_count(320, 2, 0.2, "LL-Cp")
        (2, 1)
    """
    if mode not in LL_MODES:
        raise ValueError(f"unknown LL mode {mode!r}; choose one of {LL_MODES}")
    if epoch <= 0:
        return 0
    steps = 1 if mode == "LL-Cp" else epoch
    share = min(steps * delta_rel / 100, 1.0)
    return math.ceil(round(num_entries * share, 9))


class LargeLossOutput(NamedTuple):
    """``loss`` scalar; ``selected`` ``(B, C)`` bool, the unknown entries rejected or corrected."""

    loss: Tensor
    selected: Tensor


def ll_loss(
    logits: Tensor, targets: Tensor, mode: str, epoch: int, delta_rel: float
) -> LargeLossOutput:
    """Large Loss Matters (Kim et al. 2022): reject or correct the largest assume-negative losses.

    The base loss is AN as BCE-with-logits, ``l = BCE(s, [target == 1])``, averaged over ``B * C``.
    Among the unknown entries only (known positives and negatives are never touched) the
    ``k = large_loss_count(B * C, epoch, delta_rel, mode)`` largest ``l`` are selected (exactly
    ``k``, capped at the number of unknowns; the reference takes every entry ``>=`` the ``k``-th
    value, the same set unless losses tie) and handled by ``mode``:

    - ``"LL-R"``: their loss becomes 0 (rejected);
    - ``"LL-Ct"``: their loss becomes ``BCE(s, 1)`` for this step only (temporary correction);
    - ``"LL-Cp"``: as LL-Ct; the caller writes ``selected`` back as permanent positives, as the
      paper intends. (The released code tests ``mod_scheme is 'LL-Cp'``, which is False for a
      command-line string, so it silently runs LL-Ct with LL-R's ``k``; its write-back also keeps
      only the entries strictly above the ``k``-th value.)

    Args:
        logits: ``(B, C)`` scores ``s``.
        targets: ``(B, C)`` int8 observed labels (for LL-Cp with earlier corrections set to 1).
        mode: ``"LL-R"``, ``"LL-Ct"`` or ``"LL-Cp"``.
        epoch: 0-based training epoch (epoch 0 is the reference's unmodified epoch 1).
        delta_rel: growth of the handled share per epoch, in percent of ``B * C`` (the reference
            CLI's unit; README range 0.1-0.5). Best values (LargeLossMatters issue #4), LL-R /
            LL-Ct / LL-Cp: VOC 0.2 / 0.2 / 0.1, COCO and NUS-WIDE 0.4 / 0.2 / 0.2, CUB
            0.4 / 0.4 / 0.2.
    """
    check_pair(logits, targets)
    if not 0 < delta_rel <= 100:
        raise ValueError(f"delta_rel is a percentage in (0, 100], got {delta_rel}")
    logits = logits.float()
    losses = F.binary_cross_entropy_with_logits(
        logits, (targets == 1).to(logits.dtype), reduction="none"
    )
    unknown = targets < 0
    count = min(large_loss_count(logits.numel(), epoch, delta_rel, mode), int(unknown.sum()))
    selected = torch.zeros_like(unknown)
    if count == 0:
        return LargeLossOutput(losses.mean(), selected)
    candidates = losses.detach().masked_fill(~unknown, -math.inf).flatten()
    selected.view(-1)[candidates.topk(count).indices] = True
    if mode == "LL-R":
        replacement = torch.zeros_like(losses)
    else:
        replacement = F.binary_cross_entropy_with_logits(
            logits, torch.ones_like(logits), reduction="none"
        )
    return LargeLossOutput(torch.where(selected, replacement, losses).mean(), selected)




def _entropy(probs: Tensor) -> Tensor:
    """``H(p) = p(-log p) + (1 - p)(-log(1 - p))`` with the guarded log, ``(B, C)``."""
    return probs * neg_log(probs) + (1 - probs) * neg_log(1 - probs)


def _check_pseudo(pseudo: Tensor, targets: Tensor) -> None:
    if pseudo.shape != targets.shape:
        raise ValueError(f"pseudo-labels {tuple(pseudo.shape)} and targets "
                         f"{tuple(targets.shape)} must have the same shape")


def em_pl_loss(logits: Tensor, targets: Tensor, pseudo: Tensor, alpha: float = 0.2,
               beta_pos: float = 0.7) -> Tensor:
    """VLPL's ``EM_PL``: EM with the teacher's positive pseudo-labels (mvrl/VLPL ``losses.py``).

    Per entry: known positive ``-log p`` (known negative ``-log(1 - p)``); an unknown entry with a
    positive pseudo-label ``beta_pos * (0.9 (-log p) + 0.1 (-log(1 - p)))``; an unknown entry
    with a negative pseudo-label nothing (the release's ``beta_neg`` term is commented out); any
    other unknown ``-alpha * H(p)``. Summed and divided by ``B * C``.

    Args:
        logits: ``(B, C)`` scores.
        targets: ``(B, C)`` int8 observed labels (1 / 0 / -1).
        pseudo: ``(B, C)`` int8 pseudo-labels: 1 positive, 0 negative, -1 none
            (:func:`~mlrkit.engine.pseudo_labels.vlpl_pseudo_labels`).
        alpha, beta_pos: VLPL's VOC values 0.2 and 0.7.
    """
    probs, positive, negative, unknown = _split(logits, targets)
    _check_pseudo(pseudo, targets)
    pl_positive, pl_negative = unknown & (pseudo == 1), unknown & (pseudo == 0)
    plain = unknown & ~pl_positive & ~pl_negative
    entries = (_observed_term(probs, positive, negative) - alpha * plain * _entropy(probs)
               + beta_pos * pl_positive * (0.9 * neg_log(probs) + 0.1 * neg_log(1 - probs)))
    return entries.mean()


def em_pl_asl_loss(logits: Tensor, targets: Tensor, pseudo: Tensor, gamma_pos: float = 2.0,
                   gamma_unknown: float = 4.0, gamma_neg: float = 4.0,
                   clip: float = 0.05) -> Tensor:
    """VLPL's ``EM_PL_ASL``: :func:`em_pl_loss` with focal weights and no ``alpha``/``beta``.

    With ``p_m = max(p - clip, 0)`` (ASL's probability shift) per entry: known positive and
    unknown with a positive pseudo-label ``(1 - p)^gamma_pos (-log p)``; unknown with a negative
    pseudo-label ``p_m^gamma_neg (-log(1 - p_m))``; any other unknown ``-(1 - p)^gamma_unknown
    H(p)``; a known negative ``p_m^gamma_neg (-log(1 - p_m))``. Summed and divided by ``B * C``.

    Quirk of the release: it computes the shifted ``1 - p_m`` and never uses it, which is
    ``clip=0`` here; the default 0.05 applies the shift that its variable names intend.
    """
    probs, positive, negative, unknown = _split(logits, targets)
    _check_pseudo(pseudo, targets)
    pl_positive, pl_negative = unknown & (pseudo == 1), unknown & (pseudo == 0)
    plain = unknown & ~pl_positive & ~pl_negative
    shifted = (probs - clip).clamp(min=0) if clip > 0 else probs
    as_positive = (1 - probs).pow(gamma_pos) * neg_log(probs)
    as_negative = shifted.pow(gamma_neg) * neg_log(1 - shifted)
    entries = ((positive | pl_positive) * as_positive + (negative | pl_negative) * as_negative
               - plain * (1 - probs).pow(gamma_unknown) * _entropy(probs))
    return entries.mean()


def em_apl_loss(logits: Tensor, targets: Tensor, soft_negatives: Tensor, alpha: float = 0.2,
                beta: float = 0.02) -> Tensor:
    """EM + APL (AckTheUnknown ``loss_EM_APL``): EM, and BCE to the soft labels of the entries
    the asymmetric pseudo-labelling step picked.

    Per entry: known positive ``-log p`` (known negative ``-log(1 - p)``); an unknown entry with a
    soft label ``q`` (``soft_negatives`` not NaN) ``beta * (q (-log p) + (1 - q)(-log(1 - p)))``;
    any other unknown ``-alpha * H(p)``. Summed and divided by ``B * C``.

    Args:
        soft_negatives: ``(B, C)`` float, ``p_old`` (the prediction when the entry was picked, see
            :func:`apl_pick`) or NaN for entries not picked.
        alpha, beta: AckTheUnknown's VOC values 0.2 and 0.02.
    """
    probs, positive, negative, unknown = _split(logits, targets)
    _check_pseudo(soft_negatives, targets)
    picked = unknown & ~torch.isnan(soft_negatives)
    soft = torch.nan_to_num(soft_negatives.float())
    entries = (_observed_term(probs, positive, negative)
               - alpha * (unknown & ~picked) * _entropy(probs)
               + beta * picked * (soft * neg_log(probs) + (1 - soft) * neg_log(1 - probs)))
    return entries.mean()


def apl_pick(probs: Tensor, targets: Tensor, picked: Tensor, counts: Tensor) -> Tensor:
    """One asymmetric pseudo-labelling step: for each class ``c``, the ``counts[c]`` still
    unpicked unknown entries with the lowest predictions (ties: the lower row first).

    Args:
        probs: ``(N, C)`` predictions ``p`` of every training image (eval mode).
        targets: ``(N, C)`` int8 observed labels.
        picked: ``(N, C)`` bool, the entries picked in earlier steps (never picked again).
        counts: ``(C,)`` int, ``n_c`` of :func:`apl_counts`.

    Returns:
        ``(N, C)`` bool, the entries picked now.
    """
    candidates = (targets < 0) & ~picked
    order_key = torch.where(candidates, probs.float(), torch.full_like(probs.float(), torch.inf))
    ranks = order_key.argsort(dim=0, stable=True).argsort(dim=0, stable=True)  # (N, C)
    take = torch.minimum(counts.to(ranks), candidates.sum(dim=0))
    return candidates & (ranks < take)


def apl_counts(targets: Tensor, epochs: int, warmup_epochs: int,
               neg_proportion: float = 0.9) -> Tensor:
    """``n_c = floor(neg_proportion * U_c / (epochs - warmup_epochs))`` ``(C,)`` int64, with
    ``U_c`` the number of unknown entries of class ``c`` in ``targets`` ``(N, C)`` (before any
    pseudo-labelling)."""
    if epochs <= warmup_epochs:
        raise ValueError(f"APL labels after the warm-up: epochs ({epochs}) must exceed "
                         f"warmup_epochs ({warmup_epochs})")
    unknown = (targets < 0).sum(dim=0).double()
    return torch.floor(neg_proportion * unknown / (epochs - warmup_epochs)).long()
