"""CLIP (open_clip) as SigRL and MKT use it: a global image embedding and projected patch tokens.

MKT's modified CLIP returns, for a ViT image tower, both the class token and every patch token
after the final LayerNorm (``ln_post``), each multiplied by the visual projection ``W_proj``::

    clip = create_clip("ViT-B-16", weights="clip_vit_b16.safetensors").eval()
    images = torch.stack([clip.transform()(img) for img in pil_images])  # (B, 3, 224, 224)
    z_g, z = clip.encode_image(images)  # (B, 512), (B, 196, 512)
    t = clip.text_embeddings(["cat", "dog"])  # (2, 512), unit rows

No CLIP weights install from PyPI: ``weights`` is ``None`` (random initialisation) or a local file.
For OpenAI's weights use the ``-quickgelu`` architecture (e.g. ``"ViT-B-16-quickgelu"``), the
activation they were trained with.

As an mlrkit image encoder (recipes: ``encoder: {name: "clip:ViT-B-16-quickgelu", weights: FILE}``,
or ``features: {encoder: "clip:..."}`` for cached frozen tokens), :func:`create_clip_image_encoder`
keeps the image tower only (:class:`ClipImageEncoder`) and gives SigRL's student tokens in one
tensor, the **CLIP token layout** ``(B, R, E)``:

- row 0: the global embedding ``z_g`` (class token, ``ln_post``, ``@ W_proj``);
- row 1, only when built with ``teacher=True``: the embedding of a frozen copy of the initial
  image tower (SigRL's distillation target, ``docs/methods.md`` §4.2);
- the last ``P`` rows: the projected patch tokens, row-major over the patch grid.

So ``R = 1 + P`` or ``R = 2 + P``. The grid is square (``g x g``, checked when the encoder is
built), hence ``P = g^2`` and the row count alone tells the two apart: ``R - 1`` or ``R - 2`` is a
perfect square, never both for ``P >= 1`` (:func:`clip_token_layout`, :func:`split_clip_tokens`).
A feature cache of the encoder (``features:``, no teacher) stores this layout as its spatial array.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from mlrkit.encoders.names import CLIP_PREFIX
from mlrkit.encoders.weights import file_sha256
from mlrkit.prompts import CLIP_PROMPT

#: Parameters of a ViT image tower before its residual blocks (layer 0 of layer-wise lr decay).
_STEM = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "patchnorm_pre_ln")
_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")


class ClipImageOutput(NamedTuple):
    """What :meth:`ClipEncoder.encode_image` returns for ``B`` images (not normalised).

    Attributes:
        embedding: ``(B, E)`` CLIP's image embedding (class token, ``ln_post``, ``@ W_proj``);
            equal to open_clip's ``model.encode_image``.
        patch_tokens: ``(B, P, E)`` the ``P = (H / p) * (W / p)`` patch tokens of the last block,
            after ``ln_post`` and ``@ W_proj``, in row-major grid order.
    """

    embedding: Tensor
    patch_tokens: Tensor


class ClipEncoder(nn.Module):
    """An open_clip model with the encoders SigRL needs; build it with :func:`create_clip`.

    Attributes:
        model: the open_clip model.
        name: the open_clip architecture name.
        weights_id: ``random:seed=N`` or ``sha256:<hex of the weights file>``.
        embed_dim: ``E``, the joint image-text embedding width.
        input_size: ``(3, H, W)`` the image tower is built for.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        weights_id: str,
        tokenizer: Any,
        preprocess_train: Any,
        preprocess_val: Any,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.weights_id = weights_id
        self.embed_dim: int = model.visual.output_dim
        size = open_clip.get_model_preprocess_cfg(model)["size"]
        self.input_size = (3, *((size, size) if isinstance(size, int) else size))
        self._tokenizer = tokenizer
        self._preprocess = {True: preprocess_train, False: preprocess_val}

    @property
    def model_id(self) -> str:
        """Architecture and weights in one string (the label-embedding cache keys on it)."""
        return f"open_clip:{self.name}:{self.weights_id}"

    def encode_image(self, images: Tensor) -> ClipImageOutput:
        """Encode ``(B, 3, H, W)`` preprocessed images into the embedding and patch tokens.

        Raises:
            NotImplementedError: the image tower is not a plain open_clip ViT (ResNet, timm or
                attention-pooled towers have no projected patch tokens); use
                ``clip.model.encode_image`` for the global embedding alone.
        """
        _require_vit(self.model.visual, self.name)
        return _vit_tokens(self.model.visual, images)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """``(K, E)`` text embeddings (not normalised) of ``(K, L)`` tokens from :meth:`tokenize`."""
        return self.model.encode_text(tokens)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """``(K, L)`` int64 tokens of ``K`` texts, on the CPU."""
        return self._tokenizer(list(texts))

    def transform(self, train: bool = False) -> Any:
        """open_clip's torchvision preprocessing for these weights (training or evaluation)."""
        return self._preprocess[train]

    @torch.no_grad()
    def text_embeddings(
        self,
        class_names: Sequence[str],
        templates: Sequence[str] = CLIP_PROMPT,
        normalize: bool = True,
        batch_size: int = 256,
    ) -> Tensor:
        """``(C, E)`` fixed class embeddings from prompt templates (CLIP zero-shot recipe).

        Each class name fills every template (one ``{}`` each); with ``normalize`` every prompt
        embedding is L2-normalised, averaged over templates and normalised again, otherwise the raw
        embeddings are averaged. Computed without gradients on the model's device, in batches of
        ``batch_size`` prompts.
        """
        if not class_names or not templates or any("{}" not in t for t in templates):
            raise ValueError(
                f"need class names and templates with a '{{}}' each, got {len(class_names)} "
                f"names and templates {list(templates)}"
            )
        device = next(self.parameters()).device
        prompts = [t.format(name) for name in class_names for t in templates]
        feats = torch.cat(
            [
                self.encode_text(self.tokenize(prompts[i : i + batch_size]).to(device))
                for i in range(0, len(prompts), batch_size)
            ]
        ).reshape(len(class_names), len(templates), -1)  # (C, T, E)
        if normalize:
            return F.normalize(F.normalize(feats, dim=-1).mean(dim=1), dim=-1)
        return feats.mean(dim=1)


def _require_vit(visual: nn.Module, name: str) -> None:
    """Refuse an image tower without projected patch tokens (see :meth:`ClipEncoder.encode_image`)."""
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
        raise NotImplementedError(
            "projected patch tokens need an open_clip ViT image tower without attentional "
            f"pooling; {name} has {type(visual).__name__}. For the global embedding "
            "alone use clip.model.encode_image(images)"
        )


def _vit_tokens(visual: VisionTransformer, images: Tensor) -> ClipImageOutput:
    """The embedding ``(B, E)`` and projected patch tokens ``(B, P, E)`` of ``visual``."""
    # One pass: the last block's tokens (ln_post applied, class token split off) and the
    # pooled, projected embedding computed exactly as visual.forward does.
    out = visual.forward_intermediates(
        images, indices=1, normalize_intermediates=True, output_fmt="NLC"
    )
    patches = out["image_intermediates"][-1]  # (B, P, width)
    return ClipImageOutput(out["image_features"], patches @ visual.proj)


class ClipTokens(NamedTuple):
    """A CLIP token layout ``(B, R, E)`` split into its parts (module docstring).

    Attributes:
        embedding: ``(B, E)`` the student's global embedding ``z_g`` (row 0).
        teacher: ``(B, E)`` the frozen tower's embedding (row 1), or ``None`` without that row.
        patches: ``(B, P, E)`` the projected patch tokens (the last ``P`` rows).
    """

    embedding: Tensor
    teacher: Tensor | None
    patches: Tensor


def clip_token_layout(rows: int) -> tuple[bool, int]:
    """``(has the teacher row, P)`` of a CLIP token layout of ``rows`` rows: ``1 + P`` or
    ``2 + P`` with ``P`` a perfect square (module docstring).

    Raises:
        ValueError: ``rows`` is neither, so the tensor is not a CLIP token layout.
    """
    for prefix, teacher in ((1, False), (2, True)):
        patches = rows - prefix
        if patches >= 1 and math.isqrt(patches) ** 2 == patches:
            return teacher, patches
    raise ValueError(
        f"{rows} rows are no CLIP token layout: expected 1 + P (embedding, P patch tokens) or "
        f"2 + P (with the teacher's embedding) for a square grid of P = g x g patches, as an "
        f"encoder {CLIP_PREFIX}ARCH gives"
    )


def split_clip_tokens(tokens: Tensor) -> ClipTokens:
    """``tokens`` ``(B, R, E)`` in the CLIP token layout as :class:`ClipTokens` (views)."""
    teacher, patches = clip_token_layout(tokens.shape[1])
    return ClipTokens(tokens[:, 0], tokens[:, 1] if teacher else None, tokens[:, -patches:])


class ClipTokenOutput(NamedTuple):
    """What :class:`ClipImageEncoder` returns for ``B`` images, in the fields the engine reads.

    Attributes:
        spatial: ``(B, R, E)`` the CLIP token layout (module docstring), what a ``"spatial"``
            method (``sigrl`` with ``student="clip"``) receives.
        pooled: ``(B, E)`` the global embedding ``z_g`` (row 0), what a ``"pooled"`` method
            receives.
    """

    spatial: Tensor
    pooled: Tensor


class ClipImageEncoder(nn.Module):
    """CLIP's ViT image tower as an mlrkit image encoder; build it with
    :func:`create_clip_image_encoder`.

    The text tower is not kept (class names are embedded by
    :func:`~mlrkit.encoders.label_embeddings`' ``"clip"`` source with a :class:`ClipEncoder`).
    Parameter names are the open_clip tower's under ``model.visual`` (e.g.
    ``model.visual.transformer.resblocks.10.attn.in_proj_weight``, ``model.visual.ln_post.weight``,
    ``model.visual.proj``), which an ``encoder.trainable`` list selects.

    With ``teacher``, ``teacher`` is a copy of the tower as built (its weights file, or the seeded
    random initialisation): no gradient, always in eval mode, listed in :attr:`frozen_prefixes`
    (never trainable, never in the optimizer) and left out of ``state_dict``: a checkpoint holds
    the student only, and loading one keeps the teacher the encoder was built with (rebuilt from
    the same weights file when a run resumes). Its embedding is row 1 of the output.

    Attributes:
        model: a container whose ``visual`` is the open_clip ``VisionTransformer`` (trained).
        teacher: the frozen copy, or ``None``.
        name: ``"clip:" + architecture``, e.g. ``"clip:ViT-B-16-quickgelu"``.
        weights_id: as :attr:`ClipEncoder.weights_id`.
        input_size: ``(3, H, W)``.
        data_config: open_clip's preprocessing config of the model (``mean``, ``std``,
            ``interpolation``, ``resize_mode``, ...) and ``input_size``; descriptive (feature
            caches and run folders record it), :meth:`transform` is open_clip's own.
        feature_dim, spatial_dim: ``E``, the embedding width (of ``pooled`` and of each row).
        num_patches: ``P``.
    """

    def __init__(self, clip: ClipEncoder, teacher: bool = False) -> None:
        super().__init__()
        visual = clip.model.visual
        _require_vit(visual, clip.name)
        grid = tuple(visual.grid_size)
        if grid[0] != grid[1]:
            raise ValueError(f"{CLIP_PREFIX}{clip.name}: the CLIP token layout needs a square patch "
                             f"grid, got {grid[0]} x {grid[1]}; build it for a square image_size")
        self.model = nn.ModuleDict({"visual": visual})
        self.teacher = copy.deepcopy(visual).requires_grad_(False).eval() if teacher else None
        self.name = CLIP_PREFIX + clip.name
        self.weights_id = clip.weights_id
        self.input_size = clip.input_size
        self.feature_dim = self.spatial_dim = clip.embed_dim
        self.num_patches = grid[0] * grid[1]
        preprocess = open_clip.get_model_preprocess_cfg(clip.model)
        self.data_config = {**preprocess, "input_size": self.input_size}
        self._preprocess = {train: clip.transform(train) for train in (True, False)}
        if teacher:
            self.register_state_dict_post_hook(_drop_teacher)
            self.register_load_state_dict_pre_hook(_keep_teacher)

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        """Parameter-name prefixes that are never trained (the teacher)."""
        return () if self.teacher is None else ("teacher",)

    @property
    def num_blocks(self) -> int:
        """``L``, the residual blocks of the tower."""
        return len(self.model.visual.transformer.resblocks)

    def layer_of(self, name: str) -> int:
        """Depth of encoder parameter ``name`` for layer-wise lr decay, numbered as BEiT / MAE
        and SigRL's ``get_layer_id_for_clip``: 0 for the stem (conv1, class and positional
        embeddings, ln_pre), ``i + 1`` for ``transformer.resblocks.i``, ``L + 1`` for what follows
        the blocks (ln_post, proj)."""
        rest = name.removeprefix("model.visual.")
        block = _BLOCK.match(rest)
        if block:
            return int(block[1]) + 1
        return 0 if rest.split(".")[0] in _STEM else self.num_blocks + 1

    def forward(self, images: Tensor) -> ClipTokenOutput:
        """``(B, 3, H, W)`` preprocessed images → the CLIP token layout ``(B, R, E)`` and ``z_g``
        ``(B, E)``; the teacher runs without gradient."""
        embedding, patches = _vit_tokens(self.model.visual, images)
        rows = [embedding[:, None]]
        if self.teacher is not None:
            with torch.no_grad():
                rows.append(self.teacher(images)[:, None])
        return ClipTokenOutput(torch.cat([*rows, patches], dim=1), embedding)

    def train(self, mode: bool = True) -> ClipImageEncoder:
        """As ``nn.Module.train``; the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def transform(self, train: bool = False) -> Any:
        """open_clip's torchvision preprocessing for the model (training or evaluation)."""
        return self._preprocess[train]


def _drop_teacher(module: ClipImageEncoder, state: dict, prefix: str, _metadata: Any) -> None:
    """``state_dict`` post-hook: the teacher's entries out (it is rebuilt, never learned)."""
    for key in [k for k in state if k.startswith(prefix + "teacher.")]:
        del state[key]


def _keep_teacher(module: ClipImageEncoder, state: dict, prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook: the teacher's entries the state lacks are its own values,
    so that loading a checkpoint (which has none) keeps the teacher as built."""
    for key, value in module.teacher.state_dict().items():
        state.setdefault(f"{prefix}teacher.{key}", value)


def create_clip(
    model_name: str = "ViT-B-16",
    weights: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    seed: int | None = None,
    **open_clip_kwargs: Any,
) -> ClipEncoder:
    """Build an open_clip model as a :class:`ClipEncoder`.

    Args:
        model_name: an open_clip architecture (``open_clip.list_models()``), e.g. ``"ViT-B-16"``.
        weights: ``None`` for a random initialisation, or a local open_clip checkpoint: a
            ``.safetensors`` file or a state dict read with ``torch.load(weights_only=True)``
            (never unpickled); open_clip adapts its key names and position embeddings.
        image_size: build the image tower for this input side instead of the config's.
        seed: seed of the random initialisation; drawn from torch's global generator when
            ``None``. The global generator is otherwise left as it was.
        **open_clip_kwargs: passed to ``open_clip.create_model_and_transforms``; keys of the
            model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) replace the architecture's,
            e.g. a small ``vision_cfg`` for tests.

    Raises:
        FileNotFoundError: ``weights`` is not a file.
    """
    path = None if weights is None else Path(weights)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"CLIP weights file not found: {path}; give a local open_clip "
                                f"checkpoint (.safetensors, or a state dict .pt / .bin): CLIP "
                                f"weights are never downloaded")
    if seed is None:
        seed = int(torch.randint(2**31 - 1, ()).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            model_name,
            pretrained=None if path is None else str(path),
            force_image_size=image_size,
            weights_only=True,
            **open_clip_kwargs,
        )
    weights_id = f"random:seed={seed}" if path is None else f"sha256:{file_sha256(path)}"
    return ClipEncoder(
        model,
        model_name,
        weights_id,
        open_clip.get_tokenizer(model_name),
        preprocess_train,
        preprocess_val,
    )


def create_clip_image_encoder(
    model_name: str,
    weights: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    seed: int | None = None,
    teacher: bool = False,
) -> ClipImageEncoder:
    """CLIP's image tower as an mlrkit image encoder (:class:`ClipImageEncoder`).

    Args:
        model_name: an open_clip ViT architecture (``open_clip.list_models()``), e.g.
            ``"ViT-B-16-quickgelu"`` for OpenAI's weights; the ``"clip:"`` of a recipe's encoder
            name is not part of it.
        weights, image_size, seed: as :func:`create_clip` (a local file, or ``None``: random
            initialisation with ``seed``).
        teacher: also keep a frozen copy of the tower as built, whose embedding becomes row 1.

    Raises:
        ValueError: ``model_name`` is not an open_clip architecture.
        FileNotFoundError: ``weights`` is not a file.
        NotImplementedError: the architecture's image tower is not a ViT.
    """
    if model_name not in open_clip.list_models():
        raise ValueError(f"encoder {CLIP_PREFIX}{model_name}: {model_name!r} is not an open_clip "
                         f"architecture; name one of open_clip.list_models(), e.g. "
                         f"{CLIP_PREFIX}ViT-B-16-quickgelu")
    clip = create_clip(model_name, weights, image_size=image_size, seed=seed)
    return ClipImageEncoder(clip, teacher=teacher)
