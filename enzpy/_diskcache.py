"""On-disk cache of compiled derivatives, reused across processes.

Like numba's own ``cache=True``, and only for functions compiled with it:
the derivative of an ``@njit(cache=True)`` function is stored as object code
under ``ENZPY_CACHE_DIR`` (default ``$XDG_CACHE_HOME/enzpy``, else
``~/.cache/enzpy``), and ``ENZPY_DISABLE_CACHE=1`` turns the cache off.

An entry's name is a hash of everything the derivative's code depends on
(:func:`key_for`): this enzpy (version, its Python sources, the engine
library's bytes), numba, llvmlite and Python, the JIT's target CPU and
features, the function (its source file's contents, its name and numba
options) and, recursively, every global and closure variable its code
names (njit callees by their own source files, functions of installed
packages by name, numbers and strings by value), the argument types, the
activities, the mode, the batch width, aliasing and strict mode. Any change
of one of them is another name: a stale entry is never found. A function
whose code reads a global or closure value that has no stable description
(an array, a list, an arbitrary object), or that has no source file
(``<stdin>``, a notebook cell), is not disk-cached.

An entry holds the derivative's object code, the undefined symbols it needs
(each must resolve in the process loading it), the numba Environments its
code points to and the primal's symbol. It is written to a temporary file
and renamed into place, so concurrent writers never leave a partial entry;
a file that does not read back (truncated, corrupt, another format) is
ignored and rewritten by the next build.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import sys
import tempfile
import types as pytypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llvmlite
import numba
import numpy as np
from numba.core import types
from numba.core.caching import NullCache
from numba.core.dispatcher import Dispatcher

from . import _native, _rules

__all__ = [
    "Stored",
    "counts",
    "directory",
    "enabled",
    "key_for",
    "read",
    "read_wrappers",
    "reset_counts",
    "write",
    "write_wrapper",
]

#: Bumped when the entry layout changes.
_FORMAT = 1
_MAGIC = b"enzpy-derivative\n"

_SIMPLE = (int, float, complex, bool, str, bytes, type(None), np.number, np.bool_)

#: Counters: entries found, looked up and not found (or unreadable), written.
_counts = {"hits": 0, "misses": 0, "writes": 0}


def counts() -> dict[str, int]:
    return dict(_counts)


def reset_counts() -> None:
    for k in _counts:
        _counts[k] = 0


def enabled() -> bool:
    """Whether the disk cache is on (``ENZPY_DISABLE_CACHE`` unset or 0)."""
    return os.environ.get("ENZPY_DISABLE_CACHE", "").strip().lower() in ("", "0", "false", "no")


def directory() -> Path:
    """Where entries live: ``ENZPY_CACHE_DIR``, else the user's cache dir."""
    override = os.environ.get("ENZPY_CACHE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "enzpy"


@dataclass
class Stored:
    """One entry as written and read back."""

    #: The derivative's object code and what it needs (``_link.Portable``).
    code: Any
    #: The primal's symbol (the signature's ``function``).
    function: str
    #: (module name of its globals, consts) of each numba Environment the
    #: code points to, in the order of ``code.env_names``.
    environments: list[tuple[str, list[Any]]]


# -- the key --------------------------------------------------------------------


def _file_digest(path: str) -> str:
    # Per call, not memoized: the point is to notice an edited file.
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@functools.cache
def _enzpy_fingerprint(engine: str, engine_stamp: tuple[int, int]) -> str:
    """This enzpy: its version, the sources of its package and the bytes of
    the engine library (memoized per library file stamp)."""
    from . import __version__

    h = hashlib.sha256(__version__.encode())
    package = Path(__file__).parent
    for src in sorted(package.glob("*.py")):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(Path(engine).read_bytes())
    versions = (numba.__version__, llvmlite.__version__, np.__version__, sys.version)
    for part in (*versions, str(engine_stamp)):
        h.update(part.encode())
    return h.hexdigest()


def _code_names(code: pytypes.CodeType) -> Iterator[str]:
    """The global names ``code`` and the code objects nested in it use."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, pytypes.CodeType):
            yield from _code_names(const)


class _Unstable(Exception):
    """A value with no description that stays valid across processes."""


def _describe(value: Any, seen: set[int]) -> Any:
    """A description of a global or closure value numba compiles against,
    the same in every process for the same program; ``_Unstable`` if none."""
    if isinstance(value, pytypes.ModuleType):
        return ("module", value.__name__)
    if isinstance(value, Dispatcher):
        options = sorted((k, repr(v)) for k, v in value.targetoptions.items())
        return ("njit", _describe_function(value.py_func, seen), options)
    if isinstance(value, pytypes.FunctionType):
        if _installed(value):  # numpy's, numba's: numba's typing of it is versioned
            return ("named", value.__module__, value.__qualname__)
        return ("function", _describe_function(value, seen))
    if isinstance(value, pytypes.BuiltinFunctionType | np.ufunc | type):
        return ("named", getattr(value, "__module__", None), value.__qualname__)
    if isinstance(value, types.Type):
        return ("numba type", str(value))
    if isinstance(value, _SIMPLE):
        return ("value", type(value).__qualname__, repr(value))
    if isinstance(value, tuple):
        return ("tuple", type(value).__qualname__, [_describe(v, seen) for v in value])
    raise _Unstable(type(value).__qualname__)


def _installed(func: pytypes.FunctionType) -> bool:
    """Whether ``func`` comes from the standard library or an installed package."""
    path = os.path.abspath(func.__code__.co_filename)
    return any(path.startswith(os.path.join(os.path.abspath(p), "")) for p in _installed_prefixes())


@functools.cache
def _installed_prefixes() -> tuple[str, ...]:
    return tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})


def _describe_rules() -> Any:
    """The derivative rules registered in this process (``_rules``): a
    derivative may use any of them, so they are part of every key. A rule
    for a C function by address (ctypes, cfunc) is left out: a kernel that
    calls such a function holds the ctypes or cfunc object among its globals,
    which has no description (``_describe``), so it is never stored, and the
    rule cannot change any kernel that is; the same holds for a rule without a
    description of its own on a function without one."""
    described = []
    for kind, target, df in _rules.registered():
        if isinstance(target, int):
            continue
        # The function a rule is for, by name (its code is described where a
        # derivative calls it); the rule's own code in full.
        what = target if isinstance(target, str) else _name_of(target)
        try:
            if df is None:
                code = None
            elif hasattr(df, "enzpy_description"):  # generated (enzpy.solvers)
                code = df.enzpy_description(lambda v: _describe(v, set()))
            else:
                code = _describe(df, set())
        except _Unstable:
            # A rule whose code has no description (it calls a ctypes
            # function, say) matters only to kernels that call its
            # function; when that function has none either, no such kernel
            # is stored, and the rule is left out.
            if _has_description(target):
                raise
            continue
        described.append((kind, what, code))
    return sorted(described, key=repr)


def _has_description(target: Any) -> bool:
    if isinstance(target, str):
        return True
    try:
        _describe(target, set())
    except _Unstable:
        return False
    return True


def _name_of(disp: Any) -> tuple[str, str]:
    return (disp.py_func.__module__, disp.py_func.__qualname__)


def _describe_function(func: pytypes.FunctionType, seen: set[int]) -> Any:
    code = func.__code__
    name = (func.__module__, func.__qualname__)
    if id(code) in seen:  # recursion: described once
        return ("recursive", name)
    seen.add(id(code))
    if not os.path.isfile(code.co_filename):
        raise _Unstable(f"{func.__qualname__} has no source file")
    env = func.__globals__
    names = sorted({n for n in _code_names(code) if n in env})
    cells = func.__closure__ or ()
    try:
        closure = [(n, _describe(c.cell_contents, seen)) for n, c in zip(code.co_freevars, cells)]
    except ValueError as e:  # an empty cell
        raise _Unstable("empty closure cell") from e
    return (
        name,
        _file_digest(code.co_filename),
        code.co_firstlineno,
        [(n, _describe(env[n], seen)) for n in names],
        closure,
    )


def _current_values(func: pytypes.FunctionType) -> dict[str, Any]:
    import builtins

    values = dict(vars(builtins))
    values.update(func.__globals__)
    for n, c in zip(func.__code__.co_freevars, func.__closure__ or ()):
        try:
            values[n] = c.cell_contents
        except ValueError:
            pass
    return values


def key_for(disp: Any, overload: Any, call: tuple[Any, ...]) -> str | None:
    """The entry name (a hex digest) for the derivative of ``disp``'s
    compile ``overload`` described by ``call`` (mode, activities, types,
    aliasing, width, strict mode), or None when it is not disk-cached."""
    if not enabled() or isinstance(disp._cache, NullCache):
        return None
    from ._capture import _frozen_globals, _same_frozen
    from ._config import target_context

    engine = _native.library_path()
    try:
        st = os.stat(engine)
        fingerprint = _enzpy_fingerprint(engine, (st.st_size, st.st_mtime_ns))
        function = _describe(disp, set())
        rules = _describe_rules()
    except (OSError, _Unstable):
        return None
    # A global rebound since numba compiled f: f(...) still runs the old
    # value, which the entry of the new one would not be the derivative of
    # (the build refuses this case with the reason).
    frozen = _frozen_globals(overload)
    if frozen:
        now = _current_values(disp.py_func)
        if any(n in now and not _same_frozen(now[n], v) for n, v in frozen.items()):
            return None
    triple, cpu, features = target_context().codegen().magic_tuple()
    material = repr((_FORMAT, fingerprint, (triple, cpu, features), function, rules, call))
    return hashlib.sha256(material.encode()).hexdigest()


# -- entries ----------------------------------------------------------------------


def _path(key: str, part: str = "") -> Path:
    return directory() / key[:2] / f"{key}{part}.enzpy"


def _load(path: Path, name: str) -> Any | None:
    """What the file ``path`` holds under ``name``; None when it does not read
    back (missing, truncated, corrupt, another format or another entry)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + 32
    if (
        data[: len(_MAGIC)] != _MAGIC
        or hashlib.sha256(data[head:]).digest() != data[len(_MAGIC) : head]
    ):
        return None
    try:
        found = pickle.loads(data[head:])
    except Exception:  # noqa: BLE001 - anything unreadable is a miss
        return None
    if isinstance(found, tuple) and len(found) == 3 and found[:2] == (_FORMAT, name):
        return found[2]
    return None


def _store(path: Path, name: str, value: Any, dumps: Any = None) -> bool:
    """Write ``value`` under ``name`` to ``path`` atomically: a temporary file
    renamed into place. False (and nothing written) when it cannot be
    pickled or the directory is not writable."""
    try:
        payload = (dumps or functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL))(
            (_FORMAT, name, value)
        )
    except Exception:  # noqa: BLE001 - e.g. consts that do not pickle: not cached
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".enzpy")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


def read(key: str) -> Stored | None:
    """The entry ``key``, or None when there is none or it does not read back."""
    stored = _load(_path(key), key)
    if not isinstance(stored, Stored):
        _counts["misses"] += 1
        return None
    _counts["hits"] += 1
    return stored


def write(key: str, stored: Stored) -> None:
    """Store ``stored`` as the entry ``key``."""
    if _store(_path(key), key, stored):
        _counts["writes"] += 1


# -- the njit wrapper's compiled code -----------------------------------------------
#
# Python calls a derivative through an njit wrapper that numba compiles for
# the call's argument types, which in a fresh process costs more than
# loading the derivative. Its compile results are stored beside the entry
# (one file per argument types), as numba stores its own.


def _wrapper_part(argtypes: tuple[types.Type, ...]) -> str:
    return ".w" + hashlib.sha256(repr([str(t) for t in argtypes]).encode()).hexdigest()[:16]


def write_wrapper(key: str, cres: Any) -> None:
    """Store numba's compile result ``cres`` of an entry's wrapper."""
    from numba.core.serialize import dumps

    part = _wrapper_part(tuple(cres.signature.args))
    module = cres.library._final_module
    undefined = [
        gv.name
        for gv in [*module.functions, *module.global_variables]
        if gv.is_declaration and not gv.name.startswith("llvm.")
    ]
    fndesc = cres.fndesc
    kept = fndesc.typemap, fndesc.calltypes
    try:
        reduced = cres._reduce()  # numba's own cache format (drops the two)
        _store(_path(key, part), key + part, (reduced, undefined), dumps=dumps)
    except Exception:  # noqa: BLE001 - numba could not serialize it: not cached
        pass
    finally:
        fndesc.typemap, fndesc.calltypes = kept


def read_wrappers(key: str) -> Iterator[tuple[tuple[Any, ...], list[str]]]:
    """numba's reduced compile results of the entry's wrapper that read back,
    each with the symbols its code leaves undefined."""
    folder = directory() / key[:2]
    try:
        paths = sorted(folder.glob(f"{key}.w*.enzpy"))
    except OSError:
        return
    for path in paths:
        found = _load(path, path.name[: -len(".enzpy")])
        if isinstance(found, tuple) and len(found) == 2:
            yield found
