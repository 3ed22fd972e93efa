"""Atomic file replacement: write a temporary file in the destination's folder, fsync, rename.

A crash or an exception leaves either the old file or the complete new one, never a partial file,
and no temporary file behind. Used for every file the project writes (.mrc, .onnx, .npz, checkpoints).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_open", "atomic_write_bytes"]


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Context manager yielding a binary file; on success it replaces `path` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _target_mode(path))  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _target_mode(path: Path) -> int:
    """The replaced file's mode if it exists, else what open() would give (0666 minus the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> int:
    """Atomically replace `path` with `data`; returns the number of bytes written."""
    with atomic_open(path) as f:
        f.write(data)
    return len(data)
