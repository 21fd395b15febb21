"""Loops of elementwise maps and reductions come out of the engine in a
shape LLVM's loop vectorizer handles: the optimized derivative (the bitcode
the engine returns, after its O3 for numba's CPU) has vector code in the
reverse loop of sum(x^2 sin x) and of a dot product and in the tangent loop
of a map, and computes the right derivative. Math values the forward sweep
computes only for the tape (sin x when the primal result is not returned)
are recomputed beside the rule that needs them instead of taped."""

import ctypes
import math
import re

import llvmlite.binding as llvm
import numpy as np
import pytest

from enzpy._config import jit_target, libmvec_available
from enzpy.errors import EnzpyError

from .conftest import const, differentiate, jit

P = ctypes.c_void_p
I64 = ctypes.c_int64

CTYPE = {"double": ctypes.c_double, "float": ctypes.c_float}
DTYPE = {"double": np.float64, "float": np.float32}
SUFFIX = {"double": "f64", "float": "f32"}

# for (i = 0; i < n; i++) {body}: a counted loop as numba lowers it, over
# the array parameters {arrays}; {exit} stores the result.
LOOP = """
target triple = "{triple}"

define i32 @f(ptr %retptr, ptr %excinfo, {arrays}, i64 %n) {{
entry:
  %empty = icmp slt i64 %n, 1
  br i1 %empty, label %exit, label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i.next, %loop ]
{body}
  %i.next = add nuw nsw i64 %i, 1
  %done = icmp eq i64 %i.next, %n
  br i1 %done, label %exit, label %loop
exit:
{exit}
  ret i32 0
}}
declare {t} @llvm.sin.{sfx}({t})
"""

# A sum over the loop: its result is %acc.next.
SUM_EXIT = """  %r = phi {t} [ 0.0, %entry ], [ %acc.next, %loop ]
  store {t} %r, ptr %retptr"""

# s = sum_i x[i] * x[i] * sin(x[i])
SUM_X2_SIN = dict(
    arrays="ptr %x",
    body="""  %acc = phi {t} [ 0.0, %entry ], [ %acc.next, %loop ]
  %p = getelementptr {t}, ptr %x, i64 %i
  %v = load {t}, ptr %p
  %vv = fmul {t} %v, %v
  %s = call {t} @llvm.sin.{sfx}({t} %v)
  %term = fmul {t} %vv, %s
  %acc.next = fadd {t} %acc, %term""",
    exit=SUM_EXIT,
)

# sum_i x[i] * y[i]
DOT = dict(
    arrays="ptr %x, ptr %y",
    body="""  %acc = phi {t} [ 0.0, %entry ], [ %acc.next, %loop ]
  %px = getelementptr {t}, ptr %x, i64 %i
  %py = getelementptr {t}, ptr %y, i64 %i
  %a = load {t}, ptr %px
  %b = load {t}, ptr %py
  %ab = fmul {t} %a, %b
  %acc.next = fadd {t} %acc, %ab""",
    exit=SUM_EXIT,
)

# y[i] = x[i] * x[i] * sin(x[i]): a map, no reduction.
MAP_X2_SIN = dict(
    arrays="ptr %x, ptr %y",
    body="""  %px = getelementptr {t}, ptr %x, i64 %i
  %py = getelementptr {t}, ptr %y, i64 %i
  %v = load {t}, ptr %px
  %vv = fmul {t} %v, %v
  %s = call {t} @llvm.sin.{sfx}({t} %v)
  %w = fmul {t} %vv, %s
  store {t} %w, ptr %py""",
    exit="  store {t} 0.0, ptr %retptr",
)


def dup(t: str = "double") -> dict[str, str]:
    return {"activity": "dup", "elem": t}


def _ir(kernel: dict[str, str], t: str = "double") -> str:
    ir = LOOP.format(triple=llvm.get_process_triple(), t="{t}", sfx="{sfx}", **kernel)
    return ir.replace("{t}", t).replace("{sfx}", SUFFIX[t])


def _text(bc: bytes) -> str:
    return str(llvm.parse_bitcode(bc))


def _vector_call(text: str, t: str, fn: str) -> bool:
    """A call of ``fn`` on a vector of ``t``: LLVM's vector intrinsic or a
    vector math library's function (libmvec: _ZGVdN4v_cos, _ZGVbN4v_cosf)."""
    vec = rf"<\d+ x {t}>"
    intrinsic = rf"@llvm\.{fn}\.v\d+{SUFFIX[t]}\("
    library = rf"@_ZGV\w+_{fn}{'f' if t == 'float' else ''}\("
    return re.search(rf"call {vec} ({intrinsic}|{library})", text) is not None


def _target(vector_library: str) -> dict[str, str]:
    if vector_library and not libmvec_available():
        pytest.skip("glibc's libmvec is not available here")
    return {**jit_target(), "vector_library": vector_library}


@pytest.mark.parametrize("vector_library", ["", "libmvec"])
@pytest.mark.parametrize("t", ["double", "float"])
def test_reverse_loop_of_sum_x2_sin_is_vectorized_and_recomputes_sin(t, vector_library, rng):
    bc, decisions = differentiate(
        _ir(SUM_X2_SIN, t),
        [dup(t), *const()],
        ret_type=t,
        return_primal=False,
        noalias=True,
        **_target(vector_library),
    )
    # sin x feeds only the return value nobody asked for: recomputed beside
    # the rule's cos x (one sincos, or the vector library), not taped.
    assert decisions.has("tape", "recompute", "%s")
    assert all(not v.startswith("%s") for v, _ in decisions.taped())
    text = _text(bc)
    assert _vector_call(text, t, "cos"), "the reverse loop should be vectorized"
    assert _vector_call(text, t, "sin"), "sin x is recomputed in the vector loop"
    # The library's functions, exactly when the request offers them.
    assert ("@_ZGV" in text) == bool(vector_library)

    n = 103  # a vector body and a remainder
    x = rng.uniform(-3, 3, n).astype(DTYPE[t])
    dx = np.zeros(n, DTYPE[t])
    df = jit(bc, "df", P, P, P, I64, P, CTYPE[t])
    out = (CTYPE[t] * 1)()
    assert df(ctypes.addressof(out), None, x.ctypes.data, n, dx.ctypes.data, 0.5) == 0
    x64 = x.astype(np.float64)
    want = 0.5 * (2 * x64 * np.sin(x64) + x64 * x64 * np.cos(x64))
    np.testing.assert_allclose(dx, want, rtol=1e-5 if t == "float" else 1e-13, atol=1e-6)


def test_a_math_value_the_returned_primal_needs_is_computed_once(rng):
    # With the primal returned, the forward sweep computes sin x anyway: the
    # reverse pops it instead of calling sin a second time.
    bc, decisions = differentiate(_ir(SUM_X2_SIN), [dup(), *const()], return_primal=True)
    assert ("%s", "loop") in decisions.taped()
    n = 9
    x, dx = rng.uniform(-3, 3, n), np.zeros(n)
    df = jit(bc, "df", P, P, P, I64, P, ctypes.c_double)
    out = (ctypes.c_double * 1)()
    assert df(ctypes.addressof(out), None, x.ctypes.data, n, dx.ctypes.data, 1.0) == 0
    np.testing.assert_allclose(out[0], np.sum(x * x * np.sin(x)), rtol=1e-14)
    np.testing.assert_allclose(dx, 2 * x * np.sin(x) + x * x * np.cos(x), rtol=1e-13)


@pytest.mark.parametrize("noalias", [True, False])
def test_reverse_loop_of_a_dot_product_is_vectorized(noalias, rng):
    bc, decisions = differentiate(
        _ir(DOT),
        [dup(), dup(), *const()],
        return_primal=False,
        noalias=noalias,
        **jit_target(),
    )
    # Both arrays are re-read (never written), nothing float is taped.
    assert not [v for v, _ in decisions.taped() if v in ("%a", "%b", "%ab")]
    text = _text(bc)
    assert re.search(r"store <\d+ x double>", text), "the reverse loop should be vectorized"
    if noalias:
        # Caller-checked disjoint arrays: no runtime overlap checks.
        assert "memcheck" not in text
    n = 37
    x, y = rng.standard_normal(n), rng.standard_normal(n)
    dx, dy = np.full(n, 0.25), np.zeros(n)  # shadows accumulate
    df = jit(bc, "df", P, P, P, P, I64, P, P, ctypes.c_double)
    out = (ctypes.c_double * 1)()
    args = (x.ctypes.data, y.ctypes.data, n, dx.ctypes.data, dy.ctypes.data, -2.0)
    assert df(ctypes.addressof(out), None, *args) == 0
    np.testing.assert_allclose(dx, 0.25 - 2.0 * y, rtol=1e-15)
    np.testing.assert_allclose(dy, -2.0 * x, rtol=1e-15)


def test_tangent_loop_of_a_math_map_is_vectorized(rng):
    bc, _ = differentiate(
        _ir(MAP_X2_SIN),
        [dup(), dup(), *const()],
        mode="forward",
        ret_activity="const",
        return_primal=False,
        noalias=True,
        **jit_target(),
    )
    text = _text(bc)
    assert _vector_call(text, "double", "cos"), "the tangent loop should be vectorized"
    assert re.search(r"store <\d+ x double>", text)
    n = 41
    x, dx = rng.uniform(-3, 3, n), rng.standard_normal(n)
    y, dy = np.zeros(n), np.zeros(n)
    df = jit(bc, "df", P, P, P, P, I64, P, P)
    out = (ctypes.c_double * 1)()
    args = (x.ctypes.data, y.ctypes.data, n, dx.ctypes.data, dy.ctypes.data)
    assert df(ctypes.addressof(out), None, *args) == 0
    # The primal's own sin keeps numba's scalar libm: y is f's, bit for bit.
    assert np.array_equal(y, x * x * np.sin(x))
    np.testing.assert_allclose(dy, (2 * x * np.sin(x) + x * x * np.cos(x)) * dx, rtol=1e-13)


def test_an_unknown_vector_library_is_a_request_error():
    with pytest.raises(EnzpyError, match="unknown vector_library .svml."):
        differentiate(_ir(DOT), [dup(), dup(), *const()], vector_library="svml")


def test_tangent_loop_of_a_sum_is_vectorized_and_sums_in_order(rng):
    # The primal sum and its tangent are ordered reductions: vectorized, they
    # are still added element by element in the loop's order, so the primal
    # is f's bit for bit.
    bc, _ = differentiate(
        _ir(SUM_X2_SIN),
        [dup(), *const()],
        mode="forward",
        ret_activity="active",
        return_primal=True,
        noalias=True,
        **jit_target(),
    )
    text = _text(bc)
    assert re.search(r"call double @llvm\.vector\.reduce\.fadd\.v\d+f64\(double", text)
    assert _vector_call(text, "double", "cos"), "the tangent loop should be vectorized"
    n = 53
    x, dx = rng.uniform(-3, 3, n), rng.standard_normal(n)
    df = jit(bc, "df", P, P, P, I64, P)
    out = (ctypes.c_double * 2)()
    assert df(ctypes.addressof(out), None, x.ctypes.data, n, dx.ctypes.data) == 0
    primal = 0.0
    for v in x.tolist():
        primal += v * v * math.sin(v)
    assert out[0] == primal
    want = np.sum((2 * x * np.sin(x) + x * x * np.cos(x)) * dx)
    np.testing.assert_allclose(out[1], want, rtol=1e-12)


# y[i] = s[i]^2 sin s[i], s chosen from x and z by a select: alias analysis
# cannot tell s from y, nor one lane's shadows from another's.
MAP_SELECTED = dict(
    MAP_X2_SIN,
    arrays="ptr %x, ptr %z, ptr %y",
    body="""  %big = icmp sgt i64 %n, 4
  %src = select i1 %big, ptr %x, ptr %z
"""
    + MAP_X2_SIN["body"].replace("ptr %x,", "ptr %src,"),
)


def _scope_names(text: str, line: str, kind: str) -> set[str]:
    """The names of the alias scopes ``line``'s ``!alias.scope`` or
    ``!noalias`` list holds."""
    ref = re.search(rf"!{kind} (!\d+)", line)
    if not ref:
        return set()
    nodes = dict(re.findall(r"^(!\d+) = (.*)$", text, re.M))
    members = re.findall(r"!\d+", nodes[ref.group(1)])
    return {re.search(r'!"([^"]+)"', nodes[m]).group(1) for m in members}


def test_batch_lanes_and_the_primal_access_memory_in_scopes_apart(rng):
    # Eight lanes' shadows reached through a select, no noalias: each
    # lane's tangent loads and stores carry that lane's alias scope and are
    # noalias of the primal's and of every other lane's (MemoryScopes), so
    # that the vectorizer checks each lane against itself only.
    width = 8
    kwargs = dict(mode="forward", ret_activity="const", return_primal=False, width=width)
    params = [dup(), dup(), dup(), *const()]
    plain = _text(differentiate(_ir(MAP_SELECTED), params, optimize=False, **kwargs)[0])
    lanes = [f"lane {k}" for k in range(width)]
    for line in plain.splitlines():
        access = re.search(r"(load double, ptr|store double \S+, ptr) %\"?(\w+)", line)
        if not access:
            continue
        lane = re.search(r"'shadow\.(\d+)", line)
        own = {f"lane {lane.group(1)}"} if lane else {"primal"}
        assert _scope_names(plain, line, "alias.scope") == own, line
        assert _scope_names(plain, line, "noalias") == {"primal", *lanes} - own, line
    bc, _ = differentiate(_ir(MAP_SELECTED), params, **kwargs, **jit_target())
    text = _text(bc)
    assert re.search(r"store <\d+ x double>", text), "the tangent loop should be vectorized"
    n = 37
    x, z = rng.uniform(-3, 3, n), rng.uniform(-3, 3, n)
    dxs = [rng.standard_normal(n) for _ in range(width)]
    dzs = [rng.standard_normal(n) for _ in range(width)]
    y, dys = np.zeros(n), [np.zeros(n) for _ in range(width)]
    df = jit(bc, "df", P, P, P, P, P, I64, *[P] * (3 * width))
    out = (ctypes.c_double * 1)()
    shadows = [a.ctypes.data for group in (dxs, dzs, dys) for a in group]
    args = (x.ctypes.data, z.ctypes.data, y.ctypes.data, n, *shadows)
    assert df(ctypes.addressof(out), None, *args) == 0
    assert np.array_equal(y, x * x * np.sin(x))
    slope = 2 * x * np.sin(x) + x * x * np.cos(x)
    for dx, dy in zip(dxs, dys, strict=True):
        np.testing.assert_allclose(dy, slope * dx, rtol=1e-13)
