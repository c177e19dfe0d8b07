"""The package version, in a module of its own so that any module can read it without importing
the package's public facade (``mlrkit/__init__.py``, which sits above everything)."""

__version__ = "0.1.0"
