//===- BlasRules.h - derivatives of numba's BLAS calls ----------*- C++ -*-===//
//
// numba lowers np.dot / @ on arrays to calls into its helper library:
// numba_xxdot (vector . vector), numba_xxgemv (matrix . vector) and
// numba_xxgemm (matrix . matrix), with Fortran (column-major) BLAS
// conventions, and np.linalg.norm (2-norm of a vector, Frobenius norm of a
// matrix) to numba_xxnrm2. This file recognizes those calls (real kinds 's' and
// 'd'), says which of their arguments they read and write, and emits their
// derivative as a linear map on the arrays' shadows, once: its tangent (the
// same call on the shadows), and its transpose (the adjoints of the inputs
// are accumulated with BLAS calls again, gemv/gemm with the transposes of the
// forward call, and the output's adjoint is scaled by beta; numba passes
// beta = 0: the output is consumed). The norm r = ||x|| is not linear: its
// tangent is <x, dx> / r and its transpose dx += dr x / r, both 0 at x = 0
// (docs/design.md §8.4).
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_BLASRULES_H
#define ENZPY_BLASRULES_H

#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/IR/IRBuilder.h"
#include <optional>

namespace enzpy {

struct BlasCall {
  enum Op { Dot, Gemv, Gemm, Nrm2 } Kind;
  const llvm::CallBase *Call;
  llvm::Type *Elem; // float or double

  /// Argument positions of the arrays read and of the array written.
  llvm::SmallVector<unsigned, 2> inputs() const;
  unsigned output() const;
  /// Argument positions of alpha and beta (pointers to scalars), if any.
  std::optional<unsigned> alpha() const;
  std::optional<unsigned> beta() const;
  /// Whether the transpose reads the primal contents of input \p I, given
  /// which array arguments are active: a product's (bilinear) where another
  /// input is active, a norm's where its own input is.
  bool reverseReadsInput(unsigned I,
                         llvm::function_ref<bool(unsigned)> IsActive) const;
};

/// The BLAS call \p CB makes, if it is one of numba's real BLAS helpers.
std::optional<BlasCall> matchBlasCall(const llvm::CallBase &CB);

/// What the reverse of a BLAS call is given, all usable in the reverse sweep.
struct BlasReverseInputs {
  /// The forward call's argument \p I (integers and flags).
  llvm::function_ref<llvm::Value *(unsigned)> Arg;
  /// The primal contents of input array argument \p I (its pointer, or a
  /// copy saved in the forward sweep).
  llvm::function_ref<llvm::Value *(unsigned)> Input;
  /// The shadow of array argument \p I, or null when it is not active.
  llvm::function_ref<llvm::Value *(unsigned)> Shadow;
  llvm::Value *Alpha; // the scalar values (1 and 0 when the call has none)
  llvm::Value *Beta;
};

/// The transpose: accumulates the output shadow's contribution into the
/// input shadows and leaves beta * dout in the output's shadow.
void emitBlasReverse(llvm::IRBuilder<> &B, const BlasCall &Call,
                     BlasReverseInputs &In);

/// What the tangent of a BLAS call is built from, in the forward sweep.
struct BlasTangentInputs {
  /// The call's argument \p I, as the derivative computes it.
  llvm::function_ref<llvm::Value *(unsigned)> Arg;
  /// The shadow of array argument \p I in this lane, or null when inactive.
  llvm::function_ref<llvm::Value *(unsigned)> Shadow;
};

/// The tangent of one lane, written into the output's shadow. The products
/// are bilinear: the tangent of out = alpha op(A) op(B) + beta out is
/// alpha (op(dA) op(B) + op(A) op(dB)) + beta dout, the same call on the
/// shadows once per active input; a dot product's is a sum of two dots.
void emitBlasTangent(llvm::IRBuilder<> &B, const BlasCall &Call,
                     BlasTangentInputs &In);

/// The number of bytes of input array argument \p I that the call reads,
/// computed from the call's arguments as \p Arg gives them.
llvm::Value *
emitBlasInputBytes(llvm::IRBuilder<> &B, const BlasCall &Call, unsigned I,
                   llvm::function_ref<llvm::Value *(unsigned)> Arg);

} // namespace enzpy

#endif
