#!/usr/bin/env bash
# Smoke test of the wheel that scripts/setup.sh builds (dist/enzpy-*.whl), as a
# user who has no LLVM would install it:
#
#  1. The engine library in the wheel needs no LLVM: `ldd` names no libLLVM and
#     nothing "not found" (LLVM is linked in statically, see CMakeLists.txt).
#  2. For each of Python 3.11, 3.12 and 3.13 that is found here (python3.X on
#     PATH, or pyenv's versions), a fresh venv gets `pip install <wheel>` (its
#     dependencies from the package index) and runs `python -m enzpy`, which
#     prints the versions and differentiates a kernel, from outside the source
#     tree, with LD_LIBRARY_PATH empty and, where `unshare -m` works (root),
#     in a mount namespace where every LLVM installation is hidden: an empty
#     tmpfs over /usr/lib/llvm-*, /dev/null over each libLLVM*.so*.
#
# Fails when the wheel is missing (run scripts/setup.sh first), when a check
# fails, or when none of the Pythons is found. Environment knobs:
#   ENZPY_SMOKE_PYTHONS="3.11 3.12 3.13"  the Python versions to try
#   ENZPY_SMOKE_KEEP=1                    keep the venvs (their folder is printed)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "[wheel-smoke] $*"; }
die() { echo "[wheel-smoke] error: $*" >&2; exit 1; }

WHEEL="$(compgen -G "$ROOT/dist/enzpy-*.whl" | head -n 1 || true)"
[ -n "$WHEEL" ] || die "no dist/enzpy-*.whl: run scripts/setup.sh first"
say "$WHEEL: $(du -h "$WHEEL" | cut -f1)"

WORK="$(mktemp -d -t enzpy-wheel-smoke.XXXXXX)"
if [ "${ENZPY_SMOKE_KEEP:-0}" = 1 ]; then
  say "venvs are kept in $WORK"
else
  trap 'rm -rf "$WORK"' EXIT
fi

# --- 1. the engine library carries its LLVM -------------------------------------
python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
name = next(n for n in z.namelist() if n.endswith("/libenzpy_native.so"))
open(sys.argv[2], "wb").write(z.read(name))' "$WHEEL" "$WORK/libenzpy_native.so"
say "libenzpy_native.so in the wheel: $(du -h "$WORK/libenzpy_native.so" | cut -f1)"
deps="$(env -u LD_LIBRARY_PATH ldd "$WORK/libenzpy_native.so")"
echo "$deps" | sed 's/^/    /'
if echo "$deps" | grep -Eq 'libLLVM|not found'; then
  die "the engine library in the wheel depends on LLVM or on a missing library"
fi

# --- 2. a fresh venv per Python, LLVM hidden -----------------------------------
find_python() {
  # The first candidate that runs and is version $1: pyenv's shim for a
  # version that is installed but not selected is on PATH and fails.
  local v="$1" c root
  root="$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"
  for c in "$(command -v "python$v" || true)" "$root"/versions/"$v".*/bin/"python$v" \
           "/usr/bin/python$v" "/usr/local/bin/python$v"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if [ "$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$v" ]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

# Mount options over everything that looks like an LLVM installation.
hide_llvm_script() {
  local d f
  echo 'set -e'
  for d in /usr/lib/llvm-* /usr/local/lib/llvm-*; do
    [ -d "$d" ] && echo "mount -t tmpfs -o size=1m,mode=0755 enzpy-no-llvm '$d'"
  done
  for f in /usr/lib/*/libLLVM*.so* /usr/lib/libLLVM*.so* /usr/local/lib/libLLVM*.so*; do
    [ -f "$f" ] && ! [ -L "$f" ] && echo "mount --bind /dev/null '$f'"
  done
  # Checked inside the namespace: nothing of LLVM's is left to load.
  echo 'for f in /usr/lib/llvm-*/lib/libLLVM*.so*; do [ -e "$f" ] && { echo "still visible: $f" >&2; exit 3; }; done'
  echo 'exec "$@"'
}

isolate=()
if unshare -m --propagation private true 2>/dev/null; then
  hide_llvm_script >"$WORK/hide-llvm.sh"
  isolate=(unshare -m --propagation private bash "$WORK/hide-llvm.sh")
  say "LLVM is hidden in a mount namespace (unshare -m)"
else
  say "unshare -m is not permitted here: LLVM stays visible on disk, LD_LIBRARY_PATH is cleared"
fi

tried=0
failed=()
for v in ${ENZPY_SMOKE_PYTHONS:-3.11 3.12 3.13}; do
  if ! py="$(find_python "$v")"; then
    say "python$v: not found here, skipped"
    continue
  fi
  tried=$((tried + 1))
  start=$SECONDS
  venv="$WORK/venv-$v"
  say "python$v ($py): fresh venv, pip install $(basename "$WHEEL")"
  if ! "$py" -m venv "$venv" ||
     ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "$WHEEL"; then
    failed+=("python$v: install")
    continue
  fi
  # From an empty folder: neither the source tree nor its build can be found.
  mkdir -p "$WORK/cwd"
  rc=0
  (cd "$WORK/cwd" && env -u LD_LIBRARY_PATH -u PYTHONPATH -u ENZPY_NATIVE_LIB \
    "${isolate[@]}" "$venv/bin/python" -P -m enzpy) >"$WORK/out-$v.txt" 2>&1 || rc=$?
  sed 's/^/    /' "$WORK/out-$v.txt"
  if [ "$rc" -eq 0 ]; then
    say "python$v: ok in $((SECONDS - start)) s"
  else
    failed+=("python$v: python -m enzpy exited with $rc")
  fi
done

[ "$tried" -gt 0 ] || die "none of the Pythons ${ENZPY_SMOKE_PYTHONS:-3.11 3.12 3.13} was found"
if [ "${#failed[@]}" -gt 0 ]; then
  printf '[wheel-smoke] FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
say "the wheel installs and works on $tried Python version(s) without LLVM"
