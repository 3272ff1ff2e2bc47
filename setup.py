"""Build script: only the optional Cython extension lives here; metadata is in pyproject.toml.

HYCO_PROTO_BUILD_EXTENSION=yes  the extension must build (a failure is an error)
HYCO_PROTO_BUILD_EXTENSION=no   skip it; the pure-Python twin is used at run time
unset                            build it when a compiler is there, else fall back quietly
"""

from __future__ import annotations

import os
import platform

from setuptools import Extension, setup

mode = os.environ.get("HYCO_PROTO_BUILD_EXTENSION", "").lower()
ext_modules: list[Extension] = []

if mode != "no" and platform.python_implementation() == "CPython":
    try:
        from Cython.Build import cythonize
    except ImportError:
        if mode == "yes":
            raise
        cythonize = None
    if cythonize is not None:
        ext = Extension(
            "hyco_proto._frames",
            sources=["hyco_proto/_frames.pyx"],
            extra_compile_args=["-O3"],
            optional=mode != "yes",
        )
        ext_modules = cythonize(
            [ext],
            language_level=3,
            compiler_directives={
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "initializedcheck": False,
            },
        )

setup(ext_modules=ext_modules)
