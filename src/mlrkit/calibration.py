"""Probabilities that mean what they say: Platt scaling of scores, fitted on labelled entries.

A score ``s`` (a logit of a trained run, or a zero-shot cosine) becomes ``p = sigmoid(a * s + b)``
(Platt, 1999; ``b = 0`` is temperature scaling, Guo et al., ICML 2017), ``a`` and ``b`` minimising
the binary cross-entropy over the known entries of a labelled set. One ``(a, b)`` for all classes:
with ``a > 0`` it keeps every ranking (each image's classes, each class's images), so mAP and any
threshold chosen on the same scores are unchanged; it has two parameters to fit however few labels
the set has; and it applies to label names it never saw (zero-shot). The calibration error it
leaves is measured by :func:`~mlrkit.metrics.expected_calibration_error` and stored with it.

    calibration = fit_platt(val_logits, val_labels, fitted_on="val")   # (N, C) each
    probs = calibration(test_logits)                                   # (N, C) in (0, 1)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mlrkit.atomic import atomic_write
from mlrkit.loaders import read_json
from mlrkit.metrics import expected_calibration_error


@dataclass(frozen=True)
class Calibration:
    """``p = sigmoid(a * s + b)`` and where it comes from.

    Attributes:
        a, b: the scale and shift (``a > 0``).
        score: what ``s`` is: ``"logit"`` or ``"cosine"``.
        fitted_on: the labelled set it was fitted on, e.g. ``"val"`` or ``"voc2007 train"``.
        entries: the known entries it was fitted on.
        ece_before, ece_after: expected calibration error on that set of the uncalibrated
            probabilities (sigmoid of a logit, a cosine clipped to ``[0, 1]``) and of ``p``.
    """

    a: float
    b: float
    score: str
    fitted_on: str
    entries: int
    ece_before: float
    ece_after: float

    def __call__(self, scores: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Probabilities of ``scores`` (any shape), float64, of the same kind (tensor / array)."""
        tensor = torch.as_tensor(scores, dtype=torch.float64)
        probs = torch.sigmoid(self.a * tensor + self.b)
        return probs if isinstance(scores, torch.Tensor) else probs.detach().numpy()

    def save(self, path: str | Path) -> None:
        """Write it as JSON, atomically."""
        with atomic_write(path, "w") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file :meth:`save` wrote; a missing or malformed field is an error naming it."""
        content = read_json(Path(path), "refit it with 'mlrkit calibrate'")
        fields = {"a": float, "b": float, "score": str, "fitted_on": str, "entries": int,
                  "ece_before": float, "ece_after": float}
        try:
            values = {key: kind(content[key]) for key, kind in fields.items()}
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a calibration file ({type(err).__name__}: {err}); "
                             f"refit it with 'mlrkit calibrate'") from None
        if not values["a"] > 0:
            raise ValueError(f"{path}: a = {values['a']} must be > 0")
        return cls(**values)


def uncalibrated(scores: np.ndarray, score: str) -> np.ndarray:
    """What the scores would be read as without a calibration: the sigmoid of a logit, a cosine
    clipped to ``[0, 1]``."""
    if score == "logit":
        return torch.sigmoid(torch.as_tensor(scores, dtype=torch.float64)).numpy()
    if score == "cosine":
        return np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    raise ValueError(f"score must be 'logit' or 'cosine', got {score!r}")


def fit_platt(scores: np.ndarray | torch.Tensor, labels: np.ndarray, *, score: str = "logit",
              fitted_on: str = "val", max_iter: int = 200) -> Calibration:
    """Fit ``a, b`` on ``scores`` ``(N, C)`` and int8 ``labels`` ``(N, C)`` (1 / 0 / -1; the
    unknown entries are left out) by L-BFGS on the binary cross-entropy, in float64, from
    ``a = 1, b = 0``.

    Raises:
        ValueError: no known positive or no known negative (nothing to fit), or a fit that does
            not keep the order of the scores (``a <= 0``: scores that rank backwards).
    """
    scores_np = np.asarray(torch.as_tensor(scores, dtype=torch.float64))
    labels = np.asarray(labels)
    if scores_np.shape != labels.shape:
        raise ValueError(f"scores {scores_np.shape} and labels {labels.shape} differ in shape")
    known = labels >= 0
    s = torch.as_tensor(scores_np[known])
    y = torch.as_tensor(labels[known] == 1, dtype=torch.float64)
    if not 0 < float(y.sum()) < len(y):
        raise ValueError(f"calibration on {fitted_on} needs known positives and negatives; it "
                         f"has {int(y.sum())} positive(s) of {len(y)} known entries")
    params = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(params[0] * s + params[1], y)
        loss.backward()
        return loss

    optimizer.step(closure)
    a, b = (float(v) for v in params.detach())
    if not a > 0:
        raise ValueError(f"calibration on {fitted_on}: the fitted scale a = {a:.4g} is not "
                         f"positive (higher scores are not more often positive); not calibrating")
    fitted = Calibration(a, b, score, fitted_on, int(known.sum()), 0.0, 0.0)
    return Calibration(
        a, b, score, fitted_on, int(known.sum()),
        ece_before=expected_calibration_error(uncalibrated(scores_np, score), labels),
        ece_after=expected_calibration_error(fitted(scores_np), labels),
    )
