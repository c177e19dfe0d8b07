"""Baseline heads on pooled features: a linear classifier and a one-hidden-layer MLP.

Both train with partial BCE (unknown entries ignored) or "assume negative" (unknown entries treated as
negatives, the naive baseline of the partial- and single-positive-label papers).
"""

from __future__ import annotations

from torch import Tensor, nn

from mlrkit.methods.base import (
    Method,
    MethodOutput,
    StepInfo,
    TaskSpec,
    partial_bce,
    register_method,
)

LOSSES = ("partial_bce", "assume_negative")


def baseline_loss(logits: Tensor, targets: Tensor, loss: str) -> Tensor:
    """``partial_bce``: BCE over known entries; ``assume_negative``: unknown entries become 0."""
    if loss == "assume_negative":
        targets = targets.clamp(min=0)
    return partial_bce(logits, targets)


class _PooledHead(Method):
    input_kind = "pooled"

    def __init__(self, spec: TaskSpec, head: nn.Module, loss: str) -> None:
        super().__init__(spec)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        self.head = head
        self.loss_name = loss

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor | None = None,
        index: Tensor | None = None,
        step: StepInfo | None = None,
    ) -> MethodOutput:
        """``inputs`` ``(B, D)`` pooled features → logits ``(B, C)``."""
        logits = self.head(inputs)
        if targets is None:
            return MethodOutput(logits)
        return MethodOutput(logits, baseline_loss(logits, targets, self.loss_name))


@register_method("linear")
class LinearHead(_PooledHead):
    """Dropout + ``Linear(D, C)``."""

    def __init__(self, spec: TaskSpec, loss: str = "partial_bce", dropout: float = 0.0) -> None:
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(spec.feature_dim, spec.num_classes))
        super().__init__(spec, head, loss)


@register_method("mlp")
class MLPHead(_PooledHead):
    """``Linear(D, H)`` → GELU → dropout → ``Linear(H, C)``."""

    def __init__(
        self,
        spec: TaskSpec,
        loss: str = "partial_bce",
        hidden_dim: int = 512,
        dropout: float = 0.2,
    ) -> None:
        head = nn.Sequential(
            nn.Linear(spec.feature_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, spec.num_classes),
        )
        super().__init__(spec, head, loss)
