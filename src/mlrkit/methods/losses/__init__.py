"""Losses any head can train with: pure functions and the registry of ``Loss`` modules.

``create_loss(name, spec, **options)`` builds a registered loss (``list_losses()`` names them); a
head takes ``loss: str`` and ``loss_options: dict`` and uses the result for its main term. The pure
functions live in :mod:`~mlrkit.methods.losses.partial_label` (partial BCE, ASL) and
:mod:`~mlrkit.methods.losses.single_positive` (``docs/methods.md`` §6), the registered modules in
:mod:`~mlrkit.methods.losses.modules`.
"""

from mlrkit.methods.losses import modules  # noqa: F401  (registers the losses)
from mlrkit.methods.losses.partial_label import (
    assume_negative_bce,
    asymmetric_loss,
    partial_bce,
)
from mlrkit.methods.losses.ranking import rank_loss
from mlrkit.methods.losses.registry import (
    Loss,
    LossOutput,
    create_loss,
    list_losses,
    loss_class,
    loss_options,
    register_loss,
)
from mlrkit.methods.losses.single_positive import (
    EXPECTED_POSITIVES,
    LargeLossOutput,
    an_loss,
    an_ls_loss,
    apl_counts,
    apl_pick,
    em_apl_loss,
    em_loss,
    em_pl_asl_loss,
    em_pl_loss,
    epr_loss,
    expected_positive_regularizer,
    large_loss_count,
    ll_loss,
    role_initial_logits,
    role_loss,
    wan_loss,
)

__all__ = [
    "EXPECTED_POSITIVES",
    "LargeLossOutput",
    "Loss",
    "LossOutput",
    "an_loss",
    "an_ls_loss",
    "apl_counts",
    "apl_pick",
    "assume_negative_bce",
    "asymmetric_loss",
    "create_loss",
    "em_apl_loss",
    "em_loss",
    "em_pl_asl_loss",
    "em_pl_loss",
    "epr_loss",
    "expected_positive_regularizer",
    "large_loss_count",
    "list_losses",
    "ll_loss",
    "loss_class",
    "loss_options",
    "partial_bce",
    "rank_loss",
    "register_loss",
    "role_initial_logits",
    "role_loss",
    "wan_loss",
]
