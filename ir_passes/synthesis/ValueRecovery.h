//===- ValueRecovery.h - forward values in the reverse sweep ----*- C++ -*-===//
//
// The reverse of a primal block needs forward values: operands of its rules,
// shadow addresses, branch decisions. This unit decides, per value and per
// reversed block, how to get each one back, and emits it at the start of the
// reversed block (its "head"):
//
//  - reuse: a value defined in a block that runs exactly once on every path
//    that returns (it dominates the normal exit, outside loops) is used as is;
//  - keep: a value defined outside loops whose block may be skipped (an
//    allocation merged with null on the way to raising, say) is stored in a
//    slot where it is defined and loaded from there: it has one value per
//    call, and every block that uses it ran after it;
//  - hoist: a value that is the same on every iteration of loops around the
//    block reversed (defined outside them, or a load of an invariant address
//    that no write in the loop may change, CachePolicy::unchangedIn) is
//    recovered once each time the reverse enters the outermost such loop,
//    at the reverse of the loop's exit block, and kept in a slot;
//  - recompute: address arithmetic, integer index arithmetic, comparisons
//    and selects, and induction variables (any ScalarEvolution recurrence of
//    counted loops, affine or quadratic, such as a running index, evaluated
//    at the reverse's iteration numbers) are rebuilt from other recovered
//    values when that pops no more tape than the value itself would; float
//    arithmetic only when it pops nothing; math functions (sin, exp, ...)
//    of recoverable operands when the forward sweep would compute them only
//    for the tape;
//  - re-read: a load of memory that CachePolicy says nothing writes before
//    the reverse runs is repeated;
//  - tape: everything else is pushed at the end of its forward block and
//    popped in the head (Tape.h), one frame per block execution.
//
// Counted loops (a preheader, one latch, two predecessors of the header) get
// an iteration counter in the forward sweep; the reverse counts it down and
// recomputes induction variables from it, and innermost loops whose trip
// count ScalarEvolution bounds reserve their tape once in the preheader.
//
// Assumes the skeleton's clone of the primal; analyses (dominators, loops,
// ScalarEvolution) run on the primal, before cloning.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SYNTHESIS_VALUERECOVERY_H
#define ENZPY_SYNTHESIS_VALUERECOVERY_H

#include "analysis/CachePolicy.h"
#include "driver/DecisionLog.h"
#include "synthesis/Skeleton.h"
#include "synthesis/Tape.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/Analysis/AssumptionCache.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/ScalarEvolution.h"
#include "llvm/Analysis/TargetLibraryInfo.h"
#include "llvm/IR/Dominators.h"
#include <memory>
#include <optional>

namespace enzpy {

/// Primal blocks that can reach the normal exit, in program order.
using BlockSet = llvm::SmallSetVector<const llvm::BasicBlock *, 32>;

class ValueRecovery {
public:
  /// A loop reversed by counting instead of by taped predecessor indices:
  /// the forward sweep counts iterations, the reverse counts down.
  struct CountedLoop {
    llvm::PHINode *Counter = nullptr; // forward: iterations before this one
    llvm::AllocaInst *Remaining = nullptr; // reverse: iteration reversed
    llvm::BasicBlock *Preheader = nullptr; // primal blocks
    llvm::BasicBlock *Latch = nullptr;
  };

  /// What the reverse of one primal block has recovered, in its head.
  struct Frame {
    const llvm::BasicBlock *PB = nullptr;
    llvm::BasicBlock *Head = nullptr;
    std::optional<Tape::Frame> Taped;
    llvm::DenseMap<llvm::Value *, llvm::Value *> Rebuilt;
    llvm::SmallVector<std::pair<const char *, llvm::Value *>, 4> Notes;
  };

  explicit ValueRecovery(DerivativeSkeleton &Sk);

  /// Before the skeleton clones the primal: an upper bound on the trip
  /// count of each innermost loop, expanded in its preheader.
  void expandTripBounds();
  /// After cloning: the tape, and the counters of counted loops.
  void createTape();
  void createLoopCounters(const BlockSet &Reaching);
  /// The recovery frame of primal block \p PB, whose reverse starts at
  /// \p Head (a block ending in a branch).
  Frame &createFrame(const llvm::BasicBlock *PB, llvm::BasicBlock *Head);
  Frame &frame(const llvm::BasicBlock *PB) { return *Frames.find(PB)->second; }

  /// The forward value \p DV (or the clone of primal \p PV) as usable in
  /// the reverse of \p R's block.
  llvm::Value *fetch(llvm::Value *DV, Frame &R);
  llvm::Value *fetchPrimal(const llvm::Value *PV, Frame &R);

  /// The reverse enters loop \p L at \p Edge, a block of the reverse of
  /// \p From (a block after the loop).
  void enterLoop(const llvm::Loop *L, llvm::BasicBlock *Edge, Frame &From);
  /// Recovers hoisted values where the reverse enters their loops; call
  /// once every block's reverse is built, before emitPushes.
  void emitHoisted();
  /// Emits every block's tape push and the loops' reservations; call once
  /// the reverse sweep is complete (the frames' sizes are then known).
  void emitPushes(const BlockSet &Reaching);
  /// Records what each block tapes, recomputes and re-reads.
  void record(DecisionLog &Log, const BlockSet &Reaching) const;

  const CountedLoop *loopOfHeader(const llvm::BasicBlock *B) const;
  const llvm::LoopInfo &loops() const { return LI; }
  const CachePolicy &cache() const { return Cache; }
  llvm::ScalarEvolution &scev() const { return SE; }
  /// Whether \p A is a slot of this unit's own (a loop's countdown, a kept
  /// or hoisted value).
  bool isRecoverySlot(const llvm::AllocaInst *A) const;
  Tape &tape() { return *TheTape; }

private:
  bool reusable(const llvm::BasicBlock *PDef) const;
  bool invariantIn(const llvm::Instruction *I, const llvm::BasicBlock *PDef,
                   const llvm::Loop &L) const;
  const llvm::Loop *invariantLoop(const llvm::Instruction *I,
                                  const llvm::BasicBlock *PDef,
                                  const Frame &R) const;
  /// Whether fetching \p I in \p R costs nothing per execution of R.PB:
  /// reused, kept or hoisted.
  bool freeIn(const llvm::Instruction *I, const Frame &R) const;
  llvm::Value *keep(llvm::Instruction *I, Frame &R);
  llvm::Value *hoist(llvm::Instruction *I, const llvm::Loop *L, Frame &R);
  llvm::Value *recompute(llvm::Instruction *I, Frame &R);
  unsigned popCost(llvm::Value *DV, Frame &R, unsigned Depth);
  /// The values one cost query has visited (popCost), and how many it may.
  llvm::SmallPtrSet<llvm::Value *, 32> CostSeen;
  static constexpr unsigned CostBudget = 64;
  /// \p S (a ScalarEvolution expression of the primal) in the reverse of
  /// R.PB, with recurrences of counted loops around it evaluated at the
  /// iteration being reversed; null when it has parts that cannot be.
  llvm::Value *expand(const llvm::SCEV *S, Frame &R);
  /// The tape \p S would pop (capped), or ~0u when it cannot be expanded.
  unsigned expandCost(const llvm::SCEV *S, Frame &R, unsigned Depth);

  DerivativeSkeleton &Sk;
  llvm::Type *I64;
  llvm::DominatorTree DT;
  llvm::LoopInfo LI;
  llvm::TargetLibraryInfoImpl TLII;
  llvm::TargetLibraryInfo TLI;
  llvm::AssumptionCache AC;
  mutable llvm::ScalarEvolution SE; // caches as it answers
  CachePolicy Cache;
  /// Primal values the forward sweep needs for itself (not only for the
  /// reverse sweep); see forwardNeeded().
  llvm::DenseSet<const llvm::Value *> NeededForward;
  std::optional<Tape> TheTape;
  llvm::DenseMap<const llvm::Loop *, CountedLoop> Loops;
  /// Innermost loops' trip-count bounds (primal values in the preheader).
  llvm::DenseMap<const llvm::Loop *, llvm::Value *> TripBound;
  llvm::DenseMap<const llvm::BasicBlock *, std::unique_ptr<Frame>> Frames;
  /// Slots of kept values, and of hoisted values per loop; hoisted values
  /// still to be stored at their loop's entries; where the reverse enters
  /// each loop.
  llvm::DenseMap<const llvm::Value *, llvm::AllocaInst *> Kept;
  llvm::DenseMap<std::pair<llvm::Instruction *, const llvm::Loop *>,
                 llvm::AllocaInst *>
      Hoisted;
  llvm::SmallVector<std::pair<llvm::Instruction *, const llvm::Loop *>, 8>
      HoistPending;
  llvm::DenseMap<const llvm::Loop *,
                 llvm::SmallVector<std::pair<llvm::BasicBlock *, Frame *>, 2>>
      LoopEntries;
};

} // namespace enzpy

#endif
