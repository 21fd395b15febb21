"""Derivative rules for the LAPACK calls behind numba's ``np.linalg``.

numba implements ``np.linalg.solve``, ``inv``, ``det``, ``slogdet``,
``cholesky``, ``eigh`` and ``eigvalsh`` as ordinary numba code that copies
its operands into Fortran-ordered scratch arrays, calls one LAPACK routine
of numba's helper library on them, checks its status and copies results
out. enzpy differentiates that numba code like any other, and gives the
LAPACK calls custom rules (``enzpy.register_rule`` on the C symbols; the
engine side is ``ir_passes/rules/CustomRules``). Each rule runs the routine
itself and states, in place, how the routine's outputs move with its inputs:

* ``numba_xxgetrf`` (P A = L U, in place; det, slogdet, inv): tangent
  ``X = L⁻¹ P dA U⁻¹``, ``dL = L stril(X)``, ``dU = triu(X) U``; reverse
  ``Ā = Pᵀ L⁻ᵀ (stril(Lᵀ L̄) + triu(Ū Uᵀ)) U⁻ᵀ``.
* ``numba_ez_xxgetri`` (A⁻¹ from the factors of getrf): ``dA⁻¹ = -A⁻¹ dA A⁻¹``
  with ``dA = Pᵀ (dL U + L dU)``; reverse maps ``Ā = -A⁻ᵀ Ā⁻¹ A⁻ᵀ`` back onto
  the factors.
* ``numba_xgesv`` (solve: factors A, overwrites B with X):
  ``dX = A⁻¹ (dB - dA X)``; reverse ``B̄ = A⁻ᵀ X̄``, ``Ā = -B̄ Xᵀ`` plus the
  factors' own cotangent through getrf's rule. Both solve with the factors
  the call computed: nothing is factorized again.
* ``numba_xxpotrf`` (Cholesky, numba passes 'U' on the transposed C-ordered
  copy): ``dU = Φ(U⁻ᵀ dS U⁻¹) U`` with Φ the upper triangle with the diagonal
  halved; reverse ``S̄ = U⁻¹ Φ(Ū Uᵀ) U⁻ᵀ``, folded onto the triangle read.
* ``numba_ez_xxxevd`` (symmetric eigenproblem from the lower triangle):
  ``dw = diag(Vᵀ dS V)``, ``dV = V (F ∘ Vᵀ dS V)`` with ``F_ij = 1/(w_j - w_i)``;
  reverse ``S̄ = V (diag(w̄) + F ∘ Vᵀ V̄) Vᵀ``, folded onto the lower triangle.
  Repeated eigenvalues make F infinite: the derivative is then inf or NaN,
  never a plausible number. With ``jobz='N'`` (eigvalsh) the rule computes
  the eigenvectors it needs on a copy.

Conventions: the other triangle of a matrix a routine reads one triangle
of keeps its cotangent; scratch contents a routine leaves undefined get NaN
tangents and must not carry cotangents (numba's code never reads them).
Each rule keeps on its tape what the reverse needs of the call's results
(copies only where ``cfg.overwritten`` says the memory may change).

* ``numba_ez_gelsd`` (lstsq: the minimum-norm least-squares solution
  ``X = A⁺ B`` into b's first n rows, A's singular values into s, A
  destroyed): with ``P = A⁺`` truncated to the rank gelsd found and
  ``R = B - A X``, ``dX = P (dB - dA X) + P Pᵀ dAᵀ R + (I - P A) dAᵀ Pᵀ X``
  (the pseudo-inverse's derivative at constant rank) and ``ds_i = u_iᵀ dA v_i``;
  the reverse is its transpose. For ``m > n`` at full rank, rows n..m-1 of
  b hold a rotated residual whose column sums of squares are ``‖R_j‖²``
  (numba reads nothing else of them): their tangent is the one along
  themselves that moves those sums as ``2 R_jᵀ (dB - dA X)_j`` does.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types

_I = types.intp
_P = types.voidptr
_C = types.char

_getrf_c = types.ExternalFunction("numba_xxgetrf", types.intc(_C, _I, _I, _P, _I, _P))
_getri_c = types.ExternalFunction("numba_ez_xxgetri", types.intc(_C, _I, _P, _I, _P))
_gesv_c = types.ExternalFunction("numba_xgesv", types.intc(_C, _I, _I, _P, _I, _P, _P, _I))
_potrf_c = types.ExternalFunction("numba_xxpotrf", types.intc(_C, _C, _I, _P, _I))
_evd_c = types.ExternalFunction("numba_ez_xxxevd", types.intc(_C, _C, _C, _I, _P, _I, _P))
_gelsd_c = types.ExternalFunction(
    "numba_ez_gelsd", types.intc(_C, _I, _I, _I, _P, _I, _P, _I, _P, types.float64, _P)
)

_D = ord("d")
_S = ord("s")

# --- views and dense helpers -------------------------------------------------


@numba.njit(cache=True)
def _view(ptr, m, n, ld, like):  # type: ignore[no-untyped-def]
    """The column-major m x n matrix at ``ptr`` (leading dimension ``ld``),
    of ``like``'s dtype, as an array view."""
    return numba.carray(ptr, (n, ld), like.dtype).T[:m, :]


@numba.njit(cache=True)
def _pivots(ptr, n):  # type: ignore[no-untyped-def]
    return numba.carray(ptr, (n,), np.int32)


@numba.njit(cache=True)
def _tril(X, k):  # type: ignore[no-untyped-def]
    """The entries of X on and below diagonal k, as a new array (loops keep
    the compiled rules small; numpy's generic versions are large)."""
    m, n = X.shape
    out = np.zeros((m, n), X.dtype)
    for i in range(m):
        for j in range(min(n, i + k + 1)):
            out[i, j] = X[i, j]
    return out


@numba.njit(cache=True)
def _triu(X, k):  # type: ignore[no-untyped-def]
    m, n = X.shape
    out = np.zeros((m, n), X.dtype)
    for i in range(m):
        for j in range(max(0, i + k), n):
            out[i, j] = X[i, j]
    return out


@numba.njit(cache=True)
def _cast(X, like):  # type: ignore[no-untyped-def]
    """A C-ordered copy of the matrix X with ``like``'s element type."""
    m, n = X.shape
    out = np.empty((m, n), like.dtype)
    for i in range(m):
        for j in range(n):
            out[i, j] = X[i, j]
    return out


@numba.njit(cache=True)
def _contig(X):  # type: ignore[no-untyped-def]
    return _cast(X, X)


@numba.njit(cache=True)
def _permute(piv, X, transpose):  # type: ignore[no-untyped-def]
    """P X (LAPACK's sequential row swaps), or Pᵀ X."""
    n = piv.shape[0]
    for s in range(n):
        k = n - 1 - s if transpose else s
        j = piv[k] - 1
        if j != k:
            for c in range(X.shape[1]):
                t = X[k, c]
                X[k, c] = X[j, c]
                X[j, c] = t


@numba.njit(cache=True)
def _lower_solve(LU, X, unit, transpose):  # type: ignore[no-untyped-def]
    """X := L⁻¹ X (or L⁻ᵀ X), L the lower triangle of LU (unit diagonal when
    ``unit``)."""
    n = LU.shape[0]
    for c in range(X.shape[1]):
        if not transpose:
            for i in range(n):
                s = X[i, c]
                for k in range(i):
                    s -= LU[i, k] * X[k, c]
                X[i, c] = s if unit else s / LU[i, i]
        else:
            for i in range(n - 1, -1, -1):
                s = X[i, c]
                for k in range(i + 1, n):
                    s -= LU[k, i] * X[k, c]
                X[i, c] = s if unit else s / LU[i, i]


@numba.njit(cache=True)
def _upper_solve(LU, X, transpose):  # type: ignore[no-untyped-def]
    """X := U⁻¹ X (or U⁻ᵀ X), U the upper triangle of LU."""
    n = LU.shape[0]
    for c in range(X.shape[1]):
        if not transpose:
            for i in range(n - 1, -1, -1):
                s = X[i, c]
                for k in range(i + 1, n):
                    s -= LU[i, k] * X[k, c]
                X[i, c] = s / LU[i, i]
        else:
            for i in range(n):
                s = X[i, c]
                for k in range(i):
                    s -= LU[k, i] * X[k, c]
                X[i, c] = s / LU[i, i]


@numba.njit(cache=True)
def _lower_unit(LU):  # type: ignore[no-untyped-def]
    L = _tril(LU, -1)
    for i in range(L.shape[0]):
        L[i, i] = 1.0
    return L


@numba.njit(cache=True)
def _lu_solve(LU, piv, B, transpose):  # type: ignore[no-untyped-def]
    """A⁻¹ B (or A⁻ᵀ B) from P A = L U, as a new array."""
    X = _contig(B)
    if not transpose:
        _permute(piv, X, False)
        _lower_solve(LU, X, True, False)
        _upper_solve(LU, X, False)
    else:
        _upper_solve(LU, X, True)
        _lower_solve(LU, X, True, True)
        _permute(piv, X, True)
    return X


@numba.njit(cache=True)
def _lu_tangent(LU, piv, dA):  # type: ignore[no-untyped-def]
    """The tangent of getrf's packed factors for an input tangent dA."""
    W = _contig(dA)
    _permute(piv, W, False)
    _lower_solve(LU, W, True, False)  # L⁻¹ P dA
    Z = _contig(W.T)
    _upper_solve(LU, Z, True)  # (L⁻¹ P dA U⁻¹)ᵀ
    X = Z.T
    L = _lower_unit(LU)
    U = _triu(LU, 0)
    return _tril(L @ _tril(X, -1), -1) + _triu(_triu(X, 0) @ U, 0)


@numba.njit(cache=True)
def _lu_cotangent(LU, piv, Fbar):  # type: ignore[no-untyped-def]
    """Ā for the cotangent ``Fbar`` of getrf's packed factors."""
    L = _lower_unit(LU)
    U = _triu(LU, 0)
    M = _tril(_contig(L.T) @ _tril(Fbar, -1), -1) + _triu(_triu(Fbar, 0) @ _contig(U.T), 0)
    Z = _contig(M.T)
    _upper_solve(LU, Z, False)  # U⁻¹ Mᵀ = (M U⁻ᵀ)ᵀ
    W = _contig(Z.T)
    _lower_solve(LU, W, True, True)  # L⁻ᵀ M U⁻ᵀ
    _permute(piv, W, True)  # Pᵀ ...
    return W


@numba.njit(cache=True)
def _from_factors(LU, piv, dLU):  # type: ignore[no-untyped-def]
    """dA = Pᵀ (dL U + L dU) for packed factor tangents dLU."""
    L = _lower_unit(LU)
    U = _triu(LU, 0)
    dA = _tril(dLU, -1) @ U + L @ _triu(dLU, 0)
    _permute(piv, dA, True)
    return dA


@numba.njit(cache=True)
def _onto_factors(LU, piv, Abar):  # type: ignore[no-untyped-def]
    """The packed factors' cotangent for a cotangent Ā of A = Pᵀ L U."""
    L = _lower_unit(LU)
    U = _triu(LU, 0)
    PA = _contig(Abar)
    _permute(piv, PA, False)
    return _tril(PA @ _contig(U.T), -1) + _triu(_contig(L.T) @ PA, 0)


@numba.njit(cache=True)
def _nan_fill(X):  # type: ignore[no-untyped-def]
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            X[i, j] = np.nan


# --- the rules ---------------------------------------------------------------
# Each C function's rule dispatches on ``kind`` ('d' or 's') to a core that
# takes ``like`` (an empty array of the element type). Tapes hold float64.


@numba.njit(cache=True)
def _kind_char(like):  # type: ignore[no-untyped-def]
    return _D if like.itemsize == 8 else _S


@numba.njit(cache=True)
def _dense(ptr, m, n, ld, like):  # type: ignore[no-untyped-def]
    return _contig(_view(ptr, m, n, ld, like))


@numba.njit(cache=True)
def _tape(view, overwritten):  # type: ignore[no-untyped-def]
    """A float64 copy for the tape when the memory may change, else empty."""
    if overwritten:
        return _cast(view, np.empty(0, np.float64))
    return np.empty((0, 0), np.float64)


@numba.njit(cache=True)
def _untape(kept, ptr, m, n, ld, overwritten, like):  # type: ignore[no-untyped-def]
    if overwritten:
        return _cast(kept, like)
    return _dense(ptr, m, n, ld, like)


@numba.njit(cache=True)
def _piv_tape(ptr, n, overwritten):  # type: ignore[no-untyped-def]
    return _pivots(ptr, n).copy() if overwritten else np.empty(0, np.int32)


@numba.njit(cache=True)
def _piv_untape(kept, ptr, n, overwritten):  # type: ignore[no-untyped-def]
    return kept if overwritten else _pivots(ptr, n).copy()


@numba.njit(cache=True)
def _float64_only(kind):  # type: ignore[no-untyped-def]
    if kind != _D:
        raise ValueError(
            "enzpy differentiates numba's np.linalg functions on float64 arrays only; "
            "convert the matrix with .astype(np.float64) before the call"
        )


# getrf(kind, m, n, a, lda, ipiv): P A = L U in place.


@numba.njit(cache=True)
def _getrf_fwd(active, m, n, a, lda, ipiv, sa, like):  # type: ignore[no-untyped-def]
    dA = _dense(sa, m, n, lda, like) if active else np.empty((0, 0), like.dtype)
    info = _getrf_c(_kind_char(like), m, n, a, lda, ipiv)
    if active:
        dF = _view(sa, m, n, lda, like)
        if m != n or info != 0:
            _nan_fill(dF)
        else:
            dF[:, :] = _lu_tangent(_dense(a, n, n, lda, like), _pivots(ipiv, n), dA)
    return info


@numba.njit(cache=True)
def getrf_forward(cfg, kind, dk, m, dm, n, dn, a, da, lda, dl, ipiv, dp):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    return _getrf_fwd(cfg.active[3], m, n, a, lda, ipiv, da, np.empty(0, np.float64))


@numba.njit(cache=True)
def _getrf_aug(ow, m, n, a, lda, ipiv, like):  # type: ignore[no-untyped-def]
    info = _getrf_c(_kind_char(like), m, n, a, lda, ipiv)
    return info, (_tape(_view(a, m, n, lda, like), ow[3]), _piv_tape(ipiv, min(m, n), ow[5]))


@numba.njit(cache=True)
def getrf_augmented(cfg, kind, m, n, a, lda, ipiv):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    return _getrf_aug(cfg.overwritten, m, n, a, lda, ipiv, np.empty(0, np.float64))


@numba.njit(cache=True)
def _getrf_rev(active, ow, tape, m, n, a, lda, ipiv, sa, like):  # type: ignore[no-untyped-def]
    if not active:
        return
    dF = _view(sa, m, n, lda, like)
    if m != n:
        _nan_fill(dF)
        return
    LU = _untape(tape[0], a, n, n, lda, ow[3], like)
    piv = _piv_untape(tape[1], ipiv, n, ow[5])
    dF[:, :] = _lu_cotangent(LU, piv, _contig(dF))


@numba.njit(cache=True)
def getrf_reverse(cfg, tape, kind, dk, m, dm, n, dn, a, da, lda, dl, ipiv, dp):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    _getrf_rev(
        cfg.active[3], cfg.overwritten, tape, m, n, a, lda, ipiv, da, np.empty(0, np.float64)
    )
    return ()


# getri(kind, n, a, lda, ipiv): A⁻¹ from getrf's factors, in place.


@numba.njit(cache=True)
def _getri_fwd(active, n, a, lda, ipiv, sa, like):  # type: ignore[no-untyped-def]
    LU = _dense(a, n, n, lda, like)
    dLU = _dense(sa, n, n, lda, like) if active else np.empty((0, 0), like.dtype)
    info = _getri_c(_kind_char(like), n, a, lda, ipiv)
    if active:
        Inv = _dense(a, n, n, lda, like)
        dA = _from_factors(LU, _pivots(ipiv, n), dLU)
        _view(sa, n, n, lda, like)[:, :] = -(Inv @ dA @ Inv)
    return info


@numba.njit(cache=True)
def getri_forward(cfg, kind, dk, n, dn, a, da, lda, dl, ipiv, dp):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    return _getri_fwd(cfg.active[2], n, a, lda, ipiv, da, np.empty(0, np.float64))


@numba.njit(cache=True)
def _getri_aug(ow, n, a, lda, ipiv, like):  # type: ignore[no-untyped-def]
    LU = _tape(_view(a, n, n, lda, like), True)  # the call overwrites it
    info = _getri_c(_kind_char(like), n, a, lda, ipiv)
    return info, (LU, _piv_tape(ipiv, n, ow[4]), _tape(_view(a, n, n, lda, like), ow[2]))


@numba.njit(cache=True)
def getri_augmented(cfg, kind, n, a, lda, ipiv):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    return _getri_aug(cfg.overwritten, n, a, lda, ipiv, np.empty(0, np.float64))


@numba.njit(cache=True)
def _getri_rev(active, ow, tape, n, a, lda, ipiv, sa, like):  # type: ignore[no-untyped-def]
    if not active:
        return
    LU = _cast(tape[0], like)
    piv = _piv_untape(tape[1], ipiv, n, ow[4])
    Inv = _untape(tape[2], a, n, n, lda, ow[2], like)
    dF = _view(sa, n, n, lda, like)
    InvT = _contig(Inv.T)
    Abar = -(InvT @ _contig(dF) @ InvT)
    dF[:, :] = _onto_factors(LU, piv, Abar)


@numba.njit(cache=True)
def getri_reverse(cfg, tape, kind, dk, n, dn, a, da, lda, dl, ipiv, dp):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    _getri_rev(cfg.active[2], cfg.overwritten, tape, n, a, lda, ipiv, da, np.empty(0, np.float64))
    return ()


# gesv(kind, n, nrhs, a, lda, ipiv, b, ldb): factors A, overwrites B with X.


@numba.njit(cache=True)
def _gesv_fwd(act_a, act_b, n, nrhs, a, lda, ipiv, b, ldb, sa, sb, like):  # type: ignore[no-untyped-def]
    dA = _dense(sa, n, n, lda, like) if act_a else np.zeros((n, n), like.dtype)
    dB = _dense(sb, n, nrhs, ldb, like) if act_b else np.zeros((n, nrhs), like.dtype)
    info = _gesv_c(_kind_char(like), n, nrhs, a, lda, ipiv, b, ldb)
    if info != 0:
        return info
    LU = _dense(a, n, n, lda, like)
    piv = _pivots(ipiv, n)
    X = _dense(b, n, nrhs, ldb, like)
    if act_b:
        _view(sb, n, nrhs, ldb, like)[:, :] = _lu_solve(LU, piv, dB - dA @ X, False)
    if act_a:
        _view(sa, n, n, lda, like)[:, :] = _lu_tangent(LU, piv, dA)
    return info


@numba.njit(cache=True)
def gesv_forward(cfg, kind, dk, n, dn, nrhs, dr, a, da, lda, dl, ipiv, dp, b, db, ldb, dlb):  # type: ignore[no-untyped-def]
    act = cfg.active
    _float64_only(kind)
    return _gesv_fwd(act[3], act[6], n, nrhs, a, lda, ipiv, b, ldb, da, db, np.empty(0, np.float64))


@numba.njit(cache=True)
def _gesv_aug(ow, n, nrhs, a, lda, ipiv, b, ldb, like):  # type: ignore[no-untyped-def]
    info = _gesv_c(_kind_char(like), n, nrhs, a, lda, ipiv, b, ldb)
    tape = (
        _tape(_view(a, n, n, lda, like), ow[3]),
        _piv_tape(ipiv, n, ow[5]),
        _tape(_view(b, n, nrhs, ldb, like), ow[6]),
    )
    return info, tape


@numba.njit(cache=True)
def gesv_augmented(cfg, kind, n, nrhs, a, lda, ipiv, b, ldb):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    return _gesv_aug(cfg.overwritten, n, nrhs, a, lda, ipiv, b, ldb, np.empty(0, np.float64))


@numba.njit(cache=True)
def _gesv_rev(act_a, act_b, ow, tape, n, nrhs, a, lda, ipiv, b, ldb, sa, sb, like):  # type: ignore[no-untyped-def]
    LU = _untape(tape[0], a, n, n, lda, ow[3], like)
    piv = _piv_untape(tape[1], ipiv, n, ow[5])
    X = _untape(tape[2], b, n, nrhs, ldb, ow[6], like)
    Bbar = np.zeros((n, nrhs), like.dtype)
    if act_b:
        dX = _view(sb, n, nrhs, ldb, like)
        Bbar = _lu_solve(LU, piv, _contig(dX), True)
        dX[:, :] = Bbar
    if act_a:
        dF = _view(sa, n, n, lda, like)
        dF[:, :] = _lu_cotangent(LU, piv, _contig(dF)) - Bbar @ _contig(X.T)


@numba.njit(cache=True)
def gesv_reverse(cfg, tape, kind, dk, n, dn, nrhs, dr, a, da, lda, dl, ipiv, dp, b, db, ldb, dlb):  # type: ignore[no-untyped-def]
    act, ow = cfg.active, cfg.overwritten
    _float64_only(kind)
    _gesv_rev(
        act[3], act[6], ow, tape, n, nrhs, a, lda, ipiv, b, ldb, da, db, np.empty(0, np.float64)
    )
    return ()


# potrf(kind, uplo, n, a, lda): the Cholesky factor of the triangle uplo.


@numba.njit(cache=True)
def _phi(X):  # type: ignore[no-untyped-def]
    """The upper triangle of X with its diagonal halved."""
    Y = _triu(X, 0)
    for i in range(Y.shape[0]):
        Y[i, i] *= 0.5
    return Y


@numba.njit(cache=True)
def _sym_from_upper(M):  # type: ignore[no-untyped-def]
    U = _triu(M, 0)
    return U + _triu(M, 1).T


@numba.njit(cache=True)
def _u_sandwich(U, M):  # type: ignore[no-untyped-def]
    """U⁻ᵀ M U⁻¹."""
    Y = _contig(M)
    _upper_solve(U, Y, True)  # U⁻ᵀ M
    Z = _contig(Y.T)
    _upper_solve(U, Z, True)  # U⁻ᵀ (U⁻ᵀ M)ᵀ = (U⁻ᵀ M U⁻¹)ᵀ
    return _contig(Z.T)


@numba.njit(cache=True)
def _potrf_fwd(active, uplo, n, a, lda, sa, like):  # type: ignore[no-untyped-def]
    dM = _dense(sa, n, n, lda, like) if active else np.empty((0, 0), like.dtype)
    info = _potrf_c(_kind_char(like), uplo, n, a, lda)
    if active:
        dF = _view(sa, n, n, lda, like)
        if uplo != ord("U"):
            _nan_fill(dF)
            return info
        U = _triu(_dense(a, n, n, lda, like), 0)
        dU = _phi(_u_sandwich(U, _sym_from_upper(dM))) @ U
        for j in range(n):
            for i in range(j + 1):
                dF[i, j] = dU[i, j]
    return info


@numba.njit(cache=True)
def potrf_forward(cfg, kind, dk, uplo, du, n, dn, a, da, lda, dl):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    return _potrf_fwd(cfg.active[3], uplo, n, a, lda, da, np.empty(0, np.float64))


@numba.njit(cache=True)
def _potrf_aug(ow, uplo, n, a, lda, like):  # type: ignore[no-untyped-def]
    info = _potrf_c(_kind_char(like), uplo, n, a, lda)
    return info, _tape(_view(a, n, n, lda, like), ow[3])


@numba.njit(cache=True)
def potrf_augmented(cfg, kind, uplo, n, a, lda):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    return _potrf_aug(cfg.overwritten, uplo, n, a, lda, np.empty(0, np.float64))


@numba.njit(cache=True)
def _potrf_rev(active, ow, tape, uplo, n, a, lda, sa, like):  # type: ignore[no-untyped-def]
    if not active:
        return
    dF = _view(sa, n, n, lda, like)
    if uplo != ord("U"):
        _nan_fill(dF)
        return
    U = _triu(_untape(tape, a, n, n, lda, ow[3], like), 0)
    Ubar = _triu(_contig(dF), 0)
    # S̄ = U⁻¹ Φ(Ū Uᵀ) U⁻ᵀ
    Y = _phi(Ubar @ _contig(U.T))
    _upper_solve(U, Y, False)  # U⁻¹ Φ
    Z = _contig(Y.T)
    _upper_solve(U, Z, False)  # U⁻¹ Φᵀ U⁻ᵀ = (U⁻¹ Φ U⁻ᵀ)ᵀ
    G = Z.T
    for j in range(n):
        for i in range(j):
            dF[i, j] = G[i, j] + G[j, i]
        dF[j, j] = G[j, j]


@numba.njit(cache=True)
def potrf_reverse(cfg, tape, kind, dk, uplo, du, n, dn, a, da, lda, dl):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    _potrf_rev(cfg.active[3], cfg.overwritten, tape, uplo, n, a, lda, da, np.empty(0, np.float64))
    return ()


# xxxevd(kind, jobz, uplo, n, a, lda, w): eigenpairs of the symmetric matrix
# in triangle uplo; V into a when jobz = 'V'.


@numba.njit(cache=True)
def _sym_from(M, uplo):  # type: ignore[no-untyped-def]
    return _sym_from_upper(M) if uplo == ord("U") else _sym_from_upper(_contig(M.T))


@numba.njit(cache=True)
def _gaps(w):  # type: ignore[no-untyped-def]
    n = w.shape[0]
    F = np.zeros((n, n), w.dtype)
    for i in range(n):
        for j in range(n):
            if i != j:
                F[i, j] = 1.0 / (w[j] - w[i])
    return F


@numba.njit(cache=True)
def _eigenpairs(jobz, uplo, n, a, lda, w, like):  # type: ignore[no-untyped-def]
    """Runs the call; returns V and w (V computed on a copy for jobz='N')."""
    k = _kind_char(like)
    if jobz == ord("V"):
        info = _evd_c(k, jobz, uplo, n, a, lda, w)
        V = _dense(a, n, n, lda, like)
    else:
        V = np.asfortranarray(_dense(a, n, n, lda, like))
        info = _evd_c(k, jobz, uplo, n, a, lda, w)
        w2 = np.empty(n, like.dtype)
        _evd_c(k, ord("V"), uplo, n, V.ctypes, n, w2.ctypes)  # type: ignore[call-overload]
        V = _contig(V)
    return info, V, numba.carray(w, (n,), like.dtype).copy()


@numba.njit(cache=True)
def _evd_fwd(act_a, act_w, jobz, uplo, n, a, lda, w, sa, sw, like):  # type: ignore[no-untyped-def]
    dS = _sym_from(_dense(sa, n, n, lda, like), uplo) if act_a else np.zeros((n, n), like.dtype)
    info, V, ev = _eigenpairs(jobz, uplo, n, a, lda, w, like)
    C = _contig(V.T) @ dS @ V
    if act_w:
        dw = numba.carray(sw, (n,), like.dtype)
        for i in range(n):
            dw[i] = C[i, i]
    if act_a:
        dF = _view(sa, n, n, lda, like)
        if jobz == ord("V"):
            dF[:, :] = V @ (_gaps(ev) * C)
        else:
            _nan_fill(dF)
    return info


@numba.njit(cache=True)
def evd_forward(cfg, kind, dk, jobz, dj, uplo, du, n, dn, a, da, lda, dl, w, dw):  # type: ignore[no-untyped-def]
    act = cfg.active
    _float64_only(kind)
    return _evd_fwd(act[4], act[6], jobz, uplo, n, a, lda, w, da, dw, np.empty(0, np.float64))


@numba.njit(cache=True)
def _evd_aug(jobz, uplo, n, a, lda, w, like):  # type: ignore[no-untyped-def]
    info, V, ev = _eigenpairs(jobz, uplo, n, a, lda, w, like)
    return info, (_cast(V, np.empty(0, np.float64)), ev.astype(np.float64))


@numba.njit(cache=True)
def evd_augmented(cfg, kind, jobz, uplo, n, a, lda, w):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    return _evd_aug(jobz, uplo, n, a, lda, w, np.empty(0, np.float64))


@numba.njit(cache=True)
def _evd_rev(act_a, act_w, tape, jobz, uplo, n, a, lda, w, sa, sw, like):  # type: ignore[no-untyped-def]
    V = _cast(tape[0], like)
    ev = tape[1].astype(like.dtype)
    M = np.zeros((n, n), like.dtype)
    if act_w:
        wbar = numba.carray(sw, (n,), like.dtype)
        for i in range(n):
            M[i, i] = wbar[i]
            wbar[i] = 0.0
    if act_a and jobz == ord("V"):
        M += _gaps(ev) * (_contig(V.T) @ _dense(sa, n, n, lda, like))
    G = V @ M @ _contig(V.T)
    if act_a:
        dF = _view(sa, n, n, lda, like)
        for j in range(n):
            for i in range(n):
                lower = i > j if uplo == ord("L") else i < j
                dF[i, j] = G[i, j] + G[j, i] if lower else (G[i, j] if i == j else 0.0)


@numba.njit(cache=True)
def evd_reverse(cfg, tape, kind, dk, jobz, dj, uplo, du, n, dn, a, da, lda, dl, w, dw):  # type: ignore[no-untyped-def]
    act = cfg.active
    _float64_only(kind)
    _evd_rev(act[4], act[6], tape, jobz, uplo, n, a, lda, w, da, dw, np.empty(0, np.float64))
    return ()


# gelsd(kind, m, n, nrhs, a, lda, b, ldb, s, rcond, rank): X = A⁺ B into
# b (ldb = max(m, n) rows), the singular values into s, the rank into rank.


@numba.njit(cache=True)
def _pinv(A, rank):  # type: ignore[no-untyped-def]
    """A's thin SVD (U, S, Vᵀ) and its pseudo-inverse truncated to ``rank``."""
    U, S, Vt = np.linalg.svd(A, full_matrices=False)
    P = np.zeros((A.shape[1], A.shape[0]), A.dtype)
    for k in range(rank):
        P += np.outer(Vt[k, :] / S[k], U[:, k])
    return U, S, Vt, P


@numba.njit(cache=True)
def _residual_scale(C, G):  # type: ignore[no-untyped-def]
    """Per column j: (C_j · G_j) / ‖C_j‖², 0 for a zero column."""
    nrhs = C.shape[1]
    alpha = np.zeros(nrhs, C.dtype)
    for j in range(nrhs):
        norm2 = 0.0
        dot = 0.0
        for i in range(C.shape[0]):
            norm2 += C[i, j] * C[i, j]
            dot += C[i, j] * G[i, j]
        if norm2 > 0.0:
            alpha[j] = dot / norm2
    return alpha


@numba.njit(cache=True)
def _gelsd_fwd(act, m, n, nrhs, a, lda, b, ldb, s, rcond, rank, sa, sb, ss, like):  # type: ignore[no-untyped-def]
    act_a, act_b, act_s = act
    A = _dense(a, m, n, lda, like)
    B = _dense(b, m, nrhs, ldb, like)
    dA = _dense(sa, m, n, lda, like) if act_a else np.zeros((m, n), like.dtype)
    dB = _dense(sb, m, nrhs, ldb, like) if act_b else np.zeros((m, nrhs), like.dtype)
    info = _gelsd_c(_kind_char(like), m, n, nrhs, a, lda, b, ldb, s, rcond, rank)
    if info != 0:
        return info
    r = _pivots(rank, 1)[0]
    U, S, Vt, P = _pinv(A, r)
    X = _dense(b, n, nrhs, ldb, like)
    R = B - A @ X
    G = dB - dA @ X
    dAt = _contig(dA.T)
    PtX = _contig(P.T) @ X
    if act_b:
        dX = P @ G + P @ (_contig(P.T) @ (dAt @ R)) + dAt @ PtX - P @ (A @ (dAt @ PtX))
        _view(sb, n, nrhs, ldb, like)[:, :] = dX
        if m > n:
            dC = _view(sb, m, nrhs, ldb, like)[n:, :]
            if r == n:
                C = _dense(b, m, nrhs, ldb, like)[n:, :]
                # ‖C_j‖² = ‖R_j‖² moves by 2 R_jᵀ G_j: along C_j, scaled.
                beta = _residual_scale(R, G)
                for j in range(nrhs):
                    dC[:, j] = C[:, j] * beta[j]
            else:
                dC[:, :] = np.nan
    if act_s:
        ds = numba.carray(ss, (min(m, n),), like.dtype)
        for k in range(min(m, n)):
            ds[k] = U[:, k] @ (dA @ Vt[k, :])
    if act_a:
        _nan_fill(_view(sa, m, n, lda, like))  # gelsd destroys a
    return info


@numba.njit(cache=True)
def gelsd_forward(  # type: ignore[no-untyped-def]
    cfg,
    kind,
    dk,
    m,
    dm,
    n,
    dn,
    nrhs,
    dr,
    a,
    da,
    lda,
    dl,
    b,
    db,
    ldb,
    dlb,
    s,
    ds,
    rcond,
    dc,
    rank,
    dq,
):
    act = cfg.active
    _float64_only(kind)
    return _gelsd_fwd(
        (act[4], act[6], act[8]),
        m,
        n,
        nrhs,
        a,
        lda,
        b,
        ldb,
        s,
        rcond,
        rank,
        da,
        db,
        ds,
        np.empty(0, np.float64),
    )


@numba.njit(cache=True)
def _gelsd_aug(ow, m, n, nrhs, a, lda, b, ldb, s, rcond, rank, like):  # type: ignore[no-untyped-def]
    A = _tape(_view(a, m, n, lda, like), True)  # gelsd destroys a and b
    B = _tape(_view(b, m, nrhs, ldb, like), True)
    info = _gelsd_c(_kind_char(like), m, n, nrhs, a, lda, b, ldb, s, rcond, rank)
    out = _tape(_view(b, max(m, n), nrhs, ldb, like), ow[6])
    return info, (A, B, out, np.int64(_pivots(rank, 1)[0]))


@numba.njit(cache=True)
def gelsd_augmented(cfg, kind, m, n, nrhs, a, lda, b, ldb, s, rcond, rank):  # type: ignore[no-untyped-def]
    _float64_only(kind)
    return _gelsd_aug(
        cfg.overwritten, m, n, nrhs, a, lda, b, ldb, s, rcond, rank, np.empty(0, np.float64)
    )


@numba.njit(cache=True)
def _gelsd_rev(act, ow, tape, m, n, nrhs, lda, b, ldb, sa, sb, ss, like):  # type: ignore[no-untyped-def]
    act_a, act_b, act_s = act
    A = _cast(tape[0], like)
    B = _cast(tape[1], like)
    out = _untape(tape[2], b, max(m, n), nrhs, ldb, ow[6], like)
    r = tape[3]
    U, S, Vt, P = _pinv(A, r)
    X = _contig(out[:n, :])
    R = B - A @ X
    Pt = _contig(P.T)
    Abar = np.zeros((m, n), like.dtype)
    Bbar = np.zeros((m, nrhs), like.dtype)
    if act_b:
        bbar = _view(sb, max(m, n), nrhs, ldb, like)
        Xbar = _contig(bbar[:n, :])
        Bbar = Pt @ Xbar
        Xt = _contig(X.T)
        Xbart = _contig(Xbar.T)
        Abar = -(Bbar @ Xt) + R @ _contig((P @ Bbar).T) + (Pt @ X) @ (Xbart - Xbart @ P @ A)
        if m > n and r == n:
            alpha = _residual_scale(_contig(out[n:m, :]), _contig(bbar[n:m, :]))
            for j in range(nrhs):
                Bbar[:, j] += alpha[j] * R[:, j]
                Abar -= alpha[j] * np.outer(R[:, j], X[:, j])
        bbar[:, :] = 0.0
        bbar[:m, :] = Bbar
    if act_s:
        sbar = numba.carray(ss, (min(m, n),), like.dtype)
        for k in range(min(m, n)):
            Abar += sbar[k] * np.outer(U[:, k], Vt[k, :])
            sbar[k] = 0.0
    if act_a:
        _view(sa, m, n, lda, like)[:, :] = Abar


@numba.njit(cache=True)
def gelsd_reverse(  # type: ignore[no-untyped-def]
    cfg,
    tape,
    kind,
    dk,
    m,
    dm,
    n,
    dn,
    nrhs,
    dr,
    a,
    da,
    lda,
    dl,
    b,
    db,
    ldb,
    dlb,
    s,
    ds,
    rcond,
    dc,
    rank,
    dq,
):
    act = cfg.active
    _float64_only(kind)
    _gelsd_rev(
        (act[4], act[6], act[8]),
        cfg.overwritten,
        tape,
        m,
        n,
        nrhs,
        lda,
        b,
        ldb,
        da,
        db,
        ds,
        np.empty(0, np.float64),
    )
    return 0.0


RULES = {
    "numba_xxgetrf": (getrf_forward, getrf_augmented, getrf_reverse),
    "numba_ez_xxgetri": (getri_forward, getri_augmented, getri_reverse),
    "numba_xgesv": (gesv_forward, gesv_augmented, gesv_reverse),
    "numba_xxpotrf": (potrf_forward, potrf_augmented, potrf_reverse),
    "numba_ez_xxxevd": (evd_forward, evd_augmented, evd_reverse),
    "numba_ez_gelsd": (gelsd_forward, gelsd_augmented, gelsd_reverse),
}
