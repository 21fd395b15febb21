"""``python -m enzpy``: versions, the engine check, and clear messages (with a
non-zero exit status) when the engine is missing, speaks another C ABI or
LLVM, or the toolchain's versions are not the ones enzpy needs."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import llvmlite
import llvmlite.binding as llvm
import numba
import numpy as np
import pytest

import enzpy
from enzpy import __main__ as cli
from enzpy import _native


def run_cli(**env: str) -> subprocess.CompletedProcess:
    environ = dict(os.environ)
    environ["PYTHONPATH"] = str(Path(enzpy.__file__).parent.parent)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-P", "-m", "enzpy"],
        env=environ,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_main_prints_versions_and_checks_the_engine():
    out = run_cli()
    assert out.returncode == 0, out.stderr
    lines = out.stdout
    assert f"enzpy {enzpy.__version__}" in lines
    assert f"numba {numba.__version__}" in lines
    assert f"llvmlite {llvmlite.__version__}" in lines
    assert f"LLVM {llvm.llvm_version_info[0]})" in lines  # the engine's major
    assert _native.library_path() in lines
    assert "match the analytic derivative" in lines
    assert lines.rstrip().endswith("enzpy works")
    assert "problem" not in out.stderr


def test_main_reports_a_missing_engine_library(tmp_path):
    missing = tmp_path / "no-such-dir" / "libenzpy_native.so"
    out = run_cli(ENZPY_NATIVE_LIB=str(missing))
    assert out.returncode == 1
    assert "enzpy: problem: the engine library does not load" in out.stderr
    assert "was not found" in out.stderr and str(missing) in out.stderr
    assert "enzpy works" not in out.stdout
    # The versions are still printed: they are what a bug report needs.
    assert f"numba {numba.__version__}" in out.stdout


def test_main_reports_a_file_that_is_not_a_library(tmp_path):
    bogus = tmp_path / "libenzpy_native.so"
    bogus.write_text("not an ELF file\n")
    out = run_cli(ENZPY_NATIVE_LIB=str(bogus))
    assert out.returncode == 1
    assert "cannot load enzpy's native engine library" in out.stderr
    assert str(bogus) in out.stderr


def fake_engine(tmp_path: Path, abi: int, llvm_major: int) -> Path:
    """A shared library answering the engine's two version queries only."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in engine library")
    src = tmp_path / "fake.c"
    src.write_text(
        f"int enzpy_abi_version(void) {{ return {abi}; }}\n"
        f"int enzpy_llvm_version_major(void) {{ return {llvm_major}; }}\n"
    )
    lib = tmp_path / f"libfake-{abi}-{llvm_major}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


def test_main_reports_an_engine_of_another_c_abi(tmp_path):
    lib = fake_engine(tmp_path, _native.ABI_VERSION + 1, llvm.llvm_version_info[0])
    out = run_cli(ENZPY_NATIVE_LIB=str(lib))
    assert out.returncode == 1
    assert f"C ABI version {_native.ABI_VERSION + 1}" in out.stderr
    assert f"needs version {_native.ABI_VERSION}" in out.stderr


def test_main_reports_an_engine_built_against_another_llvm(tmp_path):
    numba_llvm = llvm.llvm_version_info[0]
    lib = fake_engine(tmp_path, _native.ABI_VERSION, numba_llvm - 8)
    out = run_cli(ENZPY_NATIVE_LIB=str(lib))
    assert out.returncode == 1
    assert f"built against LLVM {numba_llvm - 8}" in out.stderr
    assert f"llvmlite uses LLVM {numba_llvm}" in out.stderr


def test_pinned_versions_mismatch_is_a_problem_with_the_fix(monkeypatch):
    monkeypatch.setattr(cli, "_pinned", lambda: {"numba": "0.68.1", "llvmlite": "0.50.0"})
    problems: list[str] = []
    cli._check_pins({"numba": "0.61.0", "llvmlite": "0.50.0"}, problems)
    assert len(problems) == 1
    assert "numba 0.61.0 is installed" in problems[0]
    assert "pip install numba==0.68.1" in problems[0]
    problems.clear()
    cli._check_pins({"numba": "0.68.1", "llvmlite": "0.50.0"}, problems)
    assert problems == []


def test_main_fails_when_the_derivative_is_wrong(monkeypatch, capsys):
    real = enzpy.autodiff

    def off_by_a_term(f, *args, **kw):
        result = real(f, *args, **kw)
        for a in args:
            if isinstance(a, enzpy.Duplicated) and kw.get("mode") is None:
                a.shadow += 1e-3 * np.abs(a.value)  # a missing or extra term
        return result

    monkeypatch.setattr(enzpy, "autodiff", off_by_a_term)
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert "the reverse-mode gradient of a test kernel is wrong" in err
    assert "forward-mode" not in err


def test_main_rejects_arguments(capsys):
    assert cli.main(["--bogus"]) == 2
    assert "python -m enzpy" in capsys.readouterr().err
