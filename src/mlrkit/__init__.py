"""mlrkit: multi-label image recognition with incomplete labels."""

__version__ = "0.1.0"
