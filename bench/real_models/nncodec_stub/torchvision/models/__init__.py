"""Stub of ``torchvision.models`` (see package docstring)."""
from . import segmentation  # noqa: F401


def list_models(module=None):
    return []
