"""Atomic file replacement: write a temporary file in the destination's folder, fsync, rename, fsync the folder.

A crash or an exception leaves either the old file or the complete new one, never a partial file. An
exception removes the temporary file; a killed process cannot, so temporary files are named
`.<name>.<pid>.<random>.mrctmp` and the next save to the same folder removes those of processes that
no longer exist. Only regular files (or nothing) are replaced: a symbolic link, a device, a FIFO or a
directory at the destination is refused (as root, `-o /dev/null` would otherwise replace the device).
Used for every file the project writes (.mrc, .onnx, .npz, checkpoints).
"""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_open", "atomic_write_bytes", "check_replaceable", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".mrctmp"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$")


def check_replaceable(path: str | os.PathLike) -> None:
    """Raise OSError unless `path` is absent or a regular file (not followed if it is a symbolic link)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    from .fileread import regular_file_kind

    raise OSError(errno.EINVAL, f"{os.fspath(path)} is {regular_file_kind(mode)}; refusing to replace it "
                  "(only regular files are written)")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def remove_stale_temps(folder: Path, name: str) -> list[Path]:
    """Remove temporary files for `name` in `folder` left by processes that no longer run; returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        m = _TEMP_RE.match(e.name)
        if m is None or m.group("name") != name or _alive(int(m.group("pid"))):
            continue
        try:
            if e.is_file(follow_symlinks=False):
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            pass
    return removed


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX: the directory entry lives in the folder). Best effort elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Context manager yielding a binary file; on success it replaces `path` atomically."""
    path = Path(path)
    check_replaceable(path)
    folder = path.parent
    remove_stale_temps(folder, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        os.chmod(tmp, _target_mode(path))  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        check_replaceable(path)  # something else may have appeared there meanwhile
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


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
