"""Helpers for engine tests: differentiate hand-written IR through the C ABI
and run the derivative with llvmlite's JIT."""

from __future__ import annotations

import ctypes
from typing import Any

import llvmlite.binding as llvm
import pytest

from enzpy import _native

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()

_engines: list[Any] = []


def const(n: int = 1) -> list[dict[str, str]]:
    return [{"activity": "const"}] * n


def differentiate(ir: str, params: list[dict[str, str]], **fields: Any) -> tuple[bytes, str]:
    request = {
        "function": "f",
        "name": "df",
        "mode": "reverse",
        "ret_type": fields.pop("ret_type", "double"),
        "ret_activity": fields.pop("ret_activity", "active"),
        "return_primal": fields.pop("return_primal", True),
        "params": params,
        "log": True,
    }
    request.update(fields)
    return _native.differentiate(ir.encode(), request)


def jit(bitcode: bytes, name: str, *argtypes: Any) -> Any:
    """The derivative as a ctypes function (returns the i32 status)."""
    module = llvm.parse_bitcode(bitcode)
    machine = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    _engines.append(engine)  # keep the code alive for the test session
    proto = ctypes.CFUNCTYPE(ctypes.c_int32, *argtypes)
    return proto(engine.get_function_address(name))


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
