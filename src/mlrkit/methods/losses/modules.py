"""The registered losses: thin :class:`~mlrkit.methods.losses.registry.Loss` modules over the pure
functions, adding only options and per-sample state.

=================== ============================================ ==========================
name                function                                     needs
=================== ============================================ ==========================
``partial_bce``     :func:`partial_bce`                          -
``assume_negative`` :func:`assume_negative_bce`                  -
``an``              :func:`an_loss`                              -
``an_ls``           :func:`an_ls_loss`                           -
``wan``             :func:`wan_loss`                             -
``epr``             :func:`epr_loss`                             -
``em``              :func:`em_loss`                              -
``role``            :func:`role_loss` + ``(N, C)`` estimator     ``index``
``ll_r``            :func:`ll_loss` ``"LL-R"``                   ``step``
``ll_ct``           :func:`ll_loss` ``"LL-Ct"``                  ``step``
``ll_cp``           :func:`ll_loss` ``"LL-Cp"`` + corrections    ``index``, ``step``
``asl``             :func:`asymmetric_loss`                      -
``rank``            :func:`rank_loss` (zero-shot ranking hinge)  -
``em_pl``           :func:`em_pl_loss` + teacher pseudo-labels   ``index``, ``step``
``em_pl_asl``       :func:`em_pl_asl_loss` + pseudo-labels       ``index``, ``step``
``em_apl``          :func:`em_apl_loss` + APL soft negatives     ``index``, epoch hook
=================== ============================================ ==========================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from mlrkit.distributed import gather_across_ranks
from mlrkit.methods.losses import single_positive as sp
from mlrkit.methods.losses.partial_label import (
    assume_negative_bce,
    asymmetric_loss,
    check_asymmetric_options,
    partial_bce,
)
from mlrkit.methods.losses.ranking import rank_loss
from mlrkit.methods.losses.registry import Loss, LossOutput, register_loss
from mlrkit.methods.task import StepInfo, TaskSpec


class FunctionLoss(Loss):
    """A loss without state: ``function(logits, targets, **options)``; its options are the
    function's keyword parameters after ``targets`` (less ``internal`` ones), checked and
    converted by ``prepare`` (e.g. EPR's ``"voc"`` → 1.5). Made by :func:`register_function_loss`."""

    function: ClassVar[Callable[..., Tensor]]
    internal: ClassVar[tuple[str, ...]] = ()
    prepare: ClassVar[Callable[[dict], dict]]

    def __init__(self, spec: TaskSpec, **options) -> None:
        super().__init__(spec)
        defaults = {k: p.default for k, p in self.option_parameters().items()
                    if p.default is not p.empty}
        self.options = type(self).prepare({**defaults, **options})

    @classmethod
    def options_signature(cls) -> tuple[Callable, int]:
        return cls.function, 2

    @classmethod
    def option_parameters(cls) -> dict[str, inspect.Parameter]:
        return {k: p for k, p in super().option_parameters().items() if k not in cls.internal}

    def forward(self, logits, targets, index=None, step=None) -> LossOutput:
        return LossOutput(self.function(logits, targets, **self.options))


def register_function_loss(
    name: str,
    function: Callable[..., Tensor],
    summary: str,
    internal: tuple[str, ...] = (),
    prepare: Callable[[dict], dict] = dict,
) -> type[FunctionLoss]:
    """Register ``function`` as the stateless loss ``name`` (``summary`` is its docstring)."""
    cls = type(f"FunctionLoss_{name}", (FunctionLoss,), {
        "__doc__": summary, "function": staticmethod(function), "internal": internal,
        "prepare": staticmethod(prepare),
    })
    return register_loss(name)(cls)


def _resolve_k(options: dict) -> dict:
    return {**options, "expected_positives": sp.resolve_expected_positives(
        options["expected_positives"])}


def _checked_asl(options: dict) -> dict:
    check_asymmetric_options(**{k: v for k, v in options.items() if k != "focus_grad"})
    return options


register_function_loss("partial_bce", partial_bce,
                       "BCE-with-logits over the known entries; soft targets allowed.",
                       internal=("weights",))
register_function_loss("assume_negative", assume_negative_bce,
                       "BCE-with-logits over all entries, unknown as negative.")
register_function_loss("an", sp.an_loss, "Cole et al.'s AN (``docs/methods.md`` §6.2).")
register_function_loss("an_ls", sp.an_ls_loss,
                       "AN with label smoothing ``ls_coef`` (reference 0.1).")
register_function_loss("wan", sp.wan_loss, "AN with unknown entries weighted ``1 / (C - 1)``.")
register_function_loss(
    "epr", sp.epr_loss, "Known entries plus the expected-positive regulariser; "
    "``expected_positives`` (required) is ``k``: a number or a key of "
    ":data:`~mlrkit.methods.losses.single_positive.EXPECTED_POSITIVES` (``\"voc\"`` = 1.5, ...).",
    prepare=_resolve_k)
register_function_loss("em", sp.em_loss, "Known entries plus ``-alpha`` times the entropy on "
                       "unknowns (reference ``alpha``: VOC 0.2, COCO and NUS-WIDE 0.1, CUB 0.01).")
register_function_loss("asl", asymmetric_loss, "ASL over the known entries (the function's "
                       "docstring gives the formula, the reference's and CLSL's settings); "
                       "defaults are the ASL paper's; soft targets allowed.",
                       prepare=_checked_asl)
register_function_loss("rank", rank_loss, "The pairwise ranking hinge of BiAM / MKT / SigRL over "
                       "the known entries (``margin`` 1 as released).")


@register_loss("role")
class ROLE(Loss):
    """ROLE (``docs/methods.md`` §6.2): :func:`~mlrkit.methods.losses.single_positive.role_loss` with a trainable label estimator.

    Args:
        spec: ``train_targets`` ``(N, C)`` sizes and initialises the estimator.
        expected_positives: ``k`` (required), as for ``epr``.
        estimator_lr_mult: the estimator's learning rate relative to the base one (reference
            10); its group also has no weight decay, as in the reference.

    State (in ``state_dict``): ``label_logits`` ``(N, C)`` float parameter, ``y =
    sigmoid(label_logits[index])``, initialised by
    :func:`~mlrkit.methods.losses.single_positive.role_initial_logits` (torch's global RNG).
    """

    def __init__(
        self, spec: TaskSpec, expected_positives: float | str, estimator_lr_mult: float = 10.0
    ) -> None:
        super().__init__(spec)
        self.expected_positives = sp.resolve_expected_positives(expected_positives)
        self.estimator_lr_mult = estimator_lr_mult
        self.label_logits = nn.Parameter(sp.role_initial_logits(torch.as_tensor(spec.train_targets)))

    def param_groups(self) -> list[dict]:
        return [{
            "params": [self.label_logits],
            "lr_mult": self.estimator_lr_mult,
            "weight_decay": 0.0,
        }]

    def forward(self, logits, targets, index=None, step=None) -> LossOutput:
        estimates = torch.sigmoid(self.label_logits[self.require_index(index)])
        return LossOutput(sp.role_loss(logits, estimates, targets, self.expected_positives))


class _LargeLoss(Loss):
    """Large Loss Matters (``docs/methods.md`` §6.3): :func:`~mlrkit.methods.losses.single_positive.ll_loss` in mode :attr:`mode`.

    ``delta_rel``: growth of the handled share per epoch, in percent (see :func:`~mlrkit.methods.losses.single_positive.ll_loss`).
    Logs ``ll_selected_share``, the share of the batch's entries rejected or corrected.
    """

    mode: ClassVar[str]

    def __init__(self, spec: TaskSpec, delta_rel: float = 0.2) -> None:
        super().__init__(spec)
        if not 0 < delta_rel <= 100:
            raise ValueError(f"delta_rel is a percentage in (0, 100], got {delta_rel}")
        self.delta_rel = delta_rel

    def _large_loss(
        self, logits: Tensor, targets: Tensor, step: StepInfo | None
    ) -> sp.LargeLossOutput:
        epoch = self.require_step(step).epoch
        return sp.ll_loss(logits, targets, self.mode, epoch, self.delta_rel)

    def forward(self, logits, targets, index=None, step=None) -> LossOutput:
        return _logged(self._large_loss(logits, targets, step))


def _logged(out: sp.LargeLossOutput) -> LossOutput:
    return LossOutput(out.loss, {"ll_selected_share": out.selected.float().mean().item()})


@register_loss("ll_r")
class LargeLossRejection(_LargeLoss):
    """LL-R: the largest unknown-entry losses are set to 0. Needs ``step``."""

    mode = "LL-R"


@register_loss("ll_ct")
class LargeLossTemporaryCorrection(_LargeLoss):
    """LL-Ct: the largest unknown-entry losses become ``BCE(s, 1)`` for the step. Needs ``step``."""

    mode = "LL-Ct"


@register_loss("ll_cp")
class LargeLossPermanentCorrection(_LargeLoss):
    """LL-Cp: LL-Ct whose selected entries become positives for the rest of training.

    State (in ``state_dict``): ``corrected`` ``(N, C)`` bool buffer, the entries turned positive;
    written in training mode only, gathered across ranks under DDP. Needs ``index`` and ``step``.
    """

    mode = "LL-Cp"

    def __init__(self, spec: TaskSpec, delta_rel: float = 0.2) -> None:
        super().__init__(spec, delta_rel)
        shape = spec.train_targets.shape
        self.register_buffer("corrected", torch.zeros(shape, dtype=torch.bool))

    def forward(self, logits, targets, index=None, step=None) -> LossOutput:
        index = self.require_index(index)
        out = self._large_loss(logits, targets.masked_fill(self.corrected[index], 1), step)
        if self.training:
            self._write_back(index, out.selected)
        return _logged(out)

    @torch.no_grad()
    def _write_back(self, index: Tensor, selected: Tensor) -> None:
        """Mark ``selected`` ``(B, C)`` entries of rows ``index`` as corrected, on every rank.

        Under DDP each rank corrects its own rows and the buffers must stay equal (DDP broadcasts
        rank 0's buffers), so the ``(row, class)`` pairs are gathered from all ranks first.
        """
        rows, cols = selected.nonzero(as_tuple=True)
        pairs = torch.stack([index[rows], cols], dim=1)
        pairs = gather_across_ranks(pairs)
        self.corrected[pairs[:, 0], pairs[:, 1]] = True



class _PseudoLabelled(Loss):
    """A loss on the teacher's pseudo-labels ``spec.pseudo_labels`` ``(N, C)`` (int8: 1 positive,
    0 negative, -1 none), looked up by ``index``; plain EM (``alpha``) before ``warmup_epochs``
    (VLPL's ``warmup_epoch``, default 0). The pseudo-labels are a non-persistent buffer: a run
    recomputes them from its recipe (and saves them in its folder), a loaded run needs none."""

    def __init__(self, spec: TaskSpec, alpha: float, warmup_epochs: int) -> None:
        super().__init__(spec)
        pseudo = getattr(spec, "pseudo_labels", None)
        self.alpha, self.warmup_epochs = alpha, warmup_epochs
        self.register_buffer("pseudo", None if pseudo is None else torch.as_tensor(pseudo),
                             persistent=False)

    def batch_pseudo_labels(self, index: Tensor | None) -> Tensor:
        if self.pseudo is None:
            raise ValueError(f"loss {self.registered_name!r} trains on a teacher's pseudo-labels; "
                             "add a pseudo_labels section (teacher: conse | run | clip) to the "
                             "recipe")
        return self.pseudo[self.require_index(index)]

    def forward(self, logits, targets, index=None, step=None) -> LossOutput:
        if self.require_step(step).epoch < self.warmup_epochs:
            return LossOutput(sp.em_loss(logits, targets, self.alpha))
        return LossOutput(self.pseudo_loss(logits, targets, self.batch_pseudo_labels(index)))


@register_loss("em_pl")
class EntropyMaximizationPseudoLabels(_PseudoLabelled):
    """VLPL's default loss: :func:`~mlrkit.methods.losses.single_positive.em_pl_loss` (VOC: ``alpha`` 0.2, ``beta_pos`` 0.7)."""

    def __init__(self, spec: TaskSpec, alpha: float = 0.2, beta_pos: float = 0.7,
                 warmup_epochs: int = 0) -> None:
        super().__init__(spec, alpha, warmup_epochs)
        self.beta_pos = beta_pos

    def pseudo_loss(self, logits: Tensor, targets: Tensor, pseudo: Tensor) -> Tensor:
        return sp.em_pl_loss(logits, targets, pseudo, self.alpha, self.beta_pos)


@register_loss("em_pl_asl")
class EntropyMaximizationPseudoLabelsASL(_PseudoLabelled):
    """VLPL's focal variant: :func:`~mlrkit.methods.losses.single_positive.em_pl_asl_loss` (``clip=0`` is the release's behaviour,
    see there); ``alpha`` is used only by the EM warm-up."""

    def __init__(self, spec: TaskSpec, gamma_pos: float = 2.0, gamma_unknown: float = 4.0,
                 gamma_neg: float = 4.0, clip: float = 0.05, alpha: float = 0.2,
                 warmup_epochs: int = 0) -> None:
        super().__init__(spec, alpha, warmup_epochs)
        self.gammas = (gamma_pos, gamma_unknown, gamma_neg)
        self.clip = clip

    def pseudo_loss(self, logits: Tensor, targets: Tensor, pseudo: Tensor) -> Tensor:
        return sp.em_pl_asl_loss(logits, targets, pseudo, *self.gammas, clip=self.clip)


@register_loss("em_apl")
class EntropyMaximizationAPL(Loss):
    """EM + APL (AckTheUnknown, ``docs/methods.md`` §6.2) with its pseudo-labelling step, which
    VLPL ships but never calls.

    Before each epoch ``e >= warmup_epochs`` (``e`` epochs done, 0-based: the release labels after
    its 1-based epoch ``e``), the head's eval-mode predictions on every training image pick, per
    class, ``n_c = floor(neg_proportion * U_c / (epochs - warmup_epochs))`` more unknown entries
    with the lowest ``p`` (:func:`~mlrkit.methods.losses.single_positive.apl_pick`, :func:`~mlrkit.methods.losses.single_positive.apl_counts`; ``U_c`` the class's unknowns at
    the start), stored as soft labels ``p_old``; :func:`~mlrkit.methods.losses.single_positive.em_apl_loss` then applies. An entry is
    picked once. The release's last step, after the final epoch, changes nothing it trains on and
    is not run. VOC values: ``alpha`` 0.2, ``beta`` 0.02, ``warmup_epochs`` 5, ``neg_proportion``
    0.9.

    State (in ``state_dict``, so a resumed run continues it): ``soft_negatives`` ``(N, C)`` float,
    NaN where not picked; ``labelled_epoch`` the last epoch that labelled (-1 none).
    """

    def __init__(self, spec: TaskSpec, alpha: float = 0.2, beta: float = 0.02,
                 warmup_epochs: int = 5, neg_proportion: float = 0.9) -> None:
        super().__init__(spec)
        if not 0 <= neg_proportion <= 1 or warmup_epochs < 0:
            raise ValueError(f"em_apl: neg_proportion must be in [0, 1] and warmup_epochs >= 0; "
                             f"got {neg_proportion}, {warmup_epochs}")
        self.alpha, self.beta = alpha, beta
        self.warmup_epochs, self.neg_proportion = warmup_epochs, neg_proportion
        targets = torch.as_tensor(spec.train_targets)
        self.register_buffer("targets", targets, persistent=False)
        self.register_buffer("soft_negatives", torch.full(targets.shape, float("nan")))
        self.register_buffer("labelled_epoch", torch.tensor(-1))

    def on_train_epoch_start(self, epoch: int, epochs: int | None,
                             predictions: Callable[[], Tensor]) -> None:
        if epoch < max(self.warmup_epochs, 1) or epoch <= int(self.labelled_epoch):
            return
        if epochs is None:
            raise ValueError("em_apl needs the number of training epochs at each epoch start")
        counts = sp.apl_counts(self.targets, epochs, self.warmup_epochs, self.neg_proportion)
        probs = predictions().to(self.soft_negatives)
        new = sp.apl_pick(probs, self.targets.to(probs.device),
                       ~torch.isnan(self.soft_negatives), counts)
        self.soft_negatives[new] = probs[new]
        self.labelled_epoch.fill_(epoch)

    def forward(self, logits, targets, index=None, step=None) -> LossOutput:
        soft = self.soft_negatives[self.require_index(index)]
        picked = int((~torch.isnan(self.soft_negatives)).sum())
        return LossOutput(sp.em_apl_loss(logits, targets, soft, self.alpha, self.beta),
                          {"apl_picked": float(picked)})
