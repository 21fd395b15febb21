"""A seeded random grammar of numba kernels for enzpy's differential fuzzer.

``generate(seed)`` returns a :class:`Kernel`: the Python source text of a module with
a kernel ``kernel(...)`` and its helper ``@njit`` functions, plus a description of the
kernel's arguments. The same seed always gives the same source (``random.Random``
only, no global state), so a seed names a kernel for good.

Why a generator of our own rather than hypothesis: every kernel costs a numba compile
plus four enzpy compiles (reverse, forward, both batched), about 1-4 s, so the
budget is tens of kernels in CI and a few thousand locally. Explicit integer seeds
make each case a one-liner to reproduce (``scripts/fuzz.py --seed S --count 1``), and
shrinking by hand into a named regression test is what we want for the record anyway.

The grammar (one kernel = preamble, 2-6 blocks, a return):

    kernel(x, y [, w] [, H], a [, b]) ; x, y, w: 1-D float64 of length n,
        H: (T+1, n) history array, a, b: float scalars
        -- arrays may be passed as strided views (buf[::2]) of a larger buffer
    preamble: n = x.shape[0]; s = <init>; optional local scratch w = np.zeros(n)
    block :=
        map        for i: D[i] = E
        inplace    for i: D[i] += E | -= E | *= (1 + c*tanh(E))
        scan       for i in 1..n: D[i] = c*D[i-1] + E   (or backwards D[i] += c*D[i+1])
        reduce     for i: s += E
        triangular for i: for j in range(i+1, n) | range(i): D[j] += c*E(i, j) | s += ...
        scratch    for it in range(K): (w[i] = E(D, neighbours)) ; (D[i] += c*w[i])
        carried    prev = D[0]; for i: cur = D[i]; D[i] = stencil(prev, cur, D[i+1]); prev = cur
        history    H[0, :] = S; for t: H[t+1, i] = H[t, i] + c*tanh(E(H[t, i±1])); D|s <- H[T]
        branch     for i: if S[i] > 0 | S[i] > D[i] | s > c: D[i] = E1 [else: D[i] = E2]
        while      for i: v = |S[i]| + .5; k = 0; while v < L and k < K: v = v*g + E; ...
                   or a scalar halving loop, or a counter-bounded fixed-point loop
        call       a helper @njit (reduction, in-place update of its array argument,
                   a scalar function used in E, a function returning a tuple of
                   floats, a function taking a tuple of arrays), called with the
                   arrays or with views of them
        view       v = D[1:] | D[:-1] | D[::2] | D[1:][::2] | D[::-1]; for i: v[i] = E
        tuple      tp = (D, S); tp[0][i] = E(tp[1][i]); for arr in tp: s += ...
        arrexpr    t = S * a + c | np.sin(S) * D | S.copy(); s += np.sum(t * t); D[i] = t[i]
        scalar     s = tanh(s) + c*E | s = s*s/(1+s*s)
    E := leaf | E op E | sin E | cos E | tanh E | exp(c*tanh E) | exp(-E^2)
         | log(1 + E^2) | log(c + |E|) | sqrt(1 + E^2) | E**2 | E**3 | (c + |E|)**1.3
         | (1 + E^2)**-0.5 | min(E, E) | max(E, E) | |E| | E / (1 + E^2) | hypot(E, E)
         | helper(E, E)
    leaf := array reads at i, (i+1) % n, n-1-i | a | b | s | constants

Values stay in safe domains by construction (log and sqrt of values >= c > 0,
contracting updates, bounded squashes), and ``differential.py`` rejects a kernel
whose primal outputs are not finite or exceed 1e4 (``Kernel.attempt`` then moves to
the next sub-seed). Non-smooth points (abs, min/max, branches, while-loop exits) are
left in on purpose: the checker detects them with one-sided differences and skips
that direction instead of reporting noise.
"""

from __future__ import annotations

import dataclasses
import random

__all__ = ["Kernel", "generate", "BLOCKS"]


@dataclasses.dataclass
class Kernel:
    seed: int
    attempt: int
    source: str
    #: argument list in order: (kind, name) with kind "arr", "arr2", "scal", "int"
    args: list
    #: n (length of the 1-D arrays), T (steps of the history array, or 0)
    n: int
    T: int
    #: names of the array arguments passed as strided views of a larger buffer
    strided: list
    returns_float: bool
    blocks: list  # names of the blocks used (statistics)


BLOCKS = [
    "map",
    "inplace",
    "scan",
    "reduce",
    "triangular",
    "scratch",
    "carried",
    "history",
    "branch",
    "while",
    "call",
    "view",
    "tuple",
    "arrexpr",
    "scalar",
]


class _Gen:
    def __init__(self, seed: int, attempt: int):
        self.r = random.Random(f"enzpy-fuzz-{seed}-{attempt}")
        self.helpers: list[str] = []  # source of helper functions
        self.scalar_helpers: list[str] = []  # names of helpers f(p, q) -> float
        self.counter = 0
        self.extra_math = False  # the "wide" profile's functions (wide blocks only)

    # ---------------------------------------------------------------- utilities
    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def c(self, lo=0.2, hi=0.9) -> str:
        return repr(round(self.r.uniform(lo, hi), 3))

    def pick(self, seq):
        return self.r.choice(seq)

    # -------------------------------------------------------------- expressions
    def expr(self, leaves: list[str], depth: int) -> str:
        r = self.r
        if depth <= 0 or r.random() < 0.25:
            if r.random() < 0.12:
                return self.c(-1.5, 1.5)
            return self.pick(leaves)
        e = lambda: self.expr(leaves, depth - 1)  # noqa: E731
        k = r.randrange(31 if self.extra_math else 24)
        if k >= 24:
            return self.expr_extra(k - 24, e)
        if k < 6:
            op = self.pick(["+", "-", "*", "*"])
            return f"({e()} {op} {e()})"
        if k == 6:
            return f"math.sin({e()})"
        if k == 7:
            return f"np.cos({e()})"
        if k == 8:
            return f"math.tanh({e()})"
        if k == 9:
            return f"math.exp({self.c(0.2, 1.0)} * math.tanh({e()}))"
        if k == 10:
            return f"np.exp(-({e()}) ** 2)"
        if k == 11:
            return f"math.log(1.0 + ({e()}) ** 2)"
        if k == 12:
            return f"np.log({self.c(0.3, 1.0)} + abs({e()}))"
        if k == 13:
            return f"math.sqrt(1.0 + ({e()}) ** 2)"
        if k == 14:
            return f"({e()}) ** {self.pick(['2', '3', '2.0'])}"
        if k == 15:
            return f"({self.c(0.3, 1.0)} + abs({e()})) ** {self.pick(['1.3', '0.7', '-0.5'])}"
        if k == 16:
            return f"(1.0 + ({e()}) ** 2) ** -0.5"
        if k == 17:
            return f"{self.pick(['min', 'max'])}({e()}, {e()})"
        if k == 18:
            return f"abs({e()})"
        if k == 19:
            a = e()
            return f"({a} / (1.0 + ({e()}) ** 2))"
        if k == 20:
            return f"math.hypot({e()}, {e()})"
        if k == 21 and self.scalar_helpers:
            return f"{self.pick(self.scalar_helpers)}({e()}, {e()})"
        if k == 22:
            return f"np.arctan({e()})"
        return f"({self.c()} * {e()})"

    def expr_extra(self, k: int, e) -> str:
        return [
            lambda: f"math.log1p(({e()}) ** 2)",
            lambda: f"math.expm1({self.c(0.2, 1.0)} * math.tanh({e()}))",
            lambda: f"np.cbrt(1.5 + math.tanh({e()}))",
            lambda: f"math.erf({e()})",
            lambda: f"math.atan2({e()}, 1.0 + ({e()}) ** 2)",
            lambda: f"math.cosh({self.c(0.2, 1.0)} * math.tanh({e()}))",
            lambda: f"math.asinh({e()})",
        ][k]()

    def squash(self, ex: str) -> str:
        """A bounded version of ex (keeps sweeps from growing without bound)."""
        return self.pick(
            [f"math.tanh({ex})", f"math.sin({ex})", f"({ex} / (1.0 + ({ex}) ** 2))", ex]
        )

    # ------------------------------------------------------------------ helpers
    def helper_scalar(self) -> str:
        name = self.fresh("hs")
        body = self.expr(["p", "q", "p * q"], 2)
        self.helpers.append(f"@numba.njit\ndef {name}(p, q):\n    return {self.squash(body)}\n")
        self.scalar_helpers.append(name)
        return name

    def helper_reduce(self) -> str:
        name = self.fresh("hr")
        ex = self.expr(["u[i]", "c", "acc", "u[i] * c"], 2)
        init = self.pick(["0.0", "c"])
        self.helpers.append(
            f"@numba.njit\ndef {name}(u, c):\n"
            f"    acc = {init}\n"
            f"    for i in range(u.shape[0]):\n"
            f"        acc += {self.squash(ex)}\n"
            f"    return acc\n"
        )
        return name

    def helper_update(self) -> str:
        name = self.fresh("hu")
        ex = self.expr(["u[i]", "v[i]", "c"], 2)
        op = self.pick(["=", "+="])
        if op == "=":
            rhs = f"u[i] * {self.c(0.3, 0.8)} + {self.squash(ex)}"
        else:
            rhs = f"{self.c(0.1, 0.5)} * {self.squash(ex)}"
        # sometimes the helper calls a scalar helper itself (a call chain)
        if self.scalar_helpers and self.r.random() < 0.4:
            rhs = f"{rhs} + 0.1 * {self.pick(self.scalar_helpers)}(v[i], c)"
        self.helpers.append(
            f"@numba.njit\ndef {name}(u, v, c):\n"
            f"    for i in range(u.shape[0]):\n"
            f"        u[i] {op} {rhs}\n"
        )
        return name

    def helper_pair(self) -> str:
        name = self.fresh("hp")
        e1 = self.squash(self.expr(["p", "q"], 2))
        e2 = self.squash(self.expr(["p", "q"], 2))
        self.helpers.append(f"@numba.njit\ndef {name}(p, q):\n    return {e1}, {e2}\n")
        return name

    def helper_tuple(self) -> str:
        name = self.fresh("ht")
        ex = self.squash(self.expr(["u[i]", "v[i]", "c"], 2))
        self.helpers.append(
            f"@numba.njit\ndef {name}(tp, c):\n"
            f"    u, v = tp\n"
            f"    acc = 0.0\n"
            f"    for i in range(u.shape[0]):\n"
            f"        u[i] = {self.c(0.3, 0.8)} * u[i] + 0.2 * {ex}\n"
            f"        acc += u[i] * v[i]\n"
            f"    return acc\n"
        )
        return name


def _indent(lines: list[str], k: int = 1) -> list[str]:
    return ["    " * k + ln for ln in lines]


PROFILES = ("base", "wide")


def generate(seed: int, attempt: int = 0, profile: str = "base") -> Kernel:
    """The kernel of ``seed``. ``profile="wide"`` inserts 1-3 blocks of the wide
    grammar (:func:`_wide_block`) into the base kernel of the same seed, drawn from a
    separate random stream: the base part is identical in both profiles."""
    assert profile in PROFILES, profile
    g = _Gen(seed, attempt)
    r = g.r
    n = r.randint(3, 7)
    use_w_arg = r.random() < 0.4
    use_H = r.random() < 0.35
    use_b = r.random() < 0.5
    T = r.randint(1, 4) if use_H else 0
    args: list = [("arr", "x"), ("arr", "y")]
    if use_w_arg:
        args.append(("arr", "w"))
    if use_H:
        args.append(("arr2", "H"))
    args.append(("scal", "a"))
    if use_b:
        args.append(("scal", "b"))
    strided = [nm for kind, nm in args if kind == "arr" and r.random() < 0.15]

    scal = ["a"] + (["b"] if use_b else [])
    arrays = ["x", "y", "w"]  # w is an argument or a local scratch buffer
    body: list[str] = ["n = x.shape[0]"]
    body.append(f"s = {g.pick(['0.0', 'a', '0.5 * a', '1.0'])}")
    if not use_w_arg:
        body.append(f"w = {g.pick(['np.zeros(n)', 'np.ones(n)', 'x.copy()', 'np.empty_like(x)'])}")
        if "empty" in body[-1]:
            body.append("for i in range(n):")
            body.append("    w[i] = 0.5 * x[i]")

    def leaves(idx: str = "i") -> list[str]:
        out = scal + ["s"]
        for A in arrays:
            out.append(f"{A}[{idx}]")
        out.append(f"{g.pick(arrays)}[({idx} + 1) % n]")
        out.append(f"{g.pick(arrays)}[n - 1 - {idx}]")
        return out

    def dst() -> str:
        return g.pick(["y", "y", "x", "w"])

    def src() -> str:
        return g.pick(arrays)

    blocks: list[str] = []
    nblocks = r.randint(2, 6)
    choices = list(BLOCKS)
    if not use_H:
        choices.remove("history")
    starts: list[int] = []
    for _ in range(nblocks):
        kind = g.pick(choices)
        blocks.append(kind)
        starts.append(len(body))
        L: list[str] = []
        D, S = dst(), src()
        if kind == "map":
            L += ["for i in range(n):", f"    {D}[i] = {g.squash(g.expr(leaves(), 3))}"]
        elif kind == "inplace":
            op = g.pick(["+=", "-=", "*="])
            ex = g.expr(leaves(), 2)
            if op == "*=":
                rhs = f"(1.0 + {g.c(0.1, 0.5)} * math.tanh({ex}))"
            else:
                rhs = f"{g.c(0.1, 0.6)} * {g.squash(ex)}"
            L += ["for i in range(n):", f"    {D}[i] {op} {rhs}"]
        elif kind == "scan":
            if r.random() < 0.6:
                ex = g.squash(g.expr(leaves(), 2))
                L += [
                    "for i in range(1, n):",
                    f"    {D}[i] = {g.c(0.3, 0.9)} * {D}[i - 1] + {ex}",
                ]
            else:
                ex = g.squash(g.expr(leaves(), 2))
                L += [
                    "for i in range(n - 2, -1, -1):",
                    f"    {D}[i] += {g.c(0.2, 0.7)} * {D}[i + 1] * {ex}",
                ]
        elif kind == "reduce":
            L += [
                "for i in range(n):",
                f"    s += {g.c(0.1, 0.5)} * {g.squash(g.expr(leaves(), 3))}",
            ]
        elif kind == "triangular":
            lv = [f"{S}[i]", f"{S}[j]", f"{D}[i]", "a", "s"]
            ex = g.squash(g.expr(lv, 2))
            rng_j = g.pick(["range(i + 1, n)", "range(i)"])
            if r.random() < 0.6:
                L += [
                    "for i in range(n):",
                    f"    for j in {rng_j}:",
                    f"        {D}[j] += {g.c(0.05, 0.3)} * {ex}",
                ]
            else:
                L += [
                    "for i in range(n):",
                    f"    for j in {rng_j}:",
                    f"        s += {g.c(0.05, 0.3)} * {S}[i] * {ex}",
                ]
        elif kind == "scratch":
            W = "w"
            D = g.pick(["y", "x"])
            lv = [f"{D}[i]", f"{D}[(i + 1) % n]", f"{D}[(i + n - 1) % n]", "a", "s", f"{S}[i]"]
            ex = g.squash(g.expr(lv, 2))
            L += [
                f"for it in range({r.randint(2, 3)}):",
                "    for i in range(n):",
                f"        {W}[i] = {ex}",
                "    for i in range(n):",
                f"        {D}[i] = {g.c(0.5, 0.9)} * {D}[i] + {g.c(0.1, 0.4)} * {W}[i]",
            ]
        elif kind == "carried":
            if r.random() < 0.5:
                L += [
                    f"prev = {D}[0]",
                    "for i in range(1, n - 1):",
                    f"    cur = {D}[i]",
                    f"    {D}[i] = cur + {g.c(0.1, 0.3)} * (prev - 2.0 * cur + {D}[i + 1])",
                    "    prev = cur",
                ]
            else:
                ex = g.squash(g.expr(["t", "carry", f"{S}[i]", "a"], 2))
                L += [
                    f"carry = {g.pick(['s', 'a', '0.0'])}",
                    "for i in range(n):",
                    f"    t = {D}[i]",
                    f"    {D}[i] = {g.c(0.3, 0.8)} * t + {g.c(0.1, 0.5)} * {ex}",
                    "    carry = t",
                    "s += carry",
                ]
        elif kind == "history":
            lv = ["H[t, i]", "H[t, (i + 1) % n]", "H[t, (i + n - 1) % n]", "a"]
            ex = g.expr(lv, 2)
            L += [
                "for i in range(n):",
                f"    H[0, i] = {S}[i]",
                "for t in range(H.shape[0] - 1):",
                "    for i in range(n):",
                f"        H[t + 1, i] = H[t, i] + {g.c(0.1, 0.4)} * math.tanh({ex})",
            ]
            if r.random() < 0.5:
                L += ["for i in range(n):", f"    {D}[i] = H[H.shape[0] - 1, i]"]
            else:
                L += ["for i in range(n):", "    s += H[H.shape[0] - 1, i] ** 2"]
        elif kind == "branch":
            cond = g.pick([f"{S}[i] > 0.0", f"{S}[i] > {D}[i]", f"s > {g.c(-0.5, 0.5)}"])
            e1 = g.squash(g.expr(leaves(), 2))
            if r.random() < 0.6:
                e2 = g.squash(g.expr(leaves(), 2))
                L += [
                    "for i in range(n):",
                    f"    if {cond}:",
                    f"        {D}[i] = {e1}",
                    "    else:",
                    f"        {D}[i] = {e2}",
                ]
            else:
                L += [
                    "for i in range(n):",
                    f"    if {cond}:",
                    f"        s += {g.c(0.1, 0.5)} * {e1}",
                ]
        elif kind == "while":
            v = r.random()
            if v < 0.5:
                ex = g.squash(g.expr(["u", "a", f"{S}[i]"], 1))
                L += [
                    "for i in range(n):",
                    f"    u = abs({S}[i]) + 0.5",
                    "    k = 0",
                    f"    while u < {g.c(2.0, 4.0)} and k < 20:",
                    f"        u = u * {g.c(1.2, 1.6)} + 0.1 * {ex}",
                    "        k += 1",
                    f"    s += {g.c(0.05, 0.3)} * u",
                ]
            elif v < 0.75:
                L += [
                    "k = 0",
                    f"while abs(s) > {g.c(1.0, 2.0)} and k < 30:",
                    f"    s = s * {g.c(0.4, 0.7)}",
                    "    k += 1",
                ]
            else:
                ex = g.expr(["u", "a", f"{S}[i]"], 2)
                L += [
                    "for i in range(n):",
                    f"    u = {S}[i]",
                    "    k = 0",
                    f"    while k < {r.randint(2, 5)}:",
                    f"        u = {g.c(0.3, 0.7)} * math.cos(u) + 0.3 * math.tanh({ex})",
                    "        k += 1",
                    f"    {D}[i] = u",
                ]
        elif kind == "call":
            v = r.random()
            views = ["{A}", "{A}", "{A}[1:]", "{A}[::2]", "{A}[:-1]"]
            view = g.pick(views)
            if v < 0.25:
                h = g.helper_reduce()
                L += [f"s += {g.c(0.1, 0.5)} * {h}({view.format(A=S)}, a)"]
            elif v < 0.5:
                h = g.helper_update()
                L += [f"{h}({view.format(A=D)}, {view.format(A=S)}, {g.pick(scal + ['s'])})"]
            elif v < 0.7:
                g.helper_scalar()
                L += ["for i in range(n):", f"    {D}[i] = {g.squash(g.expr(leaves(), 2))}"]
            elif v < 0.85:
                h = g.helper_pair()
                L += [
                    "for i in range(n):",
                    f"    p1, p2 = {h}({g.pick(leaves())}, {g.pick(leaves())})",
                    f"    {D}[i] = {g.c(0.3, 0.8)} * p1 + {g.c(0.1, 0.5)} * p2",
                ]
            else:
                h = g.helper_tuple()
                S2 = g.pick([A for A in arrays if A != D])
                L += [f"s += {g.c(0.1, 0.5)} * {h}(({D}, {S2}), a)"]
        elif kind == "view":
            vw = g.pick(["[1:]", "[:-1]", "[::2]", "[1:][::2]", "[::-1]", "[1:-1]"])
            V = g.fresh("v")
            lv = [f"{V}[i]", f"{S}[i]", "a", "s"]
            ex = g.squash(g.expr(lv, 2))
            L += [
                f"{V} = {D}{vw}",
                f"for i in range({V}.shape[0]):",
                f"    {V}[i] = {g.c(0.3, 0.8)} * {V}[i] + {g.c(0.1, 0.5)} * {ex}",
            ]
        elif kind == "tuple":
            S2 = g.pick([A for A in arrays if A != D])
            tp = g.fresh("tp")
            ex = g.squash(g.expr([f"{tp}[1][i]", f"{tp}[0][i]", "a"], 2))
            L += [
                f"{tp} = ({D}, {S2})",
                "for i in range(n):",
                f"    {tp}[0][i] = {g.c(0.3, 0.8)} * {tp}[0][i] + {g.c(0.1, 0.4)} * {ex}",
            ]
            k = r.randrange(n)
            if strided:  # a tuple of a view and a C array is heterogeneous: no iteration
                L += [f"s += {g.c(0.1, 0.4)} * ({tp}[0][{k}] + {tp}[1][{k}])"]
            else:
                L += [f"for arr in {tp}:", f"    s += {g.c(0.1, 0.4)} * arr[{k}]"]
        elif kind == "arrexpr":
            t = g.fresh("t")
            mk = g.pick(
                [
                    f"{S} * a + {g.c()}",
                    f"np.sin({S}) * {D}",
                    f"{S}.copy()",
                    f"np.exp(-{S} * {S}) + {D}",
                    f"np.tanh({S} * {g.c()})",
                ]
            )
            L += [f"{t} = {mk}"]
            if r.random() < 0.5:
                L += [f"s += {g.c(0.1, 0.4)} * np.sum({t} * {t})"]
            else:
                L += ["for i in range(n):", f"    {D}[i] = {g.c(0.3, 0.8)} * {D}[i] + 0.3 * {t}[i]"]
        elif kind == "scalar":
            if r.random() < 0.5:
                c = g.c(0.1, 0.5)  # drawn before the expression (keeps seeds stable)
                ex = g.squash(g.expr(["a", "s", "x[0]", "y[n - 1]"] + scal, 2))
                L += [f"s = math.tanh(s) + {c} * {ex}"]
            else:
                L += ["s = s * s / (1.0 + s * s)"]
        body += L

    if profile == "wide":
        base_r = g.r
        g.r = random.Random(f"enzpy-fuzz-wide-{seed}-{attempt}")
        g.extra_math = True
        ctx = {"D": dst, "S": src, "leaves": leaves, "n": n, "use_H": use_H, "scal": scal}
        inserts = []
        for _ in range(g.r.randint(1, 3)):
            kind, L, needs_perm = _wide_block(g, ctx)
            if needs_perm and ("iarr", "perm") not in args:
                args.append(("iarr", "perm"))
            inserts.append((g.r.choice(starts + [len(body)]), kind, L))
        for pos, kind, L in sorted(inserts, key=lambda t: -t[0]):
            body[pos:pos] = L
            blocks.append(kind)
        g.r, g.extra_math = base_r, False
    returns_float = r.random() < 0.8
    if returns_float:
        ret = g.pick(["s", f"s + {g.c()} * y[0]", f"s * {g.c()} + x[n - 1]", "math.tanh(s)"])
        body.append(f"return {ret}")

    params = ", ".join(nm for _, nm in args)
    src_lines = [
        f"# enzpy fuzz kernel: seed {seed}, attempt {attempt}",
        "import math",
        "",
        "import numba",
        "import numpy as np",
        "",
        "",
    ]
    for h in g.helpers:
        src_lines += h.rstrip("\n").split("\n") + ["", ""]
    src_lines += ["@numba.njit", f"def kernel({params}):"] + _indent(body)
    source = "\n".join(src_lines) + "\n"
    return Kernel(
        seed=seed,
        attempt=attempt,
        source=source,
        args=args,
        n=n,
        T=T,
        strided=strided,
        returns_float=returns_float,
        blocks=blocks,
    )


WIDE_BLOCKS = [
    "gather",
    "scatter",
    "npreduce",
    "arrayop",
    "powactive",
    "rowcol",
    "allocloop",
    "mathx",
]


def _wide_block(g: _Gen, ctx) -> tuple[str, list[str], bool]:
    """One block of the wide grammar:

    gather     for i: D[i] = c*D[i] + c*E(S[perm[i]])      (perm: Const int array)
    scatter    for i: D[perm[i]] += c*E(S[i])
    npreduce   s += c*np.dot(S, D) | t = np.sort(S) ... | np.max(S) | np.sum(D[1:]*S[:-1])
    arrayop    D[:] = S*a | D *= c | D += c*np.sin(S) | D[1:] += c*D[:-1] (overlap)
    powactive  s += c*a**(0.5+s*s) | D[i] = c*D[i] + c*(1 + S[i]**2)**a   (active exponent)
    rowcol     rows H[t] and columns H[:, j] of the history array as views
    allocloop  a fresh np.empty(n) in every iteration of an outer loop
    mathx      log1p expm1 cbrt erf atan2 cosh asinh (also inside E in wide blocks)
    """
    r = g.r
    kinds = list(WIDE_BLOCKS)
    if not ctx["use_H"]:
        kinds.remove("rowcol")
    kind = g.pick(kinds)
    D, S = ctx["D"](), ctx["S"]()
    leaves = ctx["leaves"]
    L: list[str] = []
    perm = False
    if kind == "gather":
        perm = True
        ex = g.squash(g.expr([f"{S}[perm[i]]", f"{D}[i]", "a", "s"], 2))
        L += [
            "for i in range(n):",
            f"    {D}[i] = {g.c(0.3, 0.8)} * {D}[i] + {g.c(0.1, 0.5)} * {ex}",
        ]
    elif kind == "scatter":
        perm = True
        ex = g.squash(g.expr([f"{S}[i]", "a", "s", f"{D}[i]"], 2))
        L += ["for i in range(n):", f"    {D}[perm[i]] += {g.c(0.1, 0.5)} * {ex}"]
    elif kind == "npreduce":
        v = r.randrange(4)
        if v == 0:
            L += [f"s += {g.c(0.1, 0.5)} * np.dot({S}, {D})"]
        elif v == 1:
            t = g.fresh("srt")
            L += [
                f"{t} = np.sort({S})",
                f"s += {g.c(0.1, 0.5)} * {t}[0] + {g.c(0.1, 0.5)} * {t}[n - 1]",
            ]
        elif v == 2:
            L += [f"s += {g.c(0.1, 0.5)} * np.{g.pick(['max', 'min'])}({S})"]
        else:
            L += [f"s += {g.c(0.1, 0.5)} * np.sum({D}[1:] * {S}[:-1])"]
    elif kind == "arrayop":
        v = r.randrange(4)
        S2 = g.pick([A for A in ["x", "y", "w"] if A != D])
        if v == 0:
            L += [f"{D}[:] = {S2} * a"]
        elif v == 1:
            L += [f"{D} *= {g.c(0.5, 1.2)}"]
        elif v == 2:
            L += [f"{D} += {g.c(0.1, 0.5)} * np.sin({S2})"]
        else:
            L += [f"{D}[1:] += {g.c(0.1, 0.5)} * {D}[:-1]"]
    elif kind == "powactive":
        if r.random() < 0.5:
            expo = g.pick(["(0.5 + s * s)", "b", "a"]) if "b" in ctx["scal"] else "(0.5 + s * s)"
            L += [f"s += {g.c(0.1, 0.5)} * a ** {expo}"]
        else:
            c1, c2 = g.c(0.3, 0.8), g.c(0.1, 0.4)
            L += [
                "for i in range(n):",
                f"    {D}[i] = {c1} * {D}[i] + {c2} * (1.0 + {S}[i] ** 2) ** a",
            ]
    elif kind == "rowcol":
        if r.random() < 0.5:
            ex = g.squash(g.expr(["row[i]", f"{S}[i]", "a"], 2))
            L += [
                "for t in range(H.shape[0]):",
                "    row = H[t]",
                "    for i in range(n):",
                f"        row[i] = {g.c(0.3, 0.8)} * row[i] + {g.c(0.1, 0.4)} * {ex}",
            ]
        else:
            L += [
                "for j in range(n):",
                "    col = H[:, j]",
                f"    s += {g.c(0.05, 0.3)} * np.sum(col * col)",
                f"    col[0] = {g.c(0.3, 0.8)} * col[col.shape[0] - 1]",
            ]
    elif kind == "allocloop":
        ex = g.squash(g.expr([f"{D}[i]", f"{S}[i]", "a", "s"], 2))
        L += [
            f"for it in range({r.randint(2, 3)}):",
            "    tmp = np.empty(n)",
            "    for i in range(n):",
            f"        tmp[i] = {ex}",
            "    for i in range(n):",
            f"        {D}[i] = {g.c(0.3, 0.8)} * {D}[i] + {g.c(0.1, 0.4)} * tmp[(i + 1) % n]",
        ]
    else:  # mathx
        ex = g.expr(leaves(), 2)
        fn = g.expr_extra(r.randrange(7), lambda: ex)
        L += [
            "for i in range(n):",
            f"    {D}[i] = {g.c(0.3, 0.8)} * {D}[i] + {g.c(0.1, 0.4)} * {fn}",
        ]
    return kind, L, perm
