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
//    memory with derivatives (the reverse adds into their shadows) either
//    move by one step (chunks run in two waves, even then odd, and each pair
//    of reads reaches less than a chunk or touches apart memory) or, for an
//    array several chunks read (a triangular loop), add into a zeroed copy
//    of the shadow's read bytes per chunk, summed into the shadow in chunk
//    order afterwards.
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
//    chunk, on the calling thread, when the checks fail or the loop's
//    measured serial cost is below a launch's worth (splitLoop).
//
// Forward mode runs such loops in chunks too (ParallelForward.h, the same
// planning without the rule for reads). Not built: the forward sweep of
// reverse mode in parallel (per-chunk tapes). Loops the planning refuses
// stay serial, with the reason in the log.
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

/// Decides which marked loops may run in chunks of iterations on numba's
/// threads, in either mode: the race-freedom proof on the primal, with its
/// run-time checks expanded in the primal's preheaders (cloned into the
/// derivative with the rest). Shared by ParallelReverse and
/// ParallelForward.
class ChunkPlanner {
public:
  /// What was decided, per marked loop.
  void record(DecisionLog &Log) const;

protected:
  ChunkPlanner(DerivativeSkeleton &Sk, llvm::ScalarEvolution &SE,
               const llvm::LoopInfo &LI)
      : Sk(Sk), SE(SE), LI(LI) {}

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
    /// Arrays whose shadow each chunk adds into a zeroed copy of its own
    /// (reads that other chunks share): the primal bytes [Lo, Lo + Bytes)
    /// the loop reads (in the preheader), and per lane the slot of what the
    /// reverse adds to those shadow addresses (0 outside chunks).
    struct ShadowCopy {
      const llvm::Argument *Obj;
      llvm::Type *Elt;
      llvm::Value *Lo, *Bytes;
      llvm::SmallVector<llvm::AllocaInst *, 2> Offset;
    };
    llvm::SmallVector<ShadowCopy, 2> Copies;
    /// Whether reads with derivatives add into the shadow in place (the
    /// chunks then run in two waves).
    bool InPlaceReads = false;
    /// The loop's measured cost (splitLoop).
    llvm::GlobalVariable *Cost = nullptr;
    /// The table's fields before the chunks' tops (see instrumentForward).
    unsigned head() const { return 4 + 2 * Copies.size(); }
    std::string Outcome;
  };
  /// Plans every marked loop (\p Reverse: reads with derivatives add into
  /// their shadows, see eligible()). Call before the skeleton clones the
  /// primal.
  void planAll(bool Reverse);
  /// Why \p L cannot run in chunks, or "" (and \p Pl filled in, its values
  /// computed in the primal's preheader).
  std::string eligible(const llvm::Loop &L, Plan &Pl, bool Reverse);

  DerivativeSkeleton &Sk;
  llvm::ScalarEvolution &SE;
  const llvm::LoopInfo &LI;
  llvm::SmallVector<Plan, 2> Plans;
  /// Marked loops not planned, and why.
  llvm::SmallVector<std::pair<const llvm::BasicBlock *, std::string>, 2>
      Refused;
  llvm::DenseMap<const llvm::BasicBlock *, unsigned> PlanOfBlock;
};

/// Where \p L goes when its iterations end normally (its latch's only way
/// out that reaches a return), or null.
llvm::BasicBlock *normalExit(const llvm::Loop &L,
                             const CanonicalFunction &Canon);

/// Why \p Phi, a header phi of \p L, is not a sum: one that each iteration
/// only adds to (s += t, s -= t, on any of the paths through the iteration)
/// and that nothing else in the loop reads; "" when it is, its members then
/// added to \p Members.
std::string notASum(const llvm::Loop &L, const llvm::PHINode &Phi,
                    llvm::SmallPtrSetImpl<const llvm::Value *> &Members);

/// How a loop of \p Trip iterations runs: K chunks of Chunk iterations (no
/// chunk empty). Two chunks per thread of numba.get_num_threads() when \p
/// Safe holds, there is more than one thread and the loop is worth a
/// launch: its serial cost, estimated from the cycles per iteration its
/// last serial run took (\p Cost, a global created on first use), reaches
/// the floor the loader defines (enzpy_parallel_min_cycles; 0 always
/// launches). Else one chunk.
struct ChunkSplit {
  llvm::Value *K, *Chunk;
};
ChunkSplit splitLoop(llvm::IRBuilder<> &B, llvm::Value *Safe, llvm::Value *Trip,
                     llvm::GlobalVariable *&Cost);
/// The cycle counter now (the start of a measured run).
llvm::Value *startClock(llvm::IRBuilder<> &B);
/// After a run of the loop in \p K chunks begun at \p Start: a serial run
/// (\p K is 1) records its cycles per iteration in \p Cost.
void recordCost(llvm::IRBuilder<> &B, llvm::GlobalVariable *Cost,
                llvm::Value *Start, llvm::Value *Trip, llvm::Value *K);
/// Cycles per iteration are kept in fixed point, this many bits of fraction.
constexpr unsigned CostShift = 8;

/// Gives the chunk function \p F, outlined from \p D (called once), \p D's
/// target attributes and the noalias of the arrays it is passed; its call.
llvm::CallInst *adoptChunk(llvm::Function &D, llvm::Function &F);

/// The function numba's threading layer calls (its gufunc signature) for
/// rows of a schedule of chunk numbers: \p Chunk emits the work of chunk
/// \p K (its stack slots through the entry block's builder, \p Ctx the
/// context the launch passes). Carries \p D's target attributes.
llvm::Function *emitChunkWrapper(
    llvm::Function &D, const llvm::Twine &Name,
    llvm::function_ref<void(llvm::IRBuilder<> &Entry, llvm::IRBuilder<> &B,
                            llvm::Value *Ctx, llvm::Value *K)>
        Chunk);

/// Emits `for (i = 0; i < N; ++i) Body(i)` where \p B is, before \p Before
/// (a terminator that follows the loop); \p B is left at \p Before.
void emitLoop(
    llvm::IRBuilder<> &B, llvm::Instruction *Before, llvm::Value *N,
    llvm::function_ref<void(llvm::IRBuilder<> &, llvm::Value *)> Body);
/// Fills \p Sched[0, K) with chunk numbers. numba gives each thread
/// consecutive rows: \p Waves puts even chunks before odd ones (two
/// launches, chunks that run together a chunk apart); else the first chunk
/// is paired with the last (a triangular loop's threads get equal work).
void emitSchedule(llvm::IRBuilder<> &B, llvm::Instruction *Before,
                  llvm::Value *Sched, llvm::Value *K, bool Waves);

/// Runs chunks \p Sched[First .. First + Count) (i64 chunk numbers) through
/// numba_parallel_for, each by a call \p W(row, context) (see
/// emitChunkWrapper; \p Ctx is the context), on numba.get_num_threads()
/// threads; its stack slots go to \p Entry.
void emitChunkLaunch(llvm::IRBuilder<> &B, llvm::BasicBlock &Entry,
                     llvm::Function *W, llvm::Value *Ctx, llvm::Value *Sched,
                     llvm::Value *First, llvm::Value *Count);

class ParallelReverse : public ChunkPlanner {
public:
  ParallelReverse(DerivativeSkeleton &Sk, ValueRecovery &VR, AdjointStore &Adj)
      : ChunkPlanner(Sk, VR.scev(), VR.loops()), VR(VR), Adj(Adj) {}

  /// Decides which marked loops run their reverse in parallel and expands
  /// their trip counts and run-time checks in the primal's preheaders.
  /// Call before the skeleton clones the primal.
  void plan() { planAll(/*Reverse=*/true); }
  /// What the reverse of primal load \p PrimalLoad adds to its shadow
  /// address in lane \p K (a chunk's copy of the shadow), or null.
  llvm::Value *copyOffset(llvm::IRBuilder<> &B,
                          const llvm::LoadInst &PrimalLoad, unsigned K,
                          unsigned Width);
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

private:
  llvm::AllocaInst *sumSlot(Plan &Pl, const llvm::PHINode *Phi, unsigned K,
                            unsigned Width);
  void outlineOne(Plan &Pl);

  ValueRecovery &VR;
  AdjointStore &Adj;
};

} // namespace enzpy

#endif
