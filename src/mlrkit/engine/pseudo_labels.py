"""VLPL's pseudo-labels from a vision-language teacher (``docs/methods.md`` §5.1), for the losses
``em_pl`` and ``em_pl_asl``.

A recipe asks for them with a ``pseudo_labels`` section::

    pseudo_labels:
      teacher: conse        # conse | dense-conse | run | clip
      tau: 0.01             # softmax temperature over the classes (VLPL 0.01, SigRL 0.03)
      theta: 0.3            # positive where q_c > theta
      negatives: 0          # the `negatives` lowest-q classes of each image become negatives

The teacher scores every training image for the dataset's class names: ``conse`` is ConSE's
zero-shot scorer (from the cached ``tf_efficientnet_lite0`` features when the recipe caches them,
else from the image files), ``dense-conse`` dense ConSE (:func:`mlrkit.zero_shot.dense_conse_scores`:
ConSE at every position of the feature map as well; from cached feature maps of that encoder when
the recipe caches them, else from the files), ``run`` any trained open-vocabulary run folder (``run: PATH``), ``clip``
an open_clip model with a local weights file (``weights: FILE``, ``clip_model``), as the release
does with CLIP. ``q = softmax_c(score / tau)``; :func:`vlpl_pseudo_labels` thresholds it.

When. The release recomputes the pseudo-labels for every batch, from the teacher's view of the
augmented image. Here they are computed once per training image, from the image the teacher sees
without augmentation, before training, and saved in the run folder (``pseudo_labels.npz``): for
runs on cached features (no augmentation) the two are the same; for end-to-end runs with random
augmentation they differ, and the per-batch form is not offered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlrkit.engine.recipe_schema import PseudoLabelsSection


@dataclass(frozen=True)
class PseudoLabels:
    """``labels`` ``(N, C)`` int8 (1 positive, 0 negative, -1 none) and the teacher's class
    probabilities ``q`` ``(N, C)`` float32 for the training rows."""

    labels: np.ndarray
    q: np.ndarray

    def save(self, path: Path) -> None:
        from mlrkit.atomic import atomic_write

        with atomic_write(path, "wb") as f:
            np.savez(f, labels=self.labels, q=self.q)


def vlpl_pseudo_labels(scores: np.ndarray, tau: float = 0.01, theta: float = 0.3,
                       negatives: int = 0) -> PseudoLabels:
    """VLPL's rule on teacher scores ``(N, C)`` (cosines for CLIP and ConSE).

    ``q = softmax over classes of scores / tau``; 1 where ``q > theta``; then the ``negatives``
    classes with the lowest ``q`` of each image become 0 (VLPL's ``int(partial * C)``, applied
    after the positives as the release does; 0 = none, its default); everything else -1.

    Example:
        >>> vlpl_pseudo_labels(np.array([[0.30, 0.29, 0.10]]), tau=0.01, theta=0.3,
        ...                    negatives=1).labels
        array([[ 1, -1,  0]], dtype=int8)
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or not 0 <= negatives <= scores.shape[1]:
        raise ValueError(f"scores must be (N, C) and negatives in [0, C]; got {scores.shape}, "
                         f"{negatives}")
    q = torch.softmax(torch.as_tensor(scores) / tau, dim=1).numpy()
    labels = np.where(q > theta, 1, -1).astype(np.int8)
    if negatives:
        lowest = np.argsort(q, axis=1, kind="stable")[:, :negatives]
        np.put_along_axis(labels, lowest, 0, axis=1)
    return PseudoLabels(labels, q.astype(np.float32))


def pseudo_label_quality(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision and recall of the positive pseudo-labels against the true labels ``(N, C)`` of
    the same rows (1 / 0), and positives per image."""
    predicted, actual = labels == 1, truth == 1
    hits = float((predicted & actual).sum())
    return {"positives_per_image": float(predicted.sum()) / max(len(labels), 1),
            "precision": hits / max(float(predicted.sum()), 1.0),
            "recall": hits / max(float(actual.sum()), 1.0)}


def teacher_scores(section: PseudoLabelsSection, class_names: Sequence[str], images: Sequence[Path],
                   pooled_lite0: np.ndarray | None = None,
                   maps_lite0: np.ndarray | None = None) -> np.ndarray:
    """``(N, C)`` float32 scores of the ``teacher`` of a ``pseudo_labels`` recipe section for
    ``N`` training images and the ``C`` class names.

    Args:
        section: the recipe's ``pseudo_labels`` section.
        class_names: the classes the run trains on.
        images: the training images' files, in training-row order.
        pooled_lite0: ``(N, 1280)`` cached pooled ImageNet ``tf_efficientnet_lite0`` features of
            the same images, used by the ConSE teacher instead of the files when given.
        maps_lite0: ``(N, 1280, h, w)`` cached feature maps of the same encoder, used by the
            dense ConSE teacher instead of the files when given.
    """
    teacher = section.teacher
    if teacher == "conse":
        return _conse_scores(section, class_names, images, pooled_lite0)
    if teacher == "dense-conse":
        from mlrkit.zero_shot import dense_conse_scores

        options = section.model_dump(include={"top_t", "source", "templates"})
        source = list(images) if maps_lite0 is None else maps_lite0
        return dense_conse_scores(source, list(class_names), batch_size=section.batch_size,
                                  **options)
    if teacher == "run":
        from mlrkit.engine.inference import score_label_names

        return score_label_names(section.run, list(images), list(class_names),
                                 batch_size=section.batch_size)
    from mlrkit.encoders import clip as clip_encoders
    from mlrkit.zero_shot import clip_scores

    clip = clip_encoders.create_clip(section.clip_model, weights=section.weights)
    return clip_scores(list(images), list(class_names), clip.eval(),
                       templates=section.templates, batch_size=section.batch_size)


def _conse_scores(section: PseudoLabelsSection, class_names: Sequence[str], images: Sequence[Path],
                  pooled: np.ndarray | None) -> np.ndarray:
    from mlrkit.encoders.imagenet import pooled_probabilities
    from mlrkit.zero_shot import conse_scores

    options = section.model_dump(include={"top_t", "source", "templates"})
    source = list(images) if pooled is None else pooled_probabilities(pooled)
    return conse_scores(source, list(class_names), **options)
