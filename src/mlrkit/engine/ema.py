"""Exponential moving average (EMA) of a model's weights, for ``train.ema_decay``.

:class:`WeightEma` holds a copy of the model's ``state_dict``. After every optimizer step,
:meth:`WeightEma.update` moves each floating-point entry, parameters and buffers alike (BatchNorm
statistics included), towards the model's: ``ema = decay * ema + (1 - decay) * w``; the other
entries (integer counters such as ``num_batches_tracked``, boolean masks) are copied. The average
starts from the weights training starts from, and the decay is constant from the first update,
without a warm-up: the rule of CLSL's released ``ModelEma`` (``lib/util.py``, decay 0.9997 by
default and on MS-COCO, 0.9983 in the README's VOC 2007 commands and for the full model on
NUS-WIDE; methods.md §3.4), which averages every ``state_dict`` entry, integer ones included
(their average truncated to an integer, so its ``num_batches_tracked`` lags far behind).

The training loop keeps training the raw weights; with ``train.ema_eval`` (the default)
:meth:`WeightEma.applied` puts the average into the model for validation and ``best/`` holds the
average. Every epoch checkpoint saves it (``ema.safetensors``), so that a resumed run continues it
exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mlrkit.distributed import DistInfo


class WeightEma:
    """The moving average of ``model``'s ``state_dict``, one tensor per entry, on its device."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = _cloned(model.state_dict())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step towards ``model``'s current weights (see the module docstring)."""
        for key, weight in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.mul_(self.decay).add_(weight, alpha=1 - self.decay)
            else:
                average.copy_(weight)

    def load(self, state: dict[str, Tensor]) -> None:
        """Continue from a saved average ``state`` (the same keys and shapes as the model's)."""
        if set(state) != set(self.state):
            raise ValueError(f"the saved weight average does not fit this model: missing "
                             f"{sorted(set(self.state) - set(state))[:5]}, unexpected "
                             f"{sorted(set(state) - set(self.state))[:5]}")
        with torch.no_grad():
            for key, average in self.state.items():
                average.copy_(state[key])

    def broadcast(self, info: DistInfo) -> None:
        """Rank 0's floating-point averages on every rank.

        DDP keeps the parameters equal on all ranks, so their averages are equal too, but each
        rank's BatchNorm statistics move with its own batches between DDP's broadcasts of rank 0's
        buffers; rank 0's are the model's (they are what its checkpoints hold).
        """
        if info.enabled:
            for average in self.state.values():
                if average.is_floating_point():
                    dist.broadcast(average, src=0)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """``model`` holds the average inside the block and its own weights again after it."""
        own = _cloned(model.state_dict())
        model.load_state_dict(self.state)
        try:
            yield
        finally:
            model.load_state_dict(own)


def _cloned(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}
