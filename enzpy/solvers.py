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

Vectors: ``newton_system(residual)`` solves ``F(x, p) = 0`` for a vector
``x`` given a parameter vector ``p``, and ``implicit(solver, residual)``
gives any njit solver ``solver(x0, p) -> x`` of ``F(x, p) = 0`` the same
derivative. Their rules (``enzpy.register_rule``, a new array as result)
evaluate the Jacobian ``J = F_x`` at the solution once: the forward rule
solves ``J dx = -F_p dp``, the reverse solves ``Jᵀ λ = x̄`` and adds
``-F_pᵀ λ`` to ``p̄`` (one reverse-mode evaluation of ``F``), whatever the
number of iterations. ``F_x`` comes from a given ``jacobian(x, p)`` or, column
by column, from enzpy's forward mode on ``F``'s code.

Linear systems: ``conjugate_gradient()`` builds ``solve(A, b) -> x`` for a
symmetric positive definite ``A``, whose tangent and adjoint solves run the
same conjugate gradients (nothing is factorized).
"""

from __future__ import annotations

import textwrap
from typing import Any

import numba
import numpy as np
from numba.core.dispatcher import Dispatcher

from ._modes import Forward, ForwardWithPrimal, Reverse
from ._rules import arity, register_partials, register_rule
from .annotations import BatchDuplicated, Const, Duplicated
from .api import derivative
from .errors import EnzpyTypeError

__all__ = ["conjugate_gradient", "fixed_point", "implicit", "newton", "newton_system"]


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


# --------------------------------------------------------------------------
# Vector solvers: F(x, p) = 0 with x, p float64 vectors


def _two_arguments(f: Any, what: str) -> str:
    """``f``'s name; an error unless it is an njit function of ``(x, p)``."""
    if _arity(f, what) != 2:
        raise EnzpyTypeError(f"{what} must take (x, p), got {f!r}")
    return str(getattr(f.py_func, "__qualname__", what))


@numba.njit
def _vector(a: Any) -> Any:
    """A C-ordered float64 copy of the vector ``a``."""
    return np.ascontiguousarray(a).astype(np.float64)


class _ResidualDerivatives:
    """The derivatives of ``F`` the vector rules need, by enzpy itself on
    ``into(x, p, out)`` (``out[:] = F(x, p)``): ``jvp_x(x, dx, p, out,
    dout)``, ``jvp_p(x, p, dp, out, dout)`` and ``vjp_p(x, p, pbar, out,
    outbar)``, and the Jacobian ``F_x`` column by column unless given."""

    def __init__(self, residual: Dispatcher, jacobian: Any) -> None:
        def into(x: Any, p: Any, out: Any) -> None:
            out[:] = residual(x, p)

        into_ = numba.njit(into)

        def v() -> Any:
            return np.zeros(1)

        self.jvp_p = derivative(
            into_, Const(v()), Duplicated(v(), v()), Duplicated(v(), v()), mode=Forward
        )
        self.vjp_p = derivative(
            into_, Const(v()), Duplicated(v(), v()), Duplicated(v(), v()), mode=Reverse
        )
        if jacobian is not None:
            self.jacobian = jacobian
            return
        jvp_x = derivative(
            into_, Duplicated(v(), v()), Const(v()), Duplicated(v(), v()), mode=Forward
        )

        @numba.njit
        def by_columns(x: Any, p: Any) -> Any:
            n = x.shape[0]
            j = np.empty((n, n))
            e = np.zeros(n)
            out = np.empty(n)
            col = np.empty(n)
            for k in range(n):
                e[k] = 1.0
                jvp_x(x, e, p, out, col)
                j[:, k] = col
                e[k] = 0.0
            return j

        self.jacobian = by_columns


def _implicit_rule(solve: Dispatcher, d: _ResidualDerivatives, *described: Any) -> None:
    """Register on ``solve(x0, p) -> x`` the implicit function theorem's rule
    (the derivative is 0 in ``x0``). ``described``: what the disk cache
    describes the rule's functions by (they close over enzpy's own
    derivatives, which have no source)."""
    jvp_p, vjp_p, jac = d.jvp_p, d.vjp_p, d.jacobian

    def forward(cfg: Any, x0: Any, dx0: Any, p: Any, dp: Any) -> Any:
        x = solve(x0, p)
        dx = np.zeros_like(x)
        if cfg.active[1]:
            pc = _vector(p)
            t = np.empty_like(x)
            jvp_p(x, pc, _vector(dp), np.empty_like(x), t)
            dx = -np.linalg.solve(jac(x, pc), t)
        return x, dx

    def augmented(cfg: Any, x0: Any, p: Any) -> Any:
        x = solve(x0, p)
        pc = _vector(p)  # a copy: p may change before the reverse
        return x, (x.copy(), pc, jac(x, pc))

    def reverse(cfg: Any, tape: Any, x0: Any, dx0: Any, p: Any, dp: Any, xbar: Any) -> Any:
        if cfg.active[1]:
            xs, pc, j = tape
            lam = np.linalg.solve(np.ascontiguousarray(j.T), np.ascontiguousarray(xbar))
            g = np.zeros_like(pc)
            vjp_p(xs, pc, g, np.empty_like(xs), -lam)
            dp += g
        return ()

    fns = [numba.njit(g) for g in (forward, augmented, reverse)]
    for g in fns:
        g.enzpy_description = lambda describe, what=g.py_func.__name__: (  # type: ignore[attr-defined]
            "enzpy.solvers",
            what,
            *(describe(v) if callable(v) else v for v in described),
        )
    register_rule(solve, forward=fns[0], augmented=fns[1], reverse=fns[2])


def implicit(solver: Any, residual: Any, jacobian: Any = None, *, tol: float = 1e-8) -> Dispatcher:
    """An njit function ``solve(x0, p) -> x`` that runs ``solver(x0, p)``
    (any njit solver of ``residual(x, p) = 0``; ``x0``, ``p`` and ``x``
    float64 vectors, ``solver`` changing neither ``x0`` nor ``p``), checks
    that its answer solves the system (every ``|residual(x, p)_i| <= tol``,
    else ``ValueError``, in the primal and in every derivative) and returns
    a copy of it. Its derivative is the implicit function theorem's at that
    solution, from ``residual``'s code (and ``jacobian(x, p) -> F_x`` when
    given): the solver's iterations are never differentiated."""
    sname = _two_arguments(solver, "the solver")
    rname = _two_arguments(residual, "the residual")
    if jacobian is not None:
        _two_arguments(jacobian, "the jacobian")
    failed = (
        f"enzpy.solvers.implicit: {sname} returned no solution of {rname} = 0 (tolerance {tol!r})"
    )
    limit = float(tol)

    def checked(x0: Any, p: Any) -> Any:
        x = solver(x0, p)
        r = residual(x, p)
        for i in range(r.shape[0]):
            if not abs(r[i]) <= limit:  # NaN fails too
                raise ValueError(failed)
        return _vector(x)

    checked.__qualname__ = f"implicit({sname}, {rname})"
    solve: Dispatcher = numba.njit(checked)
    _implicit_rule(
        solve,
        _ResidualDerivatives(residual, jacobian),
        "implicit",
        solver,
        residual,
        jacobian,
        limit,
    )
    return solve


def newton_system(
    residual: Any, jacobian: Any = None, *, tol: float = 1e-12, maxiter: int = 100
) -> Dispatcher:
    """An njit solver ``solve(x0, p) -> x`` of ``residual(x, p) = 0`` (``x``,
    ``p`` float64 vectors, the residual a vector like ``x``) by Newton's
    method from ``x0``, stopping when a step's largest entry is at most
    ``tol * (1 + max|x|)``; ``ValueError`` after ``maxiter`` steps (and
    ``np.linalg.LinAlgError`` at a singular Jacobian). ``jacobian(x, p)``
    gives ``J[i, j] = ∂F_i/∂x_j``; without it enzpy's forward mode computes
    ``J`` column by column from ``residual``'s code. Its derivative in ``p``
    is the implicit function theorem's at the solution: ``dx = -J⁻¹ F_p dp``
    (0 in ``x0``)."""
    name = _two_arguments(residual, "the residual")
    if jacobian is not None:
        _two_arguments(jacobian, "the jacobian")
    d = _ResidualDerivatives(residual, jacobian)
    jac = d.jacobian
    failed = f"enzpy.solvers.newton_system: {name} did not converge in {int(maxiter)} steps"
    steps, limit = int(maxiter), float(tol)

    def iterations(x0: Any, p: Any) -> Any:
        x = _vector(x0)
        pc = _vector(p)
        for _ in range(steps):
            step = np.linalg.solve(jac(x, pc), residual(x, pc))
            x = x - step
            if np.max(np.abs(step)) <= limit * (1.0 + np.max(np.abs(x))):
                return x
        raise ValueError(failed)

    iterations.__qualname__ = f"newton_system({name})"
    solve: Dispatcher = numba.njit(iterations)
    _implicit_rule(solve, d, "newton_system", residual, jacobian, limit, steps)
    return solve


# --------------------------------------------------------------------------
# Linear systems: A x = b with A symmetric positive definite


def conjugate_gradient(*, tol: float = 1e-10, maxiter: int | None = None) -> Dispatcher:
    """An njit solver ``solve(A, b) -> x`` of ``A x = b`` for a symmetric
    positive definite float64 matrix ``A`` and vector ``b``, by conjugate
    gradients from 0, stopping when ``‖b - A x‖ <= tol ‖b‖``; ``ValueError``
    after ``maxiter`` steps (default ``10 n``). Its derivative is that of
    ``A⁻¹ b`` (the implicit function theorem's for ``A x - b = 0``), computed
    by conjugate gradients on the same matrix: ``dx = A⁻¹ (db - dA x)``,
    ``b̄ = A⁻¹ x̄``, ``Ā = -b̄ xᵀ``; the iterations are never differentiated,
    and a tangent or adjoint solve that does not converge raises too. Give
    ``A`` symmetric and perturb it symmetrically (a kernel may pass
    ``0.5 * (M + M.T)``)."""
    limit = float(tol)
    steps = -1 if maxiter is None else int(maxiter)
    failed = (
        "enzpy.solvers.conjugate_gradient: no convergence to a relative residual of "
        f"{limit!r} (is the matrix symmetric positive definite?)"
    )

    def iterations(A: Any, b: Any) -> Any:
        n = b.shape[0]
        if A.shape[0] != n or A.shape[1] != n:
            raise ValueError("enzpy.solvers.conjugate_gradient: A must be n x n for b of size n")
        x = np.zeros(n)
        r = _vector(b)
        p = r.copy()
        rs = r @ r
        target = limit * np.sqrt(rs)
        most = 10 * n if steps < 0 else steps
        for _ in range(most + 1):
            if np.sqrt(rs) <= target:
                return x
            ap = np.ascontiguousarray(A) @ p
            alpha = rs / (p @ ap)
            x += alpha * p
            r -= alpha * ap
            rs_next = r @ r
            p = r + (rs_next / rs) * p
            rs = rs_next
        raise ValueError(failed)

    iterations.__qualname__ = "conjugate_gradient"
    solve: Dispatcher = numba.njit(iterations)

    def forward(cfg: Any, A: Any, dA: Any, b: Any, db: Any) -> Any:
        x = solve(A, b)
        rhs = np.zeros_like(x)
        if cfg.active[1]:
            rhs += db
        if cfg.active[0]:
            rhs -= np.ascontiguousarray(dA) @ x
        dx = solve(A, rhs) if cfg.active[0] or cfg.active[1] else np.zeros_like(x)
        return x, dx

    def augmented(cfg: Any, A: Any, b: Any) -> Any:
        x = solve(A, b)
        # A is needed again by the reverse: a copy when it may change.
        kept = np.ascontiguousarray(A).copy() if cfg.overwritten[0] else np.empty((0, 0))
        return x, (x.copy(), kept)

    def reverse(cfg: Any, tape: Any, A: Any, dA: Any, b: Any, db: Any, xbar: Any) -> Any:
        xs, kept = tape
        lam = solve(kept if cfg.overwritten[0] else A, xbar)
        if cfg.active[1]:
            db += lam
        if cfg.active[0]:
            dA -= np.outer(lam, xs)
        return ()

    fns = [numba.njit(g) for g in (forward, augmented, reverse)]
    register_rule(solve, forward=fns[0], augmented=fns[1], reverse=fns[2])
    return solve
