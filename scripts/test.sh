#!/usr/bin/env bash
# Set up (idempotent) and run the test suite; extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow" -k heat`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# -P: do not put the cwd on sys.path, so that tests import the installed enzpy
# (which carries libenzpy_native.so), not the source folder ./enzpy.
# The tests are mostly single-threaded compiles: one worker process per core
# (pytest-xdist; ENZPY_TEST_WORKERS=0 runs them in this process), each test
# file whole in one worker so that its module-scoped fixtures build once.
workers="${ENZPY_TEST_WORKERS:-auto}"
exec "$ROOT/.venv/bin/python" -P -m pytest -q -n "$workers" --dist loadfile "$@"
