"""Helpers shared by tests that build deliberately invalid files."""
from __future__ import annotations

from mrcformat.container import Container


def unchecked_bytes(c: Container) -> bytes:
    """Serialise without the writer's final self-check."""
    from mrcformat import writer

    orig = writer.from_bytes
    writer.from_bytes = lambda data, **kw: None
    try:
        return writer.to_bytes(c)
    finally:
        writer.from_bytes = orig
