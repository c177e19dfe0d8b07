"""One training process per run folder: a lock file that names its holder.

``run_dir/train.lock`` holds ``{"pid", "host", "token"}`` of the process that trains into the
folder. It is created with ``O_CREAT | O_EXCL``, so of two processes exactly one gets it; the other
stops at once with :class:`RunLockedError` naming the holder. A lock left by a process that was
killed (``SIGKILL``, power loss) is taken over when its host is this host and its PID no longer
runs; a lock of another host is never taken over (its PID cannot be checked from here). The lock
is removed when the ``with`` block ends, on an exception too.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlrkit.engine.run_files import LOCK_FILE


class RunLockedError(FileExistsError):
    """Another process holds the run folder's lock (or its lock file cannot be read)."""


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir/train.lock`` for the duration of the block; yields the lock file's path.

    Raises:
        RunLockedError: a live process (or one on another host) holds the lock.
    """
    with file_lock(Path(run_dir) / LOCK_FILE, what="run folder",
                   advice="wait for that training to end or stop it, or train into another "
                          "--run-dir") as path:
        yield path


@contextmanager
def file_lock(path: str | Path, wait_s: float = 0.0, what: str = "folder",
              advice: str = "wait for that process to end or stop it") -> Iterator[Path]:
    """Hold the lock file ``path`` for the duration of the block (the rules above), waiting up to
    ``wait_s`` seconds for another holder to release it; yields ``path``. ``what`` names the
    folder (or file) the lock guards and ``advice`` ends the error when another process holds it.

    Raises:
        RunLockedError: the lock is still held after ``wait_s``.
    """
    path = Path(path)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            token = _acquire(path, what, advice)
            break
        except RunLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
    try:
        yield path
    finally:
        _release(path, token)


def _acquire(path: Path, what: str, advice: str) -> str:
    """Create the lock file exclusively, taking over one stale lock; returns our token."""
    token = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                        "token": uuid.uuid4().hex})
    for _ in range(3):  # a stale lock taken over by another process in between: look again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _take_over_if_stale(path, what, advice)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token)
        return token
    raise RunLockedError(f"{path}: could not take the lock of this {what}; try again")


def _take_over_if_stale(path: Path, what: str, advice: str) -> None:
    """Remove ``path`` if it is the lock of a dead process on this host, else raise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return  # released meanwhile
    holder = _holder(path, text)
    if holder["host"] != socket.gethostname() or _alive(holder["pid"]):
        raise RunLockedError(
            f"{path.parent}: {what} is in use by PID {holder['pid']} on host "
            f"{holder['host']!r} (lock file {path}); {advice}"
        )
    grabbed = path.with_name(f"{path.name}.{os.getpid()}.stale")
    try:
        os.rename(path, grabbed)  # atomic: of two processes taking over, one gets the file
    except FileNotFoundError:
        return
    try:
        if grabbed.read_text(encoding="utf-8") != text:  # a live lock made after we read: return it
            os.link(grabbed, path)
    finally:
        grabbed.unlink()


def _holder(path: Path, text: str) -> dict:
    """The ``{"pid", "host"}`` of a lock file's text; unreadable text raises naming the file."""
    try:
        holder = json.loads(text)
        return {"pid": int(holder["pid"]), "host": str(holder["host"])}
    except (ValueError, TypeError, KeyError):
        raise RunLockedError(
            f"{path}: lock file without a readable holder (a process is starting, or one crashed "
            f"while taking the lock); if no mlrkit train runs in {path.parent}, delete it"
        ) from None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _release(path: Path, token: str) -> None:
    """Remove the lock file if it is still ours."""
    try:
        if path.read_text(encoding="utf-8") == token:
            path.unlink()
    except FileNotFoundError:
        pass
