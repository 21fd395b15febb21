"""The constants enzpy's modules share: the widest batch, the float types
that carry derivatives, numba's CPU target context, and the one setting
(strict mode, set by ``enzpy.strict()``)."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
from contextvars import ContextVar
from typing import Any, Final

import numpy as np
from numba.core import types

from .errors import EnzpyValueError

__all__ = [
    "FLOAT_DTYPES",
    "FLOAT_DTYPE_IDS",
    "FLOAT_SCALARS",
    "FLOAT_TYPES",
    "MAX_BATCH_WIDTH",
    "STRICT",
    "jit_target",
    "libmvec_available",
    "target_context",
    "vector_library",
]

#: The most tangents (forward) or cotangents (reverse) one batch call carries.
MAX_BATCH_WIDTH: Final = 64

#: numpy dtypes of arrays that carry derivatives.
FLOAT_DTYPES: Final = (np.dtype(np.float64), np.dtype(np.float32))
#: ids of ``FLOAT_DTYPES`` (numpy's builtin dtypes are singletons): a fast test.
FLOAT_DTYPE_IDS: Final = frozenset(id(d) for d in FLOAT_DTYPES)
#: Python types of float scalars that carry derivatives.
FLOAT_SCALARS: Final = (float, np.float64, np.float32)
#: numba types of float scalars that carry derivatives.
FLOAT_TYPES: Final = (types.float32, types.float64)


#: Strict mode: a result that depends on active inputs only through control
#: (a solver's loop exit, a comparison) is a ``PiecewiseConstantError``
#: instead of a note in ``explain``. Per thread and task; ``enzpy.strict()``
#: sets it.
STRICT: Final = ContextVar("enzpy_strict", default=False)


def target_context() -> Any:
    """numba's CPU target context (its data models, codegen and calling
    convention)."""
    from numba.core.registry import cpu_target

    return cpu_target.target_context


def jit_target() -> dict[str, str]:
    """The CPU numba's JIT compiles for (its LLVM name and feature string)
    and the vector math library loaded for it, as request fields: the engine
    optimizes the derivative for them, so that loading it needs no second O3
    (``_link``)."""
    _triple, cpu, features = target_context().codegen().magic_tuple()
    return {
        "target_cpu": str(cpu),
        "target_features": str(features),
        "vector_library": vector_library(),
    }


#: glibc's vector math library, and functions of it that the engine's
#: variants may call: LLVM's libmvec table goes up to tan (glibc 2.35).
_LIBMVEC: Final = "libmvec.so.1"
_LIBMVEC_NEWEST: Final = ("_ZGVbN2v_tan", "_ZGVdN4v_tan", "_ZGVbN4v_tanf", "_ZGVdN8v_tanf")


@functools.cache
def libmvec_available() -> bool:
    """Whether glibc's vector math library (with every function LLVM's table
    may ask for) is loaded where numba's JIT resolves symbols; loads it."""
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return False
    import llvmlite.binding as llvm

    try:
        lib = ctypes.CDLL(_LIBMVEC)
        for name in _LIBMVEC_NEWEST:
            getattr(lib, name)
        llvm.load_library_permanently(_LIBMVEC)
    except (OSError, AttributeError, RuntimeError):
        return False
    return True


def vector_library() -> str:
    """``"libmvec"`` when glibc's vector math library is available, unless
    ``ENZPY_VECTOR_LIBRARY=none`` turns it off: the derivative's own math
    calls (a rule's cos x, a recomputed sin x) then use its vector functions
    in vectorized loops, several times cheaper than scalar libm (the primal's
    calls keep numba's scalar libm, so primal values are bit for bit
    numba's). Its functions round differently (within 4 ulp) from scalar
    libm, and a loop computes some elements in vectors and the rest with
    libm: a batch lane or a Jacobian column then equals the single call to
    rounding, not bit for bit. ``""`` when it is off or unavailable."""
    choice = os.environ.get("ENZPY_VECTOR_LIBRARY", "libmvec").strip().lower()
    if choice in _NO_VECTOR_LIBRARY:
        return ""
    if choice != "libmvec":
        raise EnzpyValueError(
            f"ENZPY_VECTOR_LIBRARY={choice!r}: expected 'libmvec' (the default) or 'none'"
        )
    return "libmvec" if libmvec_available() else ""


#: Values of ENZPY_VECTOR_LIBRARY that turn vector math off.
_NO_VECTOR_LIBRARY: Final = frozenset({"none", "off", "0", "no", "false", "libm"})
