"""enzpy.testing.check_derivative, the rule author's harness: it passes on
correct derivatives of varied kernels (scalar math, an in-place update with an
int argument, a float32 reduction, a tuple of arrays, a call to another njit
function, a large input checked by directional derivatives), reports a
derivative enzpy refuses as a refusal, and catches wrong derivatives: a
wrong Jacobian fed to its comparison, and wrong tangents or cotangents
injected into what enzpy returns."""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
import pytest

import enzpy
import enzpy.testing as et
from enzpy import Active, Const, Duplicated, DuplicatedNoNeed
from enzpy.testing import (
    DerivativeMismatch,
    DerivativeRefused,
    check_derivative,
    compare,
)


@numba.njit
def scalar_math(a, b):
    return np.sin(a) * np.exp(0.5 * b) / (1.0 + a * a) + np.log1p(b * b)


@numba.njit
def damp_in_place(x, a, n):
    # an in-place update of the first n entries, with an int argument
    for i in range(n):
        x[i] = x[i] * a + np.cos(x[i])


@numba.njit
def weighted_norm(x, w):
    s = x.dtype.type(0.0)
    for i in range(x.shape[0]):
        s += w[i] * x[i] * x[i]
    return np.sqrt(s)


@numba.njit
def row_norms(pair, out):
    # a tuple of arrays (a matrix and row weights) and an output array
    m, c = pair
    total = 0.0
    for i in range(m.shape[0]):
        r = 0.0
        for j in range(m.shape[1]):
            r += m[i, j] * m[i, j]
        out[i] = c[i] * np.sqrt(r)
        total += out[i] * c[i]
    return total


@numba.njit
def softplus(v):
    return np.log1p(np.exp(v))


@numba.njit
def calls_helper(x, c):
    s = 0.0
    for i in range(x.shape[0]):
        s += softplus(c * x[i]) * x[i]
    return s


@numba.njit
def library_calls(a, b):
    # enzpy's built-in rules for two-argument libm functions and pow
    return math.atan2(a, b) + math.hypot(a, b) * a**b + math.erf(a * b)


@numba.njit
def newton_sqrt(a):
    x = a
    while abs(x * x - a) > 1e-12:
        x = 0.5 * (x + a / x)
    return x


def test_scalar_math_passes_every_activity_combination():
    rep = check_derivative(scalar_math, 0.7, -0.4, widths=(1,))
    assert rep.ok
    # both scalars Const/differentiated, minus all-Const, in both modes
    fwd, rev = repr(enzpy.ForwardWithPrimal), repr(enzpy.ReverseWithPrimal)
    assert sorted((mode, label) for mode, _, label in rep.checked) == [
        (fwd, "scalar_math(a=Const, b=Duplicated)"),
        (fwd, "scalar_math(a=Duplicated, b=Const)"),
        (fwd, "scalar_math(a=Duplicated, b=Duplicated)"),
        (rev, "scalar_math(a=Active, b=Active)"),
        (rev, "scalar_math(a=Active, b=Const)"),
        (rev, "scalar_math(a=Const, b=Active)"),
    ]


def test_in_place_update_with_int_argument_passes_in_batch():
    # 40 entries: above FULL_JACOBIAN_MAX, so checked along random directions
    x = np.linspace(-1.0, 1.0, 40)
    assert x.size > et.FULL_JACOBIAN_MAX
    x0 = x.copy()
    rep = check_derivative(
        damp_in_place, x, 0.8, 30, activities=[None, Active, None], widths=(1, 2)
    )
    assert rep.ok and len(rep.checked) == 4
    # a mutated array is only tried as Duplicated, the int only as Const
    assert all("x=Duplicated" in label and "n=Const" in label for _, _, label in rep.checked)
    np.testing.assert_array_equal(x, x0)  # the caller's array is untouched


def test_float32_reduction_passes_with_the_float32_tolerance():
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    rep = check_derivative(weighted_norm, x, w, activities={"w": Const}, widths=(1,))
    assert rep.ok


def test_tuple_of_arrays_passes_in_batch():
    rng = np.random.default_rng(4)
    pair = (rng.standard_normal((3, 4)), rng.uniform(0.5, 2.0, 3))
    rep = check_derivative(row_norms, pair, np.zeros(3), activities=[Duplicated, Duplicated])
    assert rep.ok
    # widths 1 and 3 (BatchDuplicated tuples), in both modes
    assert [(m, w) for m, w, _ in rep.checked] == [
        (repr(m), w) for w in (1, 3) for m in (enzpy.ForwardWithPrimal, enzpy.ReverseWithPrimal)
    ]


def test_call_to_another_njit_function_passes():
    rep = check_derivative(
        calls_helper, np.linspace(-1.0, 2.0, 5), 0.6, activities=[Duplicated, Active], widths=(1,)
    )
    assert rep.ok


def test_built_in_rules_of_library_functions_pass():
    assert check_derivative(library_calls, 0.6, 1.3, widths=(1,)).ok


def test_refused_derivative_is_reported_as_a_refusal():
    # strict mode refuses the derivative of a solver loop: a refusal, not a mismatch
    with enzpy.strict(), pytest.raises(DerivativeRefused) as info:
        check_derivative(newton_sqrt, 2.0, widths=(1,))
    assert not isinstance(info.value, DerivativeMismatch)
    msg = str(info.value)
    assert "[refused]" in msg and "PiecewiseConstantError" in msg
    assert "newton_sqrt(a=" in msg
    assert [f.check for f in info.value.failures] == ["refused"]


def _wrong(check: str, scale: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make enzpy's results wrong: multiply the reverse-mode derivative of
    every Active argument (``check="cotangent"``) or the forward-mode tangent
    of the return value (``check="tangent"``) by ``scale``."""
    real = et._call_autodiff

    def call(f: Any, args: Any, mode: Any, ret: Any) -> Any:
        out, primal = real(f, args, mode, ret)
        if check == "cotangent" and not mode.is_forward:
            out = tuple(d * scale if isinstance(d, float) else d for d in out)
        if check == "tangent" and mode.is_forward and isinstance(out, float):
            out = out * scale
        return out, primal

    monkeypatch.setattr(et, "_call_autodiff", call)


@pytest.mark.parametrize("scale", [-1.0, 1.001])
def test_wrong_cotangent_is_caught_and_names_argument_and_combination(monkeypatch, scale):
    _wrong("cotangent", scale, monkeypatch)
    with pytest.raises(DerivativeMismatch) as info:
        check_derivative(scalar_math, 0.7, -0.4, widths=(1,))
    first = info.value.failures[0]
    assert first.check == "cotangent" and first.mode == "enzpy.ReverseWithPrimal"
    msg = str(info.value)
    # the first combination checked: only b differentiated
    assert "cotangent of argument 1 (b), lane 0" in msg
    assert "scalar_math(a=Const, b=Active)" in msg


def test_report_mode_collects_every_failure(monkeypatch):
    _wrong("tangent", -1.0, monkeypatch)
    rep = check_derivative(scalar_math, 0.7, -0.4, widths=(1,), report=True)
    assert not rep.ok and len(rep.checked) == 6
    # each differentiated argument's tangent is wrong, and disagrees with reverse mode
    for check, where in [
        ("tangent", "tangent of the outputs along argument 0 (a), lane 0"),
        ("tangent", "tangent of the outputs along argument 1 (b), lane 0"),
        ("consistency", "argument 0 (a), lane 0"),
        ("consistency", "argument 1 (b), lane 0"),
    ]:
        assert any(f.check == check and f.where.startswith(where) for f in rep.failures)
    assert {f.check for f in rep.failures} == {"tangent", "consistency"}
    with pytest.raises(DerivativeMismatch, match=r"return value: found"):
        rep.raise_if_failed()


def test_wrong_tangent_of_a_mutated_array_is_caught(monkeypatch):
    # drop the tangent written into the array: the shadow keeps its input tangent
    real = et._call_autodiff

    def call(f: Any, args: Any, mode: Any, ret: Any) -> Any:
        if mode.is_forward:
            x = args[0]
            saved = x.shadow.copy()
            out = real(f, args, mode, ret)
            x.shadow[...] = saved
            return out
        return real(f, args, mode, ret)

    monkeypatch.setattr(et, "_call_autodiff", call)
    with pytest.raises(DerivativeMismatch) as info:
        check_derivative(
            damp_in_place,
            np.linspace(-1.0, 1.0, 40),
            0.8,
            30,
            activities=[None, Active, None],
            widths=(1,),
        )
    msg = str(info.value)
    assert "[tangent] enzpy.ForwardWithPrimal" in msg
    assert "x[0] after the call" in msg  # the first mismatching entry, named


def test_wrong_array_contents_after_the_call_are_caught(monkeypatch):
    real = et._call_autodiff

    def call(f: Any, args: Any, mode: Any, ret: Any) -> Any:
        out = real(f, args, mode, ret)
        args[0].value[3] += 1e-6  # the primal sweep left a wrong value in x
        return out

    monkeypatch.setattr(et, "_call_autodiff", call)
    with pytest.raises(DerivativeMismatch) as info:
        check_derivative(
            damp_in_place,
            np.linspace(-1.0, 1.0, 40),
            0.8,
            30,
            activities=[None, Active, None],
            widths=(1,),
        )
    failure = info.value.failures[0]
    assert failure.check == "mutation"
    assert failure.where.startswith("argument 0 (x) after the call differs")
    assert "1 of 40 entries differ" in failure.details and "x[3]: found" in failure.details


def test_wrong_primal_return_is_caught(monkeypatch):
    real = et._call_autodiff

    def call(f: Any, args: Any, mode: Any, ret: Any) -> Any:
        out, primal = real(f, args, mode, ret)
        return out, primal * (1.0 + 1e-9)

    monkeypatch.setattr(et, "_call_autodiff", call)
    with pytest.raises(DerivativeMismatch) as info:
        check_derivative(scalar_math, 0.7, -0.4, widths=(1,))
    failure = info.value.failures[0]
    assert (failure.check, failure.where) == ("primal", "return value")
    assert failure.mode == "enzpy.ForwardWithPrimal"


def test_result_of_the_wrong_structure_is_a_mismatch(monkeypatch):
    real = et._call_autodiff

    def call(f: Any, args: Any, mode: Any, ret: Any) -> Any:
        out, primal = real(f, args, mode, ret)
        return (None if mode.is_forward else out), primal  # a tangent missing

    monkeypatch.setattr(et, "_call_autodiff", call)
    with pytest.raises(DerivativeMismatch) as info:
        check_derivative(scalar_math, 0.7, -0.4, widths=(1,))
    failure = info.value.failures[0]
    assert (failure.check, failure.mode) == ("result", "enzpy.ForwardWithPrimal")
    assert "expected the return's tangent as 1 float(s)" in failure.details


def test_compare_catches_a_flipped_sign_and_a_dropped_term():
    # Jacobian of (x0 * x1, sin(x0)) at (0.3, 2.0)
    x0, x1 = 0.3, 2.0
    jac = np.array([[x1, x0], [np.cos(x0), 0.0]])
    assert compare(jac.copy(), jac, rtol=1e-6) is None
    flipped = jac.copy()
    flipped[1, 0] = -flipped[1, 0]
    names = ["d y0/d x0", "d y0/d x1", "d y1/d x0", "d y1/d x1"]
    msg = compare(flipped, jac, rtol=1e-6, names=names.__getitem__)
    assert msg is not None and "1 of 4 entries differ" in msg and "d y1/d x0" in msg
    dropped = jac.copy()
    dropped[0, 1] = 0.0  # the product rule's second term forgotten
    msg = compare(dropped, jac, rtol=1e-6, names=names.__getitem__)
    assert msg is not None and "d y0/d x1: found 0.0, expected 0.3" in msg
    failure = et.Failure(
        "cotangent",
        "f(x=Duplicated, a=Active)",
        "enzpy.Reverse",
        1,
        "cotangent of argument 1 (a)",
        msg,
    )
    err = DerivativeMismatch([failure])
    assert isinstance(err, AssertionError)
    assert "f(x=Duplicated, a=Active)" in str(err) and "argument 1 (a)" in str(err)


def test_compare_tolerates_finite_difference_noise_but_not_nan():
    exp = np.array([1.0, 1e-3, 0.0])
    assert compare(exp * (1 + 1e-8), exp, rtol=1e-6) is None
    assert compare(exp + 1e-9, exp, rtol=1e-6, noise=1e-8) is None
    assert compare(exp + 1e-9, exp, rtol=1e-6) is not None
    msg = compare(np.array([1.0, np.nan, 0.0]), exp, rtol=1e-6)
    assert msg is not None and "[1]: found nan" in msg


def test_invalid_activities_are_refused_before_anything_runs():
    with pytest.raises(TypeError, match="argument 2 .n. is int"):
        check_derivative(damp_in_place, np.ones(3), 0.5, 3, activities=[None, None, Active])
    with pytest.raises(TypeError, match="Active takes a float scalar"):
        check_derivative(damp_in_place, np.ones(3), 0.5, 3, activities=[Active, None, None])
    with pytest.raises(TypeError, match="DuplicatedNoNeed takes an array"):
        check_derivative(scalar_math, 0.5, 0.5, activities=[DuplicatedNoNeed, None])
    with pytest.raises(TypeError, match="2 entries for 3 arguments"):
        check_derivative(damp_in_place, np.ones(3), 0.5, 3, activities=[None, Const])
    with pytest.raises(TypeError, match=r"names 'y', which is not an argument .*\(x, a, n\)"):
        check_derivative(damp_in_place, np.ones(3), 0.5, 3, activities={"y": Const})
    with pytest.raises(TypeError, match="no argument is differentiable"):
        check_derivative(scalar_math, 0.5, 0.5, activities={"a": Const, 1: Const})


@numba.njit
def rounds_to_float32(x, a):
    # float64 arguments, float32 arithmetic inside
    s = np.float32(0.0)
    for i in range(x.shape[0]):
        s += np.float32(a) * np.float32(x[i]) ** 2 + np.float32(np.sin(x[i]))
    return s


def _float32_inside_args():
    return np.random.default_rng(12).uniform(0.5, 1.5, 6), 0.7


def test_a_kernel_that_rounds_to_float32_inside_is_not_a_false_alarm():
    # differences with the float64 step were good to about 1e-2 here and the
    # checker called enzpy wrong; it now takes a wider step where the
    # difference is noisy, and allows what the step's doubling shows
    rep = check_derivative(rounds_to_float32, *_float32_inside_args(), widths=(1,), report=True)
    assert rep.ok, str(rep)


@pytest.mark.parametrize("check,scale", [("cotangent", 1.01), ("tangent", 0.99)])
def test_a_wrong_derivative_of_a_float32_inside_kernel_is_still_caught(monkeypatch, check, scale):
    _wrong(check, scale, monkeypatch)
    with pytest.raises(DerivativeMismatch):
        check_derivative(rounds_to_float32, *_float32_inside_args(), widths=(1,))
