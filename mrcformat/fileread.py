"""Reading a `.mrc` file from a path without trusting the path: every loader and the CLI read through here.

A path may name a FIFO (open() blocks forever), a character device such as /dev/zero (read() never
ends), a directory, or a file far larger than any budget. Here the file is opened non-blocking, must be
a regular file, its 24-byte preamble is read and its magic checked before anything else, and its size
is compared with the caller's byte budget before the rest is read. Failures are `ReadError` (cannot be
read: missing, no permission, not a regular file) or `LimitError` (larger than the budget); a wrong
magic returns just the preamble, so the parser reports `bad-magic` without the rest being read.
"""
from __future__ import annotations

import os
import stat

from .container import MAGIC, PREAMBLE_SIZE
from .errors import LimitError, ReadError

__all__ = ["read_file", "regular_file_kind"]

_O_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def regular_file_kind(mode: int) -> str | None:
    """None for a regular file; otherwise what the file is, in words (for a one-line error)."""
    if stat.S_ISREG(mode):
        return None
    for test, word in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return word
    return "not a regular file"


def _read_exact(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:  # the file shrank while being read: the parser reports the truncation
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_file(path: str | os.PathLike, max_bytes: int | None = None) -> bytes:
    """The bytes of the `.mrc` file at `path` (only its preamble when the magic is wrong).

    `max_bytes`: refuse (LimitError) a file larger than this, before reading past its preamble.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, _O_FLAGS)
    except OSError as e:
        raise ReadError(f"cannot open {name!r}: {e.strerror or type(e).__name__}") from None
    try:
        st = os.fstat(fd)
        kind = regular_file_kind(st.st_mode)
        if kind is not None:
            raise ReadError(f"{name!r} is {kind}, not a regular file")
        try:
            os.set_blocking(fd, True)
            head = _read_exact(fd, PREAMBLE_SIZE)
            if head[:len(MAGIC)] != MAGIC[:len(head)] or len(head) < PREAMBLE_SIZE:
                return head  # the parser says why (bad magic, truncated preamble)
            if max_bytes is not None and st.st_size > max_bytes:
                raise LimitError(f"the file is {st.st_size} bytes, over this loader's budget of {max_bytes} bytes "
                                 "(pass max_decoded_bytes to raise it)", 0)
            return head + _read_exact(fd, max(st.st_size - PREAMBLE_SIZE, 0))
        except OSError as e:
            raise ReadError(f"cannot read {name!r}: {e.strerror or type(e).__name__}") from None
    finally:
        os.close(fd)
