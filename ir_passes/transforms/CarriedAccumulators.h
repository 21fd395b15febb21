//===- CarriedAccumulators.h - neighbour accumulations in registers -*- C++
//-*-===//
//
// The reverse sweep of a stencil (u[i-1], u[i], u[i+1] read in iteration i)
// adds into neighbouring shadow elements from one iteration:
//
//   du[i+1] += a*g;  du[i] += b*g;  du[i-1] += a*g
//
// Element e then gets its additions from three consecutive iterations, and
// each iteration loads and stores what the previous one stored: a
// loop-carried dependence through memory at distance 1 that keeps the loop
// scalar and stalls on store forwarding. This pass keeps the element's
// partial sum in a register from the iteration that first adds into it to
// the one that adds last, which alone stores it: one load and one store per
// iteration, and a fixed-order recurrence of registers that the loop
// vectorizer handles.
//
// Applies to innermost single-block loops holding groups (each rewritten,
// under one version check: one per shadow array and batch lane) of
// load/fadd (or fsub)/store updates of one type whose addresses are affine in
// the loop with the element size as step and whose offsets, in iterations, are
// consecutive and distinct. Every other memory access of the loop must be
// proven apart from the elements the group touches (alias analysis, or
// ScalarEvolution ranges over the loop's trip count); calls that touch
// memory keep the loop as it is. Each element gets the same additions in
// the same order as before, so results are bit for bit unchanged.
//
// Runs inside PostOpt's O3 pipeline just before the loop vectorizer.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_CARRIEDACCUMULATORS_H
#define ENZPY_CARRIEDACCUMULATORS_H

#include "llvm/IR/PassManager.h"

namespace enzpy {

struct CarriedAccumulatorsPass : llvm::PassInfoMixin<CarriedAccumulatorsPass> {
  llvm::PreservedAnalyses run(llvm::Function &F,
                              llvm::FunctionAnalysisManager &FAM);
};

} // namespace enzpy

#endif
