#!/usr/bin/env bash
# Set up a development/test environment for enzpy; safe to run again and again.
#
#  1. System packages (Debian 12): llvm-22-dev, libzstd-dev, cmake, g++ — only
#     what is missing is installed, and apt is not touched when nothing is.
#  2. A virtual environment in .venv (Python >= 3.11; python3.11 preferred).
#  3. The wheel dist/enzpy-*.whl, built once (`pip wheel`: CMake through
#     scikit-build-core compiles the C++ engine, LLVM linked in statically, and
#     puts libenzpy_native.so inside the package), then `pip install`ed with
#     the `test` extra. Skipped when the sources are unchanged since the last
#     successful install and the wheel is still there. scripts/wheel_smoke.sh
#     tests that same wheel file in fresh venvs without LLVM.
#
# Works from any directory. Environment knobs:
#   ENZPY_PYTHON=/path/to/python   interpreter for the venv (default python3.11, python3)
#   ENZPY_FORCE_INSTALL=1          reinstall even if the sources are unchanged
#   ENZPY_LINT_TOOLS=1             also install the linters scripts/lint.sh runs:
#                                  clang-format-22 (apt, when missing) and the
#                                  `dev` extra of pyproject.toml (ruff, mypy) into .venv
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { echo "[setup] $*"; }
die() { echo "[setup] error: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root to run: $*"
  fi
}

deb_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "missing $*; install them (this script knows only Debian's apt-get)"
  if [ "$apt_updated" -eq 0 ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install -y $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# --- 1. system packages -----------------------------------------------------
LLVM_CMAKE_DIR=/usr/lib/llvm-22/lib/cmake/llvm
missing=()
[ -d "$LLVM_CMAKE_DIR" ] || missing+=(llvm-22-dev)
if command -v dpkg-query >/dev/null 2>&1 && ! deb_installed libzstd-dev; then
  missing+=(libzstd-dev)
fi
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
LINT_TOOLS="${ENZPY_LINT_TOOLS:-0}"
if [ "$LINT_TOOLS" = 1 ]; then
  command -v clang-format-22 >/dev/null 2>&1 || missing+=(clang-format-22)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
[ -d "$LLVM_CMAKE_DIR" ] || die "$LLVM_CMAKE_DIR still missing after installing llvm-22-dev"

# --- 2. virtual environment -------------------------------------------------
pick_python() {
  local c
  for c in "${ENZPY_PYTHON:-}" python3.11 python3; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
if [ -x "$VPY" ] && ! "$VPY" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
  say "existing .venv is broken or too old; recreating it"
  rm -rf "$VENV"
fi
if [ ! -x "$VPY" ]; then
  PY="$(pick_python)" || die "no Python >= 3.11 found (set ENZPY_PYTHON)"
  if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian's own python3 needs python3-venv for `python3 -m venv`.
    apt_install python3-venv
  fi
  say "creating .venv with $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"
  "$PY" -m venv "$VENV"
fi

# --- 3. linters (ENZPY_LINT_TOOLS=1) -----------------------------------------
# The `dev` extra's pinned requirements, without building enzpy: pip only
# downloads what is missing or at another version.
if [ "$LINT_TOOLS" = 1 ]; then
  mapfile -t dev_reqs < <("$VPY" -P -c 'import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["optional-dependencies"]["dev"]))')
  say "pip install ${dev_reqs[*]} (the dev extra: linters)"
  "$VPY" -m pip install -q --disable-pip-version-check "${dev_reqs[@]}"
fi

# --- 4. build and install enzpy ---------------------------------------------
# Hash of everything that goes into the installed package.
source_hash() {
  {
    sha256sum pyproject.toml CMakeLists.txt
    find enzpy ir_passes native -type f \
      ! -name '*.pyc' ! -name '*.so' ! -path '*/__pycache__/*' -print0 |
      LC_ALL=C sort -z | xargs -0 -r sha256sum
  } | sha256sum | cut -d' ' -f1
}

STAMP="$VENV/.enzpy-install-stamp"
DIST="$ROOT/dist"
wheel_file() { compgen -G "$DIST/enzpy-*.whl" | head -n 1; }
want="$(source_hash)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "${ENZPY_FORCE_INSTALL:-0}" != 1 ] && [ "$want" = "$have" ] && [ -n "$(wheel_file)" ] &&
   "$VPY" -P -c 'import importlib.metadata as m; m.version("enzpy")' >/dev/null 2>&1; then
  say "enzpy is installed and up to date in .venv ($(wheel_file))"
  exit 0
fi

rm -f "$STAMP"
say "pip wheel . (builds the C++ engine; the first time takes a few minutes)"
start=$SECONDS
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
rm -f "$DIST"/enzpy-*.whl
"$VPY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DIST" .
WHEEL="$(wheel_file)"
[ -n "$WHEEL" ] || die "pip wheel left no enzpy wheel in $DIST"
say "built $WHEEL ($(du -h "$WHEEL" | cut -f1)) in $((SECONDS - start)) s; installing it"
# Same version number as the previous build: force the package itself in,
# then its dependencies and the test extra (already there: nothing to do).
"$VPY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$WHEEL"
"$VPY" -m pip install -q --disable-pip-version-check "$WHEEL[test]"

# The wheel must carry the engine inside the package. Look it up without
# importing enzpy (-P: the source tree in the cwd must not shadow the install).
"$VPY" -P - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("enzpy")
if spec is None or not spec.submodule_search_locations:
    sys.exit("[setup] error: enzpy is not installed in .venv")
pkg = pathlib.Path(list(spec.submodule_search_locations)[0])
if not (pkg / "libenzpy_native.so").is_file():
    sys.exit(f"[setup] error: libenzpy_native.so missing from {pkg}")
EOF

echo "$want" >"$STAMP"
say "enzpy installed into .venv in $((SECONDS - start)) s"
