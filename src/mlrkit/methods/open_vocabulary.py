"""Open-vocabulary heads on pooled features: they score any label embeddings given to them.

- ``devise``: the learned baseline (DeViSE, Frome et al. 2013; Fast0Tag, Zhang et al. 2016, with
  a hidden layer): image features projected into the label-embedding space,
  ``logit_c = scale * cos(P x, e_c)``, trained on the seen classes with the ranking loss of the
  zero-shot methods (``rank``) or any registered loss.
- ``conse``: ConSE (Norouzi et al. 2014, :mod:`mlrkit.zero_shot`), training-free: the ImageNet
  classifier of ``tf_efficientnet_lite0`` applied to the cached pooled features (its input),
  the probability-weighted mean of the top-``T`` ImageNet class-name embeddings, cosine with
  each label embedding.

Both are :class:`~mlrkit.methods.base.OpenVocabularyMethod`: the class set is an input, not a
parameter (``docs/protocols.md``, "Zero-shot").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlrkit.encoders.imagenet import ConseEmbedding
from mlrkit.methods.base import OpenVocabularyMethod, moved_param_groups, register_method
from mlrkit.methods.losses import create_loss
from mlrkit.methods.task import TaskSpec


@register_method("devise")
class LabelProjection(OpenVocabularyMethod):
    """``logit_c = scale * cos(P x, e_c)`` for pooled ``x`` ``(B, D)`` and label embeddings ``e``.

    ``student="conse"`` replaces ``P`` with ConSE's embedding through a trainable copy of the
    ImageNet classifier (:class:`ConseEmbedding`, initialised from the pretrained head): the head
    starts as ConSE and is fine-tuned; its teacher is the frozen initial copy.

    With ``distill_weight > 0`` the projection is also pulled towards ConSE's embedding of the
    image (:class:`ConseEmbedding`, the probability-weighted ImageNet class names in the same
    label space): ``loss = rank + distill_weight * mean |P x - f(x)|``, the L1 distillation SigRL
    applies to its global embedding (``docs/methods.md`` §4.2) with ConSE as the teacher. It keeps
    the projection in the part of the label space that ImageNet's 1,000 classes span, rather than
    the few directions the seen classes need.

    Args:
        spec: the task; ``label_embeddings`` ``(C, E)`` of the training classes.
        hidden_dim: ``None``: ``P`` is linear ``D -> E`` (DeViSE); a number: ``D -> H``, GELU,
            ``H -> E`` (Fast0Tag's non-linear mapping).
        dropout: on the input features.
        scale: the inverse temperature of the cosines (the rank loss's margin is in these units).
        learn_scale: learn ``log scale`` as a parameter (CLIP's logit scale) instead of fixing it.
        distill_weight: weight of the L1 distillation to the ConSE teacher (0: none, DeViSE).
        distill_top_t, distill_source, distill_templates: the teacher's ``T`` and how it embeds
            the ImageNet names (must be the space of the label embeddings; pooled
            ``tf_efficientnet_lite0`` features only).
        student: ``"projection"`` (``P`` as above) or ``"conse"``.
        conse_top_t, conse_temperature, conse_lr_mult: the ConSE student's ``T``, softmax
            temperature and learning-rate factor (its teacher uses the same ``T`` and
            temperature).
        loss, loss_options: the registered training loss (default ``rank``, margin 1).
    """

    input_kind = "pooled"

    def __init__(
        self,
        spec: TaskSpec,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        scale: float = 10.0,
        learn_scale: bool = False,
        distill_weight: float = 0.0,
        distill_top_t: int = 10,
        distill_source: str = "minilm",
        distill_templates: list[str] | None = None,
        student: str = "projection",
        conse_top_t: int = 10,
        conse_temperature: float = 1.0,
        conse_lr_mult: float = 1.0,
        loss: str = "rank",
        loss_options: dict | None = None,
    ) -> None:
        super().__init__(spec)
        if scale <= 0 or distill_weight < 0 or conse_lr_mult <= 0:
            raise ValueError(f"scale and conse_lr_mult must be > 0 and distill_weight >= 0, got "
                             f"{scale}, {conse_lr_mult} and {distill_weight}")
        if student not in ("projection", "conse"):
            raise ValueError(f"student must be 'projection' or 'conse', got {student!r}")
        if student == "conse" and (hidden_dim is not None or dropout):
            raise ValueError("student 'conse' is ConSE through a trainable ImageNet classifier: "
                             "hidden_dim and dropout apply to student 'projection'; remove them")
        out_dim = self.embedding_dim
        self.student, self.conse_lr_mult = student, conse_lr_mult
        conse = {"top_t": conse_top_t, "source": distill_source, "templates": distill_templates,
                 "temperature": conse_temperature}
        if student == "conse":
            self.projection = conse_embedding(spec.feature_dim, out_dim, **conse, trainable=True)
        elif hidden_dim is None:
            self.projection = nn.Sequential(nn.Dropout(dropout), nn.Linear(spec.feature_dim, out_dim))
        else:
            self.projection = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(spec.feature_dim, hidden_dim), nn.GELU(),
                nn.Linear(hidden_dim, out_dim),
            )
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.distill_weight = distill_weight
        self.teacher = None
        if distill_weight > 0 and student == "conse":  # the frozen initial copy of the student
            self.teacher = conse_embedding(spec.feature_dim, out_dim, **conse)
        elif distill_weight > 0:
            self.teacher = conse_embedding(spec.feature_dim, out_dim, distill_top_t,
                                           distill_source, distill_templates)
        self.loss = create_loss(loss, spec, **(loss_options or {}))

    def param_groups(self) -> list[dict]:
        """:meth:`Method.param_groups`, a ConSE student's classifier at ``conse_lr_mult``."""
        if self.student != "conse":
            return super().param_groups()
        return moved_param_groups(super().param_groups(), self.projection.parameters(),
                                  self.conse_lr_mult)

    def score(self, inputs: Tensor, embeddings: Tensor) -> Tensor:
        return self.score_parts(inputs, embeddings)[0]

    def score_parts(self, inputs: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``scale * cos`` logits, the projection ``z`` and the inputs (ConSE's input)."""
        projected = self.projection(inputs)
        image = F.normalize(projected, dim=-1)
        logits = self.log_scale.exp() * image @ F.normalize(embeddings, dim=-1).T
        return logits, projected, inputs


def conse_embedding(feature_dim: int, width: int, top_t: int = 10, source: str = "minilm",
                    templates: list[str] | None = None, temperature: float = 1.0,
                    trainable: bool = False) -> ConseEmbedding:
    """A :class:`ConseEmbedding`, refused unless its vectors are ``width``-d, the width of the
    label embeddings it is compared with (the same label space)."""
    embedding = ConseEmbedding(feature_dim, top_t, source, templates, temperature, trainable)
    if embedding.embedding_dim != width:
        raise ValueError(f"the ImageNet names embedded with {source!r} are "
                         f"{embedding.embedding_dim}-d but the label embeddings {width}-d; use "
                         f"the same source in label_embeddings and in the method")
    return embedding


@register_method("conse")
class ConSE(OpenVocabularyMethod):
    """ConSE on pooled ``tf_efficientnet_lite0`` features ``(B, 1280)``; nothing is trained.

    Logits are cosines in ``[-1, 1]`` (a ranking, not probabilities), equal to
    :func:`mlrkit.zero_shot.conse_scores` of the same images.

    Args:
        spec: the task; ``label_embeddings`` of the classes, from the same ``source`` (and
            templates) as the ImageNet class names here.
        top_t, source, templates: of :class:`ConseEmbedding`; ``source`` and ``templates`` must
            match the recipe's ``label_embeddings`` section (the widths are checked).
    """

    input_kind = "pooled"
    training_free = True

    def __init__(
        self,
        spec: TaskSpec,
        top_t: int = 10,
        source: str = "minilm",
        templates: list[str] | None = None,
    ) -> None:
        super().__init__(spec)
        self.embedding = conse_embedding(spec.feature_dim, self.embedding_dim, top_t, source,
                                         templates)

    def score(self, inputs: Tensor, embeddings: Tensor) -> Tensor:
        return F.normalize(self.embedding(inputs), dim=-1) @ F.normalize(embeddings, dim=-1).T


@register_method("dense-conse")
class DenseConSE(OpenVocabularyMethod):
    """Dense ConSE on ``tf_efficientnet_lite0`` feature maps ``(B, 1280, h, w)``; nothing is
    trained: ConSE at every position and of the pooled map, each label matched with its
    ``top_k`` best positions (local) and the pooled embedding (global)::

        score(x, l) = (1 - local_weight) * cos(f(mean_p x_p), s(l))
                      + local_weight * mean of the top_k cos(f(x_p), s(l)) over positions p

    equal to :func:`mlrkit.zero_shot.dense_conse_scores` of the same maps (a test). A ``1 x 1`` map
    or ``local_weight=0`` gives ConSE's scores.

    Args:
        spec: the task; ``label_embeddings`` from the same ``source`` and templates.
        top_t, source, templates: of :class:`ConseEmbedding`.
        top_k, local_weight: positions averaged per label and the local score's share
            (:data:`mlrkit.zero_shot.DENSE_TOP_K`, :data:`~mlrkit.zero_shot.DENSE_LOCAL_WEIGHT`).
    """

    input_kind = "spatial"
    training_free = True

    def __init__(self, spec: TaskSpec, top_t: int = 10, top_k: int = 4,
                 local_weight: float = 0.5, source: str = "minilm",
                 templates: list[str] | None = None) -> None:
        super().__init__(spec)
        if len(spec.feature_shape) != 3:
            raise ValueError(f"dense-conse needs feature maps (D, h, w), got "
                             f"{spec.feature_shape}; cache spatial features (features.spatial)")
        if top_k < 1 or not 0.0 <= local_weight <= 1.0:
            raise ValueError(f"top_k {top_k}, local_weight {local_weight}: give top_k >= 1 and "
                             f"a share in [0, 1]")
        self.top_k, self.local_weight = top_k, local_weight
        self.embedding = conse_embedding(spec.feature_dim, self.embedding_dim, top_t, source,
                                         templates)

    def score(self, inputs: Tensor, embeddings: Tensor) -> Tensor:
        maps = inputs.float().flatten(2).transpose(1, 2)  # (B, P, D)
        text = F.normalize(embeddings.float(), dim=-1)
        global_scores = F.normalize(self.embedding(maps.mean(dim=1)), dim=-1) @ text.T
        local = F.normalize(self.embedding(maps), dim=-1) @ text.T  # (B, P, L)
        top = local.topk(min(self.top_k, local.shape[1]), dim=1).values.mean(dim=1)
        return (1.0 - self.local_weight) * global_scores + self.local_weight * top
