"""cffi (ABI mode) binding of the engine's C ABI, ``native/enzpy_native.h``.

The shared library is ``libenzpy_native.so`` beside this file, or the path in
the environment variable ``ENZPY_NATIVE_LIB``. It is opened on first use, and
its ABI version and LLVM major version are checked against what this package
and numba's llvmlite expect. :func:`differentiate` hands a module and a request
to the engine and turns its structured errors into enzpy exceptions.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from .errors import (
    ActivityError,
    EnzpyError,
    InternalError,
    PiecewiseConstantError,
    UnsupportedError,
)

__all__ = ["ABI_VERSION", "differentiate", "library_path", "load"]

#: The ENZPY_ABI_VERSION this binding speaks.
ABI_VERSION = 1
_LIBNAME = "libenzpy_native.so"

_CDEF = """
typedef struct enzpy_result enzpy_result;
int enzpy_abi_version(void);
int enzpy_llvm_version_major(void);
enzpy_result *enzpy_differentiate(const char *module, size_t module_len,
                                  const char *request, size_t request_len);
int enzpy_result_ok(const enzpy_result *r);
const char *enzpy_result_bitcode(const enzpy_result *r, size_t *len);
const char *enzpy_result_error_kind(const enzpy_result *r);
const char *enzpy_result_error_message(const enzpy_result *r);
const char *enzpy_result_error_file(const enzpy_result *r);
unsigned enzpy_result_error_line(const enzpy_result *r);
const char *enzpy_result_log(const enzpy_result *r);
void enzpy_result_free(enzpy_result *r);
"""

_lock = threading.Lock()
_state: tuple[Any, Any] | None = None  # (ffi, lib)


class RulesNeeded(EnzpyError):
    """Not an error for users: the module calls functions with custom rules
    sent "pending" (``_capture.Captured.pending``) with derivatives; their
    functions must be built and the request sent again."""

    def __init__(self, symbols: list[str]) -> None:
        super().__init__("custom rules to build: " + ", ".join(symbols))
        self.symbols = symbols


class BatchUnsupportedError(UnsupportedError):
    """A batch width the derivative cannot have (forward batch mode through
    a custom rule): a driver that chose the width itself runs one direction
    per call instead."""


_ERROR_CLASSES: dict[str, type[EnzpyError]] = {
    "unsupported": UnsupportedError,
    "unsupported-batch": BatchUnsupportedError,
    "activity": ActivityError,
    "piecewise": PiecewiseConstantError,
    "internal": InternalError,
}


def library_path() -> str:
    """Path of the native library that :func:`load` opens."""
    override = os.environ.get("ENZPY_NATIVE_LIB")
    if override:
        return override
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _LIBNAME)


def load() -> tuple[Any, Any]:
    """Open and check the native library once; return ``(ffi, lib)``."""
    global _state
    if _state is not None:
        return _state
    with _lock:
        first = _loaded()  # another thread may have been first
        if first is not None:
            return first
        import cffi
        import llvmlite.binding as llvm

        path = library_path()
        if not os.path.exists(path):
            raise EnzpyError(
                f"enzpy's native engine library was not found at {path!r}; "
                "build it (see README) or set ENZPY_NATIVE_LIB to its path"
            )
        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        try:
            lib = ffi.dlopen(path)
        except OSError as e:
            raise EnzpyError(f"cannot load enzpy's native engine library {path!r}: {e}") from e
        abi = lib.enzpy_abi_version()
        if abi != ABI_VERSION:
            raise EnzpyError(
                f"enzpy's native library {path!r} speaks C ABI version {abi}, "
                f"this Python package needs version {ABI_VERSION}; rebuild it"
            )
        engine_llvm = lib.enzpy_llvm_version_major()
        numba_llvm = llvm.llvm_version_info[0]
        if engine_llvm != numba_llvm:
            raise EnzpyError(
                f"enzpy's native engine is built against LLVM {engine_llvm} but "
                f"numba's llvmlite uses LLVM {numba_llvm}; they must have the "
                f"same major version (rebuild against llvm-{numba_llvm}-dev)"
            )
        _state = (ffi, lib)
        return _state


def _loaded() -> tuple[Any, Any] | None:
    return _state


def _string(ffi: Any, ptr: Any) -> str:
    if ptr == ffi.NULL:
        return ""
    return str(ffi.string(ptr).decode("utf-8", errors="replace"))


def differentiate(module: bytes, request: dict[str, Any]) -> tuple[bytes, str]:
    """Differentiate the function named in ``request`` found in ``module``
    (LLVM bitcode, or IR text as bytes).

    Returns ``(derivative bitcode, log)``. Raises ``UnsupportedError``,
    ``ActivityError``, ``InternalError`` or ``EnzpyError`` (for a rejected
    request) with the source file and line the engine reported. On an error,
    the engine's log (if any) is attached to the exception as ``log``.
    """
    ffi, lib = load()
    req = json.dumps(request).encode("utf-8")
    res = lib.enzpy_differentiate(module, len(module), req, len(req))
    try:
        log = _string(ffi, lib.enzpy_result_log(res))
        if lib.enzpy_result_ok(res):
            size = ffi.new("size_t *")
            ptr = lib.enzpy_result_bitcode(res, size)
            if ptr == ffi.NULL or size[0] == 0:
                raise InternalError("the engine reported success but returned no module")
            return bytes(ffi.buffer(ptr, size[0])), log
        kind = _string(ffi, lib.enzpy_result_error_kind(res))
        message = _string(ffi, lib.enzpy_result_error_message(res))
        file = _string(ffi, lib.enzpy_result_error_file(res)) or None
        line = int(lib.enzpy_result_error_line(res)) or None
    finally:
        lib.enzpy_result_free(res)
    if kind == "rules_needed":
        raise RulesNeeded(message.splitlines())
    cls = _ERROR_CLASSES.get(kind, EnzpyError)
    if kind == "internal":
        message = f"internal error in enzpy's engine: {message}"
    elif kind == "request":
        message = f"the engine rejected enzpy's request: {message}"
    elif kind not in _ERROR_CLASSES:
        message = f"{kind or 'error'}: {message}"
    err = cls(message, file=file, line=line)
    err.log = log
    raise err
