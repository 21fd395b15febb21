"""enzpy.torch: njit kernels as torch.library custom ops with autograd, against
the kernel's plain call, central finite differences (bridge_kernels),
torch.autograd.gradcheck and enzpy's own derivatives; under torch.compile."""

from __future__ import annotations

import numba
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bridge_kernels import cases, fd_jacobian, is_float, stencil, update, vjp_ref  # noqa: E402

import enzpy  # noqa: E402
import enzpy.torch  # noqa: E402
from enzpy import Active, Duplicated  # noqa: E402

NAMES = ["stencil", "update", "window", "polar"]


@pytest.fixture(scope="module")
def bridged():
    """name -> (op, inputs as tensors, inputs as numpy, reference, FD results, FD Jacobian)."""
    out = {}
    for name, (f, outputs, inplace, xs, ref) in cases(np.random.default_rng(0)).items():
        op = enzpy.torch.kernel(f, outputs=outputs, inplace=inplace)
        y0, J = fd_jacobian(ref, xs)
        ts = [torch.tensor(np.asarray(x)) for x in xs]
        out[name] = (op, ts, xs, ref, y0, J)
    return out


def _results(r):
    return list(r) if isinstance(r, tuple) else [r]


def _close(a, b, rtol=1e-6):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, np.abs(b).max(initial=0)))


def _leaves(ts):
    return [t.clone().requires_grad_(True) if t.dtype.is_floating_point else t for t in ts]


@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_the_kernels_plain_call(bridged, name):
    op, ts, xs, ref, y0, J = bridged[name]
    for a, b in zip(_results(op(*ts)), y0, strict=True):
        _close(a, b, 1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_finite_differences_and_gradcheck(bridged, name):
    op, ts, xs, ref, y0, J = bridged[name]
    leaves = _leaves(ts)
    rng = np.random.default_rng(1)
    cts = [rng.standard_normal(y.shape) for y in y0]
    outs = _results(op(*leaves))
    torch.autograd.backward(outs, [torch.tensor(c) for c in cts])
    want = vjp_ref(J, cts)
    for k, t in enumerate(leaves):
        if is_float(xs[k]):
            _close(t.grad, want[k])
    assert torch.autograd.gradcheck(op, tuple(leaves))


def test_backward_equals_enzpy_reverse_mode(bridged):
    op, ts, xs, ref, y0, J = bridged["stencil"]
    u, a = _leaves(ts)
    (op(u, a) ** 2).sum().backward()
    du = np.zeros_like(xs[0])
    _, da, _ = enzpy.autodiff(
        stencil,
        Duplicated(xs[0].copy(), du),
        Active(float(xs[1])),
        Duplicated(np.zeros_like(xs[0]), 2 * y0[0]),
    )
    _close(u.grad, du, 1e-12)
    _close(a.grad, da, 1e-12)


@numba.njit
def addresses(u, out):
    """Writes where the kernel finds its arrays: u's data, then out's."""
    out[0] = u.ctypes.data
    out[1] = out.ctypes.data


def test_tensors_are_shared_with_the_kernel_not_copied():
    op = enzpy.torch.kernel(addresses, outputs={"out": lambda u: (2,)})
    u = torch.rand(9, dtype=torch.float64)
    out = op(u)
    assert int(out[0]) == u.data_ptr()  # the input: a view of the tensor
    assert int(out[1]) == out.data_ptr()  # the result: the array the kernel wrote


def test_in_place_argument_is_returned_updated_and_the_input_is_untouched(bridged):
    op, ts, xs, ref, y0, J = bridged["update"]
    a, x, y = _leaves(ts)
    before = y.detach().clone()
    new = op(a, x, y)
    assert torch.equal(y.detach(), before)
    _close(new, y0[0], 1e-15)
    new.sum().backward()
    _close(y.grad, xs[1])  # d(y*x + a sin x)/dy = x


def test_float32_tensors_give_float32_gradients(bridged):
    op, ts, xs, ref, y0, J = bridged["stencil"]
    u = torch.tensor(xs[0], dtype=torch.float32, requires_grad=True)
    a = torch.tensor(float(xs[1]), dtype=torch.float32, requires_grad=True)
    out = op(u, a)
    assert out.dtype == torch.float32
    (out**2).sum().backward()
    assert u.grad.dtype == torch.float32 and a.grad.dtype == torch.float32
    u64, a64 = u.detach().double().numpy(), np.float64(a.detach())
    _, J64 = fd_jacobian(ref, [u64, a64])
    w = 2 * ref(u64, a64)[0]
    _close(u.grad, w @ J64[0][0], 1e-4)
    _close(a.grad, w @ J64[0][1], 1e-4)


def test_torch_compile_traces_forward_and_backward_without_graph_breaks(bridged):
    op, ts, xs, ref, y0, J = bridged["stencil"]
    torch._dynamo.reset()
    loss = torch.compile(lambda u, a: (op(u, a) ** 2).sum(), fullgraph=True, backend="aot_eager")
    u, a = _leaves(ts)
    value = loss(u, a)
    value.backward()
    u2, a2 = _leaves(ts)
    (op(u2, a2) ** 2).sum().backward()
    _close(value, float((y0[0] ** 2).sum()), 1e-14)
    _close(u.grad, u2.grad.numpy(), 1e-14)
    _close(a.grad, a2.grad.numpy(), 1e-14)


def test_bad_inputs_raise_enzpy_errors_before_running(bridged):
    op, ts, xs, ref, y0, J = bridged["stencil"]
    with pytest.raises(enzpy.EnzpyTypeError, match="takes 2 inputs"):
        op(ts[0])
    with pytest.raises(enzpy.EnzpyTypeError, match="float32 or float64"):
        op(ts[0].half(), ts[1])
    with pytest.raises(enzpy.EnzpyTypeError, match="does not compile"):
        op(ts[0], torch.ones(2, dtype=torch.float64))  # an array where a scalar goes
    bad = enzpy.torch.kernel(update, outputs={"x": "y"})  # writes y, declared an input
    with pytest.raises(enzpy.EnzpyTypeError, match="inplace="):
        bad(torch.tensor(0.5, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
