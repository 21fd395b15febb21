"""pytest configuration for enzpy's tests. pyproject.toml already puts tests/ on
sys.path (pythonpath) and declares the ``slow`` marker; this keeps the helper
modules beside this file (fd.py) importable when pytest runs without that config."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
