"""The code paths of native.c built explicitly, for the tests of test_native.py and test_native_decoder.py."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import pytest

from biogpt import native
from biogpt.devices import cpu_identity

# The code paths of native.c (AVX-512 with and without BF16 pairs, AVX2, portable), each built explicitly (whatever
# this CPU would pick for itself).
AVX512 = ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma")
PATHS = {"avx512-bf16-vbmi": (*AVX512, "-mavx512bf16", "-mavx512vbmi"), "avx512-bf16": (*AVX512, "-mavx512bf16"),
         "avx512": AVX512, "avx2": ("-mavx2", "-mfma"), "portable": ()}
PATH_NEEDS = {"avx512-bf16-vbmi": ("avx512_bf16", "avx512vbmi"), "avx512-bf16": ("avx512_bf16",), "avx512": ("avx512f",),
              "avx2": ("avx2",), "portable": ()}


def build_path(path: str, folder: Path) -> ctypes.CDLL:
    """native.c built for one of PATHS into `folder`, loaded and self-tested (skips where this CPU cannot run it)."""
    missing = [flag for flag in PATH_NEEDS[path] if flag not in cpu_identity()[1]]
    if missing:
        pytest.skip(f"this CPU has no {', '.join(missing)}")
    compiler = next((p for p in map(shutil.which, native.COMPILERS) if p), None)
    if compiler is None:
        pytest.skip("no C compiler here")
    target = folder / f"{path}.so"
    assert native._compile(compiler, target, ("-O3", "-fopenmp", "-shared", "-fPIC", *PATHS[path])) is None
    library = ctypes.CDLL(str(target))
    native._declare(library)
    assert native._self_test(library) is None
    return library
