#!/usr/bin/env bash
# Set up (idempotent) and run the quick-start demo: gradient of a 1-D heat
# equation solver, checked against finite differences and timed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -P examples/demo.py "$@"
