//===- ParallelForward.h - forward mode of prange loops on threads -*- C++ -*-//
//
// Forward mode (tangents beside values, no tape) of a prange loop runs in
// chunks of iterations on numba's threads, as the loop itself does in the
// parallel primal. The planning is ChunkPlanner's (ParallelLoops.h) without
// the reverse's rule for reads: the primal's iterations are proven to write
// apart and to read nothing another writes, and a tangent is read and
// written where its value is, in the shadow.
//
// Outlining (on the complete forward derivative): a block on the loop's
// entry edge starts a chunk [c0, c1): the index-like header phis (affine
// recurrences) start at their start plus c0 steps, sums (s += t, and their
// tangents) start at zero, and a counter from c0 ends the loop at c1. That
// block and the loop are extracted (CodeExtractor) into a function of the
// chunk; a wrapper runs chunks through numba_parallel_for (two per thread,
// the first paired with the last on each thread), keeps each chunk's sums,
// and the caller adds them to the sums' start values in chunk order. With
// one thread, or when a run-time check fails, the same function runs the
// whole loop [0, trip). A way out that raises in some chunk is taken after
// the threads finish (the first such chunk's), as the parallel primal
// raises.
//
// Assumes the forward synthesizer keeps the primal's blocks (its clone with
// tangents inserted), and that numba's threading layer is started by the
// loader (_link.py) when the derivative calls it.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SYNTHESIS_PARALLELFORWARD_H
#define ENZPY_SYNTHESIS_PARALLELFORWARD_H

#include "synthesis/ParallelLoops.h"
#include "llvm/Analysis/AssumptionCache.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/ScalarEvolution.h"
#include "llvm/Analysis/TargetLibraryInfo.h"
#include "llvm/IR/Dominators.h"

namespace enzpy {

/// The analyses of the primal that the planning needs (constructed before
/// the planner that refers to them).
struct PrimalLoops {
  explicit PrimalLoops(llvm::Function &P);
  llvm::DominatorTree DT;
  llvm::LoopInfo LI;
  llvm::TargetLibraryInfoImpl TLII;
  llvm::TargetLibraryInfo TLI;
  llvm::AssumptionCache AC;
  llvm::ScalarEvolution SE;
};

class ParallelForward : private PrimalLoops, public ChunkPlanner {
public:
  explicit ParallelForward(DerivativeSkeleton &Sk);
  /// Plans the marked loops; call before the skeleton clones the primal.
  void plan() { planAll(/*Reverse=*/false); }
  /// Outlines the planned loops; call on the complete derivative.
  void outline();

private:
  std::string outlineOne(const Plan &Pl);
};

} // namespace enzpy

#endif
