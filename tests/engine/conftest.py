"""Helpers for engine tests: differentiate hand-written IR through the C ABI,
read the engine's decisions as data (the JSON log), and run the derivative
with llvmlite's JIT."""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from typing import Any

import llvmlite.binding as llvm
import pytest

from enzpy import _native

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()

_engines: list[Any] = []


#: Debug info for hand-written IR: file /src/kernel.py, function f (!4) at line 3;
#: tests add their own !DILocation(line: N, column: 1, scope: !4) records.
DEBUG_INFO = """
!llvm.dbg.cu = !{!0}
!llvm.module.flags = !{!2, !3}
!0 = distinct !DICompileUnit(language: DW_LANG_C_plus_plus, file: !1, producer: "t", isOptimized: true, runtimeVersion: 0, emissionKind: FullDebug)
!1 = !DIFile(filename: "kernel.py", directory: "/src")
!2 = !{i32 2, !"Dwarf Version", i32 4}
!3 = !{i32 2, !"Debug Info Version", i32 3}
!4 = distinct !DISubprogram(name: "f", scope: !1, file: !1, line: 3, type: !5, scopeLine: 3, spFlags: DISPFlagDefinition | DISPFlagOptimized, unit: !0)
!5 = !DISubroutineType(types: !6)
!6 = !{}
"""


def const(n: int = 1) -> list[dict[str, str]]:
    return [{"activity": "const"}] * n


@dataclass(frozen=True)
class Decision:
    """One decision of the engine (ir_passes/driver/DecisionLog.h)."""

    stage: str
    kind: str
    value: str
    block: str | None = None
    detail: str | None = None


class Decisions:
    """The engine's decisions for one request, queried by stage and kind."""

    def __init__(self, records: list[dict[str, str]]) -> None:
        self.all = [Decision(**r) for r in records if r["stage"] != "dump"]

    def __iter__(self):
        return iter(self.all)

    def of(self, stage: str, kind: str | None = None) -> list[Decision]:
        return [d for d in self.all if d.stage == stage and kind in (None, d.kind)]

    def has(self, stage: str, kind: str, value: str, block: str | None = None) -> bool:
        return any(
            d.value == value and (block is None or d.block == block) for d in self.of(stage, kind)
        )

    def taped(self) -> list[tuple[str, str | None]]:
        """(value, block) of every value the reverse sweep tapes."""
        return [(d.value, d.block) for d in self.of("tape", "tape")]


def differentiate(ir: str, params: list[dict[str, str]], **fields: Any) -> tuple[bytes, Decisions]:
    request = {
        "function": "f",
        "name": "df",
        "mode": "reverse",
        "ret_type": fields.pop("ret_type", "double"),
        "ret_activity": fields.pop("ret_activity", "active"),
        "return_primal": fields.pop("return_primal", True),
        "params": params,
        "log": True,
        "log_format": "json",
    }
    request.update(fields)
    bitcode, log = _native.differentiate(ir.encode(), request)
    return bitcode, Decisions(json.loads(log))


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
