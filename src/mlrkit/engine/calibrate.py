"""A trained run's calibration and decision thresholds, fitted on its validation split.

After training, the run's validation logits give a Platt calibration (:mod:`mlrkit.calibration`:
one scale and shift for all classes, so rankings and mAP are unchanged) and, on the calibrated
probabilities, one F1-maximising threshold per class (:func:`~mlrkit.engine.thresholds.
choose_thresholds`; a class with too few validation positives gets none and uses
:data:`~mlrkit.tagging.DEFAULT_ON`). Both are saved in the run folder (``calibration.json``) and used by
``predict``, ``recover`` and ``export``. ``mlrkit calibrate RUN`` fits them again, e.g. for a run
trained before they existed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mlrkit.atomic import atomic_write
from mlrkit.calibration import Calibration, fit_platt
from mlrkit.engine.run_files import CALIBRATION_FILE
from mlrkit.engine.thresholds import Thresholds, choose_thresholds
from mlrkit.loaders import read_json
from mlrkit.tagging import DEFAULT_ON


@dataclass(frozen=True)
class RunCalibration:
    """A run's :class:`~mlrkit.calibration.Calibration` and its per-class ``thresholds``."""

    calibration: Calibration
    thresholds: Thresholds
    class_names: list[str]

    def probabilities(self, logits: torch.Tensor | np.ndarray) -> np.ndarray:
        """Calibrated ``(N, C)`` float64 probabilities of the run's logits."""
        return np.asarray(self.calibration(torch.as_tensor(logits).detach().double().cpu()))

    def on_thresholds(self) -> np.ndarray:
        """``(C,)`` the probability from which each class's label is on."""
        return np.where(self.thresholds.chosen, self.thresholds.values, DEFAULT_ON)

    def save(self, run_dir: Path) -> None:
        """Write ``calibration.json`` into ``run_dir``, atomically."""
        content = {"calibration": asdict(self.calibration), "rule": self.thresholds.rule,
                   "thresholds": self.thresholds.rows(self.class_names)}
        with atomic_write(run_dir / CALIBRATION_FILE, "w") as f:
            json.dump(content, f, indent=1)

    @classmethod
    def load(cls, run_dir: Path) -> RunCalibration | None:
        """The run's calibration, or ``None`` when it has none (no validation split)."""
        path = run_dir / CALIBRATION_FILE
        if not path.is_file():
            return None
        fix = f"run 'mlrkit calibrate {run_dir}' to fit it again"
        content = read_json(path, fix)
        try:
            rows = content["thresholds"]
            column = {key: np.array([row[key] for row in rows], dtype=float)
                      for key in ("positive_threshold", "negative_threshold", "val_precision",
                                  "val_recall", "val_npv")}
            thresholds = Thresholds(
                column["positive_threshold"], column["negative_threshold"], content["rule"],
                np.array([row["chosen"] for row in rows], dtype=bool),
                np.array([row["val_positives"] for row in rows], dtype=int),
                column["val_precision"], column["val_recall"], column["val_npv"])
            names = [row["class"] for row in rows]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: malformed ({type(err).__name__}: {err}); {fix}") from None
        return cls(_calibration(content, path, fix), thresholds, names)


def _calibration(content: dict, path: Path, fix: str) -> Calibration:
    try:
        return Calibration(**content["calibration"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed calibration ({err}); {fix}") from None


def fit_run_calibration(val_logits: torch.Tensor, val_labels: np.ndarray,
                        class_names: list[str]) -> RunCalibration:
    """The calibration of validation logits ``(N, C)`` against their labels ``(N, C)``, and the
    F1 thresholds of the calibrated probabilities."""
    calibration = fit_platt(val_logits.double().numpy(), val_labels, score="logit",
                            fitted_on="val")
    probs = np.asarray(calibration(val_logits.double().numpy()))
    return RunCalibration(calibration, choose_thresholds(probs, val_labels), list(class_names))
