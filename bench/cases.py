"""The benchmark's cases: for each kernel, its inputs, the numba primal call,
enzpy's reverse and forward calls, a directional finite-difference check and
the same algorithm written for the peers (JAX, PyTorch).

Kernels shared with the demo and the tests (heat, dot, lorenz_rhs) live in
examples/kernels.py; the ones only the benchmark uses are defined here.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from kernels import dot, heat, lorenz_rhs, wave_rotating_buffers
from peers import Scaled

import enzpy
from enzpy import Active, BatchDuplicated, Duplicated, Forward


@numba.njit
def sum_x2_sin(x):
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] * x[i] * np.sin(x[i])
    return s


@numba.njit
def lorenz(x, y, z, sigma, rho, beta, dt, nsteps):
    h2 = 0.5 * dt
    h6 = dt / 6.0
    for _ in range(nsteps):
        k1x = sigma * (y - x)
        k1y = x * (rho - z) - y
        k1z = x * y - beta * z
        xa = x + h2 * k1x
        ya = y + h2 * k1y
        za = z + h2 * k1z
        k2x = sigma * (ya - xa)
        k2y = xa * (rho - za) - ya
        k2z = xa * ya - beta * za
        xb = x + h2 * k2x
        yb = y + h2 * k2y
        zb = z + h2 * k2z
        k3x = sigma * (yb - xb)
        k3y = xb * (rho - zb) - yb
        k3z = xb * yb - beta * zb
        xc = x + dt * k3x
        yc = y + dt * k3y
        zc = z + dt * k3z
        k4x = sigma * (yc - xc)
        k4y = xc * (rho - zc) - yc
        k4z = xc * yc - beta * zc
        x = x + h6 * (k1x + 2.0 * k2x + 2.0 * k3x + k4x)
        y = y + h6 * (k1y + 2.0 * k2y + 2.0 * k3y + k4y)
        z = z + h6 * (k1z + 2.0 * k2z + 2.0 * k3z + k4z)
    return x + y + z


class Kernel:
    """One benchmark: inputs, primal call, enzpy gradient, directional check, peers."""

    name = ""
    description = ""
    #: step of the central difference in the correctness check (along a unit vector)
    check_step = 1e-5

    def n_inputs(self):
        raise NotImplementedError

    def primal(self):
        raise NotImplementedError

    def primal_setup(self):
        """Restore the inputs that the primal updates in place (untimed)."""

    def grad_setup(self, full=False):
        """Zero the accumulating shadows (untimed); full=True zeroes every shadow."""

    def grad(self):
        """The timed call: enzpy.autodiff(...), its result kept in self.r."""
        raise NotImplementedError

    def grad_vector(self):
        """The gradient of the last grad() call as one flat float64 vector."""
        raise NotImplementedError

    def directional_fd(self, v, h):
        """Central difference of the loss along v (same layout as grad())."""
        raise NotImplementedError

    def jax(self):
        """Return a zero-argument callable computing the gradient with JAX."""
        raise NotImplementedError

    def torch(self):
        raise NotImplementedError

    def hvp(self, v):
        """A zero-argument callable computing a Hessian-vector product with
        enzpy.hvp along the flat direction v, or None when the kernel is not a
        function of one array."""
        return None

    def forward(self, vs, batch):
        """A zero-argument callable running enzpy's forward mode along the flat
        directions ``vs`` (same layout as grad_vector()): one Duplicated call
        (``batch`` False, one direction) or one BatchDuplicated call with
        len(vs) directions; it returns the tangent(s) of the loss. Shadows are
        allocated here, outside the timed region."""
        raise NotImplementedError


class SumX2Sin(Kernel):
    name = "sum_x2_sin"
    check_step = 1e-3  # smooth, and spread over 1e6 entries: rounding dominates

    def __init__(self, n):
        self.description = f"sum x^2 sin x, n={n:.0e}"
        self.x = np.random.default_rng(1).uniform(-2, 2, n)
        self.dx = np.zeros_like(self.x)

    def n_inputs(self):
        return self.x.size

    def primal(self):
        return sum_x2_sin(self.x)

    def grad_setup(self, full=False):
        self.dx.fill(0.0)

    def grad(self):
        self.r = enzpy.autodiff(sum_x2_sin, Duplicated(self.x, self.dx))

    def grad_vector(self):
        return self.dx.copy()

    def directional_fd(self, v, h):
        return (sum_x2_sin(self.x + h * v) - sum_x2_sin(self.x - h * v)) / (2 * h)

    def jax(self):
        import jax
        import jax.numpy as jnp

        g = jax.jit(jax.grad(lambda x: jnp.sum(x * x * jnp.sin(x))))
        x = jnp.asarray(self.x)
        return lambda: g(x).block_until_ready()

    def torch(self):
        import torch

        x = torch.tensor(self.x, requires_grad=True)

        def run():
            x.grad = None
            (x * x * torch.sin(x)).sum().backward()

        return run

    def hvp(self, v):
        return lambda: enzpy.hvp(sum_x2_sin, self.x, v)

    def forward(self, vs, batch):
        x = self.x
        if not batch:
            dx = vs[0].copy()
            return lambda: enzpy.autodiff(sum_x2_sin, Duplicated(x, dx), mode=Forward)
        dxs = tuple(v.copy() for v in vs)
        return lambda: enzpy.autodiff(sum_x2_sin, BatchDuplicated(x, dxs), mode=Forward)


class Heat(Kernel):
    name = "heat"
    check_step = 1e-4

    def __init__(self, n, steps, a=0.25):
        self.description = f"1-D heat stencil, {steps} steps x {n} points, history array"
        rng = np.random.default_rng(2)
        self.u0 = np.sin(np.linspace(0, np.pi, n)) + 0.1 * rng.standard_normal(n)
        self.H = np.empty((steps + 1, n))
        self.a = a
        self.du0 = np.zeros_like(self.u0)
        self.dH = np.zeros_like(self.H)

    def n_inputs(self):
        return self.u0.size + 1

    def primal(self):
        return heat(self.u0, self.H, self.a)

    def grad_setup(self, full=False):
        # du0 accumulates; dH is consumed to zero by the reverse sweep (H is
        # overwritten before it is read), so it needs no reset between repeats.
        self.du0.fill(0.0)
        if full:
            self.dH.fill(0.0)

    def grad(self):
        self.r = enzpy.autodiff(
            heat, Duplicated(self.u0, self.du0), Duplicated(self.H, self.dH), Active(self.a)
        )

    def grad_vector(self):
        return np.concatenate([self.du0, [self.r[2]]])

    def directional_fd(self, v, h):
        H = np.empty_like(self.H)
        u, a = v[:-1], v[-1]
        return (
            heat(self.u0 + h * u, H, self.a + h * a) - heat(self.u0 - h * u, H, self.a - h * a)
        ) / (2 * h)

    def jax(self):
        import jax
        import jax.numpy as jnp

        steps = self.H.shape[0] - 1

        def f(u, a):
            def body(_, u):
                mid = u[1:-1] + a * (u[:-2] - 2.0 * u[1:-1] + u[2:])
                return jnp.concatenate([u[:1], mid, u[-1:]])

            return jnp.sum(jax.lax.fori_loop(0, steps, body, u) ** 2)

        g = jax.jit(jax.grad(f, argnums=(0, 1)))
        u0, a = jnp.asarray(self.u0), jnp.asarray(self.a)
        return lambda: jax.block_until_ready(g(u0, a))

    def torch(self):
        import torch

        steps = self.H.shape[0] - 1
        u0 = torch.tensor(self.u0, requires_grad=True)
        a = torch.tensor(self.a, dtype=torch.float64, requires_grad=True)

        def run():
            u0.grad = None
            a.grad = None
            u = u0
            for _ in range(steps):
                mid = u[1:-1] + a * (u[:-2] - 2.0 * u[1:-1] + u[2:])
                u = torch.cat([u[:1], mid, u[-1:]])
            (u * u).sum().backward()

        return run

    def forward(self, vs, batch):
        n = self.u0.size
        u0, H = self.u0, self.H
        if not batch:
            du, da, dH = vs[0][:n].copy(), float(vs[0][n]), np.zeros_like(H)
            return lambda: enzpy.autodiff(
                heat, Duplicated(u0, du), Duplicated(H, dH), Duplicated(self.a, da), mode=Forward
            )
        dus = tuple(v[:n].copy() for v in vs)
        das = tuple(float(v[n]) for v in vs)
        dHs = tuple(np.zeros_like(H) for _ in vs)
        return lambda: enzpy.autodiff(
            heat,
            BatchDuplicated(u0, dus),
            BatchDuplicated(H, dHs),
            BatchDuplicated(self.a, das),
            mode=Forward,
        )


class Lorenz(Kernel):
    name = "lorenz_rk4"

    def __init__(self, steps, dt=5e-4):
        self.description = f"Lorenz RK4 scalar loop, {steps} steps (local floats)"
        self.p = (1.0, 1.0, 1.0, 10.0, 28.0, 8.0 / 3.0)
        self.dt = dt
        self.steps = steps

    def n_inputs(self):
        return 6

    def primal(self):
        return lorenz(*self.p, self.dt, self.steps)

    def grad(self):
        self.r = enzpy.autodiff(lorenz, *[Active(v) for v in self.p], self.dt, self.steps)

    def grad_vector(self):
        return np.array(self.r[:6], dtype=np.float64)

    def directional_fd(self, v, h):
        p = np.array(self.p)
        return (
            lorenz(*(p + h * v), self.dt, self.steps) - lorenz(*(p - h * v), self.dt, self.steps)
        ) / (2 * h)

    def jax(self):
        import jax

        dt, steps = self.dt, self.steps

        def f(x, y, z, sigma, rho, beta):
            def rhs(x, y, z):
                return sigma * (y - x), x * (rho - z) - y, x * y - beta * z

            def body(_, s):
                x, y, z = s
                k1 = rhs(x, y, z)
                k2 = rhs(*(q + 0.5 * dt * k for q, k in zip(s, k1)))
                k3 = rhs(*(q + 0.5 * dt * k for q, k in zip(s, k2)))
                k4 = rhs(*(q + dt * k for q, k in zip(s, k3)))
                return tuple(
                    q + dt / 6.0 * (a + 2.0 * b + 2.0 * c + d)
                    for q, a, b, c, d in zip(s, k1, k2, k3, k4)
                )

            x, y, z = jax.lax.fori_loop(0, steps, body, (x, y, z))
            return x + y + z

        g = jax.jit(jax.grad(f, argnums=tuple(range(6))))
        p = [jax.numpy.asarray(v) for v in self.p]
        return lambda: jax.block_until_ready(g(*p))

    def torch(self):
        import torch

        dt, steps = self.dt, self.steps
        p = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in self.p]

        def run():
            for t in p:
                t.grad = None
            x, y, z, sigma, rho, beta = p

            def rhs(x, y, z):
                return sigma * (y - x), x * (rho - z) - y, x * y - beta * z

            for _ in range(steps):
                s = (x, y, z)
                k1 = rhs(*s)
                k2 = rhs(*(q + 0.5 * dt * k for q, k in zip(s, k1)))
                k3 = rhs(*(q + 0.5 * dt * k for q, k in zip(s, k2)))
                k4 = rhs(*(q + dt * k for q, k in zip(s, k3)))
                x, y, z = (
                    q + dt / 6.0 * (a + 2.0 * b + 2.0 * c + d)
                    for q, a, b, c, d in zip(s, k1, k2, k3, k4)
                )
            (x + y + z).backward()

        return run

    def forward(self, vs, batch):
        if not batch:
            args = [Duplicated(p, float(t)) for p, t in zip(self.p, vs[0])]
        else:
            args = [
                BatchDuplicated(p, tuple(float(v[i]) for v in vs)) for i, p in enumerate(self.p)
            ]
        return lambda: enzpy.autodiff(lorenz, *args, self.dt, self.steps, mode=Forward)


class Dot(Kernel):
    name = "dot"
    check_step = 1e-1  # bilinear: central differences are exact up to rounding

    def __init__(self, n):
        self.description = f"dot product, n={n:.0e}"
        rng = np.random.default_rng(3)
        self.x = rng.standard_normal(n)
        self.y = rng.standard_normal(n)
        self.dx = np.zeros_like(self.x)
        self.dy = np.zeros_like(self.y)

    def n_inputs(self):
        return 2 * self.x.size

    def primal(self):
        return dot(self.x, self.y)

    def grad_setup(self, full=False):
        self.dx.fill(0.0)
        self.dy.fill(0.0)

    def grad(self):
        self.r = enzpy.autodiff(dot, Duplicated(self.x, self.dx), Duplicated(self.y, self.dy))

    def grad_vector(self):
        return np.concatenate([self.dx, self.dy])

    def directional_fd(self, v, h):
        n = self.x.size
        vx, vy = v[:n], v[n:]
        return (dot(self.x + h * vx, self.y + h * vy) - dot(self.x - h * vx, self.y - h * vy)) / (
            2 * h
        )

    def jax(self):
        import jax
        import jax.numpy as jnp

        g = jax.jit(jax.grad(jnp.dot, argnums=(0, 1)))
        x, y = jnp.asarray(self.x), jnp.asarray(self.y)
        return lambda: jax.block_until_ready(g(x, y))

    def torch(self):
        import torch

        x = torch.tensor(self.x, requires_grad=True)
        y = torch.tensor(self.y, requires_grad=True)

        def run():
            x.grad = None
            y.grad = None
            torch.dot(x, y).backward()

        return run

    def forward(self, vs, batch):
        n = self.x.size
        x, y = self.x, self.y
        if not batch:
            dx, dy = vs[0][:n].copy(), vs[0][n:].copy()
            return lambda: enzpy.autodiff(dot, Duplicated(x, dx), Duplicated(y, dy), mode=Forward)
        dxs = tuple(v[:n].copy() for v in vs)
        dys = tuple(v[n:].copy() for v in vs)
        return lambda: enzpy.autodiff(
            dot, BatchDuplicated(x, dxs), BatchDuplicated(y, dys), mode=Forward
        )


@numba.njit
def heat_in_place(u, a, steps):
    # truly in place, sweeping left to right: u[i-1] is already this step's value
    n = u.shape[0]
    for _ in range(steps):
        for i in range(1, n - 1):
            u[i] = u[i] + a * (u[i - 1] - 2.0 * u[i] + u[i + 1])
    s = 0.0
    for i in range(n):
        s += u[i] * u[i]
    return s


@numba.njit
def lorenz_rk4_array(state, sigma, rho, beta, dt, nsteps):
    # the state lives in a length-3 array updated in place; stages in arrays
    k1 = np.empty(3)
    k2 = np.empty(3)
    k3 = np.empty(3)
    k4 = np.empty(3)
    tmp = np.empty(3)
    for _ in range(nsteps):
        lorenz_rhs(state, k1, sigma, rho, beta)
        for j in range(3):
            tmp[j] = state[j] + 0.5 * dt * k1[j]
        lorenz_rhs(tmp, k2, sigma, rho, beta)
        for j in range(3):
            tmp[j] = state[j] + 0.5 * dt * k2[j]
        lorenz_rhs(tmp, k3, sigma, rho, beta)
        for j in range(3):
            tmp[j] = state[j] + dt * k3[j]
        lorenz_rhs(tmp, k4, sigma, rho, beta)
        for j in range(3):
            state[j] += dt / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j])
    return state[0] + state[1] + state[2]


class HeatInPlace(Kernel):
    name = "heat_in_place"
    check_step = 1e-4
    kernel = staticmethod(heat_in_place)

    def __init__(self, n, steps, a=0.25):
        self.description = (
            f"1-D heat stencil updated in place (left-to-right sweep), {steps} steps x {n} points"
        )
        rng = np.random.default_rng(4)
        self.u0 = np.sin(np.linspace(0, np.pi, n)) + 0.1 * rng.standard_normal(n)
        self.u = self.u0.copy()
        self.du = np.zeros(n)
        self.a = a
        self.steps = steps

    def n_inputs(self):
        return self.u0.size + 1

    def primal_setup(self):
        np.copyto(self.u, self.u0)

    def primal(self):
        return self.kernel(self.u, self.a, self.steps)

    def grad_setup(self, full=False):
        # the state is updated in place: restore it; its shadow is the cotangent
        # of the final state (0: only the returned energy is differentiated)
        np.copyto(self.u, self.u0)
        self.du.fill(0.0)

    def grad(self):
        self.r = enzpy.autodiff(
            self.kernel, Duplicated(self.u, self.du), Active(self.a), self.steps
        )

    def grad_vector(self):
        return np.concatenate([self.du, [self.r[1]]])

    def directional_fd(self, v, h):
        u, a = v[:-1], v[-1]
        return (
            self.kernel(self.u0 + h * u, self.a + h * a, self.steps)
            - self.kernel(self.u0 - h * u, self.a - h * a, self.steps)
        ) / (2 * h)

    def jax(self):
        import jax
        import jax.numpy as jnp

        steps = self.steps

        def f(u, a):
            def sweep(_, u):
                # the same sequential recurrence: carry = the new left neighbour
                def body(left_new, xs):
                    ui, right_old = xs
                    new = ui + a * (left_new - 2.0 * ui + right_old)
                    return new, new

                _, mid = jax.lax.scan(body, u[0], (u[1:-1], u[2:]))
                return jnp.concatenate([u[:1], mid, u[-1:]])

            u = jax.lax.fori_loop(0, steps, sweep, u)
            return jnp.sum(u * u)

        g = jax.jit(jax.grad(f, argnums=(0, 1)))
        u0, a = jnp.asarray(self.u0), jnp.asarray(self.a)
        return lambda: jax.block_until_ready(g(u0, a))

    def torch(self):
        import torch

        n = self.u0.size
        # A sequential in-place sweep is a chain of scalar operations in torch
        # (no vectorized form): time a few steps and scale to the full count.
        run_steps = min(self.steps, max(1, 20_000 // n))
        u0 = torch.tensor(self.u0, requires_grad=True)
        a = torch.tensor(self.a, dtype=torch.float64, requires_grad=True)

        def run():
            u0.grad = None
            a.grad = None
            u = list(u0.unbind())
            for _ in range(run_steps):
                for i in range(1, n - 1):
                    u[i] = u[i] + a * (u[i - 1] - 2.0 * u[i] + u[i + 1])
            s = torch.stack(u)
            (s * s).sum().backward()

        if run_steps == self.steps:
            return run
        return Scaled(run, self.steps / run_steps, f"{run_steps} of {self.steps} steps, scaled")

    def forward(self, vs, batch):
        # The state is updated in place and forward mode overwrites the tangents
        # with the output tangents: restore both (an O(n) copy) in each call.
        n = self.u0.size
        u, u0 = self.u, self.u0
        if not batch:
            dv, da = vs[0][:n].copy(), float(vs[0][n])
            du = dv.copy()

            def one():
                np.copyto(u, u0)
                np.copyto(du, dv)
                return enzpy.autodiff(
                    self.kernel,
                    Duplicated(u, du),
                    Duplicated(self.a, da),
                    self.steps,
                    mode=Forward,
                )

            return one
        dvs = [v[:n].copy() for v in vs]
        dus = tuple(d.copy() for d in dvs)
        das = tuple(float(v[n]) for v in vs)

        def many():
            np.copyto(u, u0)
            for d, v in zip(dus, dvs):
                np.copyto(d, v)
            return enzpy.autodiff(
                self.kernel,
                BatchDuplicated(u, dus),
                BatchDuplicated(self.a, das),
                self.steps,
                mode=Forward,
            )

        return many


@numba.njit
def heat_slices(u, a, steps):
    # numpy style: each step a new array from slices, written back into u
    for _ in range(steps):
        u[1:-1] = u[1:-1] + a * (u[:-2] - 2.0 * u[1:-1] + u[2:])
    return (u * u).sum()


class HeatSlices(HeatInPlace):
    """The explicit heat step written with numpy slices (Jacobi: every point
    from the previous step's values), the state updated in place."""

    name = "heat_slices"
    kernel = staticmethod(heat_slices)

    def __init__(self, n, steps, a=0.25):
        super().__init__(n, steps, a)
        self.description = (
            f"1-D heat step written with numpy slices, u[1:-1] = ..., {steps} steps x {n} points"
        )

    def jax(self):
        import jax
        import jax.numpy as jnp

        steps = self.steps

        def f(u, a):
            def step(_, u):
                return u.at[1:-1].set(u[1:-1] + a * (u[:-2] - 2.0 * u[1:-1] + u[2:]))

            u = jax.lax.fori_loop(0, steps, step, u)
            return jnp.sum(u * u)

        g = jax.jit(jax.grad(f, argnums=(0, 1)))
        u0, a = jnp.asarray(self.u0), jnp.asarray(self.a)
        return lambda: jax.block_until_ready(g(u0, a))

    def torch(self):
        import torch

        u0 = torch.tensor(self.u0, requires_grad=True)
        a = torch.tensor(self.a, dtype=torch.float64, requires_grad=True)

        def run():
            u0.grad = None
            a.grad = None
            u = u0
            for _ in range(self.steps):
                mid = u[1:-1] + a * (u[:-2] - 2.0 * u[1:-1] + u[2:])
                u = torch.cat([u[:1], mid, u[-1:]])
            (u * u).sum().backward()

        return run


class LorenzArray(Kernel):
    name = "lorenz_rk4_array"

    def __init__(self, steps, dt=5e-4):
        self.description = f"Lorenz RK4, state in a length-3 array updated in place, {steps} steps"
        self.s0 = np.array([1.0, 1.0, 1.0])
        self.s = self.s0.copy()
        self.ds = np.zeros(3)
        self.p = (10.0, 28.0, 8.0 / 3.0)
        self.dt = dt
        self.steps = steps

    def n_inputs(self):
        return 6

    def primal_setup(self):
        np.copyto(self.s, self.s0)

    def primal(self):
        return lorenz_rk4_array(self.s, *self.p, self.dt, self.steps)

    def grad_setup(self, full=False):
        np.copyto(self.s, self.s0)
        self.ds.fill(0.0)

    def grad(self):
        self.r = enzpy.autodiff(
            lorenz_rk4_array,
            Duplicated(self.s, self.ds),
            *[Active(v) for v in self.p],
            self.dt,
            self.steps,
        )

    def grad_vector(self):
        return np.concatenate([self.ds, np.array(self.r[1:4], dtype=np.float64)])

    def directional_fd(self, v, h):
        p = np.array(self.p)
        return (
            lorenz_rk4_array(self.s0 + h * v[:3], *(p + h * v[3:]), self.dt, self.steps)
            - lorenz_rk4_array(self.s0 - h * v[:3], *(p - h * v[3:]), self.dt, self.steps)
        ) / (2 * h)

    def jax(self):
        import jax
        import jax.numpy as jnp

        dt, steps = self.dt, self.steps

        def f(s, sigma, rho, beta):
            def rhs(s):
                return jnp.stack(
                    [sigma * (s[1] - s[0]), s[0] * (rho - s[2]) - s[1], s[0] * s[1] - beta * s[2]]
                )

            def body(_, s):
                k1 = rhs(s)
                k2 = rhs(s + 0.5 * dt * k1)
                k3 = rhs(s + 0.5 * dt * k2)
                k4 = rhs(s + dt * k3)
                return s + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

            return jnp.sum(jax.lax.fori_loop(0, steps, body, s))

        g = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))
        args = [jnp.asarray(self.s0)] + [jnp.asarray(v) for v in self.p]
        return lambda: jax.block_until_ready(g(*args))

    def torch(self):
        import torch

        dt, steps = self.dt, self.steps
        s0 = torch.tensor(self.s0, requires_grad=True)
        p = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in self.p]

        def run():
            for t in [s0, *p]:
                t.grad = None
            sigma, rho, beta = p

            def rhs(s):
                return torch.stack(
                    [sigma * (s[1] - s[0]), s[0] * (rho - s[2]) - s[1], s[0] * s[1] - beta * s[2]]
                )

            s = s0
            for _ in range(steps):
                k1 = rhs(s)
                k2 = rhs(s + 0.5 * dt * k1)
                k3 = rhs(s + 0.5 * dt * k2)
                k4 = rhs(s + dt * k3)
                s = s + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            s.sum().backward()

        return run

    def forward(self, vs, batch):
        s, s0 = self.s, self.s0
        if not batch:
            dv = vs[0][:3].copy()
            ds = dv.copy()
            ps = [Duplicated(p, float(t)) for p, t in zip(self.p, vs[0][3:])]

            def one():
                np.copyto(s, s0)
                np.copyto(ds, dv)
                return enzpy.autodiff(
                    lorenz_rk4_array, Duplicated(s, ds), *ps, self.dt, self.steps, mode=Forward
                )

            return one
        dvs = [v[:3].copy() for v in vs]
        dss = tuple(d.copy() for d in dvs)
        ps = [BatchDuplicated(p, tuple(float(v[3 + i]) for v in vs)) for i, p in enumerate(self.p)]

        def many():
            np.copyto(s, s0)
            for d, v in zip(dss, dvs):
                np.copyto(d, v)
            return enzpy.autodiff(
                lorenz_rk4_array, BatchDuplicated(s, dss), *ps, self.dt, self.steps, mode=Forward
            )

        return many


@numba.njit
def gmm_objective(alphas, means, icf, x, wishart_gamma, wishart_m):
    # ADBench's GMM negative log-likelihood with a diagonal inverse covariance:
    # icf[c] holds the log of Q_c's diagonal, Q_c = L_c^-1 (Sigma_c^-1 = Q_c^T Q_c).
    n, d = x.shape
    k = alphas.shape[0]
    qdiag = np.empty((k, d))
    sum_qs = np.empty(k)
    for c in range(k):
        s = 0.0
        for j in range(d):
            qdiag[c, j] = math.exp(icf[c, j])
            s += icf[c, j]
        sum_qs[c] = s
    main = np.empty(k)
    slse = 0.0
    for i in range(n):
        mx = -np.inf
        for c in range(k):
            sq = 0.0
            for j in range(d):
                q = qdiag[c, j] * (x[i, j] - means[c, j])
                sq += q * q
            main[c] = alphas[c] + sum_qs[c] - 0.5 * sq
            mx = max(mx, main[c])
        se = 0.0
        for c in range(k):
            se += math.exp(main[c] - mx)
        slse += mx + math.log(se)
    amx = -np.inf
    for c in range(k):
        amx = max(amx, alphas[c])
    ase = 0.0
    for c in range(k):
        ase += math.exp(alphas[c] - amx)
    lse_alphas = amx + math.log(ase)
    # Wishart prior on the precisions (constants dropped but the data term's)
    prior = 0.0
    for c in range(k):
        fro = 0.0
        for j in range(d):
            fro += qdiag[c, j] * qdiag[c, j]
        prior += 0.5 * wishart_gamma * wishart_gamma * fro - wishart_m * sum_qs[c]
    const = -0.5 * n * d * math.log(2.0 * math.pi)
    return const + slse - n * lse_alphas + prior


@numba.njit
def mlp_softmax_ce(W1, b1, W2, b2, X, labels):
    # tanh hidden layer, linear output layer, mean softmax cross-entropy;
    # the hidden and output buffers are reused across the samples
    n, d = X.shape
    h = W1.shape[0]
    c = W2.shape[0]
    z = np.empty(h)
    o = np.empty(c)
    loss = 0.0
    for s in range(n):
        for j in range(h):
            acc = b1[j]
            for k in range(d):
                acc += W1[j, k] * X[s, k]
            z[j] = math.tanh(acc)
        mx = -np.inf
        for i in range(c):
            acc = b2[i]
            for j in range(h):
                acc += W2[i, j] * z[j]
            o[i] = acc
            mx = max(mx, acc)
        se = 0.0
        for i in range(c):
            se += math.exp(o[i] - mx)
        loss += mx + math.log(se) - o[labels[s]]
    return loss / n


class ArrayParams(Kernel):
    """A kernel f(*params, *consts) differentiated w.r.t. a few arrays."""

    fn = None

    def n_inputs(self):
        return sum(p.size for p in self.params)

    def primal(self):
        return self.fn(*self.params, *self.consts)

    def grad_setup(self, full=False):
        for g in self.shadows:
            g.fill(0.0)

    def grad(self):
        self.r = enzpy.autodiff(
            self.fn, *[Duplicated(p, g) for p, g in zip(self.params, self.shadows)], *self.consts
        )

    def grad_vector(self):
        return np.concatenate([g.ravel() for g in self.shadows])

    def split(self, v):
        """The flat vector v as arrays shaped like the parameters."""
        out, at = [], 0
        for p in self.params:
            out.append(np.ascontiguousarray(v[at : at + p.size]).reshape(p.shape))
            at += p.size
        return out

    def directional_fd(self, v, h):
        vs = self.split(v)
        plus = [p + h * t for p, t in zip(self.params, vs)]
        minus = [p - h * t for p, t in zip(self.params, vs)]
        return (self.fn(*plus, *self.consts) - self.fn(*minus, *self.consts)) / (2 * h)

    def forward(self, vs, batch):
        if not batch:
            args = [Duplicated(p, t) for p, t in zip(self.params, self.split(vs[0]))]
        else:
            per = [self.split(v) for v in vs]
            args = [
                BatchDuplicated(p, tuple(ts[i] for ts in per)) for i, p in enumerate(self.params)
            ]
        return lambda: enzpy.autodiff(self.fn, *args, *self.consts, mode=Forward)

    def jax_gradient(self, f):
        """A callable computing the jitted JAX gradient of f over the parameters."""
        import jax
        import jax.numpy as jnp

        g = jax.jit(jax.grad(f, argnums=tuple(range(len(self.params)))))
        args = [jnp.asarray(p) for p in self.params]
        return lambda: jax.block_until_ready(g(*args))

    def torch_gradient(self, f):
        """A callable running PyTorch's backward pass of f over the parameters."""
        import torch

        ps = [torch.tensor(p, requires_grad=True) for p in self.params]

        def run():
            for p in ps:
                p.grad = None
            f(*ps).backward()

        return run


class GMM(ArrayParams):
    name = "gmm"
    fn = staticmethod(gmm_objective)

    def __init__(self, d, k, n):
        self.description = f"ADBench GMM objective (diagonal), d={d}, k={k}, n={n}"
        rng = np.random.default_rng(5)
        self.params = [
            rng.standard_normal(k),
            rng.standard_normal((k, d)),
            0.1 * rng.standard_normal((k, d)),
        ]
        self.shadows = [np.zeros_like(p) for p in self.params]
        self.consts = [rng.standard_normal((n, d)), 1.0, 0.0]

    def peer_loss(self, xp, x, logsumexp):
        """The same objective vectorized over samples and components, for the
        array library xp (jax.numpy or torch) with x already converted."""
        _, gamma, m = self.consts
        n, d = x.shape

        def f(alphas, means, icf):
            q = xp.exp(icf)
            sum_qs = xp.sum(icf, 1)
            qd = q[None, :, :] * (x[:, None, :] - means[None, :, :])
            main = alphas[None, :] + sum_qs[None, :] - 0.5 * xp.sum(qd * qd, 2)
            slse = xp.sum(logsumexp(main, 1))
            prior = 0.5 * gamma * gamma * xp.sum(q * q) - m * xp.sum(sum_qs)
            const = -0.5 * n * d * math.log(2.0 * math.pi)
            return const + slse - n * logsumexp(alphas, 0) + prior

        return f

    def jax(self):
        import jax.numpy as jnp
        from jax.scipy.special import logsumexp

        f = self.peer_loss(jnp, jnp.asarray(self.consts[0]), lambda a, ax: logsumexp(a, axis=ax))
        return self.jax_gradient(f)

    def torch(self):
        import torch

        f = self.peer_loss(torch, torch.tensor(self.consts[0]), torch.logsumexp)
        return self.torch_gradient(f)


class MLP(ArrayParams):
    name = "mlp"
    check_step = 1e-4

    fn = staticmethod(mlp_softmax_ce)

    def __init__(self, d, h, c, n):
        self.description = f"2-layer MLP, explicit loops, {d}->{h} tanh->{c} softmax CE, batch {n}"
        rng = np.random.default_rng(6)
        self.params = [
            rng.standard_normal((h, d)) / math.sqrt(d),
            0.1 * rng.standard_normal(h),
            rng.standard_normal((c, h)) / math.sqrt(h),
            0.1 * rng.standard_normal(c),
        ]
        self.shadows = [np.zeros_like(p) for p in self.params]
        self.consts = [rng.standard_normal((n, d)), rng.integers(0, c, n)]

    def jax(self):
        import jax
        import jax.numpy as jnp
        from jax.scipy.special import logsumexp

        X, labels = (jnp.asarray(a) for a in self.consts)
        rows = jnp.arange(X.shape[0])

        def f(W1, b1, W2, b2):
            o = jnp.tanh(X @ W1.T + b1) @ W2.T + b2
            return jnp.mean(logsumexp(o, axis=1) - o[rows, labels])

        g = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))
        args = [jnp.asarray(p) for p in self.params]
        return lambda: jax.block_until_ready(g(*args))

    def torch(self):
        import torch

        X, labels = (torch.tensor(a) for a in self.consts)
        rows = torch.arange(X.shape[0])
        ps = [torch.tensor(p, requires_grad=True) for p in self.params]

        def run():
            for p in ps:
                p.grad = None
            W1, b1, W2, b2 = ps
            o = torch.tanh(X @ W1.T + b1) @ W2.T + b2
            (torch.logsumexp(o, 1) - o[rows, labels]).mean().backward()

        return run


@numba.njit
def mlp_reused_sse(W1, b1, W2, b2, X, Y):
    # tanh hidden layer, linear output, squared error summed over samples,
    # written the way C programmers write it: the hidden vector h and the
    # output o are allocated once and accumulated into for every sample
    # (h[j] += W1[k, j] * x_k over k), W1 stored input-major (d x m).
    n, d = X.shape
    m = W1.shape[1]
    c = W2.shape[1]
    h = np.empty(m)
    o = np.empty(c)
    loss = 0.0
    for s in range(n):
        for j in range(m):
            h[j] = b1[j]
        for k in range(d):
            xk = X[s, k]
            for j in range(m):
                h[j] += W1[k, j] * xk
        for j in range(m):
            h[j] = math.tanh(h[j])
        for i in range(c):
            o[i] = b2[i]
        for j in range(m):
            hj = h[j]
            for i in range(c):
                o[i] += W2[j, i] * hj
        for i in range(c):
            r = o[i] - Y[s, i]
            loss += 0.5 * r * r
    return loss


class MLPReused(ArrayParams):
    name = "mlp_reused"
    check_step = 1e-4

    fn = staticmethod(mlp_reused_sse)

    def __init__(self, d, m, c, n):
        self.description = (
            f"MLP with loops, {d}->{m} tanh->{c}, squared error summed over {n} samples; "
            "hidden and output vectors reused per sample"
        )
        rng = np.random.default_rng(8)
        self.params = [
            rng.standard_normal((d, m)) / math.sqrt(d),
            0.1 * rng.standard_normal(m),
            rng.standard_normal((m, c)) / math.sqrt(m),
            0.1 * rng.standard_normal(c),
        ]
        self.shadows = [np.zeros_like(p) for p in self.params]
        self.consts = [rng.standard_normal((n, d)), rng.standard_normal((n, c))]

    def peer_loss(self, xp, X, Y):
        """The same loss vectorized over the samples, for xp (jax.numpy or torch)."""

        def f(W1, b1, W2, b2):
            r = xp.tanh(X @ W1 + b1) @ W2 + b2 - Y
            return 0.5 * xp.sum(r * r)

        return f

    def jax(self):
        import jax.numpy as jnp

        return self.jax_gradient(self.peer_loss(jnp, *(jnp.asarray(a) for a in self.consts)))

    def torch(self):
        import torch

        return self.torch_gradient(self.peer_loss(torch, *(torch.tensor(a) for a in self.consts)))


class Wave(ArrayParams):
    name = "wave"
    check_step = 1e-4
    fn = staticmethod(wave_rotating_buffers)

    def __init__(self, n, steps):
        self.description = (
            f"1-D wave equation, {steps} steps x {n} points, three buffers rotated per step"
        )
        x = np.linspace(0, np.pi, n)
        self.params = [np.sin(x), np.sin(x) * 0.99]
        self.shadows = [np.zeros_like(p) for p in self.params]
        self.consts = [0.5, steps]

    def peer_loss(self, xp, loop):
        c2 = self.consts[0] ** 2
        steps = self.consts[1]

        def f(u0, v0):
            def step(state):
                prev, cur = state
                mid = 2 * cur[1:-1] - prev[1:-1] + c2 * (cur[:-2] - 2 * cur[1:-1] + cur[2:])
                zero = xp.zeros_like(cur[:1])
                return cur, xp.concatenate([zero, mid, zero])

            prev, cur = loop(steps, step, (u0, v0))
            return xp.sum(cur * cur + 0.5 * (cur - prev) ** 2)

        return f

    def jax(self):
        import jax
        import jax.numpy as jnp

        def loop(steps, step, state):
            return jax.lax.fori_loop(0, steps, lambda _, s: step(s), state)

        return self.jax_gradient(self.peer_loss(jnp, loop))

    def torch(self):
        import torch

        def loop(steps, step, state):
            for _ in range(steps):
                state = step(state)
            return state

        return self.torch_gradient(self.peer_loss(torch, loop))


@numba.njit
def lennard_jones_energy(pos, eps, sigma):
    # pairwise Lennard-Jones energy of n particles in 3-D, the powers written
    # as r2 ** 3 and inv6 ** 2 (numba's integer powers)
    n = pos.shape[0]
    s2 = sigma * sigma
    e = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            r2 = 0.0
            for k in range(3):
                d = pos[i, k] - pos[j, k]
                r2 += d * d
            inv6 = (s2 / r2) ** 3
            e += 4.0 * eps * (inv6**2 - inv6)
    return e


class LennardJones(ArrayParams):
    name = "lennard_jones"
    check_step = 1e-6
    fn = staticmethod(lennard_jones_energy)

    def __init__(self, n):
        self.description = f"Lennard-Jones energy of {n} particles, all pairs, integer powers"
        rng = np.random.default_rng(9)
        side = int(round(n ** (1 / 3))) + 1
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        self.params = [1.2 * grid[:n].astype(float) + 0.05 * rng.standard_normal((n, 3))]
        self.shadows = [np.zeros_like(self.params[0])]
        self.consts = [0.8, 1.0]

    def peer_loss(self, xp, triu):
        eps, sigma = self.consts

        def f(pos):
            d = pos[:, None, :] - pos[None, :, :]
            r2 = xp.sum(d * d, -1)[triu]
            inv6 = (sigma * sigma / r2) ** 3
            return xp.sum(4.0 * eps * (inv6**2 - inv6))

        return f

    def jax(self):
        import jax.numpy as jnp

        n = self.params[0].shape[0]
        return self.jax_gradient(self.peer_loss(jnp, jnp.triu_indices(n, 1)))

    def torch(self):
        import torch

        n = self.params[0].shape[0]
        iu = torch.triu_indices(n, n, 1)
        return self.torch_gradient(self.peer_loss(torch, (iu[0], iu[1])))


@numba.njit
def _log_sum_exp(v):
    mx = v[0]
    for c in range(1, v.shape[0]):
        if v[c] > mx:
            mx = v[c]
    se = 0.0
    for c in range(v.shape[0]):
        se += math.exp(v[c] - mx)
    return mx + math.log(se)


@numba.njit
def gmm_scratch_objective(alphas, means, icf, x, wishart_gamma, wishart_m):
    # ADBench's full-covariance GMM written the way C programmers write it:
    # scratch vectors xc, qxc and main allocated once and reused for every
    # sample, and the strictly lower triangle of Q_c applied by a triangular
    # loop with a running index into icf[c, d:] (column by column).
    n, d = x.shape
    k = alphas.shape[0]
    xc = np.empty(d)
    qxc = np.empty(d)
    main = np.empty(k)
    sum_qs = np.empty(k)
    for c in range(k):
        s = 0.0
        for j in range(d):
            s += icf[c, j]
        sum_qs[c] = s
    slse = 0.0
    for i in range(n):
        for c in range(k):
            for j in range(d):
                xc[j] = x[i, j] - means[c, j]
            for j in range(d):
                qxc[j] = math.exp(icf[c, j]) * xc[j]
            li = d
            for col in range(d):
                for row in range(col + 1, d):
                    qxc[row] += icf[c, li] * xc[col]
                    li += 1
            sq = 0.0
            for j in range(d):
                sq += qxc[j] * qxc[j]
            main[c] = alphas[c] + sum_qs[c] - 0.5 * sq
        slse += _log_sum_exp(main)
    prior = 0.0
    for c in range(k):
        fro = 0.0
        for j in range(d):
            e = math.exp(icf[c, j])
            fro += e * e
        for j in range(d, icf.shape[1]):
            fro += icf[c, j] * icf[c, j]
        prior += 0.5 * wishart_gamma * wishart_gamma * fro - wishart_m * sum_qs[c]
    const = -0.5 * n * d * math.log(2.0 * math.pi)
    return const + slse - n * _log_sum_exp(alphas) + prior


class GMMScratch(ArrayParams):
    name = "gmm_scratch"
    fn = staticmethod(gmm_scratch_objective)

    def __init__(self, d, k, n):
        self.description = (
            f"ADBench GMM (full covariance), C style: reused scratch vectors and a "
            f"triangular update, d={d}, k={k}, n={n}"
        )
        rng = np.random.default_rng(7)
        self.params = [
            rng.standard_normal(k),
            rng.standard_normal((k, d)),
            0.1 * rng.standard_normal((k, d + d * (d - 1) // 2)),
        ]
        self.shadows = [np.zeros_like(p) for p in self.params]
        self.consts = [rng.standard_normal((n, d)), 1.0, 0.0]

    def peer_loss(self, xp, x, logsumexp, lower):
        """The same objective vectorized, for the array library xp; ``lower``
        builds each component's Q from icf (diagonal exp, then the strictly
        lower triangle column by column)."""
        _, gamma, m = self.consts
        n, d = x.shape

        def f(alphas, means, icf):
            q = lower(icf)
            sum_qs = xp.sum(icf[:, :d], 1)
            xc = x[:, None, :] - means[None, :, :]
            qxc = xp.einsum("kab,nkb->nka", q, xc)
            main = alphas[None, :] + sum_qs[None, :] - 0.5 * xp.sum(qxc * qxc, 2)
            slse = xp.sum(logsumexp(main, 1))
            prior = 0.5 * gamma * gamma * (
                xp.sum(xp.exp(icf[:, :d]) ** 2) + xp.sum(icf[:, d:] ** 2)
            ) - m * xp.sum(sum_qs)
            const = -0.5 * n * d * math.log(2.0 * math.pi)
            return const + slse - n * logsumexp(alphas, 0) + prior

        return f

    def _tril(self):
        d = self.consts[0].shape[1]
        rows = [r for c in range(d) for r in range(c + 1, d)]
        cols = [c for c in range(d) for r in range(c + 1, d)]
        return d, rows, cols

    def jax(self):
        import jax
        import jax.numpy as jnp
        from jax.scipy.special import logsumexp

        d, rows, cols = self._tril()
        k = self.params[0].shape[0]

        def lower(icf):
            q = jnp.zeros((k, d, d)).at[:, rows, cols].set(icf[:, d:])
            return q + jax.vmap(jnp.diag)(jnp.exp(icf[:, :d]))

        f = self.peer_loss(
            jnp, jnp.asarray(self.consts[0]), lambda a, ax: logsumexp(a, axis=ax), lower
        )
        return self.jax_gradient(f)

    def torch(self):
        import torch

        d, rows, cols = self._tril()
        k = self.params[0].shape[0]

        def lower(icf):
            q = torch.zeros((k, d, d), dtype=icf.dtype)
            index = (torch.arange(k)[:, None], torch.tensor(rows)[None], torch.tensor(cols)[None])
            q = q.index_put(index, icf[:, d:])
            return q + torch.diag_embed(torch.exp(icf[:, :d]))

        f = self.peer_loss(torch, torch.tensor(self.consts[0]), torch.logsumexp, lower)
        return self.torch_gradient(f)


def make_kernels(quick):
    if quick:
        return [
            SumX2Sin(10**5),
            Heat(1000, 50),
            HeatInPlace(1000, 50),
            HeatSlices(1000, 50),
            Lorenz(10**3),
            LorenzArray(10**3),
            Dot(10**5),
            GMM(5, 10, 200),
            GMMScratch(5, 10, 200),
            MLP(32, 64, 10, 64),
            MLPReused(16, 32, 10, 32),
            Wave(1000, 50),
            LennardJones(64),
        ]
    return [
        SumX2Sin(10**6),
        Heat(10**4, 200),
        HeatInPlace(10**4, 200),
        HeatSlices(10**4, 200),
        Lorenz(10**4),
        LorenzArray(10**4),
        Dot(10**6),
        GMM(10, 25, 1000),
        GMMScratch(10, 25, 1000),
        MLP(784, 128, 10, 256),
        MLPReused(64, 128, 10, 256),
        Wave(10**4, 200),
        LennardJones(500),
    ]
