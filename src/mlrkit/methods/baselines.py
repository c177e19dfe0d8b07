"""Baseline heads on pooled features: a linear classifier and a one-hidden-layer MLP.

Both train with any registered loss (:func:`~mlrkit.methods.losses.create_loss`): ``partial_bce``
(unknown entries ignored, the default), ``assume_negative``, the single-positive losses of
``docs/methods.md`` §6 (``an``, ``role``, ``ll_cp``, ...) or ``asl``. The linear head with a
single-positive loss is Cole et al.'s linear classifier.
"""

from __future__ import annotations

from torch import Tensor, nn

from mlrkit.methods.base import Method, MethodOutput, StepInfo, TaskSpec, register_method
from mlrkit.methods.losses import create_loss


class _PooledHead(Method):
    """``head`` on ``(B, D)`` inputs, trained with ``create_loss(loss, spec, **loss_options)``
    (built after ``head``, so a loss's random initial state follows the head's)."""

    input_kind = "pooled"

    def __init__(
        self, spec: TaskSpec, head: nn.Module, loss: str, loss_options: dict | None
    ) -> None:
        super().__init__(spec)
        self.head = head
        self.loss = create_loss(loss, spec, **(loss_options or {}))

    def forward(self, inputs: Tensor, targets: Tensor | None = None, index: Tensor | None = None,
                step: StepInfo | None = None) -> MethodOutput:
        """``inputs`` ``(B, D)`` pooled features → logits ``(B, C)``; with ``targets`` ``(B, C)``
        the loss (``index`` and ``step`` as the loss needs them) and its ``logs``."""
        logits = self.head(inputs)
        if targets is None:
            return MethodOutput(logits)
        out = self.loss(logits, targets, index, step)
        return MethodOutput(logits, out.loss, out.logs)


@register_method("linear")
class LinearHead(_PooledHead):
    """Dropout + ``Linear(D, C)``; ``loss`` and ``loss_options`` name the training loss."""

    def __init__(
        self,
        spec: TaskSpec,
        loss: str = "partial_bce",
        dropout: float = 0.0,
        loss_options: dict | None = None,
    ) -> None:
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(spec.feature_dim, spec.num_classes))
        super().__init__(spec, head, loss, loss_options)


@register_method("mlp")
class MLPHead(_PooledHead):
    """``Linear(D, H)`` → GELU → dropout → ``Linear(H, C)``; ``loss`` and ``loss_options`` as for
    ``linear``."""

    def __init__(
        self,
        spec: TaskSpec,
        loss: str = "partial_bce",
        hidden_dim: int = 512,
        dropout: float = 0.2,
        loss_options: dict | None = None,
    ) -> None:
        head = nn.Sequential(
            nn.Linear(spec.feature_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, spec.num_classes),
        )
        super().__init__(spec, head, loss, loss_options)
