//===- ForwardSynthesis.h - forward-mode (tangent) derivative ---*- C++ -*-===//
//
// Builds the forward-mode derivative of native/enzpy_native.h's ABI: a copy
// of the primal in which every active value (varied and useful, see
// ActivityAnalysis) is followed by the computation of its tangent, in one
// sweep and without a tape. With a batch width W (Request::Width) each value
// carries W tangents, kept as W separate SSA values ("lanes"), so that one
// primal evaluation propagates W directions.
//
//  - SSA values: the tangent of an instruction is built right after its copy
//    from its operands' tangents; a constant or inactive operand has tangent
//    zero, and such terms are left out rather than multiplied by zero. Phis
//    get tangent phis, selects select tangents, calls with a row in the
//    DerivativeRules table get sum_i partial_i * tangent_i (the partials are
//    shared by the lanes).
//  - Memory: Duplicated parameters come with W shadow pointers, active
//    allocas get zeroed shadow allocas, and the return slot, when its
//    tangent is asked for, gets one shadow slot per lane. An address into
//    active memory is mirrored onto each shadow (the same GEPs, phis and
//    selects); a load of an active value loads its tangent from the mirrored
//    address, and a store into active memory stores the stored value's
//    tangent (zero when the value is inactive) there. In-place updates and
//    overwritten memory therefore need nothing special. A fill (memset) of
//    active memory zeroes the shadow; a copy (memcpy) copies the shadows.
//  - Arrays allocated by numba's runtime that carry tangents get a zeroed
//    shadow allocation beside them; every reference count operation on the
//    array's MemInfo is repeated on the shadow's, so the shadow lives as long
//    as the array (an operation on a MemInfo whose origin cannot be traced is
//    an "unsupported" error rather than a leak or a premature free).
//    Pointers numba spills to stack slots get their shadows (the shadow
//    address, or the shadow MemInfo) spilled to the slot's shadow.
//  - Control flow is the primal's own: branches, loops and early exits run
//    once, with the tangents beside the values.
//  - Blocks that only run on the way to raising an exception
//    (CanonicalFunction::returns) get no tangents. When the primal raises,
//    the derivative returns its status; shadows may then have been partly
//    written, as the primal's own arrays may have been.
//
// Assumes preprocess() ran (one normal exit, one raise exit), the activity
// analysis accepted the function, and checkShadowable() found every address
// into active memory mirrorable.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_FORWARDSYNTHESIS_H
#define ENZPY_FORWARDSYNTHESIS_H

#include "analysis/ActivityAnalysis.h"
#include "analysis/TypeAnalysis.h"
#include "driver/Request.h"
#include "transforms/Preprocess.h"
#include "llvm/Support/Error.h"

namespace enzpy {

/// Creates the forward-mode derivative function in the primal's module.
llvm::Expected<llvm::Function *> synthesizeForward(const CanonicalFunction &C,
                                                   const Request &Req,
                                                   const TypeAnalysis &TA,
                                                   const ActivityAnalysis &AA,
                                                   llvm::raw_ostream *Log);

} // namespace enzpy

#endif
