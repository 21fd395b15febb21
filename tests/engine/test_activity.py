"""Activity analysis decisions, checked as data (the engine's JSON log) on small IR."""

import pytest

from enzpy import ActivityError, UnsupportedError

from .conftest import DEBUG_INFO, const, differentiate

SCALAR = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a, double %b) {
entry:
  %aa = fmul double %a, %a
  %bb = fmul double %b, %b
  %cmp = fcmp olt double %bb, 1.0
  %r = fadd double %aa, %bb
  store double %r, ptr %retptr
  ret i32 0
}
"""


def test_values_depending_only_on_const_inputs_are_inactive():
    _, decisions = differentiate(SCALAR, [{"activity": "active", "elem": "double"}, *const()])
    assert decisions.has("activity", "active", "%aa")
    assert decisions.has("activity", "inactive", "%bb")
    assert decisions.has("activity", "active", "%r")
    assert decisions.has("activity", "active", "%a")


def test_values_not_reaching_an_output_are_inactive():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a) {
entry:
  %unused = fmul double %a, 3.0
  %c = fcmp olt double %unused, 0.0
  %sel = select i1 %c, double 1.0, double 2.0
  %r = fadd double %a, %sel
  store double %r, ptr %retptr
  ret i32 0
}
"""
    _, decisions = differentiate(ir, [{"activity": "active", "elem": "double"}])
    assert decisions.has("activity", "inactive", "%unused")  # varied, only decides a branch
    assert decisions.has("activity", "inactive", "%sel")  # useful, but not varied
    assert decisions.has("activity", "active", "%r")


def test_unseeded_return_makes_nothing_active():
    _, decisions = differentiate(
        SCALAR, [{"activity": "active", "elem": "double"}, *const()], ret_activity="const"
    )
    assert decisions.of("activity", "active") == []


def test_store_of_active_value_into_const_array_is_activity_error():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %arg.out.4, double %arg.a) {
entry:
  %v = fmul double %arg.a, 2.0
  store double %v, ptr %arg.out.4
  store ptr null, ptr %retptr
  ret i32 0
}
"""
    with pytest.raises(ActivityError, match="'out'"):
        differentiate(
            ir,
            [*const(), {"activity": "active", "elem": "double"}],
            ret_type="void",
            ret_activity="const",
        )


def test_call_without_body_is_unsupported_naming_callee_and_line():
    ir = """
declare double @mystery(double)

define i32 @f(ptr %retptr, ptr %excinfo, double %a) !dbg !4 {
entry:
  %v = call double @mystery(double %a), !dbg !8
  store double %v, ptr %retptr
  ret i32 0
}
"""
    with pytest.raises(UnsupportedError, match="mystery") as info:
        differentiate(
            ir + DEBUG_INFO + "!8 = !DILocation(line: 7, column: 1, scope: !4)\n",
            [{"activity": "active", "elem": "double"}],
        )
    assert info.value.line == 7
    assert info.value.file == "/src/kernel.py"


def test_inactive_runtime_calls_are_accepted():
    ir = """
declare void @NRT_incref(ptr)

define i32 @f(ptr %retptr, ptr %excinfo, ptr %arg.x.0, double %a) {
entry:
  call void @NRT_incref(ptr %arg.x.0)
  %r = fmul double %a, %a
  store double %r, ptr %retptr
  ret i32 0
}
"""
    _, decisions = differentiate(ir, [*const(), {"activity": "active", "elem": "double"}])
    assert decisions.has("activity", "active", "%r")


# A call handed the address of a local array of pointers, one of which points
# into differentiable memory: numba calls a parallel loop's outlined body so.
POINTERS_IN_A_LOCAL = """
declare void @CALLEE(ptr, i64)

define i32 @f(ptr %retptr, ptr %excinfo, ptr %arg.x.4, i64 %n) !dbg !4 {
entry:
  %args = alloca [2 x ptr]
  %slot1 = getelementptr inbounds i8, ptr %args, i64 8
  store ptr %excinfo, ptr %args
  store ptr %arg.x.4, ptr %slot1
  call void @CALLEE(ptr %args, i64 %n), !dbg !8
  %v = load double, ptr %arg.x.4
  store double %v, ptr %retptr
  ret i32 0
}
"""


def _pointers_in_a_local(callee: str) -> str:
    line = "!8 = !DILocation(line: 9, column: 1, scope: !4)\n"
    return POINTERS_IN_A_LOCAL.replace("CALLEE", callee) + DEBUG_INFO + line


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_call_reaching_active_memory_through_a_local_is_unsupported(mode):
    # Let through as inactive, the call's writes into x would get no derivative.
    with pytest.raises(UnsupportedError, match="'opaque_body'") as info:
        differentiate(
            _pointers_in_a_local("opaque_body"),
            [{"activity": "dup", "elem": "double"}, *const()],
            mode=mode,
        )
    assert info.value.line == 9


def test_parallel_loop_body_reaching_active_memory_is_named_as_such():
    body = "_ZN13_3cdynamic_3e36__numba_parfor_gufunc_0x7f"
    with pytest.raises(UnsupportedError, match="parallel loop .*prange"):
        differentiate(
            _pointers_in_a_local(body),
            [{"activity": "dup", "elem": "double"}, *const()],
        )


def test_call_given_a_local_of_constant_pointers_is_let_through():
    _, decisions = differentiate(
        _pointers_in_a_local("opaque_body"),
        [*const(), *const()],
        ret_activity="const",
    )
    assert decisions.of("activity", "active") == []
