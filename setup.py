"""Build of the optional compiled kernels (everything else is in pyproject.toml).

`mrcformat.kernels._native` is a plain C extension (CPython API and buffer protocol only, no numpy
headers). It is optional in the way msgpack's C extension is: if no C compiler is available the
build goes on without it and mrcformat decodes with its numpy reference code.
"""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_GCC_FLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-fno-math-errno", "-Wall"]


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":  # gcc or clang; MSVC keeps its defaults (/O2, no contraction)
            for ext in self.extensions:
                ext.extra_compile_args = list(_GCC_FLAGS)
        super().build_extensions()


setup(
    ext_modules=[Extension("mrcformat.kernels._native", ["mrcformat/kernels/_native.c"], optional=True)],
    cmdclass={"build_ext": BuildExt},
)
