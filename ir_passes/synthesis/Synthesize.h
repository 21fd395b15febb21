//===- Synthesize.h - the derivative a request asks for ---------*- C++ -*-===//
//
// The entry point of synthesis: builds the derivative skeleton (Skeleton.h)
// and hands it to the synthesizer of the request's mode. Modes are rows of a
// table in Synthesize.cpp: a new mode (split reverse mode, say) is a
// synthesizer and one row.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SYNTHESIS_SYNTHESIZE_H
#define ENZPY_SYNTHESIS_SYNTHESIZE_H

#include "analysis/ActivityAnalysis.h"
#include "analysis/TypeAnalysis.h"
#include "driver/DecisionLog.h"
#include "driver/Request.h"
#include "synthesis/Skeleton.h"
#include "transforms/Preprocess.h"
#include "llvm/Support/Error.h"

namespace enzpy {

/// Creates the derivative function in the primal's module.
llvm::Expected<llvm::Function *> synthesize(const CanonicalFunction &C,
                                            const Request &Req,
                                            const TypeAnalysis &TA,
                                            const ActivityAnalysis &AA,
                                            DecisionLog *Log);

/// The synthesizers, one per mode, each building on the skeleton; their
/// files' header comments say what they compute.
llvm::Expected<llvm::Function *> synthesizeForward(DerivativeSkeleton &Sk,
                                                   DecisionLog *Log);
llvm::Expected<llvm::Function *> synthesizeReverse(DerivativeSkeleton &Sk,
                                                   DecisionLog *Log);

} // namespace enzpy

#endif
