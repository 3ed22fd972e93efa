"""Validation: every problem of a `.mrc` file at once, as a list (empty = valid).

Uses the same rules as the strict reader (`reader.parse`), with a report callback that
collects instead of raising. Never raises for bad input: an unreadable file, and even an
unexpected failure inside the reader, comes back as a problem in the list.
"""
from __future__ import annotations

import os

from . import limits as L
from .errors import InternalError, MrcError, ReadError
from .fileread import read_file
from .reader import parse

__all__ = ["InternalError", "ReadError", "validate_bytes", "validate_file"]


def validate_bytes(data: bytes | bytearray | memoryview, check_graph: bool = True,
                   max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> list[MrcError]:
    """All problems of a file held in memory, in the order the strict reader meets them.

    The first problem is the one `from_bytes` raises; an empty list means `from_bytes` accepts it.
    """
    problems: list[MrcError] = []
    try:
        result = parse(data, report=problems.append, check_graph=check_graph, max_decoded_bytes=max_decoded_bytes)
    except MrcError as e:  # a rule that raises directly instead of reporting
        problems.append(e)
        return problems
    except Exception as e:  # noqa: BLE001  # pragma: no cover - would be a reader bug; the tests fuzz for it
        problems.append(InternalError(f"reader failed: {type(e).__name__}: {e}"))
        return problems
    if result is None and not problems:  # pragma: no cover - parse always reports why it gives up
        problems.append(InternalError("the file was rejected without a reported reason"))
    return problems


def validate_file(path: str | os.PathLike, check_graph: bool = True,
                  max_decoded_bytes: int | None = L.DEFAULT_MAX_DECODED_BYTES) -> list[MrcError]:
    """All problems of the file at `path`; a file that cannot be read (missing, not a regular file)
    gives one ReadError, one larger than `max_decoded_bytes` one LimitError (`fileread.read_file`)."""
    try:
        data = read_file(path, max_bytes=max_decoded_bytes)
    except MrcError as e:
        return [e]
    return validate_bytes(data, check_graph=check_graph, max_decoded_bytes=max_decoded_bytes)
