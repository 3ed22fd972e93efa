"""Shared helper: a placeholder class that fails loudly if instantiated."""


class StubClass:
    """Placeholder for a torchvision class; can be subclassed, not used."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            f"{type(self).__name__} comes from the torchvision stub in "
            "bench/real_models/nncodec_stub; real torchvision is not installed"
        )


def make(name):
    return type(name, (StubClass,), {})
