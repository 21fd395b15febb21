"""Scalar solvers whose derivatives come from the implicit function theorem.

Differentiating a solver's iterations is slow (every iteration is taped),
and wrong in a quiet way: the derivative of the iterations is not the
derivative of the solution unless the iterations' derivatives converged too,
which a test on the primal's convergence does not check. The solvers here
are njit functions with rules (``enzpy.register_partials``) that give the
derivative of the solution itself: for ``F(x, p) = 0`` at the solution
``x*``,

    dx*/dp = -F_p(x*, p) / F_x(x*, p),

one evaluation of F's partial derivatives (computed by enzpy in forward batch
mode from F's own code), whatever the number of iterations. A solve that does
not converge raises ``ValueError`` in the primal and in every derivative, so
no derivative is ever returned for it.

    >>> @numba.njit
    ... def residual(x, a, b):
    ...     return x**3 + a * x - b
    >>> solve = enzpy.solvers.newton(residual)
    >>> solve(1.0, 2.0, 3.0)            # x0, then the parameters a, b
    1.0
    >>> enzpy.autodiff(solve, Const(1.0), Active(2.0), Active(3.0))

The functions ``newton(residual)`` and ``fixed_point(g)`` build the solver for
a residual ``F(x, p1, ..., pn)`` or a map ``g(x, p1, ..., pn)``: float64
scalars, ``n`` fixed by the function's parameters. Call the solver from njit
code or from Python; differentiate any kernel that calls it.
"""

from __future__ import annotations

import textwrap
from typing import Any

import numba
from numba.core.dispatcher import Dispatcher

from ._modes import ForwardWithPrimal
from ._rules import arity, register_partials
from .annotations import BatchDuplicated, Const, Duplicated
from .api import derivative
from .errors import EnzpyTypeError

__all__ = ["fixed_point", "newton"]


def _arity(f: Any, what: str) -> int:
    if not isinstance(f, Dispatcher):
        raise EnzpyTypeError(f"{what} must be an @numba.njit function, got {f!r}")
    n = arity(f)
    if n < 1:
        raise EnzpyTypeError(f"{what} takes the unknown x first, then the parameters")
    return n


def _all_partials(f: Dispatcher, n: int) -> Dispatcher:
    """An njit function ``(x, p1, ..., p{n-1}) -> (f, (f_x, f_p1, ...))``:
    ``f``'s value and all its partial derivatives, by enzpy's forward mode
    with one batch lane per argument."""
    lanes = [tuple(1.0 if k == j else 0.0 for k in range(n)) for j in range(n)]
    d: Dispatcher = derivative(
        f, *(BatchDuplicated(1.0, lane) for lane in lanes), mode=ForwardWithPrimal
    )
    return d


def _slope(f: Dispatcher, n: int) -> Dispatcher:
    """An njit function ``(x, 1.0, p1, ..., p{n-1}) -> (f, f_x)`` (forward
    mode along x), for the iterations."""
    d: Dispatcher = derivative(
        f, Duplicated(1.0, 1.0), *(Const(1.0) for _ in range(n - 1)), mode=ForwardWithPrimal
    )
    return d


def _x_lane(n: int) -> str:
    """The call arguments ``x, 1.0, p1, ...`` of :func:`_slope`."""
    return ", ".join(["float(x)", "1.0"] + [f"float(p{k})" for k in range(1, n)])


def _unit_lanes(n: int) -> str:
    """The call arguments ``x, (1.0, 0.0, ...), p1, (0.0, 1.0, ...), ...``."""
    names = ["x"] + [f"p{k}" for k in range(1, n)]
    args = []
    for j, name in enumerate(names):
        lane = ", ".join("1.0" if k == j else "0.0" for k in range(n))
        args += [f"float({name})", f"({lane},)"]
    return ", ".join(args)


def _build(source: str, scope: dict[str, Any], name: str, qualname: str) -> Dispatcher:
    # Errors inside the generated code name the solver, not "<string>".
    exec(compile(source, f"<enzpy.solvers.{qualname}>", "exec"), scope)  # noqa: S102
    fn = scope[name]
    fn.__qualname__ = qualname
    compiled: Dispatcher = numba.njit(fn)
    return compiled


def _describe_as(partials: Any, kind: str, f: Any, tol: float, maxiter: int) -> None:
    """Let the disk cache describe the generated partials (which have no
    source file) by what generated them: the solver, ``f``'s code, the
    settings."""
    partials.enzpy_description = lambda describe: (
        "enzpy.solvers",
        kind,
        describe(f),
        float(tol),
        int(maxiter),
    )


def _solver(
    kind: str,
    f: Any,
    what: str,
    tol: float,
    maxiter: int,
    iterate: str,
    partial: str,
    scope: dict[str, Any],
) -> Dispatcher:
    """The njit solver ``solve(x0, p1, ...)`` of kind ``kind`` for ``f``:
    ``iterate`` is the body of its loop (names ``x``; returns the solution
    when converged), ``partial`` the implicit function theorem's d x / d p_k
    in terms of ``t`` (``f``'s partials at the solution, ``t[0]`` in x) and
    ``k``. Its rule is registered; the loop's failure raises ``ValueError``."""
    n = _arity(f, what)
    name = getattr(f.py_func, "__qualname__", what)
    params = "".join(f", p{k}" for k in range(1, n))
    terms = ["0.0"] + [partial.format(k=k) for k in range(1, n)]
    source = f"""
def solve(x0{params}):
    x = float(x0)
    for _ in range({int(maxiter)}):
{textwrap.indent(iterate.format(tol=float(tol), name=name).strip(), " " * 8)}
    raise ValueError("enzpy.solvers.{kind}: {name} did not converge in {int(maxiter)} steps")

def partials(x0{params}, x):
    _, t = values({_unit_lanes(n)})
    return ({", ".join(terms)},)
"""
    scope = {**scope, "values": _all_partials(f, n)}
    solve = _build(source, scope, "solve", f"{kind}({name})")
    partials = _build(source, scope, "partials", f"{kind}({name}).partials")
    _describe_as(partials, kind, f, tol, maxiter)
    register_partials(solve, partials)
    return solve


def newton(residual: Any, *, tol: float = 1e-12, maxiter: int = 100) -> Dispatcher:
    """An njit solver ``solve(x0, p1, ..., pn) -> x`` of ``residual(x, p1,
    ..., pn) = 0`` by Newton's method from ``x0`` (float64 scalars), stopping
    when a step is at most ``tol * (1 + |x|)``; ``ValueError`` after
    ``maxiter`` steps or at a zero derivative. Its derivative with respect to
    the parameters is the implicit function theorem's, at the solution (0
    with respect to ``x0``): ``-F_p / F_x``."""
    n = _arity(residual, "the residual")
    iterate = f"""
r, fx = slope({_x_lane(n)})
if fx == 0.0:
    raise ValueError("enzpy.solvers.newton: the derivative of {{name}} vanished")
step = r / fx
x = x - step
if abs(step) <= {{tol!r}} * (1.0 + abs(x)):
    return x
"""
    scope = {"slope": _slope(residual, n)}
    return _solver(
        "newton", residual, "the residual", tol, maxiter, iterate, "-t[{k}] / t[0]", scope
    )


def fixed_point(g: Any, *, tol: float = 1e-12, maxiter: int = 1000) -> Dispatcher:
    """An njit solver ``solve(x0, p1, ..., pn) -> x`` of ``x = g(x, p1, ...,
    pn)`` by fixed-point iteration from ``x0`` (float64 scalars), stopping
    when an update is at most ``tol * (1 + |x|)``; ``ValueError`` after
    ``maxiter`` updates. Its derivative: ``dx/dp = g_p / (1 - g_x)`` at the
    fixed point (0 with respect to ``x0``)."""
    n = _arity(g, "the map")
    args = "".join(f", p{k}" for k in range(1, n))
    iterate = f"""
nxt = g(x{args})
if abs(nxt - x) <= {{tol!r}} * (1.0 + abs(nxt)):
    return nxt
x = nxt
"""
    return _solver(
        "fixed_point", g, "the map", tol, maxiter, iterate, "t[{k}] / (1.0 - t[0])", {"g": g}
    )
