//===- ParallelLoops.h - reverse sweeps of prange loops on threads -*- C++ -*-//
//
// numba outlines a numba.prange loop into a function its threading layer
// runs; enzpy differentiates the serial compile, where the loop is ordinary
// (docs/design.md §2.1). This unit runs the reverse of such a loop on
// numba's threads again:
//
//  - Marking (before debug information is stripped): the loops whose latch
//    branch carries the line of a prange loop (Request::ParallelLoops; a
//    frame it was inlined from counts), the outermost of a nest.
//  - Planning (on the primal, before it is cloned): a marked loop runs its
//    reverse in parallel when it is counted (ways out that raise do not
//    count: the reverse runs only after a normal end), calls nothing but
//    pure math and numba's reference counting, allocates nothing, and
//    carries no value with a derivative from one iteration to the next but
//    sums (s += t; their adjoint is the same in every iteration); and when
//    no memory one iteration writes is touched by another. That is proven
//    per store with ScalarEvolution: the bytes a store may write in one
//    iteration (over the loops inside) move by at least their width from
//    one iteration to the next, and every other access of the loop stays
//    inside the store's window of its own iteration or, checked at run time
//    in the preheader, away from everything the store writes. Reads of
//    memory with derivatives (the reverse adds into their shadows) move by
//    one step; chunks run in two waves (even, then odd), and each pair of
//    reads reaches less than a chunk or touches apart memory.
//  - The forward sweep stays serial; it records where on the tape each
//    chunk of iterations starts (a table per execution of the loop, on a
//    list per loop that the reverse pops; ways out that skip the reverse
//    free them).
//  - Outlining (once the derivative is complete): the reverse loop is
//    extracted (CodeExtractor) into a function of a chunk [c0, c1), and a
//    wrapper runs chunks through numba_parallel_for with thread-private
//    copies of the state the reverse keeps in stack slots: the tape's top
//    (the chunk's end, from the table), the loop's countdown, adjoint
//    accumulators (those of values defined before the loop start at zero
//    and are added up per chunk, in chunk order, after the threads finish;
//    those of the sums' last values start at the sum's adjoint), and the
//    recovery slots of loops inside. Two chunks per thread
//    (numba.get_num_threads() when the forward sweep ran the loop); one
//    chunk, on the calling thread, when the checks fail.
//
// Not built (the loop stays serial, with the reason in the log): the
// forward sweep in parallel (per-chunk tapes), and atomic or thread-private
// accumulation for reads that other chunks share (a triangular loop that
// reads the rows after its own).
//
// Assumes the reverse synthesizer's block structure (ReverseSynthesis.cpp):
// a counted loop's reverse counts down a Remaining slot and leaves through
// the comparison of the count with zero at the reverse of its header.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SYNTHESIS_PARALLELLOOPS_H
#define ENZPY_SYNTHESIS_PARALLELLOOPS_H

#include "driver/DecisionLog.h"
#include "driver/Request.h"
#include "synthesis/Adjoints.h"
#include "synthesis/Skeleton.h"
#include "synthesis/ValueRecovery.h"
#include "transforms/Preprocess.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/IR/Instructions.h"

namespace enzpy {

/// Marks C's prange loops (CanonicalFunction::ParallelLoops).
void markParallelLoops(CanonicalFunction &C, const Request &Req);

class ParallelReverse {
public:
  ParallelReverse(DerivativeSkeleton &Sk, ValueRecovery &VR, AdjointStore &Adj)
      : Sk(Sk), VR(VR), Adj(Adj) {}

  /// Decides which marked loops run their reverse in parallel and expands
  /// their trip counts and run-time checks in the primal's preheaders.
  /// Call before the skeleton clones the primal.
  void plan();
  /// The comparison that ends the reverse of planned loop header \p PH.
  void noteExit(const llvm::BasicBlock *PH, llvm::ICmpInst *Cmp);
  /// The forward sweep's chunk tables; call before the skeleton's null
  /// checks are emitted.
  void instrumentForward();
  /// Entering planned loop \p L backwards: keeps the adjoint each of its
  /// sums (s += t) hands to its start value (that of the sum's last value
  /// now, the same in every iteration).
  void enterLoop(llvm::IRBuilder<> &B, const llvm::Loop *L, unsigned Width);
  /// The adjoint sum \p Phi hands to its start value in lane \p K, or null
  /// when \p Phi is no sum of a planned loop.
  llvm::Value *sumStart(llvm::IRBuilder<> &B, const llvm::PHINode *Phi,
                        unsigned K, unsigned Width);
  /// Frees the chunk tables still listed before \p Before: on a way out
  /// that skips the reverse sweep (an exception, a failed allocation), and
  /// at the end (those of loops whose reverse stayed serial).
  void freeTables(llvm::Instruction *Before);
  /// Outlines the planned reverse loops; call on the complete derivative.
  void outline();
  /// What was decided, per marked loop.
  void record(DecisionLog &Log) const;

private:
  struct Plan {
    const llvm::Loop *L = nullptr;
    llvm::Value *Trip = nullptr; // primal, in the preheader
    llvm::Value *Safe = nullptr; // primal i1, in the preheader
    /// Per pair of reads: reach, step, apart (primal, in the preheader).
    llvm::SmallVector<llvm::Value *, 6> Reads;
    llvm::ICmpInst *Exit = nullptr;
    llvm::AllocaInst *Index = nullptr, *Next = nullptr; // forward state
    /// Head of the loop's list of chunk tables (forward pushes, reverse
    /// pops).
    llvm::AllocaInst *Tables = nullptr;
    /// Header phis that are sums, and the slots (per lane) of the adjoint
    /// they hand to their start values.
    llvm::SmallVector<const llvm::PHINode *, 2> Sums;
    llvm::SmallVector<llvm::AllocaInst *, 2> SumStarts;
    std::string Outcome;
  };
  std::string eligible(const llvm::Loop &L,
                       llvm::SmallVectorImpl<llvm::Value *> &Conds,
                       llvm::SmallVectorImpl<const llvm::PHINode *> &Sums);
  llvm::AllocaInst *sumSlot(Plan &Pl, const llvm::PHINode *Phi, unsigned K,
                            unsigned Width);
  void outlineOne(Plan &Pl);

  DerivativeSkeleton &Sk;
  ValueRecovery &VR;
  AdjointStore &Adj;
  llvm::SmallVector<Plan, 2> Plans;
  /// Marked loops not planned, and why.
  llvm::SmallVector<std::pair<const llvm::BasicBlock *, std::string>, 2>
      Refused;
  llvm::DenseMap<const llvm::BasicBlock *, unsigned> PlanOfBlock;
};

} // namespace enzpy

#endif
