"""Stub of ``torchvision.datasets`` (names only; see package docstring)."""
from ._stub import make

ImageFolder = make("ImageFolder")
CIFAR10 = make("CIFAR10")
CIFAR100 = make("CIFAR100")
VOCSegmentation = make("VOCSegmentation")
