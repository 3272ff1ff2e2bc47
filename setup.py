"""Build script: only the optional Cython extension lives here; metadata is in pyproject.toml.

HYCO_PROTO_BUILD_EXTENSION=yes  the extension must build (a failure is an error)
HYCO_PROTO_BUILD_EXTENSION=no   skip it; the pure-Python twin is used at run time
unset                            build it when a compiler works, else warn and skip it (the wheel
                                 then uses the pure-Python twin: `hyco --version` says so)
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
            # MSVC (Windows wheels) optimises with /Ox already and does not know -O3.
            extra_compile_args=[] if os.name == "nt" else ["-O3"],
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
        # cythonize() returns new Extension objects without `optional`, so set it afterwards:
        # an optional extension that fails to compile is skipped with a warning (setuptools'
        # build_ext), and the wheel falls back to the pure-Python twin.
        for built in ext_modules:
            built.optional = mode != "yes"

setup(ext_modules=ext_modules)
