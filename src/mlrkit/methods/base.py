"""The small interface every method implements, and the registry the engine finds them through.

A method is an ``nn.Module`` that maps inputs (cached features or the output of an image encoder)
to class logits and, when given the observed training labels, computes its own loss. The engine calls
only what is defined here and never switches on a method's name.

Shapes: ``B`` batch, ``C`` classes, ``D`` feature channels, ``h x w`` spatial positions, ``N``
training images. Observed labels follow the mlrkit convention: ``int8`` 1 / 0 / -1 (unknown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn

from mlrkit.methods.losses import (
    Loss,
    partial_bce,  # noqa: F401  (re-exported from its former home)
)
from mlrkit.methods.task import MethodOutput, StepInfo, TaskSpec
from mlrkit.registry import Registry

TrainBatches = Callable[[], Iterator[tuple[Tensor, Tensor, Tensor]]]


class Method(nn.Module):
    """Base class of all methods.

    Subclasses set ``input_kind`` (``"pooled"`` for ``(B, D)`` inputs, ``"spatial"`` for
    ``(B, D, h, w)``) and implement :meth:`forward`. A head trains with a registered loss
    (:func:`~mlrkit.methods.losses.create_loss`) held as ``self.loss``. Per-sample state (e.g.
    ROLE's label estimates) lives in parameters or buffers of size ``N`` indexed by ``index``, in
    the method or its loss, so checkpoints carry it.
    """

    input_kind: ClassVar[str] = "pooled"
    #: True when some parameters get no gradient in some steps (e.g. SARB's alpha/beta during
    #: warm-up); DistributedDataParallel must then look for unused parameters.
    has_unused_parameters: ClassVar[bool] = False
    #: True for a method that scores any class set given as label embeddings
    #: (:class:`OpenVocabularyMethod`); a closed-set method predicts the C classes it was built for.
    open_vocabulary: ClassVar[bool] = False
    #: True for a method with nothing to train (ConSE, CLIP zero-shot): the engine skips the
    #: training loop, saves its state as the best checkpoint and evaluates it.
    training_free: ClassVar[bool] = False

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, inputs: Tensor, targets: Tensor | None = None, index: Tensor | None = None,
                step: StepInfo | None = None) -> MethodOutput:
        """Logits for ``inputs``; with ``targets`` ``(B, C)`` int8 and ``index`` ``(B,)``, the loss."""
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups; an ``lr_mult`` key scales the base learning rate.

        One group of the trainable parameters, then the groups of the training loss when the
        method holds one as ``self.loss`` (a :class:`~mlrkit.methods.losses.Loss`; e.g. ROLE's
        estimator at 10 x lr), whose parameters are left out of the first group.
        """
        loss = getattr(self, "loss", None)
        loss_groups = loss.param_groups() if isinstance(loss, Loss) else []
        taken = {id(p) for group in loss_groups for p in group["params"]}
        own = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        return [{"params": own}, *loss_groups]

    def on_train_epoch_start(self, epoch: int, train_batches: TrainBatches,
                             epochs: int | None = None) -> None:
        """Called before each training epoch (``epoch`` 0-based, of ``epochs``).
        ``train_batches()`` iterates the whole training set in order, without augmentation
        randomness beyond the dataset's, as ``(inputs, targets, index)`` on the training device;
        use it for passes such as class prototypes. Here: the hook of the loss held as
        ``self.loss`` (e.g. ``em_apl``'s pseudo-labelling), given :meth:`train_probabilities`."""
        loss = getattr(self, "loss", None)
        if isinstance(loss, Loss):
            loss.on_train_epoch_start(epoch, epochs, lambda: self.train_probabilities(train_batches))

    @torch.no_grad()
    def train_probabilities(self, train_batches: TrainBatches) -> Tensor:
        """``(N, C)`` float32 ``sigmoid`` of the logits of every training row, in row order,
        computed in eval mode (the training mode is restored)."""
        was_training = self.training
        self.eval()
        rows = torch.zeros(self.spec.train_targets.shape, dtype=torch.float32)
        for inputs, _, index in train_batches():
            rows[index.cpu()] = torch.sigmoid(self(inputs).logits.float()).cpu()
        self.train(was_training)
        return rows


class OpenVocabularyMethod(Method):
    """A method that scores whatever classes it is given, as label embeddings.

    The current class set is ``class_embeddings`` ``(C, E)`` with ``class_names``: at first the
    task's (``spec.label_embeddings``), replaced with :meth:`set_classes` (evaluation on unseen
    classes, ``mlrkit tag --checkpoint``). It is a non-persistent buffer: checkpoints hold only
    what was learned, so a trained run loads for a class list it never saw. Subclasses implement
    :meth:`score` on the embeddings they are handed; ``forward`` passes the current set, or the
    ``label_embeddings`` given for one call. Training targets must have one column per class of
    the set in use.

    Distillation: a subclass that sets ``teacher`` (a frozen module) and ``distill_weight > 0``
    and implements :meth:`score_parts` trains with ``loss + distill_weight * mean |z - teacher(u)|``
    for its image embedding ``z`` and the teacher's input ``u`` (``distill`` and the loss's name
    in the logs).
    """

    open_vocabulary = True
    #: The error when :meth:`score_parts` has no teacher input to distil to.
    no_teacher_input: ClassVar[str] = "this head's inputs carry nothing for its teacher"

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        embeddings = require_label_embeddings(spec, type(self).__name__)
        self.register_buffer("class_embeddings", embeddings, persistent=False)
        self.class_names: tuple[str, ...] = tuple(spec.class_names)
        self.teacher: nn.Module | None = None
        self.distill_weight = 0.0

    @property
    def embedding_dim(self) -> int:
        """``E``, the width every class set must have."""
        return self.class_embeddings.shape[1]

    def set_classes(self, embeddings: Tensor, names: Sequence[str] = ()) -> None:
        """Score ``embeddings`` ``(C', E)`` (named ``names``) from now on."""
        embeddings = self._check_classes(embeddings)
        if names and len(names) != len(embeddings):
            raise ValueError(f"{len(names)} class names for {len(embeddings)} label embeddings")
        self.class_embeddings = embeddings.to(self.class_embeddings.device)
        self.class_names = tuple(names)

    def _check_classes(self, embeddings: Tensor) -> Tensor:
        embeddings = torch.as_tensor(embeddings).detach().float()
        if embeddings.ndim != 2 or embeddings.shape[0] < 1 or (
                embeddings.shape[1] != self.embedding_dim):
            raise ValueError(
                f"label embeddings must be (C, E={self.embedding_dim}) like the ones this run "
                f"was trained with, got {tuple(embeddings.shape)}; embed the class names with "
                f"the run's label-embedding source"
            )
        return embeddings

    def score(self, inputs: Tensor, embeddings: Tensor) -> Tensor:
        """Logits ``(B, C')`` of ``inputs`` for the classes ``embeddings`` ``(C', E)``."""
        raise NotImplementedError

    def score_parts(self, inputs: Tensor, embeddings: Tensor,
                    **options) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Logits ``(B, C')``, the image embedding ``z`` ``(B, E)`` and the teacher's input
        ``u`` of the distillation (``None, None`` here: :meth:`score` alone)."""
        return self.score(inputs, embeddings, **options), None, None

    def forward(self, inputs: Tensor, targets: Tensor | None = None, index: Tensor | None = None,
                step: StepInfo | None = None, label_embeddings: Tensor | None = None,
                **options) -> MethodOutput:
        """Logits ``(B, C')`` for the current classes or ``label_embeddings`` ``(C', E)``; with
        ``targets`` ``(B, C')`` the loss (``self.loss``) plus the distillation when the head has
        a teacher. ``options`` go to :meth:`score_parts` (e.g. sigrl's ``direct``)."""
        logits, image, teacher_input = self.score_parts(
            inputs, self.classes_for(label_embeddings), **options)
        if targets is None:
            return MethodOutput(logits)
        out = self.loss(logits, self.check_targets(targets, logits), index, step)
        if self.teacher is None:
            return MethodOutput(logits, out.loss, out.logs)
        if teacher_input is None:
            raise ValueError(self.no_teacher_input)
        with torch.no_grad():
            target = self.teacher(teacher_input)
        distill = (image - target).abs().mean()
        logs = {**out.logs, self.loss.registered_name: float(out.loss.detach()),
                "distill": float(distill.detach())}
        return MethodOutput(logits, out.loss + self.distill_weight * distill, logs)

    def classes_for(self, label_embeddings: Tensor | None) -> Tensor:
        """The embeddings to score: ``label_embeddings`` (checked) or the current class set."""
        if label_embeddings is None:
            return self.class_embeddings
        return self._check_classes(label_embeddings).to(self.class_embeddings.device)

    @staticmethod
    def check_targets(targets: Tensor, logits: Tensor) -> Tensor:
        """``targets``, refused unless they have one column per scored class."""
        if targets.shape != logits.shape:
            raise ValueError(f"targets {tuple(targets.shape)} do not match the {logits.shape[1]} "
                             f"classes scored")
        return targets


METHODS: Registry[type[Method]] = Registry("method")


#: Class decorator that registers a method under a name (``@register_method("linear")``).
register_method = METHODS.register_class
#: The registered method names, sorted.
list_methods = METHODS.names
#: The class registered under a name; an unknown name is a ``ValueError`` listing the known ones.
method_class = METHODS.get


def moved_param_groups(groups: list[dict], params: Iterable[nn.Parameter],
                       lr_mult: float) -> list[dict]:
    """``groups`` (a :meth:`Method.param_groups` list) with ``params`` moved out of the first
    group into a group of their own at ``lr_mult`` (``groups`` as they are when it is 1)."""
    if lr_mult == 1.0:
        return groups
    moved = list(params)
    ids = {id(p) for p in moved}
    rest = [p for p in groups[0]["params"] if id(p) not in ids]
    return [*([{"params": rest}] if rest else []), {"params": moved, "lr_mult": lr_mult},
            *groups[1:]]


def create_method(name: str, spec: TaskSpec, **hparams) -> Method:
    """Build method ``name`` for ``spec``; ``hparams`` are the method's keyword arguments."""
    cls = method_class(name)
    try:
        return cls(spec, **hparams)
    except TypeError as err:
        raise ValueError(f"method {name!r}: bad hyperparameters {sorted(hparams)}: {err}; fix the "
                         f"recipe's method section (each method's options: docs/methods.md)") from err


def known_mask(targets: Tensor) -> Tensor:
    """``(B, C)`` bool, True where the observed label is known (not -1)."""
    return targets >= 0


def require_label_embeddings(spec: TaskSpec, method: str) -> Tensor:
    """The ``(C, E)`` label embeddings of ``spec`` as a float32 copy, validated for ``method``."""
    embeddings = spec.label_embeddings
    if embeddings is None:
        raise ValueError(
            f"{method} needs label embeddings: TaskSpec.label_embeddings is None (expected a "
            f"(C, E) tensor of class-name vectors; recipes: label_embeddings: {{source: glove}})"
        )
    if embeddings.ndim != 2 or embeddings.shape[0] != spec.num_classes:
        raise ValueError(
            f"label_embeddings must be (C={spec.num_classes}, E), got {tuple(embeddings.shape)}"
        )
    return embeddings.detach().clone().float()


def open_vocabulary_part(model: Method) -> OpenVocabularyMethod:
    """The open-vocabulary method of ``model`` (itself, or the method of an EncoderHead)."""
    core = getattr(model, "method", model)
    if not isinstance(core, OpenVocabularyMethod):
        name = getattr(type(core), "registered_name", type(core).__name__)
        raise TypeError(f"method {name!r} is closed-set: it scores only the classes it was "
                         f"built for; use an open-vocabulary method (devise, conse)")
    return core


@contextmanager
def scoring_classes(model: Method, embeddings: Tensor, names: Sequence[str]) -> Iterator[None]:
    """Within the block ``model`` scores ``embeddings`` ``(C', E)``; its classes are restored
    after."""
    core = open_vocabulary_part(model)
    before = (core.class_embeddings, core.class_names)
    core.set_classes(embeddings, names)
    try:
        yield
    finally:
        core.set_classes(*before)
