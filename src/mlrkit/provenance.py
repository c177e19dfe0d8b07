"""What made a result: a hash of mlrkit's own source files and the git commit of a checkout.

A run records :func:`source_hash` in ``run.json`` (when it starts) and ``results.json`` (when it
ends), so a result can be matched with the code that made it: the benchmarks reuse a finished run
only when the hash is the current one (``benchmarks/recipe_grid.py``).
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

#: The package folder whose files :func:`source_hash` reads.
SOURCE_ROOT = Path(__file__).resolve().parent


def source_hash(root: Path | None = None) -> str:
    """First 12 hex digits of the SHA-256 of every file under ``root``, each as its relative path
    and its bytes, in path order; compiled ``__pycache__`` files are left out. Any edit to the
    source, a comment included, changes it.

    Without ``root``: the ``mlrkit`` package this process imported, read once per process (at the
    first call), so that edits made on disk while a long run goes on do not relabel it.
    """
    return _package_hash() if root is None else _tree_hash(Path(root))


@functools.cache
def _package_hash() -> str:
    return _tree_hash(SOURCE_ROOT)


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def git_commit(folder: Path | None = None) -> str:
    """The commit checked out at ``folder`` (default: this package's checkout), with ``+changes``
    when tracked files other than the benchmark results (which benchmarks rewrite as they run)
    differ from it; ``unknown`` outside a git checkout."""
    cwd = SOURCE_ROOT if folder is None else Path(folder)

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ":/",
                         ":(exclude,top)benchmarks/results"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")
