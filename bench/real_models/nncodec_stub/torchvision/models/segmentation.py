"""Stub of ``torchvision.models.segmentation``."""
