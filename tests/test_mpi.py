"""enzpy.mpi: derivatives of kernels whose ranks communicate, on 2 and 4 ranks.

Each rank count runs tests/mpi_cases.py once under ``mpiexec`` (every rank runs
every case and checks its derivative against finite differences of the whole
distributed computation, the serial derivative, and forward mode); each case
is one test here. Skipped where numba-mpi, mpi4py or ``mpiexec`` is missing;
the test extra installs them (MPICH from its wheel), so CI runs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
CASES_FILE = HERE / "mpi_cases.py"
CASES = re.findall(r"^@case\ndef (\w+)", CASES_FILE.read_text(), flags=re.M)
RANKS = (2, 4)


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
HAVE_MPI = (
    MPIEXEC is not None
    and importlib.util.find_spec("numba_mpi") is not None
    and importlib.util.find_spec("mpi4py") is not None
)
pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not HAVE_MPI, reason="needs numba-mpi, mpi4py and mpiexec"),
]


@pytest.fixture(scope="module")
def runs() -> dict[int, dict[str, dict]]:
    """The cases' results on each rank count: {ranks: {case: result}}."""
    out: dict[int, dict[str, dict]] = {}
    env = dict(os.environ)
    # Each rank computes on one thread: the ranks share the machine's cores.
    env.update(OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    for n in RANKS:
        assert MPIEXEC is not None
        try:
            proc = subprocess.run(
                [MPIEXEC, "-n", str(n), sys.executable, str(CASES_FILE)],
                capture_output=True,
                text=True,
                timeout=600,
                env=env,
            )
            stdout, stderr = proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            stderr = "timed out (a case hung)"
        found: dict[str, dict] = {}
        for line in stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                found[r["case"]] = r
        for name in CASES:
            found.setdefault(
                name,
                {
                    "ok": False,
                    "errors": [f"no result (the run ended before it):\n{stderr[-3000:]}"],
                },
            )
        out[n] = found
    return out


@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("case", CASES)
def test_mpi_kernel_derivative(runs: dict[int, dict[str, dict]], ranks: int, case: str) -> None:
    result = runs[ranks][case]
    assert result["ok"], "\n".join(e for e in result["errors"] if e)
