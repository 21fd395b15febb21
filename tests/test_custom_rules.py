"""Custom rules (``enzpy.register_rule``): a function of arrays and scalars
gets its derivative from a forward, an augmented and a reverse function,
wherever a differentiated kernel calls it."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from fd import fd_gradient

import enzpy
from enzpy import Active, BatchDuplicated, Const, Duplicated


def summed(into):
    """An njit kernel that calls ``into(x, out)`` on a fresh ``out`` and sums it."""

    @numba.njit
    def total(x):
        out = np.empty_like(x)
        into(x, out)
        return out.sum()

    return total


@numba.njit
def scaled_squares(x, out, a):
    """out[i] = a x[i]^2 (numba's own body; the rule below says the same)."""
    for i in range(x.shape[0]):
        out[i] = a * x[i] * x[i]


def _forward(cfg, x, dx, out, dout, a, da):
    for i in range(x.shape[0]):
        out[i] = a * x[i] * x[i]
        dout[i] = da * x[i] * x[i] + 2.0 * a * x[i] * dx[i]


def _augmented(cfg, x, out, a):
    for i in range(x.shape[0]):
        out[i] = a * x[i] * x[i]
    # x may change before the reverse runs: keep it only then.
    return x.copy() if cfg.overwritten[0] else np.empty(0)


def _reverse(cfg, kept, x, dx, out, dout, a, da):
    xs = kept if cfg.overwritten[0] else x
    abar = 0.0
    for i in range(xs.shape[0]):
        abar += dout[i] * xs[i] * xs[i]
        dx[i] += 2.0 * a * xs[i] * dout[i]
        dout[i] = 0.0  # out was overwritten: its old contents had no effect
    return abar


enzpy.register_rule(scaled_squares, forward=_forward, augmented=_augmented, reverse=_reverse)


@numba.njit
def sin_loss(x, a):
    out = np.empty_like(x)
    scaled_squares(x, out, a)
    s = 0.0
    for i in range(out.shape[0]):
        s += np.sin(out[i])
    return s


@numba.njit
def sweeps(x, a, steps):
    """x is updated in place through the ruled function each step; the
    scratch buffer is reused."""
    tmp = np.empty_like(x)
    for _ in range(steps):
        scaled_squares(x, tmp, a)
        for i in range(x.shape[0]):
            x[i] = 0.5 * x[i] + 0.1 * np.sin(tmp[i])
    return (x * x).sum()


def test_rule_gives_the_gradient_in_reverse_and_forward_mode():
    x = np.linspace(0.1, 1.0, 5)
    a = 0.7
    gx = np.cos(a * x * x) * 2.0 * a * x
    ga = float((np.cos(a * x * x) * x * x).sum())
    dx = np.zeros(5)
    _, da = enzpy.autodiff(sin_loss, Duplicated(x, dx), Active(a))
    np.testing.assert_allclose(dx, gx, rtol=1e-12)
    assert da == pytest.approx(ga, rel=1e-12)
    v = np.random.default_rng(0).standard_normal(5)
    t = enzpy.autodiff(sin_loss, Duplicated(x, v), Duplicated(a, 0.3), mode=enzpy.Forward)
    assert t == pytest.approx(gx @ v + 0.3 * ga, rel=1e-12)


def test_rule_is_used_instead_of_the_body():
    """A rule that doubles every derivative doubles the gradient: the engine
    calls the rule, not the function's body."""

    @numba.njit
    def cube_into(x, out):
        for i in range(x.shape[0]):
            out[i] = x[i] ** 3

    def fwd(cfg, x, dx, out, dout):
        for i in range(x.shape[0]):
            out[i] = x[i] ** 3
            dout[i] = 2.0 * 3.0 * x[i] ** 2 * dx[i]

    def aug(cfg, x, out):
        for i in range(x.shape[0]):
            out[i] = x[i] ** 3
        return x.copy()

    def rev(cfg, xs, x, dx, out, dout):
        for i in range(xs.shape[0]):
            dx[i] += 2.0 * 3.0 * xs[i] ** 2 * dout[i]
            dout[i] = 0.0
        return ()

    enzpy.register_rule(cube_into, forward=fwd, augmented=aug, reverse=rev)

    total = summed(cube_into)

    x = np.array([0.5, -1.0, 2.0])
    dx = np.zeros(3)
    enzpy.autodiff(total, Duplicated(x, dx))
    np.testing.assert_allclose(dx, 6.0 * x**2)
    t = enzpy.autodiff(total, Duplicated(x, np.ones(3)), mode=enzpy.Forward)
    assert t == pytest.approx(6.0 * (x**2).sum())


def halving():
    """A fresh njit function out = x / 2 and the forward function of a rule
    for it (each test registers its own rule)."""

    @numba.njit
    def half_into(x, out):
        for i in range(x.shape[0]):
            out[i] = 0.5 * x[i]

    def fwd(cfg, x, dx, out, dout):
        for i in range(x.shape[0]):
            out[i] = 0.5 * x[i]
            dout[i] = 0.5 * dx[i]

    return half_into, fwd


def registered_halving():
    """``halve_into`` with a rule whose augmented function calls it, and a
    kernel ``weighted(w, c)`` that calls it on constant data only."""
    halve_into, fwd = halving()

    def aug(cfg, x, out):
        halve_into(x, out)
        return 0

    def rev(cfg, tape, x, dx, out, dout):
        for i in range(x.shape[0]):
            dx[i] += 0.5 * dout[i]
            dout[i] = 0.0
        return ()

    enzpy.register_rule(halve_into, forward=fwd, augmented=aug, reverse=rev)

    @numba.njit
    def weighted(w, c):
        out = np.empty_like(c)
        halve_into(c, out)  # on constant data only
        return (w * out).sum()

    return halve_into, weighted


def test_a_rule_used_on_constant_data_first_then_on_active_data_gives_both_gradients():
    """The rule's augmented function calls the function it is the rule of."""
    halve_into, weighted = registered_halving()
    c = np.array([1.0, -2.0, 4.0])
    dw = np.zeros(3)
    enzpy.autodiff(weighted, Duplicated(np.ones(3), dw), Const(c))
    np.testing.assert_allclose(dw, 0.5 * c)

    total = summed(halve_into)
    dx = np.zeros(3)
    enzpy.autodiff(total, Duplicated(c.copy(), dx))
    np.testing.assert_allclose(dx, np.full(3, 0.5))
    t = enzpy.autodiff(total, Duplicated(c.copy(), np.array([1.0, 2.0, 3.0])), mode=enzpy.Forward)
    assert t == pytest.approx(3.0)


def test_rule_inside_a_time_loop_with_memory_overwritten_matches_finite_differences():
    x0 = np.linspace(-0.5, 0.8, 6)
    dx = np.zeros_like(x0)
    _, da, _ = enzpy.autodiff(sweeps, Duplicated(x0.copy(), dx), Active(0.9), Const(7))
    _, (gx, ga) = fd_gradient(lambda x, a: sweeps(x.copy(), a, 7), x0, 0.9)
    np.testing.assert_allclose(dx, gx, rtol=1e-6, atol=1e-9)
    assert da == pytest.approx(ga, rel=1e-6)


def test_forward_and_reverse_agree_on_random_directions():
    rng = np.random.default_rng(3)
    x = rng.uniform(0.2, 1.0, 6)
    v, w = rng.standard_normal(6), 0.37
    # x is updated in place, and so is its tangent: pass a copy of v.
    jv = enzpy.autodiff(
        sweeps, Duplicated(x.copy(), v.copy()), Duplicated(0.9, w), Const(5), mode=enzpy.Forward
    )
    dx = np.zeros(6)
    _, da, _ = enzpy.autodiff(sweeps, Duplicated(x.copy(), dx), Active(0.9), Const(5))
    assert jv == pytest.approx(dx @ v + da * w, rel=1e-10)


def test_constant_arguments_get_no_cotangent_and_the_rule_sees_them_inactive():
    x = np.linspace(0.1, 1.0, 4)
    _, da = enzpy.autodiff(sin_loss, Const(x), Active(0.5))
    assert da == pytest.approx(float((np.cos(0.5 * x * x) * x * x).sum()), rel=1e-12)


def test_reverse_batch_lanes_each_get_their_rule_call():
    x = np.linspace(0.1, 1.0, 5)
    shadows = [np.zeros(5), np.zeros(5)]
    enzpy.autodiff(sin_loss, BatchDuplicated(x, shadows), Const(0.7), mode=enzpy.Reverse)
    g = np.cos(0.7 * x * x) * 2.0 * 0.7 * x
    for s in shadows:
        np.testing.assert_allclose(s, g, rtol=1e-12)


def test_forward_batch_lanes_each_equal_a_width_one_call_through_the_rule():
    # sweeps: the rule writes a scratch array the kernel reuses every step,
    # and the kernel overwrites x; lanes 2.. run on a copy of the scratch.
    x = np.linspace(0.1, 1.0, 5)
    vs = [np.ones(5), np.linspace(-1.0, 1.0, 5), np.zeros(5)]
    for kernel, extra in ((sin_loss, ()), (sweeps, (Const(3),))):
        lanes = enzpy.autodiff(
            kernel,
            BatchDuplicated(x.copy(), [v.copy() for v in vs]),
            BatchDuplicated(0.7, (0.0, 0.5, 1.0)),
            *extra,
            mode=enzpy.Forward,
        )
        for v, da, got in zip(vs, (0.0, 0.5, 1.0), lanes, strict=True):
            one = enzpy.autodiff(
                kernel,
                Duplicated(x.copy(), v.copy()),
                Duplicated(0.7, da),
                *extra,
                mode=enzpy.Forward,
            )
            assert got == pytest.approx(one, rel=1e-13, abs=1e-15)


def test_a_mode_the_rule_has_no_function_for_is_refused_naming_the_rule():
    half_into, fwd = halving()
    enzpy.register_rule(half_into, forward=fwd)

    use = summed(half_into)

    x = np.ones(3)
    t = enzpy.autodiff(use, Duplicated(x, np.ones(3)), mode=enzpy.Forward)
    assert t == pytest.approx(1.5)
    with pytest.raises(enzpy.UnsupportedError, match="half_into.*augmented"):
        enzpy.autodiff(use, Duplicated(x, np.zeros(3)))


def test_an_exception_raised_by_a_rule_reaches_the_caller():
    @numba.njit
    def picky_into(x, out):
        for i in range(x.shape[0]):
            out[i] = x[i]

    def fwd(cfg, x, dx, out, dout):
        raise ValueError("picky refuses")

    def aug(cfg, x, out):
        for i in range(x.shape[0]):
            out[i] = x[i]
        return 0

    def rev(cfg, tape, x, dx, out, dout):
        raise ValueError("picky refuses the reverse")

    enzpy.register_rule(picky_into, forward=fwd, augmented=aug, reverse=rev)

    use = summed(picky_into)

    x = np.ones(3)
    with pytest.raises(ValueError, match="picky refuses the reverse"):
        enzpy.autodiff(use, Duplicated(x, np.zeros(3)))
    with pytest.raises(ValueError, match="picky refuses"):
        enzpy.autodiff(use, Duplicated(x, np.ones(3)), mode=enzpy.Forward)


def test_a_rule_returning_the_wrong_types_is_an_error_naming_the_rule():
    @numba.njit
    def copy_into(x, out):
        for i in range(x.shape[0]):
            out[i] = x[i]

    def aug(cfg, x, out):
        return 0

    def rev(cfg, tape, x, dx, out, dout):
        return 1.0  # no float argument: should return ()

    enzpy.register_rule(copy_into, augmented=aug, reverse=rev)

    use = summed(copy_into)

    with pytest.raises(enzpy.EnzpyTypeError, match="copy_into.*float64.*expected"):
        enzpy.autodiff(use, Duplicated(np.ones(3), np.zeros(3)))


def test_a_rule_is_compiled_only_where_a_call_carries_derivatives():
    # The rule's reverse does not type (it returns a float where () is
    # due): an error once a call needs it, nothing while every call of the
    # function is on constants.
    @numba.njit
    def doubled_into(x, out):
        for i in range(x.shape[0]):
            out[i] = 2.0 * x[i]

    def aug(cfg, x, out):
        doubled_into(x, out)
        return 0

    def rev(cfg, tape, x, dx, out, dout):
        return 1.0

    enzpy.register_rule(doubled_into, augmented=aug, reverse=rev)

    @numba.njit
    def on_constants(w, c):
        out = np.empty_like(c)
        doubled_into(c, out)
        s = 0.0
        for i in range(c.shape[0]):
            s += w[i] * w[i] * out[i]
        return s

    @numba.njit
    def on_both(w, c):
        out = np.empty_like(c)
        doubled_into(c, out)
        twice = np.empty_like(w)
        doubled_into(w, twice)
        return (out * twice).sum()

    w, c = np.array([0.5, -1.0, 2.0]), np.array([1.0, 3.0, -2.0])
    dw = np.zeros(3)
    enzpy.autodiff(on_constants, Duplicated(w, dw), Const(c))
    np.testing.assert_allclose(dw, 2.0 * w * 2.0 * c, rtol=1e-14)
    t = enzpy.autodiff(
        on_constants, Duplicated(w, np.array([1.0, 0.0, 2.0])), Const(c), mode=enzpy.Forward
    )
    assert t == pytest.approx(float(4.0 * w * c @ np.array([1.0, 0.0, 2.0])), rel=1e-14)
    with pytest.raises(enzpy.EnzpyTypeError, match="doubled_into.*float64.*expected"):
        enzpy.autodiff(on_both, Duplicated(w, np.zeros(3)), Const(c))


def test_a_kernel_calling_a_ruled_function_on_constants_and_on_active_data():
    # One call constant, one active, in one kernel, and the ruled function
    # run again on the rule's output: the rule serves the active call only.
    @numba.njit
    def pipeline(x, c, a):
        base = np.empty_like(c)
        scaled_squares(c, base, 1.5)
        out = np.empty_like(x)
        scaled_squares(x, out, a)
        again = np.empty_like(x)
        scaled_squares(out, again, 0.5)
        return (base * again).sum()

    x, c = np.array([0.3, -0.7, 1.1, 0.4]), np.array([1.0, 2.0, -1.0, 0.5])
    check = fd_gradient(lambda x, a: pipeline(x, c, a), x, 0.8)[1]
    dx = np.zeros(4)
    _, _, da = enzpy.autodiff(pipeline, Duplicated(x, dx), Const(c), Active(0.8))
    np.testing.assert_allclose(dx, check[0], rtol=1e-7, atol=1e-10)
    assert da == pytest.approx(check[1], rel=1e-7)
    v = np.array([0.2, -1.0, 0.5, 1.5])
    t = enzpy.autodiff(
        pipeline, Duplicated(x, v.copy()), Const(c), Duplicated(0.8, 0.3), mode=enzpy.Forward
    )
    assert t == pytest.approx(float(dx @ v) + da * 0.3, rel=1e-10)


def test_register_rule_refuses_bad_arguments():
    with pytest.raises(enzpy.EnzpyTypeError, match="forward="):
        enzpy.register_rule(scaled_squares)
    with pytest.raises(enzpy.EnzpyTypeError, match="both augmented= and reverse="):
        enzpy.register_rule(scaled_squares, augmented=_augmented)
    with pytest.raises(enzpy.EnzpyTypeError, match="njit function or a C function"):
        enzpy.register_rule(42, forward=_forward)


# A derivative used to take over, in the JIT's symbol table, the names of the
# numba functions copied into it (internal symbols are entered there too):
# numba code compiled later that called such a function reached the
# derivative's copy, under the engine's changed calling convention, and
# crashed. Run in a fresh process: the crash is a segfault.
_LATER_CALLER = """
import numba, numpy as np, enzpy
from enzpy import Duplicated, Const
from test_custom_rules import registered_halving

halve_into, weighted = registered_halving()
c = np.array([1.0, -2.0, 4.0])
dw = np.zeros(3)
enzpy.autodiff(weighted, Duplicated(np.ones(3), dw), Const(c))

@numba.njit
def later(x):
    out = np.empty_like(x)
    halve_into(x, out)
    return out.sum()

print(later(c), list(dw))
"""


def test_code_compiled_after_a_rule_derivative_can_call_the_ruled_function():
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = os.pathsep.join([str(Path(enzpy.__file__).parent.parent), str(Path(__file__).parent)])
    env = dict(os.environ, PYTHONPATH=path, ENZPY_DISABLE_CACHE="1")
    out = subprocess.run(
        [sys.executable, "-P", "-c", _LATER_CALLER],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "1.5"


# --- what cfg tells the rule ---------------------------------------------------


@numba.njit
def cfg_probe(a):
    return 2.0 * a


@numba.njit
def _probe_code(cfg):
    return 1000.0 * cfg.lane + 10.0 * cfg.width + (1.0 if cfg.result_active else 0.0)


def _probe_forward(cfg, a, da):
    # A deliberately wrong tangent that reports what cfg said.
    return 2.0 * a, _probe_code(cfg)


def _probe_augmented(cfg, a):
    return 2.0 * a, 0


def _probe_reverse(cfg, tape, a, da, ybar):
    return _probe_code(cfg)


enzpy.register_rule(
    cfg_probe, forward=_probe_forward, augmented=_probe_augmented, reverse=_probe_reverse
)


@numba.njit
def uses_probe(a):
    return cfg_probe(a)


@numba.njit
def drops_probe(a):
    cfg_probe(a)
    return 3.0 * a


def test_cfg_tells_the_rule_the_batch_width_its_lane_and_whether_the_result_is_used():
    assert enzpy.autodiff(uses_probe, Duplicated(0.5, 1.0), mode=enzpy.Forward) == 11.0
    lanes = enzpy.autodiff(uses_probe, BatchDuplicated(0.5, (1.0, 1.0, 1.0)), mode=enzpy.Forward)
    assert lanes == (31.0, 1031.0, 2031.0)
    (g,) = enzpy.autodiff(uses_probe, Active(0.5))
    assert g == 11.0
    (g,) = enzpy.autodiff(drops_probe, Active(0.5))
    assert g == 3.0 + 10.0  # width 1, lane 0, result unused
    (gs,) = enzpy.autodiff(uses_probe, Active(0.5), mode=enzpy.Reverse, ret=(1.0, 1.0))
    assert gs == (21.0, 1021.0)
