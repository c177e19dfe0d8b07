"""What a method is told about its task (``TaskSpec``) and about training (``StepInfo``), and
what it returns (``MethodOutput``); the methods, the losses and the engine all use them.

Shapes: ``B`` batch, ``C`` classes, ``D`` feature channels, ``h x w`` spatial positions, ``N``
training images, ``E`` label-embedding dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor


@dataclass(frozen=True)
class TaskSpec:
    """What a method needs to know about the task when it is built.

    Attributes:
        num_classes: ``C``.
        feature_shape: shape of one input, ``(D,)`` for pooled or ``(D, h, w)`` for spatial features.
        train_targets: ``(N, C)`` int8 observed training labels (1 / 0 / -1), in training-set
            order; a batch's ``index`` points into its rows. Methods use it for label statistics
            (co-occurrence graphs) and to size per-sample state.
        label_embeddings: ``(C, E)`` float vectors of the class names, or ``None``.
        class_names: the ``C`` class names.
        pseudo_labels: ``(N, C)`` int8 pseudo-labels of the training rows from a teacher (1
            positive, 0 negative, -1 none; :mod:`mlrkit.engine.pseudo_labels`), or ``None``.
    """

    num_classes: int
    feature_shape: tuple[int, ...]
    train_targets: np.ndarray
    label_embeddings: Tensor | None = None
    class_names: tuple[str, ...] = ()
    pseudo_labels: np.ndarray | None = None

    @property
    def feature_dim(self) -> int:
        return self.feature_shape[0]

    @property
    def num_train(self) -> int:
        return self.train_targets.shape[0]


@dataclass(frozen=True)
class StepInfo:
    """Where training stands, for methods with schedules (warm-up, ramps, LL's rejection rate)."""

    epoch: int
    step: int
    steps_per_epoch: int
    epochs: int

    @property
    def epoch_fraction(self) -> float:
        """Progress through the current epoch, in ``[0, 1)``."""
        return self.step / max(self.steps_per_epoch, 1)


@dataclass
class MethodOutput:
    """What ``Method.forward`` returns.

    Attributes:
        logits: ``(B, C)`` class scores before the sigmoid.
        loss: scalar training loss, present when targets were given.
        logs: named scalar parts of the loss (floats) for the metrics log.
    """

    logits: Tensor
    loss: Tensor | None = None
    logs: dict[str, float] = field(default_factory=dict)
