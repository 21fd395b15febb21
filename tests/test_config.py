"""The derivative's vector math library (enzpy._config.vector_library): on by
default where glibc's libmvec is available, off with ENZPY_VECTOR_LIBRARY=none,
and a clear error for a value it does not know."""

import pytest

from enzpy._config import libmvec_available, vector_library
from enzpy.errors import EnzpyValueError


def test_vector_library_is_libmvec_by_default_where_available(monkeypatch):
    monkeypatch.delenv("ENZPY_VECTOR_LIBRARY", raising=False)
    assert vector_library() == ("libmvec" if libmvec_available() else "")


@pytest.mark.parametrize("off", ["none", "NONE", "off", "0", "libm"])
def test_vector_library_can_be_turned_off(monkeypatch, off):
    monkeypatch.setenv("ENZPY_VECTOR_LIBRARY", off)
    assert vector_library() == ""


def test_an_unknown_vector_library_names_the_variable(monkeypatch):
    monkeypatch.setenv("ENZPY_VECTOR_LIBRARY", "svml")
    with pytest.raises(EnzpyValueError, match="ENZPY_VECTOR_LIBRARY='svml'"):
        vector_library()
