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
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from mlrkit.encoders.weights import file_sha256

DEFAULT_TEMPLATES = ("a photo of a {}.",)


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
        visual = self.model.visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise NotImplementedError(
                "projected patch tokens need an open_clip ViT image tower without attentional "
                f"pooling; {self.name} has {type(visual).__name__}. For the global embedding "
                "alone use clip.model.encode_image(images)"
            )
        # One pass: the last block's tokens (ln_post applied, class token split off) and the
        # pooled, projected embedding computed exactly as visual.forward does.
        out = visual.forward_intermediates(
            images, indices=1, normalize_intermediates=True, output_fmt="NLC"
        )
        patches = out["image_intermediates"][-1]  # (B, P, width)
        return ClipImageOutput(out["image_features"], patches @ visual.proj)

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
        templates: Sequence[str] = DEFAULT_TEMPLATES,
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
        raise FileNotFoundError(f"CLIP weights file not found: {path}")
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
