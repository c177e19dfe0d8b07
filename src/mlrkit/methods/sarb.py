"""SARB: semantic-aware representation blending (Pu et al., AAAI 2022; ``docs/methods.md`` §1).

SARB is the ``ssgrl`` head (:class:`~mlrkit.methods.semantic_graph.SemanticGraphHead`: semantic
decoupling → gated GNN → per-class classifier) trained with three extra terms on the class features
``F`` ``(B, C, d)`` that the decoupling produces:

- a cross-image contrastive loss on ``F`` (§1.6, :func:`contrastive_loss`);
- instance-level blending, ILRB (§1.7, :func:`instance_blend`): an unknown entry of image ``i``
  takes a share ``1 - alpha`` of the class feature of its partner image ``B - 1 - i`` when the
  partner is a known positive, with soft target ``1 - alpha``;
- prototype-level blending, PLRB (§1.8, :func:`prototype_blend`): one unknown class per image is
  blended with a class prototype (a k-means centroid of the features of observed positives),
  ``f'' = beta f + (1 - beta) p`` with soft target ``1 - beta``.

Blended features go through the same GNN and classifier and are scored with partial BCE
(:func:`~mlrkit.methods.losses.partial_bce`: unknown entries ignored) against their soft targets;
the unblended logits with the head's registered ``loss`` (``partial_bce`` by default, as in the
reference).

Label conventions. mlrkit targets are 1 / 0 / -1 (positive / negative / unknown); the reference
writes +1 / -1 / 0. Soft targets here are floats in ``[0, 1]`` with ``-1`` for unknown. The
reference's BCE ignores an entry whose target is exactly 0 (its unknown code), so a blended entry
whose soft target ``1 - alpha`` (or ``1 - beta``) is 0 stays unknown here too, rather than becoming
a known negative.

Shapes: ``B`` batch, ``C`` classes, ``d`` class-feature size, ``K`` prototypes per class, ``N``
training images.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlrkit.methods.base import TrainBatches, register_method
from mlrkit.methods.kmeans import batched_kmeans
from mlrkit.methods.losses import partial_bce
from mlrkit.methods.semantic_graph import SemanticGraphHead
from mlrkit.methods.task import MethodOutput, StepInfo, TaskSpec

LOG_NAMES = ("main", "contrastive", "inst", "proto", "alpha", "beta")


class Blend(NamedTuple):
    """Blended class features and their soft targets.

    Attributes:
        features: ``(B, C, d)`` blended class features.
        targets: ``(B, C)`` float soft targets in ``[0, 1]``, ``-1`` unknown.
        mask: ``(B, C)`` bool, True on the blended entries.
    """

    features: Tensor
    targets: Tensor
    mask: Tensor


def _soft_targets(targets: Tensor, mask: Tensor, value: Tensor) -> Tensor:
    """``targets`` as floats with ``value`` (0-dim) on ``mask``; where ``value`` is 0 the entry
    stays unknown (-1), as the reference's BCE skips targets equal to 0."""
    return torch.where(mask & (value > 0), value, targets.to(value.dtype))


def instance_blend(features: Tensor, targets: Tensor, alpha: Tensor) -> Blend:
    """Instance-level representation blending (ILRB, ``docs/methods.md`` §1.7).

    The partner of image ``i`` is ``B - 1 - i``. With ``m_ic = alpha`` where ``y_ic`` is unknown
    and ``y_{partner,c} = 1``, and ``m_ic = 1`` elsewhere::

        f'_ic = m_ic f_ic + (1 - m_ic) f_{partner,c}
        y'_ic = 1 - alpha   on blended entries,   y_ic elsewhere

    Known negatives are never blended; unknown entries that are not blended stay unknown. Gradients
    reach ``alpha`` through both ``f'`` and ``y'``.

    Args:
        features: ``(B, C, d)`` class features ``F``.
        targets: ``(B, C)`` observed labels 1 / 0 / -1.
        alpha: 0-dim mixing weight in ``[0, 1]``.
    """
    partner = targets.flip(0)
    mask = (targets < 0) & (partner == 1)
    coef = torch.where(mask, alpha, torch.ones_like(alpha)).unsqueeze(-1)  # (B, C, 1)
    blended = coef * features + (1 - coef) * features.flip(0)
    return Blend(blended, _soft_targets(targets, mask, 1 - alpha), mask)


def prototype_blend(
    features: Tensor, targets: Tensor, prototypes: Tensor, has_prototype: Tensor, beta: Tensor
) -> tuple[Blend, Tensor]:
    """Prototype-level representation blending (PLRB, ``docs/methods.md`` §1.8).

    Draws one prototype index ``k`` for the whole batch and, per image, one class ``c`` uniformly
    among its unknown classes that have prototypes (none if it has no such class; the reference
    takes class 0 then, even when it is known). With ``mask`` one-hot on that class::

        f''_ic = mask (beta f_ic + (1 - beta) p_{c,k}) + (1 - mask) f_ic
        y''_ic = 1 - beta   on the blended entry,   y_ic elsewhere

    Args:
        features: ``(B, C, d)`` class features ``F``.
        targets: ``(B, C)`` observed labels 1 / 0 / -1.
        prototypes: ``(C, K, d)`` class prototypes.
        has_prototype: ``(C,)`` bool, False for classes never blended (no observed positive).
        beta: 0-dim mixing weight in ``[0, 1]``.

    Returns:
        The :class:`Blend` and the drawn prototype index ``k`` (a ``(1,)`` int64 tensor).
    """
    batch, num_classes, _ = features.shape
    k = torch.randint(prototypes.shape[1], (1,), device=features.device)
    chosen = prototypes.index_select(1, k).squeeze(1)  # (C, d)
    eligible = (targets < 0) & has_prototype
    scores = torch.rand(batch, num_classes, device=features.device).masked_fill(~eligible, -1.0)
    mask = F.one_hot(scores.argmax(1), num_classes).bool() & eligible
    weight = mask.unsqueeze(-1).to(features.dtype)
    blended = weight * (beta * features + (1 - beta) * chosen) + (1 - weight) * features
    return Blend(blended, _soft_targets(targets, mask, 1 - beta), mask), k


def _hardest_and_random(losses: Tensor, count: int) -> Tensor:
    """Hard mining of a loss list: a random subset of up to ``2 * count`` entries followed by the
    ``count`` largest (an entry may appear in both)."""
    if losses.numel() == 0:
        return losses
    subset = losses[torch.randperm(losses.numel(), device=losses.device)[: 2 * count]]
    return torch.cat((subset, losses.topk(min(count, losses.numel())).values))


def contrastive_loss(features: Tensor, targets: Tensor, hard_mining: bool = True) -> Tensor:
    """Cross-image contrastive loss on class features (``docs/methods.md`` §1.6).

    For every image pair ``i < j`` and class ``c``, with ``d = cos(f_ic, f_jc)``::

        pos-pos (both 1)            1 - d
        pos-neg (one 1, one 0)      1 + d
        neg-neg (both 0)            1 + d

    Pairs with an unknown label are left out. With hard mining and ``n_pp > 0`` pos-pos terms, the
    neg-neg list and then the pos-neg list are each replaced by a random subset of up to
    ``2 n_pp`` of their terms followed by their ``n_pp`` largest. The loss is the mean of all kept
    terms; 0 when there is none (the reference returns NaN then).

    Args:
        features: ``(B, C, d)`` class features; compared in float32.
        targets: ``(B, C)`` observed labels 1 / 0 / -1.
        hard_mining: apply the mining step (the reference always does).
    """
    first, second = torch.triu_indices(len(features), len(features), 1, device=features.device)
    unit = F.normalize(features.float(), dim=-1, eps=1e-9)
    cosine = torch.einsum("icd,jcd->ijc", unit, unit)[first, second]  # (pairs, C), pairs row-major
    pos, neg = targets == 1, targets == 0
    pos_pos = (1 - cosine)[pos[first] & pos[second]]
    pos_neg = (1 + cosine)[(pos[first] & neg[second]) | (neg[first] & pos[second])]
    neg_neg = (1 + cosine)[neg[first] & neg[second]]
    if hard_mining and pos_pos.numel() > 0:
        neg_neg = _hardest_and_random(neg_neg, pos_pos.numel())
        pos_neg = _hardest_and_random(pos_neg, pos_pos.numel())
    terms = torch.cat((pos_pos, pos_neg, neg_neg))
    return terms.sum() / max(terms.numel(), 1)


@register_method("sarb")
class SARB(SemanticGraphHead):
    """The ``ssgrl`` head trained with SARB's contrastive loss, ILRB and PLRB.

    Training loss, with ``s`` the logits of the unblended features::

        L = L_main(s, y) + w_c(t) L_contr + L_inst + L_proto

    ``L_main`` is the head's ``loss`` (``partial_bce``, the reference's BCE, by default; any
    registered loss, e.g. ``role`` with ``loss_options={"expected_positives": "voc"}``), logged as
    ``main`` next to the loss's own logs; ``L_inst`` and ``L_proto`` always use partial BCE on the
    soft targets of the blended features.

    ``w_c(t) = contrastive_weight * epoch_fraction`` during epoch 0 and ``contrastive_weight``
    after; ``L_inst`` and ``L_proto`` are 0 before ``mixup_epoch`` (warm-up). Prototypes are
    computed in :meth:`on_train_epoch_start` at ``mixup_epoch`` and every ``prototype_interval``
    epochs after, with the model in eval mode, from the decoupled features of the training images
    where the class is an OBSERVED positive (:func:`~mlrkit.methods.kmeans.batched_kmeans`, all
    classes at once). ``alpha`` and ``beta`` are clamped in place to ``[0, 1]`` (under
    ``no_grad``, like the reference) at the start of every blended forward pass, so an optimiser
    step may leave them outside for the moment but blending always uses values in ``[0, 1]``, and
    a parameter at a bound still gets the gradient that pulls it back.

    Args (reference source in brackets: ``script`` = ``scripts/SARB.sh``, ``argparse`` =
    ``config.py``, ``model`` = ``model/SARB.py``):
        spec: the task; needs ``label_embeddings`` and ``train_targets`` (see ``ssgrl``).
        image_dim, inter_dim, output_dim, time_steps, class_chunk: the ``ssgrl`` head's
            (1024, 512, ``d`` = 1024, 3 [model]).
        contrastive_weight: ``lambda_c``, 0.05 [script; argparse default 1.0].
        mixup_epoch: first epoch with blending and prototypes, 5 [script and argparse].
        num_prototypes: ``K`` per class, 10 [script and argparse ``prototypeNum``].
        prototype_interval: epochs between prototype recomputations, 5 [script and argparse
            ``recomputePrototypeInterval``]; 0 computes them once, at ``mixup_epoch``.
        use_ilrb, use_plrb: the two blending branches, for the ablation (both on [model]).
        alpha, beta: initial mixing weights, 0.5 [model].
        learn_alpha, learn_beta: train them, True [script and argparse ``isAlphaLearnable``,
            ``isBetaLearnable``].
        kmeans_iters, kmeans_tol: Lloyd iterations and tolerance, 300 and 1e-4 [scikit-learn
            ``KMeans`` defaults, which the reference uses].
        input_pool: average pooling of the input map, see ``ssgrl`` (2 in the reference [model]).
        loss, loss_options: the main term's registered loss and its options, see ``ssgrl``.

    The reference's optimisation (Adam, lr 1e-5, weight decay 5e-4, StepLR 10 / 0.1, 20 epochs,
    batch 8, frozen backbone but ``layer4``) belongs to the recipe, not to this class.

    Departures from the reference, all deliberate:

    - PLRB blends only unknown classes that have prototypes; an image with none is not blended (the
      reference blends class 0 then, even a known one, giving a known label a soft target).
    - A class with no observed positive has no prototype and is never blended (the reference's
      ``KMeans`` fails on it); a class with ``1..K`` positives gets its points, repeated, as
      prototypes (``KMeans`` needs at least ``K`` points). k-means is one greedy k-means++ run
      (scikit-learn's initialisation, no ``n_init`` restarts).
    - Blending runs in training mode only; in eval mode the loss is ``L_main + w_c L_contr``.
      ``step=None`` counts as past every warm-up (full weight, blending on). ``L_proto`` is 0 until
      prototypes exist.
    - The prototype pass reads the training set through ``train_batches`` (the dataset's own
      transforms); the reference's loader applies random training augmentation there.
    - A class with no observed positive gets an all-zero adjacency row in the ``ssgrl`` layers
      (the reference leaves NaN); the contrastive loss works for any batch size and is 0 without
      pairs (the reference needs the fixed ``batchSize`` and returns NaN). The reference also drops
      the last incomplete test batch (``drop_last``); the mlrkit engine evaluates every test image.
    - Before ``mixup_epoch`` (or with a branch off) ``alpha``/``beta`` get no gradient, as in the
      reference: under DistributedDataParallel that needs ``find_unused_parameters=True``.
    """

    has_unused_parameters = True  # alpha and beta get no gradient before mixup_epoch

    def __init__(
        self,
        spec: TaskSpec,
        image_dim: int | None = 1024,
        inter_dim: int = 512,
        output_dim: int | None = None,
        time_steps: int = 3,
        class_chunk: int = 16,
        contrastive_weight: float = 0.05,
        mixup_epoch: int = 5,
        num_prototypes: int = 10,
        prototype_interval: int = 5,
        use_ilrb: bool = True,
        use_plrb: bool = True,
        alpha: float = 0.5,
        beta: float = 0.5,
        learn_alpha: bool = True,
        learn_beta: bool = True,
        kmeans_iters: int = 300,
        kmeans_tol: float = 1e-4,
        input_pool: int = 1,
        loss: str = "partial_bce",
        loss_options: dict | None = None,
    ) -> None:
        super().__init__(spec, image_dim, inter_dim, output_dim, time_steps, class_chunk, loss,
                         loss_options, input_pool)
        _check_options(contrastive_weight, mixup_epoch, num_prototypes, prototype_interval,
                       alpha, beta)
        self.contrastive_weight = contrastive_weight
        self.mixup_epoch = mixup_epoch
        self.prototype_interval = prototype_interval
        self.use_ilrb, self.use_plrb = use_ilrb, use_plrb
        self.kmeans_iters, self.kmeans_tol = kmeans_iters, kmeans_tol
        self.alpha = nn.Parameter(torch.tensor(float(alpha)), requires_grad=learn_alpha)
        self.beta = nn.Parameter(torch.tensor(float(beta)), requires_grad=learn_beta)
        dim = spec.feature_dim if image_dim is None else image_dim
        self.register_buffer("prototypes", torch.zeros(spec.num_classes, num_prototypes, dim))
        self.register_buffer("has_prototype", torch.zeros(spec.num_classes, dtype=torch.bool))
        self.register_buffer("prototype_epoch", torch.tensor(-1))  # -1: never computed

    def training_loss(self, features: Tensor, logits: Tensor, targets: Tensor,
                      index: Tensor | None, step: StepInfo | None) -> MethodOutput:
        """The SARB loss of class features ``(B, C, d)`` and their ``logits`` ``(B, C)`` against
        ``targets`` ``(B, C)`` int8, its parts in ``logs`` (``index`` and ``step`` as the main
        loss needs them)."""
        main = self.loss(logits, targets, index, step)
        contrastive = contrastive_loss(features, targets)
        ramp = step.epoch_fraction if step is not None and step.epoch == 0 else 1.0
        inst = proto = main.loss.new_zeros(())
        if self.training and (step is None or step.epoch >= self.mixup_epoch):
            with torch.no_grad():
                self.alpha.clamp_(0, 1)
                self.beta.clamp_(0, 1)
            if self.use_ilrb:
                inst = self._blended_loss(instance_blend(features, targets, self.alpha))
            if self.use_plrb and bool(self.prototype_epoch >= 0):
                blend, _ = prototype_blend(
                    features, targets, self.prototypes, self.has_prototype, self.beta
                )
                proto = self._blended_loss(blend)
        loss = main.loss + self.contrastive_weight * ramp * contrastive + inst + proto
        parts = torch.stack([t.detach().float() for t in
                             (main.loss, contrastive, inst, proto, self.alpha, self.beta)])
        logs = {**main.logs, **dict(zip(LOG_NAMES, parts.tolist(), strict=True))}
        return MethodOutput(logits, loss, logs)

    def _blended_loss(self, blend: Blend) -> Tensor:
        """Partial BCE of the logits of blended features against their soft targets."""
        logits = self.classify(self.propagate(blend.features), blend.features)
        return partial_bce(logits, blend.targets)

    def prototypes_due(self, epoch: int) -> bool:
        """Whether :meth:`on_train_epoch_start` recomputes the prototypes before ``epoch``: at
        ``mixup_epoch``, every ``prototype_interval`` epochs after, and at any later epoch if they
        were never computed (a model trained elsewhere until then)."""
        if not self.use_plrb or epoch < self.mixup_epoch:
            return False
        if int(self.prototype_epoch) < 0:
            return True
        interval = self.prototype_interval
        return interval > 0 and (epoch - self.mixup_epoch) % interval == 0

    def on_train_epoch_start(self, epoch: int, train_batches: TrainBatches,
                             epochs: int | None = None) -> None:
        """Recompute the prototypes when :meth:`prototypes_due`; then the loss's hook."""
        super().on_train_epoch_start(epoch, train_batches, epochs)
        if self.prototypes_due(epoch):
            self.compute_prototypes(train_batches)
            self.prototype_epoch.fill_(epoch)

    @torch.no_grad()
    def compute_prototypes(self, train_batches: TrainBatches) -> None:
        """Fill ``prototypes`` ``(C, K, d)`` and ``has_prototype`` ``(C,)`` from one eval-mode pass.

        For each class, the decoupled features ``f_c`` of the images whose observed label for
        ``c`` is 1 are clustered into ``K`` centroids; unknown and negative labels are not used.
        Randomness comes from torch's global generator, which the engine seeds per epoch.
        """
        was_training = self.training
        self.eval()
        collected, classes = [], []
        for inputs, targets, _ in train_batches():
            features = self.decouple(inputs)
            image, cls = (targets == 1).nonzero(as_tuple=True)
            collected.append(features[image, cls].float())
            classes.append(cls)
        self.train(was_training)
        dim = self.prototypes.shape[-1]
        points = torch.cat(collected) if collected else self.prototypes.new_zeros(0, dim)
        groups = torch.cat(classes) if classes else points.new_zeros(0, dtype=torch.long)
        result = batched_kmeans(points, groups, self.spec.num_classes, self.prototypes.shape[1],
                                self.kmeans_iters, self.kmeans_tol)
        self.prototypes.copy_(result.centroids)
        self.has_prototype.copy_(result.counts > 0)


def _check_options(
    contrastive_weight: float,
    mixup_epoch: int,
    num_prototypes: int,
    prototype_interval: int,
    alpha: float,
    beta: float,
) -> None:
    if contrastive_weight < 0:
        raise ValueError(f"contrastive_weight must be >= 0, got {contrastive_weight}")
    if mixup_epoch < 0 or prototype_interval < 0:
        raise ValueError(f"mixup_epoch and prototype_interval must be >= 0, got {mixup_epoch} "
                         f"and {prototype_interval}")
    if num_prototypes < 1:
        raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}")
    if not (0 <= alpha <= 1 and 0 <= beta <= 1):
        raise ValueError(f"alpha and beta must lie in [0, 1], got {alpha} and {beta}")
