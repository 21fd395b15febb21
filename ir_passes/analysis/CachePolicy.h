//===- CachePolicy.h - which reads the reverse sweep may repeat -*- C++ -*-===//
//
// The reverse sweep needs some values that the forward sweep read from
// memory. A value is re-read in the reverse sweep, instead of being taped,
// when no write of the function can have changed the memory since: no store,
// memory intrinsic or call writes any root the load may read. Distinct
// parameters are taken to be disjoint only when the caller checked it at
// call time (Request::NoAlias); otherwise any write to parameter memory makes
// every parameter read taped. An array allocated in the function is re-read
// when no write to it can run after the read (CFG reachability, loops
// included); the synthesis then keeps it alive until the reverse sweep has
// passed its allocation. Loads from allocas and from raw buffers (which the
// primal frees with NRT_Free before the reverse sweep runs) are always
// taped.
// Writes on paths that end in raising an exception do not count: when they
// run, the reverse sweep does not.
//
// A load that fails that test is still re-read when, per access, no store
// that can run after it may write the element it read: LLVM's dependence
// analysis (subscripts from ScalarEvolution, loop by loop) proves that every
// store to the same array writes that element, if ever, in an earlier
// iteration of the loops they share (a history array H[t + 1, i] = f(H[t, .])
// read after row t was written), and stores to other arrays are disjoint by
// the rules above.
//
// Per access and per loop, unchangedIn() says whether no write inside a loop
// may change the memory a load reads: such a load of a loop-invariant
// address reads the same value on every iteration, so the reverse sweep
// needs it once per execution of the loop (ValueRecovery).
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_CACHEPOLICY_H
#define ENZPY_CACHEPOLICY_H

#include "analysis/TypeAnalysis.h"
#include "driver/Request.h"
#include "transforms/Preprocess.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/SmallPtrSet.h"

namespace llvm {
class AssumptionCache;
class CallBase;
class DependenceInfo;
class ScalarEvolution;
class StoreInst;
class TargetLibraryInfo;
class DominatorTree;
class Function;
class Instruction;
class LoadInst;
class Loop;
class LoopInfo;
} // namespace llvm

namespace enzpy {

class CachePolicy {
public:
  /// Per-root decisions only.
  CachePolicy(const CanonicalFunction &C, const Request &Req,
              const TypeAnalysis &TA, llvm::DominatorTree &DT,
              llvm::LoopInfo &LI);
  /// Also per access, with the dependence analysis (\p SE, \p AC and
  /// \p TLI serve it during the constructor only).
  CachePolicy(const CanonicalFunction &C, const Request &Req,
              const TypeAnalysis &TA, llvm::DominatorTree &DT,
              llvm::LoopInfo &LI, llvm::ScalarEvolution &SE,
              llvm::AssumptionCache &AC, llvm::TargetLibraryInfo &TLI);

  /// The memory L reads is never written during the call.
  bool canReread(const llvm::LoadInst *L) const {
    return Rereadable.contains(L);
  }
  /// The memory \p Ptr points into is never written during the call (or,
  /// for allocated arrays, not after \p At).
  bool canRereadMemory(const llvm::Value *Ptr,
                       const llvm::Instruction *At = nullptr) const;
  /// No write inside \p L may change the memory \p Ld reads (writes on the
  /// way to raising excepted).
  bool unchangedIn(const llvm::LoadInst *Ld, const llvm::Loop &L) const;
  /// Allocations some re-read load reads, or that a custom rule (whose
  /// reverse gets them) is passed: they must outlive the primal.
  const llvm::SmallPtrSetImpl<const llvm::CallBase *> &keptAlive() const {
    return KeptAlive;
  }

private:
  void analyze(const CanonicalFunction &C, llvm::DependenceInfo *DI);
  /// No store that may run after \p L writes the element \p L read.
  bool intactAfter(const llvm::LoadInst *L, llvm::DependenceInfo &DI) const;

  const TypeAnalysis &TA;
  bool NoAlias;
  bool AnyUnknownWrite = false;
  bool AnyParameterWritten = false;
  const llvm::DominatorTree &DT;
  const llvm::LoopInfo &LI;
  llvm::ScalarEvolution *SE = nullptr; // during the constructor only
  llvm::DenseSet<const llvm::Value *> Written;
  llvm::DenseMap<const llvm::Value *,
                 llvm::SmallVector<const llvm::Instruction *, 4>>
      AllocationWriters;
  /// Every write on a returning path, with the pointer it writes through
  /// (null: unknown memory).
  llvm::SmallVector<std::pair<const llvm::Instruction *, const llvm::Value *>,
                    16>
      Writes;
  llvm::SmallPtrSet<const llvm::CallBase *, 4> KeptAlive;
  llvm::DenseSet<const llvm::LoadInst *> Rereadable;
};

} // namespace enzpy

#endif
