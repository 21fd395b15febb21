//===- ReverseSynthesis.h - combined reverse-mode derivative ----*- C++ -*-===//
//
// Builds the derivative function of native/enzpy_native.h's ABI in combined
// mode: the primal's blocks run first (the augmented forward sweep) and push
// onto the tape what their reverse will need; the normal exit then enters
// the reverse sweep, which visits the blocks that ran in reverse order (the
// tape says which predecessor each merge block was entered from), turns
// every active instruction into adjoint updates, and finally writes the
// adjoints of Active parameters into the result. Adjoints of SSA values live
// in accumulators (allocas that later optimization promotes); the shadow of
// an address is computed beside the primal address in the forward sweep.
//
// Shadow memory follows DESIGN.md's semantics: a load from active memory
// adds its adjoint into the shadow; a store reads the shadow into the stored
// value's adjoint and zeroes it (the overwritten contents had no influence).
// Values read from memory are taped when they are read, so memory that is
// overwritten later is handled correctly.
//
// Batch mode (Request::Width W > 1): every adjoint accumulator, shadow
// address and shadow allocation comes in W lanes (W shadow arguments per
// duplicated parameter, W seeds of the return, W adjoints per Active
// parameter); each rule fetches its forward values once and applies its
// partial to every lane. The forward sweep and the tape are shared: W
// cotangents cost one primal evaluation. Width 1 is the plain case.
//
// Assumes preprocess() ran (one normal exit, one raise exit) and that the
// activity analysis accepted the function.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_REVERSESYNTHESIS_H
#define ENZPY_REVERSESYNTHESIS_H

#include "analysis/ActivityAnalysis.h"
#include "analysis/TypeAnalysis.h"
#include "driver/Request.h"
#include "transforms/Preprocess.h"
#include "llvm/Support/Error.h"

namespace enzpy {

/// Creates the derivative function in the primal's module.
llvm::Expected<llvm::Function *> synthesizeReverse(const CanonicalFunction &C,
                                                   const Request &Req,
                                                   const TypeAnalysis &TA,
                                                   const ActivityAnalysis &AA,
                                                   llvm::raw_ostream *Log);

} // namespace enzpy

#endif
