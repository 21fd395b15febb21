"""enzpy.jax: njit kernels as JAX functions, under jit, grad, vjp, jvp and vmap,
against the kernel's plain call, central finite differences (bridge_kernels)
and enzpy's own derivatives."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from bridge_kernels import cases, fd_jacobian, is_float, jvp_ref, stencil, update, vjp_ref  # noqa: E402
from fd import fd_gradient  # noqa: E402

import enzpy  # noqa: E402
import enzpy.jax  # noqa: E402
from enzpy import Active, Duplicated  # noqa: E402

RTOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.fixture(scope="module")
def bridged(x64):
    """name -> (JAX function, inputs as jax arrays, reference, FD Jacobian)."""
    out = {}
    for name, (f, outputs, inplace, xs, ref) in cases(np.random.default_rng(0)).items():
        g = enzpy.jax.kernel(f, outputs=outputs, inplace=inplace)
        y0, J = fd_jacobian(ref, xs)
        out[name] = (g, [jnp.asarray(x) for x in xs], xs, ref, y0, J)
    return out


def _results(r):
    return list(r) if isinstance(r, tuple) else [r]


def _close(a, b, rtol=RTOL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, np.abs(b).max(initial=0)))


NAMES = ["stencil", "update", "window", "polar"]


@pytest.mark.parametrize("name", NAMES)
def test_jit_primal_equals_the_kernels_plain_call(bridged, name):
    g, jx, xs, ref, y0, J = bridged[name]
    for got in (_results(g(*jx)), _results(jax.jit(g)(*jx))):
        for a, b in zip(got, y0, strict=True):
            _close(a, b, 1e-15)


def _check_jvp_and_vjp(g, jx, xs, y0, J, seed):
    """jax.jvp (jitted) and a jitted vjp pullback of ``g`` with respect to its
    float inputs (the others held fixed) against the FD Jacobian ``J``."""
    rng = np.random.default_rng(seed)
    floats = [k for k, x in enumerate(xs) if is_float(x)]
    ts = [rng.standard_normal(np.shape(x)) if is_float(x) else None for x in xs]

    def gf(*fx):
        args = list(jx)
        for k, v in zip(floats, fx, strict=True):
            args[k] = v
        return g(*args)

    primals = tuple(jx[k] for k in floats)
    tangents = tuple(jnp.asarray(ts[k]) for k in floats)
    _, tan = jax.jit(lambda *p: jax.jvp(gf, p, tangents))(*primals)
    for a, b in zip(_results(tan), jvp_ref(J, ts), strict=True):
        _close(a, b)
    cts = [rng.standard_normal(y.shape) for y in y0]
    _, pull = jax.vjp(gf, *primals)
    got = jax.jit(pull)(tuple(cts) if len(cts) > 1 else cts[0])
    want = vjp_ref(J, cts)
    for k, a in zip(floats, got, strict=True):
        _close(a, want[k])


@pytest.mark.parametrize("name", NAMES)
def test_jvp_and_jitted_vjp_match_finite_differences(bridged, name):
    g, jx, xs, ref, y0, J = bridged[name]
    _check_jvp_and_vjp(g, jx, xs, y0, J, seed=1)


def test_grad_of_a_loss_equals_enzpy_reverse_mode(bridged):
    g, jx, xs, ref, y0, J = bridged["stencil"]
    u, a = xs

    def loss(u, a):
        return jnp.sum(g(u, a) ** 2)

    gu, ga = jax.jit(jax.grad(loss, argnums=(0, 1)))(*jx)
    # enzpy directly: the cotangent of out is 2 * out
    du = np.zeros_like(u)
    _, da, _ = enzpy.autodiff(
        stencil, Duplicated(u.copy(), du), Active(float(a)), Duplicated(np.zeros_like(u), 2 * y0[0])
    )
    _close(gu, du, 1e-12)
    _close(ga, da, 1e-12)


def test_jacfwd_and_jacrev_batch_lanes_match_finite_differences(bridged):
    """vmap over tangents (jacfwd) and cotangents (jacrev) of one primal:
    enzpy's batch mode, in chunks of lanes (7 and 14 lanes: padded chunks)."""
    g, jx, xs, ref, y0, J = bridged["polar"]
    for jac in (jax.jacfwd, jax.jacrev):
        got = jax.jit(jac(g, argnums=0))(*jx)
        for a, b in zip(_results(got), [row[0] for row in J], strict=True):
            _close(a, b)
    # 2 results x 7 entries = 14 cotangent lanes at once
    got = jax.jacrev(lambda x, y: jnp.concatenate(g(x, y)))(*jx)
    _close(got, np.concatenate([J[0][0], J[1][0]]))


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_primals_equals_each_example(bridged, name):
    g, jx, xs, ref, y0, J = bridged[name]
    rng = np.random.default_rng(2)
    B = 3
    # batch every float input
    axes = tuple(0 if is_float(x) else None for x in xs)
    batch = [
        jnp.asarray(
            np.stack([np.asarray(x) + 0.1 * rng.standard_normal(np.shape(x)) for _ in range(B)])
        )
        if is_float(x)
        else jx[k]
        for k, x in enumerate(xs)
    ]
    got = _results(jax.jit(jax.vmap(g, in_axes=axes))(*batch))
    for b in range(B):
        want = ref(
            *[np.asarray(v[b]) if ax == 0 else xs[k] for k, (v, ax) in enumerate(zip(batch, axes))]
        )
        for a, w in zip(got, want, strict=True):
            _close(a[b], w, 1e-15)


def test_vmap_of_grad_with_a_shared_scalar_parameter(bridged):
    g, jx, xs, ref, y0, J = bridged["stencil"]
    u, a = xs
    U = np.stack([u, 2 * u, -u])

    def loss(u, a):
        return jnp.sum(jnp.sin(g(u, a)))

    gu, ga = jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None))(jnp.asarray(U), jx[1])
    for b in range(3):
        fu, fa = jax.grad(loss, argnums=(0, 1))(jnp.asarray(U[b]), jx[1])
        _close(gu[b], fu, 1e-14)
        _close(ga[b], fa, 1e-14)
        # and against finite differences of the plain kernel
        _, Jb = fd_jacobian(ref, [U[b], a])
        w = np.cos(ref(U[b], a)[0])
        _close(gu[b], w @ Jb[0][0])
        _close(ga[b], w @ Jb[0][1])


def test_in_place_argument_is_returned_updated_and_the_input_is_untouched(bridged):
    g, jx, xs, ref, y0, J = bridged["update"]
    y = np.asarray(jx[2]).copy()
    got = g(*jx)
    np.testing.assert_array_equal(np.asarray(jx[2]), y)
    _close(got, y0[0], 1e-15)
    gy = jax.grad(lambda a, x, y: jnp.sum(g(a, x, y)), argnums=2)(*jx)
    _close(gy, np.asarray(xs[1]))  # d(y*x + a sin x)/dy = x


def test_float32_kernels_give_float32_derivatives(bridged):
    g, jx, xs, ref, y0, J = bridged["stencil"]
    u32, a32 = jnp.asarray(xs[0], jnp.float32), jnp.asarray(xs[1], jnp.float32)
    out = g(u32, a32)
    assert out.dtype == jnp.float32
    gu, ga = jax.grad(lambda u, a: jnp.sum(g(u, a) ** 2), argnums=(0, 1))(u32, a32)
    assert gu.dtype == jnp.float32 and ga.dtype == jnp.float32
    u, a = np.float64(0) + np.asarray(u32, np.float64), np.float64(a32)
    w = 2 * ref(u, a)[0]
    _, J64 = fd_jacobian(ref, [u, a])
    _close(gu, w @ J64[0][0], 1e-4)
    _close(ga, w @ J64[0][1], 1e-4)


def test_bad_inputs_raise_enzpy_errors_before_running(bridged):
    g, jx, xs, ref, y0, J = bridged["stencil"]
    with pytest.raises(enzpy.EnzpyTypeError, match="takes 2 inputs"):
        g(jx[0])
    with pytest.raises(enzpy.EnzpyTypeError, match="float32 or float64"):
        g(jnp.asarray(xs[0], jnp.float16), jx[1])
    with pytest.raises(enzpy.EnzpyValueError, match="no parameter 'q'"):
        enzpy.jax.kernel(ref, outputs={"q": "u"})


def test_a_kernel_writing_an_input_is_refused_with_the_fix():
    g = enzpy.jax.kernel(update, outputs={"x": "y"})  # y is written but declared input
    with pytest.raises(enzpy.EnzpyTypeError, match="inplace="):
        g(jnp.asarray(0.5), jnp.ones(3))


# --- the paths: via="auto" (above) runs unbatched calls through the XLA FFI
# handler and vmap through the host callback; "callback" and "ffi" force one.


@pytest.fixture(scope="module")
def via_callback(x64):
    """name -> (JAX function via the host callback, inputs, inputs as numpy,
    reference, FD results, Jacobian)."""
    out = {}
    for name, (f, outputs, inplace, xs, ref) in cases(np.random.default_rng(3)).items():
        g = enzpy.jax.kernel(f, outputs=outputs, inplace=inplace, via="callback")
        y0, J = fd_jacobian(ref, xs)
        out[name] = (g, [jnp.asarray(x) for x in xs], xs, ref, y0, J)
    return out


def _targets(lowered) -> set[str]:
    return set(re.findall(r"custom_call @(\w+)", lowered.as_text()))


def test_auto_path_is_ffi_unbatched_and_the_host_callback_under_vmap(bridged):
    g, jx, *_ = bridged["stencil"]
    grad = jax.jit(jax.grad(lambda u, a: jnp.sum(g(u, a)))).lower(*jx)
    assert any(t.startswith("enzpy_") for t in _targets(grad))
    assert not any("callback" in t for t in _targets(grad))
    jac = jax.jit(jax.jacfwd(g)).lower(*jx)
    assert any("callback" in t for t in _targets(jac))


@pytest.mark.parametrize("name", NAMES)
def test_callback_path_primal_jvp_and_vjp_match_the_kernel_and_fd(via_callback, name):
    g, jx, xs, ref, y0, J = via_callback[name]
    assert not any(t.startswith("enzpy_") for t in _targets(jax.jit(g).lower(*jx)))
    for a, b in zip(_results(jax.jit(g)(*jx)), y0, strict=True):
        _close(a, b, 1e-15)
    _check_jvp_and_vjp(g, jx, xs, y0, J, seed=4)


def test_ffi_path_under_vmap_of_grad_equals_each_example():
    """via='ffi' keeps the FFI handler under vmap (XLA calls it per element)."""
    g = enzpy.jax.kernel(stencil, outputs={"out": "u"}, via="ffi")
    rng = np.random.default_rng(5)
    u, a = rng.uniform(-1, 1, 7), 0.7
    U = np.stack([u, 2 * u, -u])

    def loss(u, a):
        return jnp.sum(jnp.sin(g(u, a)))

    vg = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None)))
    assert not any("callback" in t for t in _targets(vg.lower(jnp.asarray(U), jnp.asarray(a))))
    gu, ga = vg(jnp.asarray(U), jnp.asarray(a))
    ref = cases(rng)["stencil"][4]
    for b in range(3):
        _, Jb = fd_jacobian(ref, [U[b], np.float64(a)])
        w = np.cos(ref(U[b], np.float64(a))[0])
        _close(gu[b], w @ Jb[0][0])
        _close(ga[b], w @ Jb[0][1])


@numba.njit
def cubes(x, s):
    """A 0-d output: s = sum of x^3."""
    acc = 0.0
    for i in range(x.shape[0]):
        acc += x[i] ** 3
    s[()] = acc


def test_a_0d_output_runs_through_the_host_callback_under_auto():
    g = enzpy.jax.kernel(cubes, outputs={"s": lambda x: ()})
    x = np.random.default_rng(6).uniform(-1, 1, 5)
    assert float(g(jnp.asarray(x))) == pytest.approx(np.sum(x**3), rel=1e-14)
    grad = jax.jit(jax.grad(g))
    assert any("callback" in t for t in _targets(grad.lower(jnp.asarray(x))))
    _, fd = fd_gradient(lambda x: float(np.sum(x**3)), x)
    _close(grad(jnp.asarray(x)), fd[0])
    with pytest.raises(enzpy.EnzpyTypeError, match="rank 1 or more"):
        enzpy.jax.kernel(cubes, outputs={"s": lambda x: ()}, via="ffi")(jnp.asarray(x))


def test_via_must_name_a_path():
    with pytest.raises(enzpy.EnzpyValueError, match="via must be"):
        enzpy.jax.kernel(stencil, outputs={"out": "u"}, via="xla")
