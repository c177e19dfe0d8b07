"""The ``Loss`` interface and the registry heads build their training loss from.

A head names its loss (``create_loss(name, spec, **options)``) instead of owning one, so every head
trains with every registered loss. Losses with per-sample state (ROLE's label estimator, LL-Cp's
corrections) hold it as parameters or buffers of size ``N`` indexed by the batch's ``index``, so
checkpoints carry it with the head that owns the loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor, nn

from mlrkit.methods.task import StepInfo, TaskSpec
from mlrkit.registry import Registry


@dataclass
class LossOutput:
    """What ``Loss.forward`` returns: the scalar ``loss`` and named scalar ``logs`` (floats)."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


class Loss(nn.Module):
    """Base class of the registered losses.

    Subclasses take ``spec`` and then their options as named keyword arguments in ``__init__``
    (the recipe's ``loss_options``; :func:`loss_options` reads them from the signature) and
    implement :meth:`forward`.
    """

    registered_name = "loss"

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__()

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        index: Tensor | None = None,
        step: StepInfo | None = None,
    ) -> LossOutput:
        """Loss of ``logits`` ``(B, C)`` against ``targets`` ``(B, C)``: int8 1 / 0 / -1, or float
        soft targets in ``[0, 1]`` with ``-1`` unknown. ``index`` ``(B,)`` gives the batch's rows
        of ``spec.train_targets``; ``step`` where training stands."""
        raise NotImplementedError

    def on_train_epoch_start(self, epoch: int, epochs: int | None,
                             predictions: Callable[[], Tensor]) -> None:
        """Called before each training epoch (``epoch`` 0-based, of ``epochs``) by the head that
        holds the loss; ``predictions()`` computes ``(N, C)`` probabilities of every training
        image in eval mode, in training-row order (only call it when needed). No-op here."""

    def param_groups(self) -> list[dict]:
        """Optimizer groups of the loss's own trainable parameters (none for most losses)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def require_index(self, index: Tensor | None) -> Tensor:
        """``index``, or a ``ValueError`` saying this loss needs it."""
        if index is None:
            raise ValueError(
                f"loss {self.registered_name!r} keeps per-sample state and needs the batch's "
                "training-row index (forward(..., index=...))"
            )
        return index

    def require_step(self, step: StepInfo | None) -> StepInfo:
        """``step``, or a ``ValueError`` saying this loss needs it."""
        if step is None:
            raise ValueError(
                f"loss {self.registered_name!r} follows a schedule and needs the StepInfo "
                "(forward(..., step=...))"
            )
        return step


LOSSES: Registry[type[Loss]] = Registry("loss")


def register_loss(name: str) -> Callable[[type[Loss]], type[Loss]]:
    """Class decorator that registers a :class:`Loss` under ``name``."""

    def decorate(cls: type[Loss]) -> type[Loss]:
        cls.registered_name = name
        return LOSSES.register(name)(cls)

    return decorate


def list_losses() -> list[str]:
    return LOSSES.names()


def loss_class(name: str) -> type[Loss]:
    """The class registered as ``name``."""
    return LOSSES.get(name)


def loss_options(name: str) -> dict[str, inspect.Parameter]:
    """The options loss ``name`` takes, by name (``Parameter.default`` is ``empty`` if required)."""
    params = inspect.signature(loss_class(name).__init__).parameters
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {key: param for key, param in params.items()
            if key not in ("self", "spec") and param.kind not in variadic}


def create_loss(name: str, spec: TaskSpec, **options) -> Loss:
    """Build loss ``name`` for ``spec``; ``options`` are its keyword arguments.

    Raises ``ValueError`` for an unknown name, an unknown option or a missing required one, each
    listing what is valid.
    """
    accepted = loss_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"loss {name!r} takes no option {unknown}; its options: {sorted(accepted) or 'none'}"
        )
    missing = [k for k, p in accepted.items() if p.default is p.empty and k not in options]
    if missing:
        raise ValueError(f"loss {name!r} needs option {missing} (loss_options: {{...}})")
    return loss_class(name)(spec, **options)
