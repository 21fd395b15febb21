"""The constants enzpy's modules share: the widest batch, the float types
that carry derivatives, numba's CPU target context, and the one setting
(strict mode, set by ``enzpy.strict()``)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Final

import numpy as np
from numba.core import types

__all__ = [
    "FLOAT_DTYPES",
    "FLOAT_DTYPE_IDS",
    "FLOAT_SCALARS",
    "FLOAT_TYPES",
    "MAX_BATCH_WIDTH",
    "STRICT",
    "target_context",
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
    """The CPU numba's JIT compiles for (its LLVM name and feature string),
    as request fields: the engine optimizes the derivative for it, so that
    loading it needs no second O3 (``_link``)."""
    _triple, cpu, features = target_context().codegen().magic_tuple()
    return {"target_cpu": str(cpu), "target_features": str(features)}
