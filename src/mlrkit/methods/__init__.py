"""Methods: one module per family, found through ``create_method(name, spec, **hparams)``; the
losses they train with, through ``create_loss(name, spec, **options)``."""

from mlrkit.methods import (  # noqa: F401  (registers methods)
    baselines,
    clsl,
    open_vocabulary,
    sarb,
    semantic_graph,
    sigrl,
)
from mlrkit.methods.base import (
    Method,
    MethodOutput,
    OpenVocabularyMethod,
    StepInfo,
    TaskSpec,
    create_method,
    list_methods,
    method_class,
    register_method,
)
from mlrkit.methods.losses import Loss, LossOutput, create_loss, list_losses, partial_bce

__all__ = [
    "Loss",
    "LossOutput",
    "Method",
    "MethodOutput",
    "OpenVocabularyMethod",
    "StepInfo",
    "TaskSpec",
    "create_loss",
    "create_method",
    "list_losses",
    "list_methods",
    "method_class",
    "partial_bce",
    "register_method",
]
