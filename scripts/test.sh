#!/usr/bin/env bash
# Set up (idempotent) and run the test suite; extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow" -k heat`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# -P: do not put the cwd on sys.path, so that tests import the installed enzpy
# (which carries libenzpy_native.so), not the source folder ./enzpy.
exec "$ROOT/.venv/bin/python" -P -m pytest -q "$@"
