"""pytest configuration for enzpy's tests. pyproject.toml already puts tests/ and
examples/ on sys.path (pythonpath) and declares the ``slow`` marker; this keeps
the helper modules beside this file (fd.py) and the shared example kernels
(examples/kernels.py) importable when pytest runs without that config."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
for _dir in (_HERE, os.path.join(os.path.dirname(_HERE), "examples")):
    if _dir not in sys.path:
        sys.path.insert(0, _dir)


def pytest_configure(config):
    # the randomized differential slice (tests/test_fuzz_differential.py); it runs
    # by default and is deselected with -m "not fuzz"
    config.addinivalue_line(
        "markers",
        "fuzz: randomized differential test of generated kernels (deselect with -m 'not fuzz')",
    )
