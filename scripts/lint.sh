#!/usr/bin/env bash
# The lint checks CI runs (.ci/run), for developers to run the same way.
#
#   ruff check .                      Python lint   (config: [tool.ruff] in pyproject.toml)
#   ruff format --check .             Python format
#   clang-format-22 --dry-run -Werror C++ format of ir_passes/ and native/ (config: .clang-format)
#   mypy enzpy                        types of the package (config: [tool.mypy] in pyproject.toml)
#
# Every check runs, and the script fails if any of them has a finding. First it
# runs scripts/setup.sh with ENZPY_LINT_TOOLS=1, which installs what is missing:
# clang-format-22 with apt, and the `dev` extra (ruff, mypy, pinned) into .venv.
# To apply the formatters: `.venv/bin/ruff format .` and
# `clang-format-22 -i <files>`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENZPY_LINT_TOOLS=1 bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
VPY="$ROOT/.venv/bin/python"

failed=()
check() {
  local name="$1"
  shift
  echo "[lint] $name"
  if ! "$@"; then
    failed+=("$name")
  fi
}

# Every .cpp/.h below the engine's folders, however deep they nest.
mapfile -d '' cxx < <(find ir_passes native -type f \( -name '*.cpp' -o -name '*.h' \) -print0 |
  LC_ALL=C sort -z)
[ "${#cxx[@]}" -gt 0 ] || { echo "[lint] no C++ files found under ir_passes/ native/" >&2; exit 1; }

check "ruff check" "$VPY" -m ruff check .
check "ruff format" "$VPY" -m ruff format --check .
check "clang-format (${#cxx[@]} files)" clang-format-22 --dry-run -Werror "${cxx[@]}"
# mypy reads the source folder ./enzpy; its imports (numba, numpy, llvmlite,
# cffi) resolve in .venv.
check "mypy enzpy" "$VPY" -m mypy enzpy

if [ "${#failed[@]}" -gt 0 ]; then
  printf '[lint] FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "[lint] all checks passed"
