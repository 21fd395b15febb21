"""Regression tests from the differential fuzzer (tests/fuzz/, scripts/fuzz.py).

Each test is a hand-minimized kernel from a fuzzer seed, named after what goes
wrong, and marked ``xfail(strict=True)`` with the precise reason while the bug is
open: the suite stays green, and the test turns red (XPASS) when the engine is
fixed, so that the marker is removed and the test guards the fix.

The fuzzer's own rules count an EnzpyError as a clear refusal, not a finding. The
tests below are refusals of constructs that README.md lists as supported ("works
(reverse mode)" / "works (forward mode): everything listed for reverse mode, with
the same errors"), so they are recorded as contract gaps. The fuzzer found no
wrong numbers, NaNs, crashes or InternalErrors in the runs so far (see the report
of issue #10).
"""

import numba
import numpy as np
import pytest
from fd import Active, Dup, check_vjp

import enzpy
from enzpy import Duplicated, Forward


@numba.njit
def _sort_extremes(y):
    t = np.sort(y)
    return 0.25 * t[0] + 0.5 * t[t.shape[0] - 1]


def test_sort_reverse_works():
    """The reverse half of the pair below: sorting is differentiated in reverse."""
    check_vjp(_sort_extremes, Dup(np.array([0.3, -0.7, 1.1, 0.2])))


def test_sort_forward_mode_matches_reverse():
    """Fuzz seed 5012 (wide): forward mode refused np.sort because numba's
    quicksort keeps its partition stack in a runtime list whose reference
    counts forward mode did not know it could ignore."""
    y = np.array([0.3, -0.7, 1.1, 0.2])
    t = enzpy.autodiff(_sort_extremes, Duplicated(y.copy(), np.ones(4)), mode=Forward)
    # d/dy of 0.25*min(y) + 0.5*max(y) along ones
    assert t == pytest.approx(0.75, rel=1e-12)


@numba.njit
def _assign_array_expression(x, y, a):
    y[:] = x * a


def test_slice_assignment_of_array_expression():
    """Fuzz seeds 5003, 6000, 6003, 6008 (wide): 'y[:] = x * a' into a distinct
    argument was refused ("stored into memory of unknown origin"): numba copies
    the right-hand side through a raw buffer (NRT_Allocate) the engine did not
    trace."""
    check_vjp(
        _assign_array_expression,
        Dup(np.arange(1.0, 5.0)),
        Dup(np.zeros(4)),
        Active(0.5),
        ret="const",
    )


@numba.njit
def _copy_into(x, y):
    y[:] = x


def test_slice_assignment_copy():
    """Found while minimizing fuzz seeds 5003/6000: the plain copy 'y[:] = x'
    between two distinct arrays was refused too (a memcpy into numba's raw
    temporary buffer)."""
    check_vjp(_copy_into, Dup(np.arange(1.0, 5.0)), Dup(np.zeros(4)), ret="const")


@numba.njit
def _two_tuple_loops(x, w, a):
    s = 0.0
    tp = (x, w)
    for arr in tp:
        s += arr[0]
    tp2 = (x, w)
    for arr in tp2:
        s += a * arr[1]
    return s


@numba.njit
def _one_tuple_loop(x, w):
    s = 0.0
    for arr in (x, w):
        s += arr[1]
    return s


def test_one_loop_over_a_tuple_of_arrays_works():
    check_vjp(_one_tuple_loop, Dup(np.arange(1.0, 4.0)), Dup(np.arange(2.0, 5.0)))


# fuzz seed 5006 (wide): the second loop over a tuple picks members through a
# phi of whole array structs; preprocessing splits it per member.
def test_two_loops_over_tuples_of_arrays_are_differentiated():
    check_vjp(_two_tuple_loops, Dup(np.arange(1.0, 4.0)), Dup(np.arange(2.0, 5.0)), Active(0.5))


@numba.njit
def _rank_weighted_squares(y):
    z = np.sort(y)
    s = 0.0
    for i in range(z.shape[0]):
        s += (i + 1) * z[i] ** 2
    return s


def test_hessian_through_sort_is_the_rank_weighted_diagonal():
    """hessian runs forward mode inside: sum_i (i+1) z_i^2 of the sorted z has
    the Hessian diag(2 * rank weight) in the original order."""
    y = np.array([0.3, -0.7, 1.1, 0.2])
    ranks = np.argsort(np.argsort(y)) + 1
    np.testing.assert_allclose(enzpy.hessian(_rank_weighted_squares, y), np.diag(2.0 * ranks))
