"""``python -m enzpy``: what is installed, and whether enzpy works here.

Prints the versions of enzpy, Python, numba, llvmlite (and its LLVM) and of
the engine library (its path, C ABI and LLVM major), then differentiates a
small kernel in reverse and forward mode and compares the results with the
analytic derivative. Each problem found is printed as ``enzpy: problem: ...``
with what to do about it, on standard error, and the exit status is 1; it is
0 when everything works.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["main"]

#: Relative error allowed between enzpy's derivative and the analytic one:
#: both evaluate sin and cos once per element, so they agree to rounding.
CHECK_RTOL = 1e-10


def _pinned() -> dict[str, str]:
    """The exact versions (``name==version``) enzpy's installed metadata
    requires; empty when enzpy runs from a source tree without metadata."""
    try:
        requires = importlib.metadata.requires("enzpy") or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    pins = {}
    for req in requires:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;,]+)\s*", req)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _check_pins(versions: dict[str, str], problems: list[str]) -> None:
    for name, wanted in _pinned().items():
        have = versions.get(name)
        if have is not None and have != wanted:
            problems.append(
                f"{name} {have} is installed but enzpy needs {name}=={wanted} (it hooks into "
                f"numba's private code generation): pip install {name}=={wanted}"
            )


def _check_derivatives(problems: list[str]) -> str | None:
    """Differentiate f(x) = sum(x**2 sin x) both ways; return a summary."""
    import numba
    import numpy as np

    import enzpy

    @numba.njit
    def f(x: Any) -> Any:
        s = 0.0
        for i in range(x.shape[0]):
            s += x[i] * x[i] * np.sin(x[i])
        return s

    x = np.linspace(-1.5, 2.0, 5)
    exact = 2.0 * x * np.sin(x) + x * x * np.cos(x)
    v = np.linspace(1.0, -0.5, 5)

    dx = np.zeros_like(x)
    enzpy.autodiff(f, enzpy.Duplicated(x, dx))
    tangent = enzpy.autodiff(f, enzpy.Duplicated(x, v), mode=enzpy.Forward)

    worst = 0.0
    found = len(problems)
    for what, got, want in (
        ("reverse-mode gradient", dx, exact),
        ("forward-mode tangent", np.array([tangent]), np.array([exact @ v])),
    ):
        err = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0)))
        worst = max(worst, err)
        if not err <= CHECK_RTOL:
            problems.append(
                f"the {what} of a test kernel is wrong (relative error {err:.3g}, "
                f"got {got}, expected {want}); please report this with the output above"
            )
    if len(problems) > found:
        return None
    return (
        "reverse and forward mode of sum(x**2 sin x) match the analytic "
        f"derivative (max relative error {worst:.1e})"
    )


def _step(
    problems: list[str], what: str, fn: Callable[[], str | None], out: Callable[[str], None]
) -> bool:
    """Run one check; an exception becomes a problem naming ``what``."""
    try:
        line = fn()
    except Exception as e:  # every failure is reported, none escapes
        problems.append(f"{what}: {type(e).__name__}: {e}")
        return False
    if line:
        out(line)
    return True


def main(argv: list[str] | None = None) -> int:
    """Print versions and check enzpy; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if args:
        print(__doc__, file=sys.stderr)
        return 2

    def out(line: str) -> None:
        print(line, flush=True)

    problems: list[str] = []
    here = os.path.dirname(os.path.abspath(__file__))

    import enzpy

    out(f"enzpy {enzpy.__version__} ({here})")
    out(f"python {platform.python_version()} ({sys.executable})")

    versions: dict[str, str] = {}

    def toolchain() -> str:
        import llvmlite
        import llvmlite.binding as llvm
        import numba

        versions["numba"] = numba.__version__
        versions["llvmlite"] = llvmlite.__version__
        llvm_version = ".".join(map(str, llvm.llvm_version_info))
        return f"numba {numba.__version__}, llvmlite {llvmlite.__version__} (LLVM {llvm_version})"

    if _step(problems, "numba or llvmlite does not import", toolchain, out):
        _check_pins(versions, problems)

    engine_ok = False
    if not problems:

        def engine() -> str:
            from enzpy import _native

            _ffi, lib = _native.load()
            return (
                f"engine {_native.library_path()} (C ABI {lib.enzpy_abi_version()}, "
                f"LLVM {lib.enzpy_llvm_version_major()})"
            )

        engine_ok = _step(problems, "the engine library does not load", engine, out)

    if engine_ok:
        _step(
            problems,
            "differentiating a test kernel failed",
            lambda: _check_derivatives(problems),
            out,
        )

    if problems:
        for p in problems:
            print(f"enzpy: problem: {p}", file=sys.stderr, flush=True)
        return 1
    out("enzpy works")
    return 0


if __name__ == "__main__":
    sys.exit(main())
