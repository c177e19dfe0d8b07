"""An image encoder followed by any method: end-to-end training and prediction from images."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mlrkit.methods.base import Method, MethodOutput, StepInfo


class EncoderHead(Method):
    """An image encoder followed by a method: end-to-end training, and prediction from images.

    ``inputs`` are images ``(B, 3, H, W)``; the method receives the encoder's pooled ``(B, D)`` or
    spatial ``(B, D, h, w)`` features (a CLIP tower's token layout ``(B, R, E)``), as its
    ``input_kind`` asks. ``trainable`` lists the parameter-name prefixes of the encoder that are
    fine-tuned (``None``: all of it; ``[]``: none, e.g. SARB's ``["model.layer4"]``); frozen
    encoder modules stay in eval mode, so their BatchNorm statistics do not move. What the encoder
    lists in ``frozen_prefixes`` (a CLIP tower's teacher) is never trained. ``lr_decay`` scales the
    learning rate of the encoder layer by layer (:meth:`param_groups`; encoders with ``layer_of``
    and ``num_blocks``, i.e. CLIP towers).
    """

    def __init__(self, encoder: nn.Module, method: Method, lr_mult: float = 1.0,
                 trainable: list[str] | None = None, lr_decay: float | None = None) -> None:
        super().__init__(method.spec)
        self.encoder, self.method, self.lr_mult = encoder, method, lr_mult
        self.trainable, self.lr_decay = trainable, lr_decay
        self._frozen = tuple(getattr(encoder, "frozen_prefixes", ()))
        self._check_trainable()
        self._check_lr_decay()
        for name, param in self.encoder.named_parameters():
            param.requires_grad_(self._is_trainable(name))

    def _check_trainable(self) -> None:
        """Each ``trainable`` prefix names encoder parameters, none of them frozen."""
        names = [n for n, _ in self.encoder.named_parameters()]
        for prefix in self.trainable or ():
            frozen = [f for f in self._frozen if _inside(prefix, f) or _inside(f, prefix)]
            if frozen:
                raise ValueError(f"encoder.trainable: {prefix!r} covers the encoder's frozen "
                                 f"{frozen[0]!r}, which is never trained; name parts outside it")
            if not any(_inside(n, prefix) for n in names):
                tops = sorted({".".join(n.split(".")[:2]) for n in names})
                raise ValueError(f"encoder.trainable: {prefix!r} names no parameter of encoder "
                                 f"{getattr(self.encoder, 'name', '?')!r}; its parameters lie "
                                 f"under {', '.join(tops[:8])}")

    def _check_lr_decay(self) -> None:
        """``lr_decay`` in ``(0, 1]``, for an encoder whose blocks are numbered."""
        if self.lr_decay is None:
            return
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"encoder.lr_decay is {self.lr_decay}; give a value in (0, 1] "
                             f"(SigRL: 0.65), or null for none")
        if not (hasattr(self.encoder, "layer_of") and hasattr(self.encoder, "num_blocks")):
            raise ValueError(f"encoder.lr_decay: encoder {getattr(self.encoder, 'name', '?')!r} "
                             f"has no numbered blocks; layer-wise decay applies to CLIP image "
                             f"towers (clip:ARCH); remove lr_decay")

    @property
    def has_unused_parameters(self) -> bool:
        """The wrapped method's (e.g. SARB's alpha/beta before ``mixup_epoch``), for DDP."""
        return self.method.has_unused_parameters

    @property
    def training_free(self) -> bool:
        """The wrapped method's: nothing to train (then the encoder is not trained either)."""
        return self.method.training_free

    def _is_trainable(self, name: str) -> bool:
        """Whether parameter or module ``name`` lies inside one of the trainable prefixes and
        outside the frozen ones."""
        if any(_inside(name, f) for f in self._frozen):
            return False
        return self.trainable is None or any(_inside(name, p) for p in self.trainable)

    def encode(self, images: Tensor) -> Tensor:
        out = self.encoder(images)
        return out.spatial if self.method.input_kind == "spatial" else out.pooled

    def forward(self, inputs: Tensor, targets: Tensor | None = None, index: Tensor | None = None,
                step: StepInfo | None = None) -> MethodOutput:
        return self.method(self.encode(inputs), targets, index, step)

    def train(self, mode: bool = True) -> EncoderHead:
        super().train(mode)
        for name, module in self.encoder.named_modules():
            if not self._is_trainable(name):
                module.training = False  # this module only: its trainable children keep mode
        return self

    def param_groups(self) -> list[dict]:
        """The method's groups, then the trainable encoder parameters: one group at ``lr_mult``,
        or with ``lr_decay`` one group per depth ``d`` (``encoder.layer_of``) at ``lr_mult *
        lr_decay ** (L + 1 - d)``: block ``i`` of ``L`` (depth ``i + 1``) at ``lr_decay ** (L -
        i)``, what follows the blocks (ln_post, proj) at 1 and the stem (depth 0) at ``lr_decay
        ** (L + 1)``, as SigRL's (BEiT's) ``param_groups_lrd``. The method's own groups keep
        their scale (1)."""
        groups = self.method.param_groups()
        named = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        if not named:
            return groups
        if self.lr_decay is None:
            return [*groups, {"params": [p for _, p in named], "lr_mult": self.lr_mult}]
        by_depth: dict[int, list[nn.Parameter]] = {}
        for name, param in named:
            by_depth.setdefault(self.encoder.layer_of(name), []).append(param)
        top = self.encoder.num_blocks + 1
        return [*groups, *({"params": params, "lr_mult": self.lr_mult * self.lr_decay ** (top - d)}
                           for d, params in sorted(by_depth.items()))]

    def on_train_epoch_start(self, epoch, train_batches, epochs=None) -> None:
        def encoded():
            with torch.no_grad():
                for images, targets, index in train_batches():
                    yield self.encode(images), targets, index

        self.method.on_train_epoch_start(epoch, encoded, epochs)


def _inside(name: str, prefix: str) -> bool:
    """Whether dotted ``name`` is ``prefix`` or lies under it."""
    return name == prefix or name.startswith(prefix + ".")
