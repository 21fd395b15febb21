"""Progress bars of jacobian and hessian (enzpy/_progress.py): drawn by tqdm
when it is importable, as ``progress`` asks (True: always, False: never, None:
only for long work), and without tqdm no bar and the same results. The
results are checked against analytic derivatives in every case, so a bar
that changed the sweeps would show."""

import sys
import warnings

import numba
import numpy as np
import pytest

import enzpy
from enzpy import _progress


@numba.njit
def ring(x, y):
    # y[i] = sin(x[i]) * x[i+1 (mod n)]
    n = x.shape[0]
    for i in range(n):
        y[i] = np.sin(x[i]) * x[(i + 1) % n]


def ring_jacobian(x):
    n = x.size
    J = np.zeros((n, n))
    for i in range(n):
        J[i, i] += np.cos(x[i]) * x[(i + 1) % n]
        J[i, (i + 1) % n] += np.sin(x[i])
    return J


@numba.njit
def quartic(x):
    # f = sum(x_i^4) + x_0 x_{n-1}
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i] ** 4
    return s + x[0] * x[x.shape[0] - 1]


def quartic_hessian(x):
    H = np.diag(12.0 * x**2)
    H[0, -1] += 1.0
    H[-1, 0] += 1.0
    return H


X = np.linspace(-1.0, 1.4, 20)


def jacobian(mode, progress, chunk=2):
    J = enzpy.jacobian(ring, X, out=np.zeros(X.size), mode=mode, chunk=chunk, progress=progress)
    np.testing.assert_allclose(J, ring_jacobian(X), rtol=1e-12, atol=1e-14)
    return J


@pytest.fixture
def with_tqdm():
    pytest.importorskip("tqdm")


@pytest.fixture
def without_tqdm(monkeypatch):
    # None in sys.modules makes `import tqdm...` raise ImportError.
    for name in ("tqdm", "tqdm.auto"):
        monkeypatch.setitem(sys.modules, name, None)
    assert _progress._tqdm() is None


@pytest.mark.parametrize("mode", [enzpy.Forward, enzpy.Reverse])
def test_jacobian_with_progress_draws_a_bar_over_the_sweeps(with_tqdm, capsys, mode):
    jacobian(mode, progress=True, chunk=2)  # 20 columns or rows, 2 per sweep
    err = capsys.readouterr().err
    assert "enzpy.jacobian" in err
    assert "10/10" in err and "sweep" in err


def test_hessian_with_progress_draws_a_bar_over_the_products(with_tqdm, capsys):
    x = np.linspace(-0.8, 0.9, 6)
    H = enzpy.hessian(quartic, x, progress=True)
    np.testing.assert_allclose(H, quartic_hessian(x), rtol=1e-12, atol=1e-14)
    err = capsys.readouterr().err
    assert "enzpy.hessian" in err and "6/6" in err and "hvp" in err


def test_no_bar_when_progress_is_false(with_tqdm, capsys, monkeypatch):
    monkeypatch.setattr(_progress, "AUTO_DELAY", 0.0)
    jacobian(enzpy.Forward, progress=False, chunk=1)
    enzpy.hessian(quartic, X, progress=False)
    assert capsys.readouterr().err == ""


def test_automatic_bar_only_for_many_sweeps(with_tqdm, capsys, monkeypatch):
    # With no delay, the automatic bar shows as soon as the work is long in
    # sweeps; short work never shows one.
    monkeypatch.setattr(_progress, "AUTO_DELAY", 0.0)
    jacobian(enzpy.Forward, progress=None, chunk=8)  # 3 sweeps
    assert capsys.readouterr().err == ""
    jacobian(enzpy.Forward, progress=None, chunk=1)  # 20 sweeps >= AUTO_MIN_STEPS
    assert _progress.AUTO_MIN_STEPS <= 20
    err = capsys.readouterr().err
    assert "enzpy.jacobian" in err and "/20 " in err  # over 20 sweeps, removed at the end


def test_automatic_bar_waits_for_long_work(with_tqdm, capsys, monkeypatch):
    # Many sweeps, each quick (the derivative is compiled already): done
    # before the delay, so nothing is printed.
    jacobian(enzpy.Forward, progress=False, chunk=1)
    monkeypatch.setattr(_progress, "AUTO_DELAY", 60.0)
    jacobian(enzpy.Forward, progress=None, chunk=1)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("mode", [enzpy.Forward, enzpy.Reverse])
def test_without_tqdm_progress_true_warns_and_computes_the_same(without_tqdm, capsys, mode):
    with pytest.warns(UserWarning, match="needs tqdm"):
        jacobian(mode, progress=True)
    x = np.linspace(-0.8, 0.9, 5)
    with pytest.warns(UserWarning, match="needs tqdm"):
        H = enzpy.hessian(quartic, x, progress=True)
    np.testing.assert_allclose(H, quartic_hessian(x), rtol=1e-12, atol=1e-14)
    assert capsys.readouterr().err == ""


def test_without_tqdm_the_default_is_silent(without_tqdm, capsys, monkeypatch):
    monkeypatch.setattr(_progress, "AUTO_DELAY", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jacobian(enzpy.Forward, progress=None, chunk=1)
        enzpy.hessian(quartic, X)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("bad", [1, "yes", 0.5])
def test_progress_must_be_a_bool_or_none(bad):
    with pytest.raises(enzpy.EnzpyTypeError, match="progress must be True, False or None"):
        enzpy.jacobian(ring, X, out=np.zeros(X.size), progress=bad)
    with pytest.raises(enzpy.EnzpyTypeError, match="progress must be True, False or None"):
        enzpy.hessian(quartic, X, progress=bad)


def test_bar_without_drawing_prints_notes_plainly(without_tqdm, capsys):
    with _progress.bar(5, "bench", None, min_steps=1) as b:
        assert not b.drawn
        b.write("running heat")
        b.note("heat")
        b.update()
    assert capsys.readouterr().out == "running heat\n"
