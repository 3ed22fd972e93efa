"""Stub of ``torchvision.transforms`` (names only; see package docstring).

nncodec builds some transform pipelines at module level, so these classes can be
constructed; applying one raises.
"""


class _Transform:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            "torchvision stub (bench/real_models/nncodec_stub): "
            f"transforms.{type(self).__name__} is not available"
        )


class Compose(_Transform):
    pass


class ToTensor(_Transform):
    pass


class Normalize(_Transform):
    pass


class Resize(_Transform):
    pass


class CenterCrop(_Transform):
    pass


class RandomCrop(_Transform):
    pass


class RandomHorizontalFlip(_Transform):
    pass
