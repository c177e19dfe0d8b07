"""Reading a dataset's files safely: the error every reader raises, the checks that refuse
missing files and paths leading outside the dataset root, and line reading."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

ALLOW_OUTSIDE_ROOT = (
    "pass allow_outside_root=True if the images really live there (recipe: "
    "data.options.allow_outside_root: true; command line: -o allow_outside_root=true)"
)


class DataFormatError(ValueError):
    """A dataset file is missing or malformed. The message names the file, line or field and the fix."""


def check_inside_root(
    paths: Sequence[Path],
    root: Path,
    folders: Sequence[Path],
    where: Callable[[int], str],
    allow: bool = False,
) -> None:
    """Raise :class:`DataFormatError` when an image path leads outside the dataset.

    Readers call this on the image paths they build from names in their files, before anything is
    read: a name such as ``../../secret/x.jpg``, an absolute path or a symlink to a file elsewhere
    would otherwise be read and cached. A path is inside when, with every symlink resolved, it lies
    under ``root`` or under one of ``folders`` (the reader's image folders, themselves resolved, so
    an image folder that is a link to another disk is fine).

    Args:
        paths: the image paths.
        root: the dataset root.
        folders: the folders the reader puts images in.
        where: ``where(i)`` names the origin of ``paths[i]``, e.g. ``"labels.csv:5"``.
        allow: skip the check (the reader option ``allow_outside_root``).
    """
    if allow:
        return
    bases = [os.path.realpath(folder) for folder in (root, *folders)]
    prefixes = tuple(base.rstrip(os.sep) + os.sep for base in bases)
    parents: dict[str, str] = {}
    outside = []
    for i, path in enumerate(paths):
        real = _real_path(os.fspath(path), parents)
        if not (real + os.sep).startswith(prefixes):
            outside.append((i, real))
    if outside:
        i, real = outside[0]
        others = f" ({len(outside) - 1} more image path(s) do too)" if len(outside) > 1 else ""
        raise DataFormatError(
            f"{where(i)}: image path {os.fspath(paths[i])} resolves to {real}, outside the "
            f"dataset root {bases[0]}{others}; fix the path or move the image under the root, or "
            f"{ALLOW_OUTSIDE_ROOT}"
        )


def _real_path(path: str, parents: dict[str, str]) -> str:
    """``os.path.realpath(path)``, resolving each parent folder once (``parents`` caches them):
    one ``lstat`` per image instead of one per path component."""
    head, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    if head not in parents:
        parents[head] = os.path.realpath(head or ".")
    real = os.path.join(parents[head], name)
    return os.path.realpath(real) if os.path.islink(real) else real


def require_files(paths: Sequence[Path], where: str, fix: str) -> None:
    """Raise :class:`DataFormatError` when any of ``paths`` is not a file.

    Readers call this instead of dropping what is missing: the message gives ``where`` (the label
    file or folder the paths came from), how many are missing, the first few, and ``fix``.
    """
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        raise DataFormatError(
            f"{where}: {len(missing)} of {len(paths)} file(s) not found, e.g. {shown}; {fix}"
        )


def read_lines(path: Path, missing: str, binary: bool = False) -> list[str] | list[bytes]:
    """Lines of ``path`` without line ends (``bytes`` when ``binary``, else UTF-8 text); blank
    lines at the end of the file are dropped. A missing file is a :class:`DataFormatError` whose
    message is ``"<path> not found; <missing>"``."""
    try:
        content = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataFormatError(f"{path} not found; {missing}") from None
    lines = content.splitlines() if binary else content.decode("utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines
