"""Results that depend on active inputs only through control (analysis/ControlActivity):
the engine's findings, checked as data (the JSON log) on small IR, and strict mode."""

import pytest

from enzpy import PiecewiseConstantError

from .conftest import DEBUG_INFO, const, differentiate

ACTIVE = {"activity": "active", "elem": "double"}
DUP = {"activity": "dup", "elem": "double"}

# Debug locations !10 ... !19 are lines 10 ... 19 of kernel.py.
DEBUG = DEBUG_INFO + "".join(
    f"!{n} = !DILocation(line: {n}, column: 1, scope: !4)\n" for n in range(10, 20)
)

# Newton's method for sqrt(a), as numba lowers it: a guarded, rotated loop whose
# exit tests |x*x - a| > tol, with numba's ZeroDivisionError check in the body.
NEWTON = """
declare double @llvm.fabs.f64(double)

define i32 @f(ptr %retptr, ptr %excinfo, double %a) !dbg !4 {
entry:
  %fx0 = fsub double 1.0, %a, !dbg !11
  %abs0 = call double @llvm.fabs.f64(double %fx0), !dbg !12
  %guard = fcmp ogt double %abs0, 1.0e-12, !dbg !12
  br i1 %guard, label %loop, label %done, !dbg !12
loop:
  %x = phi double [ 1.0, %entry ], [ %xn, %body ]
  %fx = phi double [ %fx0, %entry ], [ %fxn, %body ]
  %d = fmul double %x, 2.0, !dbg !13
  %zero = fcmp oeq double %d, 0.0, !dbg !13
  br i1 %zero, label %raise, label %body, !dbg !13
body:
  %q = fdiv double %fx, %d, !dbg !13
  %xn = fsub double %x, %q, !dbg !13
  %xx = fmul double %xn, %xn, !dbg !14
  %fxn = fsub double %xx, %a, !dbg !14
  %abs = call double @llvm.fabs.f64(double %fxn), !dbg !12
  %again = fcmp ogt double %abs, 1.0e-12, !dbg !12
  br i1 %again, label %loop, label %done, !dbg !12
done:
  %r = phi double [ 1.0, %entry ], [ %xn, %body ]
  store double %r, ptr %retptr, !dbg !15
  ret i32 0
raise:
  store ptr null, ptr %excinfo, !dbg !13
  ret i32 1
}
"""

# Bisection for sqrt(a) on [0, 10]: a enters only through `mid*mid > a`.
BISECT = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a) !dbg !4 {
entry:
  br label %loop, !dbg !12
loop:
  %lo = phi double [ 0.0, %entry ], [ %lo2, %loop ]
  %hi = phi double [ 10.0, %entry ], [ %hi2, %loop ]
  %s = fadd double %lo, %hi, !dbg !13
  %mid = fmul double %s, 0.5, !dbg !13
  %mm = fmul double %mid, %mid, !dbg !14
  %above = fcmp ogt double %mm, %a, !dbg !14
  %lo2 = select i1 %above, double %lo, double %mid, !dbg !15
  %hi2 = select i1 %above, double %mid, double %hi, !dbg !15
  %w = fsub double %hi2, %lo2, !dbg !12
  %wide = fcmp ogt double %w, 1.0e-10, !dbg !12
  br i1 %wide, label %loop, label %done, !dbg !12
done:
  store double %mid, ptr %retptr, !dbg !16
  ret i32 0
}
"""


def reported(decisions):
    return [d for d in decisions.of("piecewise-constant") if d.kind != "piecewise"]


def test_solver_loop_exit_on_active_condition_is_reported_at_its_line():
    _, decisions = differentiate(NEWTON + DEBUG, [ACTIVE])
    exits = decisions.of("piecewise-constant", "loop-exit")
    assert [d.value for d in exits] == ["%again"]
    assert "line 12" in exits[0].detail and "implicit function" in exits[0].detail
    # The result also carries a derivative through the iterations: not control-only.
    assert decisions.of("piecewise-constant", "control-only") == []


def test_zero_division_check_is_not_a_finding():
    _, decisions = differentiate(NEWTON + DEBUG, [ACTIVE])
    assert not any(d.value == "%zero" for d in decisions.of("piecewise-constant"))


def test_strict_solver_loop_raises_naming_the_exit_condition_line():
    with pytest.raises(PiecewiseConstantError, match="exit condition") as info:
        differentiate(NEWTON + DEBUG, [ACTIVE], strict_control=True)
    assert (info.value.file, info.value.line) == ("/src/kernel.py", 12)


def test_bisection_result_depends_only_through_its_comparison():
    _, decisions = differentiate(BISECT + DEBUG, [ACTIVE])
    only = decisions.of("piecewise-constant", "control-only")
    assert [d.value for d in only] == ["%above"]
    assert "the return value" in only[0].detail and "line 14" in only[0].detail
    exits = decisions.of("piecewise-constant", "loop-exit")
    # The exit tests hi - lo, which depends on a through the comparison at line 14.
    assert [d.value for d in exits] == ["%wide"]
    assert "line 14" in exits[0].detail


def test_strict_bisection_names_the_first_condition_in_program_order():
    with pytest.raises(PiecewiseConstantError) as info:
        differentiate(BISECT + DEBUG, [ACTIVE], strict_control=True)
    assert info.value.line == 14  # %above comes before %wide


def test_relu_select_is_piecewise_only_and_strict_accepts_it():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a) !dbg !4 {
entry:
  %pos = fcmp ogt double %a, 0.0, !dbg !11
  %r = select i1 %pos, double %a, double 0.0, !dbg !11
  store double %r, ptr %retptr, !dbg !12
  ret i32 0
}
"""
    _, decisions = differentiate(ir + DEBUG, [ACTIVE])
    assert reported(decisions) == []
    assert decisions.has("piecewise-constant", "piecewise", "%pos")
    differentiate(ir + DEBUG, [ACTIVE], strict_control=True)  # no error


def test_sign_of_active_value_is_control_only():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a) !dbg !4 {
entry:
  %pos = fcmp ogt double %a, 0.0, !dbg !11
  br i1 %pos, label %one, label %minus, !dbg !11
one:
  br label %done
minus:
  br label %done
done:
  %r = phi double [ 1.0, %one ], [ -1.0, %minus ]
  store double %r, ptr %retptr, !dbg !12
  ret i32 0
}
"""
    _, decisions = differentiate(ir + DEBUG, [ACTIVE])
    assert [d.value for d in reported(decisions)] == ["%pos"]
    assert decisions.of("piecewise-constant", "control-only")[0].value == "%pos"


def test_float_to_int_index_into_const_table_is_control_only():
    ir = """
declare double @llvm.floor.f64(double)

define i32 @f(ptr %retptr, ptr %excinfo, double %a, ptr %arg.table.4) !dbg !4 {
entry:
  %s = fmul double %a, 4.0, !dbg !11
  %fl = call double @llvm.floor.f64(double %s), !dbg !11
  %k = fptosi double %fl to i64, !dbg !11
  %p = getelementptr double, ptr %arg.table.4, i64 %k, !dbg !12
  %v = load double, ptr %p, !dbg !12
  store double %v, ptr %retptr, !dbg !12
  ret i32 0
}
"""
    _, decisions = differentiate(ir + DEBUG, [ACTIVE, *const()])
    only = decisions.of("piecewise-constant", "control-only")
    assert [d.value for d in only] == ["%k"]
    assert "conversion to an integer at line 11" in only[0].detail


def test_loop_with_integer_trip_count_is_not_reported():
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, ptr %arg.x.4, i64 %n) !dbg !4 {
entry:
  %empty = icmp slt i64 %n, 1, !dbg !11
  br i1 %empty, label %done, label %loop, !dbg !11
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %loop ]
  %s = phi double [ 0.0, %entry ], [ %s1, %loop ]
  %p = getelementptr double, ptr %arg.x.4, i64 %i, !dbg !12
  %v = load double, ptr %p, !dbg !12
  %vv = fmul double %v, %v, !dbg !12
  %s1 = fadd double %s, %vv, !dbg !12
  %i1 = add i64 %i, 1, !dbg !11
  %more = icmp slt i64 %i1, %n, !dbg !11
  br i1 %more, label %loop, label %done, !dbg !11
done:
  %r = phi double [ 0.0, %entry ], [ %s1, %loop ]
  store double %r, ptr %retptr, !dbg !13
  ret i32 0
}
"""
    _, decisions = differentiate(ir + DEBUG, [DUP, *const()])
    assert decisions.of("piecewise-constant") == []


def test_raising_code_does_not_make_later_code_control_dependent():
    # a > 0 guards a division (with its ZeroDivisionError check); the return
    # does not depend on a at all. Post-dominance ignores the raise path.
    ir = """
define i32 @f(ptr %retptr, ptr %excinfo, double %a, double %c, ptr %arg.out.4) !dbg !4 {
entry:
  %pos = fcmp ogt double %a, 0.0, !dbg !11
  br i1 %pos, label %then, label %join, !dbg !11
then:
  %z = fcmp oeq double %a, 1.0, !dbg !12
  br i1 %z, label %raise, label %div, !dbg !12
div:
  %q = fdiv double 1.0, %a, !dbg !12
  store double %q, ptr %arg.out.4, !dbg !12
  br label %join
join:
  %r = fmul double %c, 2.0, !dbg !13
  store double %r, ptr %retptr, !dbg !13
  ret i32 0
raise:
  store ptr null, ptr %excinfo, !dbg !12
  ret i32 1
}
"""
    _, decisions = differentiate(ir + DEBUG, [ACTIVE, *const(), DUP])
    assert reported(decisions) == []


# A sort-like library helper inlined into its caller, which then sums over the
# helper's result for as many elements as the helper reports: the helper swaps
# neighbours by comparing the data and raises (stack-depth style) when it has
# swapped too often. Its raise path returns status 1; the caller tests the status
# and re-raises (the helper releases its references on the normal path, so the
# blocks stay apart as in numba's code). Compiled unoptimized, the helper's status reaches the caller's
# test only through a phi that forwards it ("forwarded"); optimized, jump
# threading gives the raise path its own constant status ("constant").
HELPER_THEN_SUM = """
@err = constant i8 0
declare void @NRT_decref(ptr)

define i32 @f(ptr %retptr, ptr %excinfo, ptr %arg.x.4, i64 %n) !dbg !4 {
entry:
  %empty = icmp slt i64 %n, 2, !dbg !11
  br i1 %empty, label %early, label %pass, !dbg !11
early:
  br label %helper.exit, !dbg !11
pass:
  %i = phi i64 [ 0, %entry ], [ %i1, %next ]
  %swaps = phi i64 [ 0, %entry ], [ %swaps1, %next ]
  %p0 = getelementptr double, ptr %arg.x.4, i64 %i, !dbg !11
  %i1 = add i64 %i, 1, !dbg !11
  %p1 = getelementptr double, ptr %arg.x.4, i64 %i1, !dbg !11
  %v0 = load double, ptr %p0, !dbg !11
  %v1 = load double, ptr %p1, !dbg !11
  %gt = fcmp ogt double %v0, %v1, !dbg !11
  %lo = select i1 %gt, double %v1, double %v0, !dbg !11
  %hi = select i1 %gt, double %v0, double %v1, !dbg !11
  store double %lo, ptr %p0, !dbg !11
  store double %hi, ptr %p1, !dbg !11
  %inc = zext i1 %gt to i64, !dbg !11
  %swaps1 = add i64 %swaps, %inc, !dbg !11
  %deep = icmp sgt i64 %swaps1, 1000, !dbg !11
  br i1 %deep, label %inner.raise, label %next, !dbg !11
next:
  %last = add i64 %i1, 1, !dbg !11
  %more = icmp slt i64 %last, %n, !dbg !11
  br i1 %more, label %pass, label %inner.ok, !dbg !11
inner.ok:
  br label %inner.exit, !dbg !11
inner.raise:
  br label %inner.exit, !dbg !11
inner.exit:
  %st.in = phi i32 [ 0, %inner.ok ], [ 1, %inner.raise ]
  %exc.in = phi ptr [ null, %inner.ok ], [ @err, %inner.raise ]
  %ok.in = icmp eq i32 %st.in, 0, !dbg !11
  br i1 %ok.in, label %helper.ok, label %helper.fail, !dbg !11
helper.ok:
  call void @NRT_decref(ptr null), !dbg !11
  br label %helper.exit, !dbg !11
helper.fail:
  br label %helper.exit, !dbg !11
helper.exit:
  %st = phi i32 [ 0, %helper.ok ], [ STATUS, %helper.fail ], [ 0, %early ]
  %exc = phi ptr [ null, %helper.ok ], [ %exc.in, %helper.fail ], [ null, %early ]
  %len = phi i64 [ %n, %helper.ok ], [ 0, %helper.fail ], [ %n, %early ]
  %ok = icmp eq i32 %st, 0, !dbg !11
  br i1 %ok, label %sum.head, label %raise, !dbg !11
sum.head:
  %none = icmp slt i64 %len, 1, !dbg !12
  br i1 %none, label %done, label %sum, !dbg !12
sum:
  %k = phi i64 [ 0, %sum.head ], [ %k1, %sum ]
  %s = phi double [ 0.0, %sum.head ], [ %s1, %sum ]
  %q = getelementptr double, ptr %arg.x.4, i64 %k, !dbg !13
  %v = load double, ptr %q, !dbg !13
  %vv = fmul double %v, %v, !dbg !13
  %s1 = fadd double %s, %vv, !dbg !13
  %k1 = add i64 %k, 1, !dbg !12
  %again = icmp slt i64 %k1, %len, !dbg !12
  br i1 %again, label %sum, label %done, !dbg !12
done:
  %r = phi double [ 0.0, %sum.head ], [ %s1, %sum ]
  store double %r, ptr %retptr, !dbg !14
  ret i32 0
raise:
  store ptr %exc, ptr %excinfo, !dbg !11
  ret i32 %st
}
"""


@pytest.mark.parametrize("status", ["%st.in", "1"], ids=["forwarded", "constant"])
def test_library_helper_raise_status_is_not_control_of_the_code_after_it(status):
    # The helper's comparisons are piecewise; the sum's trip count %len differs
    # only on the raise path, which never returns: no loop-exit finding.
    ir = HELPER_THEN_SUM.replace("STATUS", status)
    _, decisions = differentiate(ir + DEBUG, [DUP, *const()])
    assert reported(decisions) == []
    assert decisions.has("piecewise-constant", "piecewise", "%gt")
    differentiate(ir + DEBUG, [DUP, *const()], strict_control=True)  # no error
