"""The finite-difference harness (tests/fd.py) checked against hand-written
vector-Jacobian products of numpy functions: it must accept a correct reverse mode
and reject each kind of mistake a reverse mode can make (wrong sign, missing term,
shadow overwritten instead of accumulated, output shadow not consumed, in-place
update accumulated instead of replaced, return seeded when it should not be, primal
results not written). Needs neither enzpy nor its engine."""

import fd
import numpy as np
import pytest


# f(x, out, a): out <- a sin(x) (write-only), returns sum(x^2); x is read-only.
def f_np(x, out, a):
    out[:] = a * np.sin(x)
    return float(np.sum(x**2))


def make_backend(
    sign_da=1.0,
    drop_2x=False,
    keep_dout=False,
    overwrite_dx=False,
    always_seed=False,
    run_primal=True,
    scale_da=1.0,
):
    def backend(f, specs, shadows, ret_active, with_primal):
        x = specs[0].value
        out = specs[1].value
        a = specs[2].value
        dx, dout = shadows[0], shadows[1]
        # computed in the arrays' own dtype, as a float32 kernel's reverse sweep is
        wout = dout.copy()
        dret = x.dtype.type(1.0 if (ret_active or always_seed) else 0.0)
        xf = x.copy()
        contrib = a * np.cos(xf) * wout + (0 * xf if drop_2x else 2 * xf * dret)
        if overwrite_dx:
            dx[...] = contrib
        else:
            dx[...] = dx + contrib
        da = sign_da * scale_da * np.sum(np.sin(xf) * wout)
        if not keep_dout:
            dout[...] = 0
        r = f(x, out, a) if run_primal else None
        return (None, None, x.dtype.type(da)), (r if with_primal else None)

    return backend


def args64(seed=0, n=7):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, n), np.zeros(n), 0.7


def test_accepts_correct_vjp():
    x, out, a = args64()
    trials = fd.check_vjp(
        f_np, fd.Dup(x), fd.Dup(out), fd.Active(a), backend=make_backend(), trials=3
    )
    assert len(trials) == 3
    # the output shadow was consumed, the input shadow accumulated
    t = trials[-1]
    assert np.all(t.shadows_out[1] == 0)
    assert not np.allclose(t.shadows_out[0], t.shadows_in[0])


def test_accepts_correct_vjp_with_primal_and_const_return():
    x, out, a = args64(1)
    fd.check_vjp(
        f_np, fd.Dup(x), fd.Dup(out), fd.Active(a), with_primal=True, backend=make_backend()
    )
    x, out, a = args64(2)
    fd.check_vjp(f_np, fd.Dup(x), fd.Dup(out), fd.Active(a), ret="const", backend=make_backend())


@pytest.mark.parametrize(
    "mistake",
    [
        dict(sign_da=-1.0),
        dict(drop_2x=True),
        dict(keep_dout=True),
        dict(overwrite_dx=True),
        dict(scale_da=1 + 1e-4),  # a small relative error is still caught
    ],
)
def test_rejects_wrong_vjp(mistake):
    x, out, a = args64(3)
    with pytest.raises(AssertionError, match="argument"):
        fd.check_vjp(f_np, fd.Dup(x), fd.Dup(out), fd.Active(a), backend=make_backend(**mistake))


def test_rejects_seeding_a_const_return():
    x, out, a = args64(4)
    with pytest.raises(AssertionError, match="argument 0"):
        fd.check_vjp(
            f_np,
            fd.Dup(x),
            fd.Dup(out),
            fd.Active(a),
            ret="const",
            backend=make_backend(always_seed=True),
        )


def test_rejects_missing_primal_results():
    x, out, a = args64(5)
    with pytest.raises(AssertionError, match="primal contents"):
        fd.check_vjp(
            f_np, fd.Dup(x), fd.Dup(out), fd.Active(a), backend=make_backend(run_primal=False)
        )


def test_float32_tolerance_accepts_float32_arithmetic_and_rejects_a_sign_error():
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, 50).astype(np.float32)
    out = np.zeros(50, np.float32)
    a = np.float32(0.7)
    fd.check_vjp(f_np, fd.Dup(x), fd.Dup(out), fd.Active(a), backend=make_backend())
    with pytest.raises(AssertionError):
        fd.check_vjp(f_np, fd.Dup(x), fd.Dup(out), fd.Active(a), backend=make_backend(sign_da=-1.0))


# in place: x <- a x^2, so dx <- 2 a x0 dx (replaced, not accumulated), da = sum x0^2 dx
def g_np(x, a):
    x[:] = a * x * x


def inplace_backend(accumulate):
    def backend(f, specs, shadows, ret_active, with_primal):
        x, a = specs[0].value, specs[1].value
        dx = shadows[0]
        x0 = x.copy()
        w = dx.copy()
        f(x, a)
        da = float(np.sum(x0 * x0 * w))
        dx[...] = (w if accumulate else 0) + 2 * a * x0 * w
        return (None, da), None

    return backend


def test_in_place_update_replaces_the_shadow():
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, 6)
    fd.check_vjp(g_np, fd.Dup(x), fd.Active(1.3), backend=inplace_backend(False))
    with pytest.raises(AssertionError, match="argument 0"):
        fd.check_vjp(g_np, fd.Dup(x), fd.Active(1.3), backend=inplace_backend(True))


def test_strided_shadow_factory_is_used():
    rng = np.random.default_rng(8)
    big = rng.uniform(-1, 1, 14)
    x = big[::2]
    seen = []

    def shadow(xv):
        s = np.zeros(2 * xv.shape[0])[1::2]
        seen.append(s)
        return s

    fd.check_vjp(
        f_np,
        fd.Dup(x, shadow=shadow),
        fd.Dup(np.zeros(7)),
        fd.Active(0.3),
        backend=make_backend(),
        trials=1,
    )
    assert len(seen) == 1 and seen[0].strides == (16,)


def rosen(x):
    return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def rosen_grad(x):
    g = np.zeros_like(x)
    g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return g


def test_check_gradient_against_analytic_rosenbrock():
    x = np.random.default_rng(9).uniform(-1.5, 1.5, 5)
    fd.check_gradient(rosen, x, grad=lambda f, x: rosen_grad(x))
    wrong = lambda f, x: rosen_grad(x) + np.r_[0, 0, 1e-3 * abs(rosen_grad(x)[2]) + 1e-6, 0, 0]
    with pytest.raises(AssertionError, match="argument 0"):
        fd.check_gradient(rosen, x, grad=wrong)


def test_check_gradient_scalars():
    f = lambda x, y: float(np.sin(x) * np.exp(y) + x**3)
    g = lambda f, x, y: (np.cos(x) * np.exp(y) + 3 * x**2, np.sin(x) * np.exp(y))
    fd.check_gradient(f, 0.4, -0.3, grad=g)
    with pytest.raises(AssertionError, match="argument 1"):
        fd.check_gradient(f, 0.4, -0.3, grad=lambda f, x, y: (g(f, x, y)[0], -g(f, x, y)[1]))


def f_fortran_only(x, out, a):
    # a kernel whose work depends on its argument's layout (x.ravel() copies
    # or not): the harness must evaluate it on arrays of the caller's layout
    assert x.flags.f_contiguous, "the harness changed the argument's layout"
    out[...] = a * np.sin(x)
    return float(np.sum(x**2))


def test_perturbed_arguments_keep_their_memory_layout():
    rng = np.random.default_rng(5)
    x = np.asfortranarray(rng.uniform(-1, 1, (3, 4)))
    out = np.asfortranarray(np.zeros((3, 4)))
    fd.check_vjp(f_fortran_only, fd.Dup(x), fd.Dup(out), fd.Active(0.6), backend=make_backend())
    fd.check_gradient(
        lambda x: f_fortran_only(x, np.zeros((3, 4), order="F"), 0.6),
        x,
        grad=lambda f, x: 2 * x,
    )
