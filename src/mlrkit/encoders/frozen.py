"""An image encoder frozen to ONNX, for commands that only score images: a fast start.

Building a timm model imports timm, torchvision and, under torchvision's ops, ``torch._dynamo``:
about 2.5 s on a 2-core machine before the first image, on top of torch. ``mlrkit tag`` (ConSE) and
``mlrkit predict`` (a run on cached features) only need the encoder's forward pass, so the first
call exports it once with ``torch.onnx.export`` to an on-disk cache and every later call runs that
file with ONNX Runtime and a preprocessing of its own (:class:`Preprocess`, equal to timm's
evaluation transform), without importing timm:

    encoder = frozen_encoder("tf_efficientnet_lite0", weights_id, None, build)  # or None
    out = encoder(torch.stack([encoder.transform()(img) for img in pil_images]))
    out.spatial  # (B, 1280, 7, 7)    out.pooled  # (B, 1280), the torch encoder's to ~1e-5

The cache is ``$MLRKIT_CACHE/frozen`` (default ``~/.cache/mlrkit/frozen``), one
``<key>.onnx`` and ``<key>.json`` (the preprocessing) per encoder, the key a hash of the timm
name, the weights id (``sha256:``/``pypi:``/``timm:``/``random:seed=N``: the exact weights), the
input size and the versions of torch, timm and mlrkit. An export is checked against the torch
encoder on a random batch before it is kept (:data:`TOLERANCE`). ``MLRKIT_FROZEN=0`` turns it off
(every caller then runs the torch encoder); so do a CLIP tower, a GPU, a preprocessing other than
timm's resize + centre crop, and a missing ``onnxruntime`` / ``onnxscript``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from mlrkit._version import __version__
from mlrkit.atomic import atomic_write
from mlrkit.encoders.image import EncoderOutput
from mlrkit.encoders.names import CLIP_PREFIX
from mlrkit.paths import cache_root

logger = logging.getLogger(__name__)

FORMAT = 1
#: Largest absolute difference between the torch and the ONNX encoder's outputs, relative to the
#: largest output, that an export may show on its check batch.
TOLERANCE = 1e-4
#: PIL's resampling filter of each timm interpolation name.
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """timm's evaluation transform (``crop_mode="center"``) without torchvision: the shorter side
    resized to ``floor(side / crop_pct)`` (the longer one in proportion, truncated), the centre
    ``(H, W)`` cut out (offsets rounded), pixels scaled to ``[0, 1]`` and normalised. PIL image →
    ``(3, H, W)`` float32 tensor, equal to ``ImageEncoder.transform()``'s (a test).

    Build it with :meth:`from_data_config`, which refuses what it does not reproduce.
    """

    size: tuple[int, int]
    scale: int
    resample: Image.Resampling
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_data_config(cls, config: dict[str, Any]) -> Preprocess | None:
        """The transform of a timm data config, or ``None`` for one it does not reproduce (another
        crop mode, a crop larger than the resized image, a non-square resize)."""
        height, width = config["input_size"][-2:]
        crop_pct = config.get("crop_pct") or 0.875
        scales = {math.floor(height / crop_pct), math.floor(width / crop_pct)}
        if (config.get("crop_mode") or "center") != "center" or crop_pct > 1 or len(scales) != 1:
            return None
        if config.get("interpolation", "bilinear") not in RESAMPLING:
            return None
        return cls((height, width), scales.pop(), RESAMPLING[config.get("interpolation",
                                                                         "bilinear")],
                   tuple(config["mean"]), tuple(config["std"]))

    def __call__(self, image: Image.Image) -> Tensor:
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.scale, int(self.scale * long / short)
        new_size = (new_short, new_long) if width <= height else (new_long, new_short)
        if new_size != image.size:
            image = image.resize(new_size, self.resample)
        top = round((image.size[1] - self.size[0]) / 2.0)
        left = round((image.size[0] - self.size[1]) / 2.0)
        image = image.crop((left, top, left + self.size[1], top + self.size[0]))
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8).astype(np.float32) / 255
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1)))


class FrozenEncoder(nn.Module):
    """An :class:`~mlrkit.encoders.image.ImageEncoder`'s forward pass from an ONNX file: images
    ``(B, 3, H, W)`` → :class:`~mlrkit.encoders.image.EncoderOutput` on the CPU, no gradients,
    nothing to train. ``transform()`` is its :class:`Preprocess`."""

    def __init__(self, path: Path, data_config: dict[str, Any], name: str,
                 weights_id: str) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options,
                                                    providers=["CPUExecutionProvider"])
        self.data_config, self.name, self.weights_id = data_config, name, weights_id
        self._preprocess = Preprocess.from_data_config(data_config)
        if self._preprocess is None:
            raise ValueError(f"{path}: preprocessing {data_config} is not reproducible here")

    def forward(self, images: Tensor) -> EncoderOutput:
        """Encode ``(B, 3, H, W)`` preprocessed CPU images."""
        if images.device.type != "cpu":
            raise ValueError(f"a frozen encoder runs on the CPU; images are on {images.device}")
        spatial, pooled = self.session.run(None, {"images": images.detach().float().numpy()})
        return EncoderOutput(torch.from_numpy(spatial), torch.from_numpy(pooled))

    def transform(self, train: bool = False) -> Preprocess:
        """The evaluation preprocessing (PIL image → ``(3, H, W)`` tensor)."""
        if train:
            raise ValueError("a frozen encoder has no training transform: it is not trained")
        return self._preprocess


def frozen_encoder(name: str, weights_id: str, image_size: Any,
                   build: Callable[[], nn.Module], data_config: dict[str, Any] | None = None,
                   cache_dir: str | Path | None = None) -> FrozenEncoder | None:
    """The frozen encoder of timm model ``name`` with weights ``weights_id`` (and input
    ``image_size``, ``None`` for the weights' own), from the cache, or exported now from
    ``build()`` (an :class:`~mlrkit.encoders.image.ImageEncoder` with those weights), or ``None``
    where freezing is off or does not apply (see the module docstring): then run ``build()``.
    ``data_config`` (e.g. a run's recorded one) replaces the preprocessing stored at export."""
    if os.environ.get("MLRKIT_FROZEN", "1") == "0" or name.startswith(CLIP_PREFIX):
        return None
    if not _runtime_installed():
        return None
    stem = _cache_root(cache_dir) / _key(name, weights_id, image_size)
    onnx_path, config_path = stem.with_suffix(".onnx"), stem.with_suffix(".json")
    if not (onnx_path.is_file() and config_path.is_file()):
        encoder = build().eval()
        if Preprocess.from_data_config(encoder.data_config) is None:
            return None
        if not _export(encoder, onnx_path, config_path):
            return None
    try:
        config = data_config or json.loads(config_path.read_text())["data_config"]
        if Preprocess.from_data_config(config) is None:
            return None
        return FrozenEncoder(onnx_path, config, name, weights_id)
    except Exception as err:  # noqa: BLE001 (onnxruntime's errors derive from Exception only)
        # a damaged cache entry: drop it, the torch encoder is the truth
        logger.warning("frozen encoder %s unusable (%s); removed, using the torch encoder",
                       onnx_path, err)
        onnx_path.unlink(missing_ok=True)
        return None


def _export(encoder: nn.Module, onnx_path: Path, config_path: Path) -> bool:
    """Export ``encoder`` (batch dimension dynamic), check it against torch, write it; whether it
    was kept."""
    import onnxruntime

    height, width = encoder.data_config["input_size"][-2:]
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    logger.warning("freezing encoder %s to ONNX once for a faster start (%s)", encoder.name,
                   onnx_path.parent)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's own progress and deprecation notes
            program = torch.onnx.export(
                encoder, (example,), dynamo=True, input_names=["images"],
                output_names=["spatial", "pooled"], optimize=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )  # fmt: skip
        data = program.model_proto.SerializeToString()
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": example[:1].numpy()})
    except Exception as err:  # noqa: BLE001 (the exporter's and onnxruntime's many kinds)
        # an architecture the exporter cannot take: stay on torch
        logger.warning("encoder %s cannot be frozen to ONNX (%s); using the torch encoder",
                       encoder.name, err)
        return False
    with torch.no_grad():
        want = encoder(example[:1])
    for ours, theirs in zip(got, want, strict=True):
        scale = max(1.0, float(theirs.abs().max()))
        if ours.shape != tuple(theirs.shape) or np.abs(ours - theirs.numpy()).max() > TOLERANCE * scale:
            logger.warning("encoder %s frozen to ONNX differs from torch; using torch", encoder.name)
            return False
    with atomic_write(config_path, "w") as f:
        json.dump({"format": FORMAT, "name": encoder.name, "weights_id": encoder.weights_id,
                   "data_config": _plain(encoder.data_config)}, f, indent=1)
    with atomic_write(onnx_path, "wb") as f:
        f.write(data)
    return True


def _key(name: str, weights_id: str, image_size: Any) -> str:
    """The cache key of an encoder: what its weights and graph depend on."""
    versions = {dist: _version(dist) for dist in ("torch", "timm", "onnxscript")}
    text = json.dumps([FORMAT, name, weights_id, _plain(image_size), versions, __version__])
    return f"{name.replace('/', '_')}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _plain(value: Any) -> Any:
    """Tuples as lists, for JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _runtime_installed() -> bool:
    return all(_version(dist) is not None for dist in ("onnxruntime", "onnxscript", "onnx"))


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return cache_root() / "frozen"
