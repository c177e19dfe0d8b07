"""Methods: one module per family, found through ``create_method(name, spec, **hparams)``."""

from mlrkit.methods import baselines, sarb, semantic_graph, spml  # noqa: F401  (registers methods)
from mlrkit.methods.base import (
    Method,
    MethodOutput,
    StepInfo,
    TaskSpec,
    create_method,
    list_methods,
    method_class,
    partial_bce,
    register_method,
)

__all__ = [
    "Method",
    "MethodOutput",
    "StepInfo",
    "TaskSpec",
    "create_method",
    "list_methods",
    "method_class",
    "partial_bce",
    "register_method",
]
