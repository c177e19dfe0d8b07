"""Atomic file replacement: a reader sees the old file or the complete new one, never a mix."""

from __future__ import annotations

import functools
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``.

    The parent folder is created. The file gets the mode of the file it replaces, or for a new
    file ``0o666`` less the process's umask (``0o644`` under umask ``022``), as ``open`` would
    give it. On an exception the temporary file is removed and ``path`` is left as it was.

    Example:
        >>> with atomic_write("runs/x/results.json", "w") as f:  # doctest: +SKIP
        ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode(path))
        with naming_errors(path), os.fdopen(
            fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})
        ) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _file_mode(path: Path) -> int:
    """The permission bits of the existing ``path``, or those ``open`` gives a new file."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it, briefly)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def naming_errors(path: str | Path) -> Iterator[None]:
    """Give an ``OSError`` that names no file (a failed write: disk full, file too large) the
    name of ``path``, the file being written, so that its message says which file failed."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
