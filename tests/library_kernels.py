"""njit functions of a "library" the tests' kernels call: errors raised inside
them name their own line and the kernel line that called them."""

from __future__ import annotations

import ctypes
import ctypes.util

import numba

_libm = ctypes.CDLL(ctypes.util.find_library("m"))
c_cbrt = _libm.cbrt  # a C function through its address, with no rule
c_cbrt.argtypes = (ctypes.c_double,)
c_cbrt.restype = ctypes.c_double


@numba.njit
def library_step(x):
    return c_cbrt(x) * 2.0
