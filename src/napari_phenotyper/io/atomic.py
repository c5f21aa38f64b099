"""Atomic file writes: a reader never sees a half-written file, a crash never
truncates the previous version."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_directory", "atomic_path", "atomic_write_text", "atomic_write_with"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    The temporary file lives in the destination folder (same filesystem, so the final
    :func:`os.replace` is atomic) and is removed if the block raises.
    """
    dest = Path(path)
    if not dest.parent.exists():
        raise FileNotFoundError(f"Folder {dest.parent} does not exist; create it or choose another location.")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=suffix or dest.suffix or ".tmp", dir=dest.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # flush to disk before the rename
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
        with contextlib.suppress(OSError):  # keep the new name's permissions like a plain open()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(dest, 0o666 & ~umask)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""

    def _write(tmp: Path) -> None:
        with open(tmp, "w", encoding=encoding, newline="") as fh:  # type: IO[str]
            fh.write(text)

    return atomic_write_with(path, _write)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    For outputs that are folders (a Zarr store): readers see either the previous folder
    or the complete new one. The temporary folder is removed if the block raises (or a
    generator holding it is closed, e.g. a cancelled run).
    """
    dest = Path(path)
    if not dest.parent.exists():
        raise FileNotFoundError(f"Folder {dest.parent} does not exist; create it or choose another location.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists():  # a folder cannot be replaced in one rename: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "old")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
