"""The error contract (docs/design.md §4): wrong annotations and shadows raise
EnzpyTypeError / EnzpyValueError naming the argument's position; numba's compile
errors come wrapped in CompilationError with numba's message; active data stored into
a Const argument raises ActivityError naming the argument; a call the engine cannot
differentiate raises UnsupportedError naming the callee and the Python line. Every
failed call leaves the user's arrays -- values and shadows -- exactly as they were."""

import collections
import ctypes
import inspect
import math
import os

import fd
import library_kernels
import llvmlite.binding as llvm
import numba
import numpy as np
import pytest
from numba import types
from numba.core.errors import NumbaError, TypingError

import enzpy
from enzpy import Active, Const, Duplicated, DuplicatedNoNeed


def rng(seed):
    return np.random.default_rng(seed)


class Snapshot:
    """Copies of arrays, to check later that they were left exactly as they were."""

    def __init__(self, *arrays):
        self.arrays = arrays
        self.copies = [a.copy() for a in arrays]

    def assert_unchanged(self):
        for k, (a, c) in enumerate(zip(self.arrays, self.copies)):
            assert a.dtype == c.dtype and a.shape == c.shape
            assert np.array_equal(a, c, equal_nan=True), f"array {k} was modified"


def line_in(func, needle):
    """Absolute line number of the (only) source line of ``func`` containing needle."""
    func = getattr(func, "py_func", func)
    lines, first = inspect.getsourcelines(func)
    hits = [first + k for k, l in enumerate(lines) if needle in l]
    assert len(hits) == 1, (needle, hits)
    return hits[0]


def same_file(path):
    return path is not None and os.path.basename(path) == os.path.basename(__file__)


def mentions_position(err, i):
    # enzpy numbers arguments from 0: "argument 2"
    return f"argument {i}" in str(err)


@numba.njit
def three_args(a, b, x):
    s = 0.0
    for i in range(x.shape[0]):
        s += a * x[i] * x[i] + b
    return s


# ------------------------------------------------------ annotations and shadows


def test_active_on_an_array():
    x = rng(0).uniform(-1, 1, 5)
    snap = Snapshot(x)
    with pytest.raises(enzpy.EnzpyTypeError) as ei:
        enzpy.autodiff(three_args, Active(0.5), Const(1.0), Active(x))
    assert isinstance(ei.value, TypeError) and isinstance(ei.value, enzpy.EnzpyError)
    assert mentions_position(ei.value, 2) and "Active" in str(ei.value)
    snap.assert_unchanged()


def test_duplicated_on_a_scalar():
    with pytest.raises(enzpy.EnzpyTypeError) as ei:
        enzpy.autodiff(three_args, Active(0.5), Const(1.0), Duplicated(1.5, 0.0))
    assert mentions_position(ei.value, 2)


def test_duplicated_no_need_on_a_scalar():
    with pytest.raises(enzpy.EnzpyTypeError) as ei:
        enzpy.autodiff(three_args, Active(0.5), Const(1.0), DuplicatedNoNeed(1.5, 0.0))
    assert mentions_position(ei.value, 2)


def test_shadow_of_wrong_shape():
    x = rng(1).uniform(-1, 1, 5)
    dx = rng(2).standard_normal(7)
    snap = Snapshot(x, dx)
    with pytest.raises(enzpy.EnzpyValueError) as ei:
        enzpy.autodiff(three_args, Active(0.5), Const(1.0), Duplicated(x, dx))
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, enzpy.EnzpyError)
    assert mentions_position(ei.value, 2)
    assert "(5,)" in str(ei.value)  # what was expected
    snap.assert_unchanged()


def test_shadow_of_wrong_dtype():
    x = rng(3).uniform(-1, 1, 5)
    dx = np.ones(5, np.float32)
    snap = Snapshot(x, dx)
    with pytest.raises(enzpy.EnzpyTypeError) as ei:
        enzpy.autodiff(three_args, Active(0.5), Const(1.0), Duplicated(x, dx))
    assert mentions_position(ei.value, 2) and "float64" in str(ei.value)
    snap.assert_unchanged()


def test_shadow_that_is_not_an_array():
    x = rng(4).uniform(-1, 1, 5)
    snap = Snapshot(x)
    with pytest.raises(enzpy.EnzpyTypeError) as ei:
        enzpy.autodiff(three_args, Active(0.5), Const(1.0), Duplicated(x, [0.0] * 5))
    assert mentions_position(ei.value, 2)
    snap.assert_unchanged()


def test_int_array_duplicated():
    x = np.arange(5)
    dx = np.zeros(5, dtype=x.dtype)
    snap = Snapshot(x, dx)
    with pytest.raises(enzpy.EnzpyTypeError) as ei:
        enzpy.autodiff(three_args, Active(0.5), Const(1.0), Duplicated(x, dx))
    assert mentions_position(ei.value, 2)
    snap.assert_unchanged()


def test_int_scalar_active():
    x = rng(5).uniform(-1, 1, 5)
    dx = np.zeros(5)
    snap = Snapshot(x, dx)
    with pytest.raises(enzpy.EnzpyTypeError) as ei:
        enzpy.autodiff(three_args, Active(2), Const(1.0), Duplicated(x, dx))
    assert mentions_position(ei.value, 0)
    snap.assert_unchanged()


def test_shadow_sharing_memory_with_its_array():
    x = rng(6).uniform(-1, 1, 5)
    snap = Snapshot(x)
    with pytest.raises(enzpy.EnzpyValueError) as ei:
        enzpy.autodiff(three_args, Active(0.5), Const(1.0), Duplicated(x, x))
    assert mentions_position(ei.value, 2)
    snap.assert_unchanged()


# ---------------------------------------------------------------- numba errors


def _does_not_type(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i]
    return s + x.nonexistent_attr


@pytest.mark.parametrize("as_dispatcher", [True, False], ids=["njit", "plain"])
def test_numba_compile_failure_is_wrapped(as_dispatcher):
    x = rng(7).uniform(-1, 1, 5)
    dx = rng(8).standard_normal(5)
    with pytest.raises(TypingError) as ref:
        numba.njit(_does_not_type)(x.copy())
    numba_line = next(l for l in str(ref.value).splitlines() if "nonexistent_attr" in l)
    f = numba.njit(_does_not_type) if as_dispatcher else _does_not_type
    snap = Snapshot(x, dx)
    with pytest.raises(enzpy.CompilationError) as ei:
        enzpy.autodiff(f, Duplicated(x, dx))
    e = ei.value
    assert isinstance(e, enzpy.EnzpyError)
    assert numba_line.strip() in str(e), "numba's original message is kept"
    cause = getattr(e, "numba_error", None) or e.__cause__
    assert isinstance(cause, NumbaError)
    snap.assert_unchanged()


# ----------------------------------------------------------------- activity


@numba.njit
def stores_into_const(x, scratch_buf):
    s = 0.0
    for i in range(x.shape[0]):
        scratch_buf[i] = 2.0 * x[i]
    for i in range(x.shape[0]):
        s += scratch_buf[i] * scratch_buf[i]
    return s


@numba.njit
def stores_active_scalar_into_const(a, scratch_buf):
    scratch_buf[0] = a * a
    return scratch_buf[0] + 1.0


def test_active_array_data_stored_into_const_argument():
    x = rng(9).uniform(-1, 1, 6)
    dx = rng(10).standard_normal(6)
    buf = rng(11).standard_normal(6)
    snap = Snapshot(x, dx, buf)
    with pytest.raises(enzpy.ActivityError) as ei:
        enzpy.autodiff(stores_into_const, Duplicated(x, dx), Const(buf))
    e = ei.value
    assert isinstance(e, enzpy.EnzpyError)
    assert "scratch_buf" in str(e)
    if e.line is not None:
        assert e.line == line_in(stores_into_const, "scratch_buf[i] = 2.0")
        assert same_file(e.file)
    snap.assert_unchanged()


def test_active_scalar_stored_into_const_argument():
    buf = rng(12).standard_normal(3)
    snap = Snapshot(buf)
    with pytest.raises(enzpy.ActivityError) as ei:
        enzpy.autodiff(stores_active_scalar_into_const, Active(0.7), buf)
    assert "scratch_buf" in str(ei.value)
    snap.assert_unchanged()


# ------------------------------------------------------------- unsupported calls

# An external C function with no body and no derivative rule: a ctypes callback
# registered under a name of our own, declared to numba as an ExternalFunction.
_OPAQUE_CFUNC = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_double)(lambda v: 3.0 * v)
llvm.add_symbol("enzpy_test_opaque_fn", ctypes.cast(_OPAQUE_CFUNC, ctypes.c_void_p).value)
opaque = types.ExternalFunction("enzpy_test_opaque_fn", types.float64(types.float64))


@numba.njit
def calls_external(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += math.sin(x[i])
        s += opaque(x[i] * x[i])
    return s


def test_call_without_body_or_rule_is_unsupported():
    x = rng(13).uniform(-1, 1, 5)
    assert calls_external(x) == pytest.approx(np.sum(np.sin(x) + 3 * x * x))
    dx = rng(14).standard_normal(5)
    snap = Snapshot(x, dx)
    with pytest.raises(enzpy.UnsupportedError) as ei:
        enzpy.autodiff(calls_external, Duplicated(x, dx))
    e = ei.value
    assert "enzpy_test_opaque_fn" in str(e)
    assert e.line == line_in(calls_external, "opaque(x[i]")
    assert same_file(e.file)
    snap.assert_unchanged()


def test_call_without_body_on_inactive_data_is_differentiated_or_named_unsupported():
    # the same external call on constant data needs no derivative; an engine that
    # cannot prove the call harmless must still name it rather than guess
    @numba.njit
    def f(x, c):
        s = 0.0
        for i in range(x.shape[0]):
            s += x[i] * opaque(c[i])
        return s

    x, c = rng(15).uniform(-1, 1, 5), rng(16).uniform(-1, 1, 5)
    dx = np.zeros(5)
    snap = Snapshot(x, c, dx)
    try:
        enzpy.autodiff(f, Duplicated(x, dx), Const(c))
    except enzpy.UnsupportedError as e:
        assert "enzpy_test_opaque_fn" in str(e)
        assert e.line == line_in(f, "opaque(c[i])")
        snap.assert_unchanged()
    else:
        np.testing.assert_allclose(dx, 3 * c, rtol=1e-14)


@numba.njit
def inner_helper_fn(v):
    return v * v + math.sin(v)


@numba.njit
def outer_calls_helper(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += inner_helper_fn(x[i])
    return s


def test_call_to_other_njit_function_is_differentiated_or_named_unsupported():
    # docs/design.md wants njit -> njit calls differentiated; until they are, the call
    # must be reported, naming the callee and the line -- never a wrong derivative
    x = rng(17).uniform(-1, 1, 6)
    dx = rng(18).standard_normal(6)
    snap = Snapshot(x, dx)
    try:
        enzpy.autodiff(outer_calls_helper, Duplicated(x, dx))
    except enzpy.UnsupportedError as e:
        assert "inner_helper_fn" in str(e)
        assert e.line == line_in(outer_calls_helper, "inner_helper_fn(x[i])")
        assert same_file(e.file)
        snap.assert_unchanged()
    else:
        np.testing.assert_allclose(dx, snap.copies[1] + 2 * x + np.cos(x), rtol=1e-12)
        fd.check_vjp(outer_calls_helper, fd.Dup(x))


# ------------------------------------------------------- exceptions in the kernel


@numba.njit
def raises_on_negative(x, out):
    for i in range(x.shape[0]):
        if x[i] < 0.0:
            raise ValueError("negative input")
        out[i] = math.sqrt(x[i])


def test_exception_raised_by_the_kernel_propagates_and_leaves_shadows_alone():
    x = np.array([0.5, 1.5, -1.0, 2.0])
    out = np.zeros(4)
    dx, dout = rng(19).standard_normal(4), rng(20).standard_normal(4)
    shadows = Snapshot(x, dx, dout)
    with pytest.raises(ValueError, match="negative input"):
        enzpy.autodiff(raises_on_negative, Duplicated(x, dx), Duplicated(out, dout))
    shadows.assert_unchanged()
    # and the derivative works where the kernel does not raise
    x[2] = 1.0
    fd.check_vjp(raises_on_negative, fd.Dup(x), fd.Dup(np.zeros(4)))


# -- optional returns (issue #10) -------------------------------------------------


@numba.njit
def positive_part_or_nothing(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i]
    if s > 0:
        return s * s


@pytest.mark.parametrize(
    "mode", [enzpy.Reverse, enzpy.ReverseWithPrimal, enzpy.Forward, enzpy.ForwardWithPrimal]
)
def test_optional_float_return_is_refused_naming_the_function_and_the_fix(mode):
    x, dx = np.array([1.0, 2.0]), np.array([0.5, 0.5])
    with pytest.raises(enzpy.UnsupportedError) as info:
        enzpy.autodiff(positive_part_or_nothing, Duplicated(x, dx), mode=mode)
    msg = str(info.value)
    assert "positive_part_or_nothing" in msg and "None" in msg and "return 0.0" in msg
    assert same_file(info.value.file)
    np.testing.assert_array_equal(dx, [0.5, 0.5])
    np.testing.assert_array_equal(x, [1.0, 2.0])
    with pytest.raises(enzpy.UnsupportedError, match="every path"):
        enzpy.gradient(positive_part_or_nothing, x)
    with pytest.raises(enzpy.UnsupportedError, match="every path"):
        enzpy.hvp(positive_part_or_nothing, x, np.ones(2))


# -- values enzpy cannot pass faithfully: clear errors, not crashes --------------

_Point = collections.namedtuple("_Point", "a b")


@numba.njit
def point_product(p):
    return p.a * p.b * p.b


def test_named_tuple_of_floats_in_forward_mode_behaves_like_a_tuple():
    p = _Point(2.0, 3.0)
    grad = (p.b * p.b, 2 * p.a * p.b)  # d/d(a, b) of a b^2
    for tangent in [_Point(1.0, 0.5), (1.0, 0.5)]:
        t = enzpy.autodiff(point_product, Duplicated(p, tangent), mode=enzpy.Forward)
        assert t == pytest.approx(grad[0] * 1.0 + grad[1] * 0.5, rel=1e-15)
    ts = enzpy.autodiff(
        point_product,
        enzpy.BatchDuplicated(p, ((1.0, 0.0), _Point(0.0, 1.0))),
        mode=enzpy.Forward,
    )
    assert ts == pytest.approx(grad, rel=1e-15)
    (adj,) = enzpy.autodiff(point_product, Active(p))
    assert tuple(adj) == pytest.approx(grad, rel=1e-15)


@numba.njit
def sum_of_star_args(*xs):
    return xs[0][0] + xs[1][0]


def test_kernel_with_star_args_is_refused_naming_it():
    x, dx = np.ones(2), np.zeros(2)
    with pytest.raises(enzpy.UnsupportedError, match=r"sum_of_star_args takes \*xs"):
        enzpy.autodiff(sum_of_star_args, Duplicated(x, dx), Duplicated(x.copy(), np.zeros(2)))
    np.testing.assert_array_equal(dx, 0.0)


@numba.njit
def first_times_sum(x, y):
    return x[0] * y.sum()


class _Tagged(np.ndarray):
    pass


def _masked(a):
    return np.ma.MaskedArray(a, mask=np.zeros(a.shape, bool))


@pytest.mark.parametrize(
    "args, position",
    [
        ((lambda x, dx, y: (Duplicated(_masked(x), dx), y)), 0),
        ((lambda x, dx, y: (Duplicated(x, _masked(dx)), y)), 0),
        ((lambda x, dx, y: (Duplicated(x, dx), _masked(y))), 1),
        ((lambda x, dx, y: (Duplicated(x, dx), y.view(_Tagged))), 1),
        ((lambda x, dx, y: (enzpy.BatchDuplicated(x, (dx, _masked(dx.copy()))), y)), 0),
    ],
)
def test_ndarray_subclasses_are_refused_naming_the_argument(args, position):
    x, dx, y = np.ones(2), np.zeros(2), np.ones(2)
    with pytest.raises(enzpy.EnzpyTypeError) as info:
        enzpy.autodiff(first_times_sum, *args(x, dx, y))
    assert mentions_position(info.value, position)
    assert "MaskedArray" in str(info.value) or "_Tagged" in str(info.value)
    np.testing.assert_array_equal(dx, 0.0)


def test_ndarray_subclass_inside_a_const_tuple_is_refused():
    with pytest.raises(enzpy.EnzpyTypeError, match="argument 1.*MaskedArray"):
        enzpy.autodiff(
            first_times_sum, Duplicated(np.ones(2), np.zeros(2)), Const((_masked(np.ones(2)),))
        )


def test_ndarray_subclasses_are_refused_by_the_drivers():
    x = _masked(np.ones(2))
    with pytest.raises(enzpy.EnzpyTypeError, match="MaskedArray"):
        enzpy.jacobian(first_times_sum, x, np.ones(2))
    with pytest.raises(enzpy.EnzpyTypeError, match="MaskedArray"):
        enzpy.hessian(first_times_sum, np.ones(2), x)


# Refused constructs name the Python construct and its line, never an LLVM value
# name (%wide.load.i54, %.631) or a symbol of numba's runtime (numba_*, NRT_*).
_X = np.array([0.13, 0.27, 0.41, 0.58, 0.72, 0.86])  # off np.interp's knots


@numba.njit
def uses_diff(x):
    return np.sum(np.diff(x) ** 2)  # <- construct


@numba.njit
def uses_kron(x):
    return np.sum(np.kron(x[:2], x[2:4]))  # <- construct


@numba.njit
def uses_cross(x):
    return np.sum(np.cross(x[:3], x[3:]))  # <- construct


@numba.njit
def uses_diag(x):
    return np.sum(np.diag(x) @ x)  # <- construct


@numba.njit
def uses_convolve(x):
    return np.sum(np.convolve(x, x))  # <- construct


@numba.njit
def uses_interp(x):
    return np.sum(np.interp(x, np.linspace(0.0, 1.0, 6), x))  # <- construct


@numba.njit
def uses_matrix_two_norm(x):
    return np.linalg.norm(np.outer(x, x), 2)  # <- construct


@numba.njit
def uses_solve_of_active(x):
    return np.sum(np.linalg.solve(np.diag(x), x))  # <- construct


@numba.njit
def uses_gamma(x):
    return math.gamma(x[0])  # <- construct


_CONSTRUCTS = [
    uses_diff,
    uses_kron,
    uses_cross,
    uses_diag,
    uses_convolve,
    uses_interp,
    uses_matrix_two_norm,
    uses_solve_of_active,
    uses_gamma,
]


@pytest.mark.parametrize("f", _CONSTRUCTS, ids=[f.py_func.__name__ for f in _CONSTRUCTS])
@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward], ids=["reverse", "forward"])
def test_errors_name_the_construct_and_line_not_internals(f, mode):
    x = _X.copy()
    try:
        if mode is enzpy.Reverse:
            fd.check_vjp(f, fd.Dup(x))
        else:
            t = enzpy.autodiff(f, Duplicated(x, np.ones_like(x)), mode=mode)
            g = np.asarray(fd.fd_gradient(f, _X.copy())[1][0])
            assert t == pytest.approx(g.sum(), rel=1e-6, abs=1e-8)
    except enzpy.UnsupportedError as e:
        assert e.line == line_in(f, "# <- construct"), e
        assert e.file is not None and os.path.samefile(e.file, __file__), e
        for internal in ("%", "numba_", "NRT_", "llvm."):
            assert internal not in e.message, f"{internal!r} in: {e.message}"


@numba.njit
def _objmode_kernel(x, y):
    with numba.objmode():
        y[:] = np.sin(x)
    return np.sum(y * y)


@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward])
def test_object_mode_block_is_refused_naming_its_line(mode):
    x, y = np.linspace(0, 1, 4), np.zeros(4)
    line = inspect.getsourcelines(_objmode_kernel.py_func)[1] + 2
    with pytest.raises(enzpy.UnsupportedError, match="numba.objmode") as info:
        enzpy.autodiff(
            _objmode_kernel, Duplicated(x, np.zeros(4)), Duplicated(y, np.ones(4)), mode=mode
        )
    assert info.value.line == line
    assert info.value.file == __file__
    np.testing.assert_array_equal(y, 0.0)  # refused before running anything


@numba.njit
def picks_one_of_two(x, w, first):
    p = x if first else w
    s = 0.0
    for i in range(p.size):
        s += p[i] * x[i]
    return s


@pytest.mark.parametrize("mode", [enzpy.Reverse, enzpy.Forward], ids=["reverse", "forward"])
def test_a_pointer_to_either_a_differentiable_or_a_constant_array_is_refused(mode):
    x, w = np.linspace(0.5, 1.5, 4), np.linspace(-1.0, 1.0, 4)
    dx = np.ones(4) if mode is enzpy.Forward else np.zeros(4)
    with pytest.raises(enzpy.UnsupportedError, match="either differentiable or constant") as e:
        enzpy.autodiff(picks_one_of_two, Duplicated(x, dx), Const(w), Const(True), mode=mode)
    assert e.value.line is not None


@numba.njit
def calls_a_library_function(x):
    return library_kernels.library_step(x[0]) + x[1]  # the kernel's line


def test_an_error_inside_a_library_function_also_names_the_kernel_line_that_called_it():
    line = inspect.getsource(calls_a_library_function).splitlines()[2]
    assert "the kernel's line" in line
    kernel_line = calls_a_library_function.py_func.__code__.co_firstlineno + 2
    with pytest.raises(enzpy.UnsupportedError) as e:
        enzpy.autodiff(calls_a_library_function, Duplicated(np.ones(2), np.zeros(2)))
    msg = str(e.value)
    assert "library_kernels.py" in msg.split(":")[0], msg  # the library's own line first
    assert f"(called from {__file__}:{kernel_line})" in msg, msg


@numba.njit
def squares_in_a_dict(x):
    d = {}
    for i in range(x.size):
        d[i] = x[i] ** 2
    s = 0.0
    for i in range(x.size):
        s += d[i]
    return s


def test_a_typed_dict_holding_active_values_is_refused_by_name():
    x = np.ones(3)
    with pytest.raises(enzpy.UnsupportedError, match=r"typed dict \(a \{\} literal"):
        enzpy.autodiff(squares_in_a_dict, Duplicated(x, np.zeros(3)))


@numba.njit
def _sine_sum(x, a):
    s = 0.0
    for i in range(x.shape[0]):
        s += math.sin(x[i]) * a
    return s


def test_a_compiled_derivative_called_with_arguments_it_was_not_made_for():
    x = rng(30).uniform(-1, 1, 4)
    d = enzpy.derivative(_sine_sum, Duplicated(x, np.zeros(4)), Active(1.0))
    with pytest.raises(
        enzpy.EnzpyTypeError, match=r"takes 4 arguments \(x0, dx0, x1, dret\), got 3$"
    ):
        d(x, np.zeros(4), 1.0)
    with pytest.raises(TypeError, match=r"\(x1\): argument 1 has type unicode_type"):
        d(x, np.zeros(4), "a", 1.0)
    with pytest.raises(TypeError, match=r"\(dx0\): the shadow of argument 0 must be"):
        d(x, np.zeros(4, np.float32), 1.0, 1.0)

    @numba.njit
    def caller(x, dx):
        return d(x, dx, 1.0)

    # njit callers get numba's report, with the wrapper's message in it
    with pytest.raises(TypingError, match=r"takes 4 arguments \(x0, dx0, x1, dret\), got 3"):
        caller(x, np.zeros(4))
    dx = np.zeros(4)
    (da,) = d(x, dx, 2.0, 1.0)
    np.testing.assert_allclose(dx, 2.0 * np.cos(x), rtol=1e-14)
    assert da == pytest.approx(np.sum(np.sin(x)), rel=1e-14)


@numba.njit
def _sines_into(x, out):
    for i in range(x.shape[0]):
        out[i] = math.sin(x[i])


@pytest.mark.parametrize(
    "bad,error,text",
    [
        (np.ones(3), enzpy.EnzpyValueError, r"shape \(4,\), got \(3,\)"),
        (np.ones(4, np.float32), enzpy.EnzpyTypeError, "dtype float64, got float32"),
        (1.0, enzpy.EnzpyTypeError, "plain numpy array .*got a value of type float"),
    ],
    ids=["shape", "dtype", "kind"],
)
def test_a_wrong_batch_shadow_names_its_direction(bad, error, text):
    x, out = rng(31).uniform(-1, 1, 4), np.zeros(4)
    lanes = (np.ones(4), np.ones(4), bad)
    with pytest.raises(
        error, match=rf"argument 0: .*{text} \(in direction 2 of the BatchDuplicated\)"
    ):
        enzpy.autodiff(
            _sines_into,
            enzpy.BatchDuplicated(x, lanes),
            enzpy.BatchDuplicated(out, (np.zeros(4), np.zeros(4), np.zeros(4))),
            mode=enzpy.Forward,
            ret=Const,
        )
    one = np.ones(4)
    with pytest.raises(enzpy.EnzpyValueError, match="shadow of direction 1 shares memory"):
        enzpy.autodiff(
            _sines_into,
            enzpy.BatchDuplicated(x, (one, one)),
            enzpy.BatchDuplicated(out, (np.zeros(4), np.zeros(4))),
            mode=enzpy.Forward,
            ret=Const,
        )
