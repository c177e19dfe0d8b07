"""Encoder names: the prefix that makes a name a CLIP image tower (``"clip:ViT-B-16-quickgelu"``),
shared by :mod:`~mlrkit.encoders.image` (which builds any name) and :mod:`~mlrkit.encoders.clip`
(which builds the towers) without one importing the other."""

CLIP_PREFIX = "clip:"
