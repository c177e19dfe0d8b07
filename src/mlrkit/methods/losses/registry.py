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
from typing import Any

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

    def forward(self, logits: Tensor, targets: Tensor, index: Tensor | None = None,
                step: StepInfo | None = None) -> LossOutput:
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
        return self._required(index, "keeps per-sample state and needs the batch's training-row "
                                     "index (forward(..., index=...))")

    def require_step(self, step: StepInfo | None) -> StepInfo:
        """``step``, or a ``ValueError`` saying this loss needs it."""
        return self._required(step, "follows a schedule and needs the StepInfo "
                                    "(forward(..., step=...))")

    def _required(self, value: Any, need: str) -> Any:
        if value is None:
            raise ValueError(f"loss {self.registered_name!r} {need}")
        return value

    @classmethod
    def options_signature(cls) -> tuple[Callable, int]:
        """The callable whose parameters after the first ``skip`` are the loss's options (the
        recipe's ``loss_options``): ``(__init__, 2)``, the parameters after ``spec``."""
        return cls.__init__, 2

    @classmethod
    def option_parameters(cls) -> dict[str, inspect.Parameter]:
        """The loss's options by name (``Parameter.default`` is ``empty`` if required)."""
        fn, skip = cls.options_signature()
        params = list(inspect.signature(fn).parameters.values())[skip:]
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return {param.name: param for param in params if param.kind not in variadic}


LOSSES: Registry[type[Loss]] = Registry("loss")


#: Class decorator that registers a :class:`Loss` under a name (``@register_loss("an")``).
register_loss = LOSSES.register_class
#: The registered loss names, sorted.
list_losses = LOSSES.names
#: The class registered under a name; an unknown name is a ``ValueError`` listing the known ones.
loss_class = LOSSES.get


def loss_options(name: str) -> dict[str, inspect.Parameter]:
    """The options loss ``name`` takes, by name (``Parameter.default`` is ``empty`` if required)."""
    return loss_class(name).option_parameters()


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
