"""The on-disk cache of derivatives: a second process loads the derivative of an
``@njit(cache=True)`` function from disk instead of building it, and gets the same
(right) derivative; editing the function's source, a corrupt entry or
``ENZPY_DISABLE_CACHE`` make it build again; functions without ``cache=True`` or
reading a global array are not stored."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fd
import numba
import numpy as np
import pytest

import enzpy
import enzpy.solvers as solvers
from enzpy import Active, Duplicated, _cache, _diskcache

KERNEL = """
import math
import numba
import numpy as np

SCALE = 1.5


@numba.njit(cache=True)
def weight(v):
    return v * math.{fn}(v)


@numba.njit(cache=True)
def f(x, a):
    t = np.zeros(x.shape[0])
    s = 0.0
    for i in range(x.shape[0]):
        t[i] = weight(x[i]) * a * SCALE
        s += t[i] * x[i]
    return s
"""

#: Counts numba's compiles and the engine's runs in a script's process.
COUNTING = """
counts = {{"numba": 0, "engine": 0}}

def counting(what, original):
    def call(*a, **k):
        counts[what] += 1
        return original(*a, **k)
    return call

numba.core.compiler.compile_extra = counting("numba", numba.core.compiler.compile_extra)
_native.differentiate = counting("engine", _native.differentiate)
"""

SCRIPT = (
    """
import json, sys
sys.path.insert(0, {dir!r})
import numba.core.compiler
import numpy as np
import enzpy
from enzpy import Duplicated, _cache, _native
import kern

x = np.linspace(-0.9, 1.1, 7)
v = np.linspace(0.3, -0.5, 7)
kern.f(x, 0.7)
"""
    + COUNTING
    + """dx, da = enzpy.gradient(kern.f, x, 0.7)
tangent = enzpy.autodiff(kern.f, Duplicated(x, v), Duplicated(0.7, 0.3), mode=enzpy.Forward)
print(json.dumps({{"dx": dx.tolist(), "da": da, "tangent": tangent,
                  "info": _cache.info()._asdict(), "compiles": counts}}))
"""
)

X = np.linspace(-0.9, 1.1, 7)
V = np.linspace(0.3, -0.5, 7)
A, DA = 0.7, 0.3


def write_kernel(directory: Path, fn: str) -> None:
    (directory / "kern.py").write_text(KERNEL.format(fn=fn))


def run(directory: Path, **env: str) -> dict:
    """Run SCRIPT in a fresh process on the kernel in ``directory``."""
    return run_script(directory, SCRIPT.format(dir=str(directory)), **env)


def run_script(directory: Path, script: str, **env: str) -> dict:
    """Run ``script`` in a fresh process with its caches in ``directory``; the
    JSON its last line prints."""
    environ = dict(os.environ)
    environ.pop("ENZPY_DISABLE_CACHE", None)
    environ["ENZPY_CACHE_DIR"] = str(directory / "enzpy-cache")
    environ["NUMBA_CACHE_DIR"] = str(directory / "numba-cache")
    environ["PYTHONPATH"] = str(Path(enzpy.__file__).parent.parent)
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-P", "-c", script],
        env=environ,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_against_fd(result: dict, fn) -> None:
    """The gradient against central differences of the kernel's formula with
    ``fn``, and forward against reverse (when there is a tangent)."""

    def objective(x, a):
        return float(sum(xi * fn(xi) * a * 1.5 * xi for xi in x))

    _, (gx, ga) = fd.fd_gradient(objective, X, A)
    dx = np.array(result["dx"])
    np.testing.assert_allclose(dx, gx, rtol=1e-6, atol=1e-8)
    assert result["da"] == pytest.approx(ga, rel=1e-6)
    if "tangent" in result:
        assert result["tangent"] == pytest.approx(float(dx @ V) + result["da"] * DA, rel=1e-12)


def entries(directory: Path) -> list[Path]:
    """The derivatives' entries (not the wrappers' compiles beside them)."""
    return sorted(p for p in (directory / "enzpy-cache").rglob("*.enzpy") if ".w" not in p.name)


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """A directory with the kernel and the disk cache its first process wrote."""
    directory = tmp_path_factory.mktemp("warm")
    write_kernel(directory, "sin")
    first = run(directory)
    assert first["info"]["disk_writes"] == 2 and first["info"]["disk_hits"] == 0
    assert first["compiles"]["engine"] == 2
    check_against_fd(first, math.sin)
    return directory


@pytest.fixture
def copy_of_warm(warm: Path, tmp_path: Path) -> Path:
    directory = tmp_path / "copy"
    shutil.copytree(warm, directory)
    return directory


def test_a_second_process_loads_both_derivatives_from_disk(copy_of_warm):
    second = run(copy_of_warm)
    info = second["info"]
    assert (info["disk_hits"], info["disk_misses"], info["disk_writes"]) == (2, 0, 0)
    # nothing compiled: no capture (numba), no engine, no wrapper (numba)
    assert second["compiles"] == {"numba": 0, "engine": 0}
    check_against_fd(second, math.sin)


def test_editing_the_source_builds_the_new_derivative(copy_of_warm):
    write_kernel(copy_of_warm, "cos")
    edited = run(copy_of_warm)
    info = edited["info"]
    assert (info["disk_hits"], info["disk_writes"]) == (0, 2)
    check_against_fd(edited, math.cos)


def test_a_corrupt_entry_is_ignored_and_rewritten(copy_of_warm, monkeypatch):
    stored = entries(copy_of_warm)
    assert len(stored) == 2
    stored[0].write_bytes(stored[0].read_bytes()[:-100])  # truncated
    data = bytearray(stored[1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    stored[1].write_bytes(bytes(data))
    after = run(copy_of_warm)
    assert (after["info"]["disk_hits"], after["info"]["disk_writes"]) == (0, 2)
    check_against_fd(after, math.sin)
    # rewritten: both read back now
    monkeypatch.setenv("ENZPY_CACHE_DIR", str(copy_of_warm / "enzpy-cache"))
    assert all(_diskcache.read(path.stem) is not None for path in stored)


# -- in this process: what is stored ------------------------------------------------


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ENZPY_CACHE_DIR", str(tmp_path / "enzpy-cache"))
    monkeypatch.delenv("ENZPY_DISABLE_CACHE", raising=False)
    return tmp_path


#: A stored kernel for the tests that check what else a registration keeps
#: out of the disk cache.
CUBES = """

@numba.njit(cache=True)
def cubes(x):
    s = 0.0
    for i in range(x.size):
        s += x[i] * x[i] * x[i]
    return s
"""


def writes_of(f, *args) -> int:
    before = _cache.info().disk_writes
    g = enzpy.gradient(f, *args)
    _, expected = fd.fd_gradient(f.py_func, *args)
    np.testing.assert_allclose(g, expected[0], rtol=1e-6, atol=1e-8)
    return _cache.info().disk_writes - before


def test_disabled_by_environment_variable(cache_dir, monkeypatch):
    write_kernel(cache_dir, "sin")
    module = import_file(cache_dir / "kern.py", "enzpy_test_disabled_kern")
    monkeypatch.setenv("ENZPY_DISABLE_CACHE", "1")
    before = _cache.info()
    g = enzpy.gradient(module.f, X, A)
    after = _cache.info()
    assert (after.disk_hits, after.disk_misses, after.disk_writes) == (
        before.disk_hits,
        before.disk_misses,
        before.disk_writes,
    )
    assert entries(cache_dir) == []
    check_against_fd({"dx": g[0].tolist(), "da": g[1]}, math.sin)


def test_a_rule_for_a_c_function_by_address_keeps_only_its_callers_out(cache_dir):
    # Rules by address have no meaning in another process: a kernel calling
    # the ctypes function is not stored; one that does not call it still is.
    source = (
        textwrap.dedent(
            """
        import ctypes
        import ctypes.util
        import numba

        _libm = ctypes.CDLL(ctypes.util.find_library("m"))
        c_atan = _libm.atan
        c_atan.argtypes = (ctypes.c_double,)
        c_atan.restype = ctypes.c_double


        @numba.njit(cache=True)
        def calls_atan(x):
            s = 0.0
            for i in range(x.size):
                s += c_atan(x[i] * x[i])
            return s

        """
        )
        + CUBES
    )
    (cache_dir / "address_rule_kernel.py").write_text(source)
    module = import_file(cache_dir / "address_rule_kernel.py", "enzpy_test_address_rule")
    enzpy.register_partials(module.c_atan, lambda v: 1.0 / (1.0 + v * v))
    x = np.linspace(0.5, 1.5, 5)
    assert writes_of(module.calls_atan, x) == 0
    assert writes_of(module.cubes, x) == 1


def test_a_vector_solver_keeps_the_disk_cache_on_for_other_kernels(cache_dir):
    # Its rule's functions close over enzpy's own derivatives of the
    # residual, which have no source: they are described by what made them.
    source = (
        textwrap.dedent(
            """
        import numba
        import numpy as np


        @numba.njit(cache=True)
        def squares(x, p):
            return x * x - p

        """
        )
        + CUBES
    )
    (cache_dir / "vector_solver_kernel.py").write_text(source)
    module = import_file(cache_dir / "vector_solver_kernel.py", "enzpy_test_vector_solver")
    solvers.newton_system(module.squares)
    assert writes_of(module.cubes, np.linspace(0.5, 1.5, 5)) == 1


def test_functions_without_numba_cache_are_not_stored(cache_dir):
    @numba.njit
    def plain(x):
        return np.sum(np.sin(x) * x)

    assert writes_of(plain, np.linspace(0, 1, 5)) == 0
    assert entries(cache_dir) == []


def test_functions_reading_a_global_array_are_not_stored(cache_dir):
    source = textwrap.dedent(
        """
        import numba
        import numpy as np

        W = np.linspace(1.0, 2.0, 5)
        N = 5


        @numba.njit(cache=True)
        def reads_array(x):
            return np.sum(W * x * x)


        @numba.njit(cache=True)
        def reads_scalar(x):
            s = 0.0
            for i in range(N):
                s += x[i] * x[i] * x[i]
            return s
        """
    )
    (cache_dir / "globals_kernel.py").write_text(source)
    module = import_file(cache_dir / "globals_kernel.py", "enzpy_test_globals_kernel")
    x = np.linspace(0.5, 1.5, 5)
    assert writes_of(module.reads_array, x) == 0
    assert writes_of(module.reads_scalar, x) == 1  # a scalar is part of the key


def test_reverse_and_forward_with_active_scalar_are_stored_apart(cache_dir):
    write_kernel(cache_dir, "sin")
    module = import_file(cache_dir / "kern.py", "enzpy_test_disk_kern")
    before = _cache.info().disk_writes
    dx = np.zeros(7)
    _, da = enzpy.autodiff(module.f, Duplicated(X, dx), Active(A))
    t = enzpy.autodiff(module.f, Duplicated(X, V), Duplicated(A, DA), mode=enzpy.Forward)
    assert _cache.info().disk_writes == before + 2
    assert len(entries(cache_dir)) == 2
    check_against_fd({"dx": dx.tolist(), "da": da, "tangent": t}, math.sin)


def test_functions_whose_source_file_is_gone_are_not_stored(cache_dir):
    (cache_dir / "gone_kernel.py").write_text(
        "import numba\n\n\n@numba.njit(cache=True)\ndef cube(x):\n    return (x * x * x).sum()\n"
    )
    module = import_file(cache_dir / "gone_kernel.py", "enzpy_test_gone_kernel")
    (cache_dir / "gone_kernel.py").unlink()
    x = np.linspace(0.5, 1.5, 4)
    g = enzpy.gradient(module.cube, x)
    np.testing.assert_allclose(g, 3 * x * x, rtol=1e-12)
    assert entries(cache_dir) == []


def test_concurrent_writers_leave_one_whole_entry(cache_dir):
    key = "ab" * 32
    stores = [
        _diskcache.Stored(code=bytes([i]) * (50_000 * (i + 1)), function=f"f{i}", environments=[])
        for i in range(6)
    ]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda s: _diskcache.write(key, s), stores * 5))
    found = _diskcache.read(key)
    assert found is not None
    i = int(found.function[1:])
    assert found.code == stores[i].code  # one writer's entry, whole
    leftovers = [p.name for p in (cache_dir / "enzpy-cache").rglob("*") if p.is_file()]
    assert leftovers == [f"{key}.enzpy"]


RULE_SCRIPT = """
import json, sys
sys.path.insert(0, {dir!r})
import numpy as np
import enzpy
from enzpy import _cache
import kern

if {with_rule}:
    import rule  # d_weight: not weight's derivative
    enzpy.register_partials(kern.weight, rule.d_weight)
dx, da = enzpy.gradient(kern.f, np.linspace(-0.9, 1.1, 7), 0.7)
print(json.dumps({{"dx": dx.tolist(), "info": _cache.info()._asdict()}}))
"""


def test_a_derivative_built_with_a_user_rule_is_not_reused_without_it(tmp_path):
    write_kernel(tmp_path, "sin")
    (tmp_path / "rule.py").write_text(
        "import numba\n\n\n@numba.njit\ndef d_weight(v):\n    return 5.0\n"
    )

    def gradient(with_rule: bool) -> dict:
        script = RULE_SCRIPT.format(dir=str(tmp_path), with_rule=with_rule)
        return run_script(tmp_path, script)

    ruled = gradient(True)
    plain = gradient(False)
    assert plain["info"]["disk_hits"] == 0  # another key: the rule is part of it
    x = np.linspace(-0.9, 1.1, 7)
    # f = sum(weight(x) * a * 1.5 * x): d/dx = (weight'(x) x + weight(x)) * a * 1.5
    weight = x * np.sin(x)
    np.testing.assert_allclose(ruled["dx"], (5.0 * x + weight) * 0.7 * 1.5, rtol=1e-12)
    true = (np.sin(x) + x * np.cos(x)) * x + weight
    np.testing.assert_allclose(plain["dx"], true * 0.7 * 1.5, rtol=1e-12)
    again = gradient(True)
    assert again["info"]["disk_hits"] == 1  # the same rule in another process: a hit
    np.testing.assert_allclose(again["dx"], ruled["dx"], rtol=0)


def test_a_function_numba_loaded_from_its_own_cache_is_differentiated(tmp_path):
    # The second process gets f from numba's cache and builds the derivative
    # (enzpy's disk cache off): numba's allocation helpers then arrive
    # unoptimized, their MemInfo merged with null on the failure path.
    write_kernel(tmp_path, "sin")
    first = run(tmp_path, ENZPY_DISABLE_CACHE="1")
    second = run(tmp_path, ENZPY_DISABLE_CACHE="1")
    check_against_fd(first, math.sin)
    check_against_fd(second, math.sin)


RULED_KERNEL = """
import numba
import numpy as np
import enzpy


@numba.njit(cache=True)
def {name}(x, out):
    for i in range(x.shape[0]):
        out[i] = {k} * x[i] * x[i]


def fwd(cfg, x, dx, out, dout):
    for i in range(x.shape[0]):
        out[i] = {k} * x[i] * x[i]
        dout[i] = 2.0 * {k} * x[i] * dx[i]


def aug(cfg, x, out):
    {name}(x, out)
    return x.copy()


def rev(cfg, xs, x, dx, out, dout):
    for i in range(xs.shape[0]):
        dx[i] += 2.0 * {k} * xs[i] * dout[i]
        dout[i] = 0.0
    return ()


enzpy.register_rule({name}, forward=fwd, augmented=aug, reverse=rev)


@numba.njit(cache=True)
def f(x):
    out = np.empty_like(x)
    {name}(x, out)
    return np.sin(out).sum()
"""

RULED_SCRIPT = """
import json, sys
sys.path.insert(0, {dir!r})
import numpy as np
import enzpy
from enzpy import _cache

x = np.linspace(-0.9, 1.1, 7)
if {other_first}:
    import other  # its rule's functions are the first this process compiles
    enzpy.gradient(other.f, x)
import ruled
dx = enzpy.gradient(ruled.f, x)
print(json.dumps({{"dx": dx.tolist(), "info": _cache.info()._asdict()}}))
"""


def test_a_derivative_calling_rule_functions_of_its_process_is_not_stored(tmp_path):
    """Rule functions are compiled per process and called by names of that
    process: a derivative calling them stays out of the disk cache, and a
    second process -- where the same names stand for another rule's
    functions -- builds it again and gets the right gradient."""
    (tmp_path / "ruled.py").write_text(RULED_KERNEL.format(name="square_into", k=0.5))
    (tmp_path / "other.py").write_text(RULED_KERNEL.format(name="other_into", k=3.0))

    def gradient(other_first: bool) -> dict:
        script = RULED_SCRIPT.format(dir=str(tmp_path), other_first=other_first)
        return run_script(tmp_path, script)

    x = np.linspace(-0.9, 1.1, 7)
    expected = np.cos(0.5 * x * x) * x  # d/dx sin(x^2 / 2)
    first = gradient(other_first=False)
    assert first["info"]["disk_writes"] == 0
    second = gradient(other_first=True)
    assert second["info"]["disk_hits"] == 0
    for result in (first, second):
        np.testing.assert_allclose(result["dx"], expected, rtol=1e-12)


LINALG_KERNEL = """
import numba
import numpy as np


@numba.njit(cache=True)
def f(A, b):
    x = np.linalg.solve(A, b)
    return (x * x).sum() + np.linalg.det(A)
"""

LINALG_SCRIPT = (
    """
import json, sys
sys.path.insert(0, {dir!r})
import numba.core.compiler
import numpy as np
import enzpy
from enzpy import _cache, _native
import linalg_kern

A = np.array([[3.0, 0.4, -0.2], [0.1, 2.5, 0.3], [-0.6, 0.2, 4.0]])
b = np.array([0.5, -1.0, 2.0])
linalg_kern.f(A, b)
"""
    + COUNTING
    + """dA, db = enzpy.gradient(linalg_kern.f, A, b)
print(json.dumps({{"dA": dA.tolist(), "db": db.tolist(), "info": _cache.info()._asdict(),
                  "compiles": counts}}))
"""
)


@pytest.mark.slow
def test_a_derivative_through_lapack_rules_is_right_in_each_fresh_process(tmp_path):
    """Not stored (its code calls rule functions compiled in its process,
    and numba's own helpers): each process builds it and gets the right
    gradient."""
    (tmp_path / "linalg_kern.py").write_text(LINALG_KERNEL)

    def gradient() -> dict:
        return run_script(tmp_path, LINALG_SCRIPT.format(dir=str(tmp_path)))

    A = np.array([[3.0, 0.4, -0.2], [0.1, 2.5, 0.3], [-0.6, 0.2, 4.0]])
    b = np.array([0.5, -1.0, 2.0])
    # L = |x|^2 + det A with A x = b: b̄ = 2 A^-T x, Ā = -b̄ xᵀ + det(A) A^-T
    x = np.linalg.solve(A, b)
    db = 2.0 * np.linalg.solve(A.T, x)
    dA = -np.outer(db, x) + np.linalg.det(A) * np.linalg.inv(A).T
    first = gradient()
    second = gradient()
    assert first["info"]["disk_writes"] == second["info"]["disk_hits"] == 0
    # Built again, as in the first process (the engine runs twice: it asks
    # for the rules' functions once it finds their calls active).
    assert second["compiles"]["engine"] == first["compiles"]["engine"] > 0
    for result in (first, second):
        np.testing.assert_allclose(result["db"], db, rtol=1e-10)
        np.testing.assert_allclose(result["dA"], dA, rtol=1e-10, atol=1e-12)


def test_a_rule_on_a_function_calling_c_code_keeps_the_cache_on_for_other_kernels(cache_dir):
    # Neither the rule's code nor its function has a description (both call
    # a ctypes function): no kernel that calls the function is stored, and
    # kernels that do not are, as before the registration.
    source = (
        textwrap.dedent(
            """
        import ctypes
        import ctypes.util
        import numba

        _libm = ctypes.CDLL(ctypes.util.find_library("m"))
        c_erf = _libm.erf
        c_erf.argtypes = (ctypes.c_double,)
        c_erf.restype = ctypes.c_double


        @numba.njit
        def erf_sum(x):
            s = 0.0
            for i in range(x.size):
                s += c_erf(x[i])
            return s


        def erf_sum_jvp(x, dx):
            s = 0.0
            for i in range(x.size):
                s += 1.1283791670955126 * 2.718281828459045 ** (-x[i] * x[i]) * dx[i]
            return s + 0.0 * c_erf(0.0)


        @numba.njit(cache=True)
        def calls_erf_sum(x):
            return erf_sum(x) * 2.0

        """
        )
        + CUBES
    )
    (cache_dir / "c_rule_kernel.py").write_text(source)
    module = import_file(cache_dir / "c_rule_kernel.py", "enzpy_test_c_rule")
    enzpy.register_jvp(module.erf_sum, module.erf_sum_jvp)
    x = np.linspace(0.2, 1.0, 5)
    assert writes_of(module.calls_erf_sum, x) == 0
    assert writes_of(module.cubes, x) == 1
