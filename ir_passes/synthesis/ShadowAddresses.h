//===- ShadowAddresses.h - which addresses have shadows ---------*- C++ -*-===//
//
// Both sweeps mirror every address into active memory onto its shadow: an
// argument's shadow argument, an alloca's shadow alloca, an allocation's
// shadow allocation (a raw buffer's shadow raw buffer), and GEPs, phis,
// selects and casts rebuilt over those shadows; a pointer spilled to the
// stack is spilled beside its shadow. A raw buffer freed by the primal has
// its shadow freed through the mirrored pointer (forward mode).
// checkShadowable() verifies, on the primal while it still has source
// locations, that every address the synthesis will need can be mirrored.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SHADOWADDRESSES_H
#define ENZPY_SHADOWADDRESSES_H

#include "analysis/ActivityAnalysis.h"
#include "transforms/Preprocess.h"
#include "llvm/Support/Error.h"

namespace llvm {
class Value;
}

namespace enzpy {

/// A pointer that points nowhere (a path where the array was never set up,
/// e.g. an allocation that failed and raised).
bool isNowhere(const llvm::Value *V);

/// A pointer loaded back from a local allocation it was spilled to.
bool isSpilledPointer(const llvm::Value *V);

/// Every address into active memory has a computable shadow.
llvm::Error checkShadowable(const CanonicalFunction &C,
                            const ActivityAnalysis &AA);

} // namespace enzpy

#endif
