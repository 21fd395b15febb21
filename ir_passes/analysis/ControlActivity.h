//===- ControlActivity.h - active inputs that act only through control ---===//
//
// Comparisons of varied floats and conversions of varied floats to integers
// carry no derivative: the derivative follows the branch taken, the number
// of iterations run, the element indexed. That is the usual convention of
// AD and right almost everywhere for piecewise-differentiable code (relu,
// max, sorting, table interpolation), but a solver (Newton, bisection, a
// `while abs(f(x)) > tol` loop) or a result that depends on the active
// inputs only through such control gets a derivative that is not what its
// author means. This analysis finds those cases (docs/design.md §7.4):
//
//  * loop-exit: a loop whose exit condition depends on the active inputs
//    (through data, or through values that themselves depend on them through
//    control) and that carries a float from one iteration to the next which
//    is used after the loop: a solver-like iteration. Its derivative is that
//    of the iterations performed, not of the solution.
//  * control-only: an output (the seeded return value, or a Duplicated
//    array the function writes and never reads) into which no varied value
//    is stored, but a value that depends on active inputs through control
//    is, or a store runs under control that does. Its derivative is 0.
//  * piecewise (log only, never an error): every other comparison of varied
//    floats, and conversion of one to an integer, that decides something.
//
// "Depends through control" (tainted) is a forward closure from the
// comparisons and conversions of varied floats: through every instruction's
// operands, through phis whose incoming edge is chosen by a tainted branch
// (control dependence from the post-dominator tree), through memory stored
// with tainted values or under tainted branches, and through loads at
// tainted addresses. Branches into code that only raises are not control:
// they have no derivative to miss, and post-dominance ignores them. Code
// that only raises is found along edges threaded through status tests: a
// library helper's raise path returns a nonzero status that its caller (or
// the caller's caller, forwarding it) tests; LazyValueInfo decides each
// test on each incoming edge, whether the helper arrived optimized (the
// status a constant on the edge) or not (the status forwarded through
// phis, known only from the branches that led to the edge).
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_CONTROLACTIVITY_H
#define ENZPY_CONTROLACTIVITY_H

#include "analysis/ActivityAnalysis.h"
#include "driver/DecisionLog.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/Support/Error.h"
#include <string>
#include <vector>

namespace llvm {
class BasicBlock;
class Instruction;
class PostDominatorTree;
} // namespace llvm

namespace enzpy {

class ControlActivity {
public:
  struct Finding {
    /// "loop-exit", "control-only" or "piecewise" (log only).
    std::string Kind;
    /// The condition (or conversion) the finding is about; its line is the
    /// one reported.
    const llvm::Instruction *At;
    std::string Message;
  };

  ControlActivity(const CanonicalFunction &C, const Request &Req,
                  const ActivityAnalysis &AA)
      : C(C), F(*C.F), Req(Req), AA(AA) {}

  void run();
  const std::vector<Finding> &findings() const { return Findings; }
  /// The first loop-exit or control-only finding as a "piecewise" error
  /// naming its line, or success when there is none.
  llvm::Error strictError() const;
  void record(DecisionLog &Log) const;

private:
  /// Code that returns normally (computed in run()).
  bool returns(const llvm::BasicBlock *BB) const {
    return Returning.contains(BB);
  }
  const llvm::Value *conditionOf(const llvm::BasicBlock &BB) const;
  const llvm::BasicBlock *threaded(const llvm::BasicBlock &P,
                                   const llvm::BasicBlock &M) const {
    return Threads.lookup({&P, &M});
  }
  void threadEdges();
  bool decides(const llvm::BasicBlock &BB) const;
  bool propagate(const llvm::PostDominatorTree &PDT);
  void markControlled(const llvm::BasicBlock &A, const llvm::Instruction *Why,
                      const llvm::PostDominatorTree &PDT, bool &Changed);
  const llvm::Instruction *taintOf(const llvm::Value *V) const;
  void findLoopExits();
  void findControlOnlyOutputs();
  void findPiecewise();

  const CanonicalFunction &C;
  llvm::Function &F;
  const Request &Req;
  const ActivityAnalysis &AA;
  /// Tainted value -> the comparison or conversion of varied floats it
  /// depends on (one of them).
  llvm::DenseMap<const llvm::Value *, const llvm::Instruction *> Taint;
  /// Blocks that run or not depending on a tainted branch -> its origin.
  llvm::DenseMap<const llvm::BasicBlock *, const llvm::Instruction *>
      Controlled;
  /// Memory roots written with tainted values or under tainted control.
  llvm::DenseMap<const llvm::Value *, const llvm::Instruction *> Memory;
  std::vector<Finding> Findings;
  /// Where each edge P -> M of the CFG leads (see threadEdges()).
  llvm::DenseMap<std::pair<const llvm::BasicBlock *, const llvm::BasicBlock *>,
                 const llvm::BasicBlock *>
      Threads;
  /// The blocks between M and the block an edge P -> M is threaded to.
  llvm::DenseMap<std::pair<const llvm::BasicBlock *, const llvm::BasicBlock *>,
                 llvm::SmallVector<const llvm::BasicBlock *, 4>>
      Via;
  llvm::SmallPtrSet<const llvm::BasicBlock *, 32> Returning;
  /// The returning blocks each returning block leads to (edges threaded
  /// through status tests, see threaded()).
  llvm::DenseMap<const llvm::BasicBlock *,
                 llvm::SmallVector<const llvm::BasicBlock *, 2>>
      Successors;
  /// Blocks a threaded edge between returning blocks runs through.
  llvm::SmallPtrSet<const llvm::BasicBlock *, 8> PassedThrough;
  /// While propagating: the returning blocks and their copies in the
  /// skeleton CFG whose post-dominator tree gives control dependence.
  llvm::DenseMap<const llvm::BasicBlock *, llvm::BasicBlock *> Skeleton;
  llvm::DenseMap<const llvm::BasicBlock *, const llvm::BasicBlock *> Original;
};

} // namespace enzpy

#endif
