"""Image files as a torch ``Dataset`` that reports unreadable files instead of crashing on them.

Feature extraction reads thousands of files in ``DataLoader`` worker processes. One corrupt JPEG
must neither kill a worker (and with it the run) nor be skipped silently, so :class:`ImageFiles`
returns the error text next to a placeholder image and the caller collects the failures;
:func:`check_image_files` is the cheap check to run before any compute, and
:class:`UnreadableImagesError` reports every bad file at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from mlrkit.data.dataset import DataFormatError

# What PIL raises for files it cannot read: missing or truncated (OSError, including
# UnidentifiedImageError), malformed headers (SyntaxError, ValueError), decompression bombs.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class UnreadableImagesError(DataFormatError):
    """Some images could not be read. ``problems`` maps each image to the reason, all of them."""

    def __init__(self, problems: Mapping[str, str], advice: str) -> None:
        self.problems = dict(problems)
        lines = "\n".join(f"  {image}: {reason}" for image, reason in self.problems.items())
        super().__init__(f"{len(self.problems)} image(s) could not be read; {advice}\n{lines}")


def describe_error(err: BaseException) -> str:
    """One line for a failed image read: ``"file not found"`` or ``"<Type>: <message>"``."""
    if isinstance(err, FileNotFoundError):
        return "file not found"
    return f"{type(err).__name__}: {err}"


def check_image_files(paths: Sequence[str | Path]) -> dict[int, str]:
    """Problems found without decoding pixels: missing files and files PIL cannot identify.

    Opens each file and parses its header only (about 0.1 ms per file once the file is cached),
    so that a wrong root or a folder of broken files is reported before any compute. Damage inside
    the compressed data (a truncated JPEG) only shows when decoding; :class:`ImageFiles` reports
    that.

    Returns:
        ``{index: reason}`` for every bad path, in index order; empty when all files look readable.
    """
    problems: dict[int, str] = {}
    for i, path in enumerate(paths):
        try:
            with Image.open(path):
                pass
        except IMAGE_ERRORS as err:
            problems[i] = describe_error(err)
    return problems


class ImageFiles(Dataset):
    """RGB images from ``paths`` passed through ``transform``.

    ``dataset[i]`` is ``(i, image, error)``: the transformed image (e.g. ``(3, H, W)`` float) and
    ``""``, or, when the file cannot be read or decoded, a zero tensor of ``placeholder_shape`` and
    the reason. Returning the index lets a caller sample any subset of rows and still know where
    each result belongs. Errors raised by ``transform`` itself are bugs and propagate.

    Args:
        paths: image files.
        transform: PIL RGB image -> tensor of ``placeholder_shape``.
        placeholder_shape: shape of the tensor returned for an unreadable file.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: Callable[[Image.Image], torch.Tensor],
        placeholder_shape: Sequence[int],
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.placeholder_shape = tuple(placeholder_shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str]:
        try:
            with Image.open(self.paths[index]) as image:
                rgb = image.convert("RGB")  # decodes here: truncated data raises here
        except IMAGE_ERRORS as err:
            return index, torch.zeros(self.placeholder_shape), describe_error(err)
        return index, self.transform(rgb), ""
