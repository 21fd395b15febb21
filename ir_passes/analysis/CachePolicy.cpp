//===- CachePolicy.cpp - which reads the reverse sweep may repeat ---------===//
#include "analysis/CachePolicy.h"
#include "analysis/ActivityAnalysis.h"
#include "numba/NumbaABI.h"
#include "rules/BlasRules.h"
#include "rules/DerivativeRules.h"
#include "llvm/Analysis/CFG.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/Function.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/IntrinsicInst.h"

using namespace llvm;

namespace enzpy {

static bool isParameterRoot(const Value *R) {
  if (R == UnknownRoot)
    return false;
  auto *A = dyn_cast<Argument>(R);
  return A && numba::isUserParam(*A);
}

CachePolicy::CachePolicy(const CanonicalFunction &C, const Request &Req,
                         const TypeAnalysis &TA, const DominatorTree &DT,
                         const LoopInfo &LI)
    : TA(TA), NoAlias(Req.NoAlias), DT(DT), LI(LI) {
  Function &F = *C.F;
  const Instruction *Writer = nullptr;
  auto writes = [&](const Value *Ptr) {
    Writes.push_back({Writer, Ptr});
    for (const Value *R : TA.roots(Ptr)) {
      Written.insert(R);
      if (TA.allocationOf(R))
        AllocationWriters[R].push_back(Writer);
    }
  };
  for (Instruction &I : instructions(F)) {
    Writer = &I;
    if (!C.returns(I.getParent()))
      continue; // on the way to raising: the reverse sweep never runs
    if (auto *S = dyn_cast<StoreInst>(&I)) {
      writes(S->getPointerOperand());
    } else if (auto *MI = dyn_cast<AnyMemIntrinsic>(&I)) {
      writes(MI->getRawDest());
    } else if (auto *CB = dyn_cast<CallBase>(&I)) {
      // Math functions with a derivative rule write nothing we read (errno
      // at most).
      if (CB->onlyReadsMemory() || findCallRule(CB->getCalledFunction()))
        continue;
      // Other intrinsics (scope and lifetime markers, assumptions) write no
      // array memory; the memory ones were handled above.
      if (isa<IntrinsicInst>(CB))
        continue;
      // A recursive call that reverse mode differentiates writes its return
      // slot only (driver/RecursiveCalls.h checks the callee).
      if (C.CallDerivatives.count(CB)) {
        writes(CB->getArgOperand(numba::RetPtrParam));
        continue;
      }
      // BLAS calls write their output array only.
      if (std::optional<BlasCall> Blas = matchBlasCall(*CB)) {
        writes(CB->getArgOperand(Blas->output()));
        continue;
      }
      const Function *Callee = CB->getCalledFunction();
      // Reference counting touches only the meminfo, never array data.
      if (Callee && numba::isInactiveRuntimeCall(Callee->getName()))
        continue;
      Written.insert(UnknownRoot);
      Writes.push_back({&I, nullptr});
      for (const Value *A : CB->args())
        if (A->getType()->isPointerTy())
          writes(A);
    } else if (I.mayWriteToMemory() && !isa<FenceInst>(I)) {
      Written.insert(UnknownRoot);
      Writes.push_back({&I, nullptr});
    }
  }
  AnyUnknownWrite = Written.contains(UnknownRoot);
  for (const Value *R : Written)
    AnyParameterWritten |= isParameterRoot(R);

  for (Instruction &I : instructions(F))
    if (auto *L = dyn_cast<LoadInst>(&I))
      if (C.returns(L->getParent()) && !L->isVolatile() &&
          canRereadMemory(L->getPointerOperand(), L)) {
        Rereadable.insert(L);
        for (const Value *R : TA.roots(L->getPointerOperand()))
          if (const CallBase *A = TA.allocationOf(R))
            KeptAlive.insert(A);
      }
}

bool CachePolicy::unchangedIn(const LoadInst *Ld, const Loop &L) const {
  const RootSet &Read = TA.roots(Ld->getPointerOperand());
  if (Ld->isVolatile() || Read.empty() || Read.contains(UnknownRoot))
    return false;
  bool ReadsParameter = any_of(Read, isParameterRoot);
  for (auto &[W, Ptr] : Writes) {
    if (!L.contains(W))
      continue;
    if (!Ptr || TA.roots(Ptr).empty())
      return false; // unknown memory
    for (const Value *R : TA.roots(Ptr))
      // Distinct roots are disjoint, except parameters that the caller
      // did not check (Request::NoAlias).
      if (R == UnknownRoot || Read.contains(R) ||
          (!NoAlias && ReadsParameter && isParameterRoot(R)))
        return false;
  }
  return true;
}

bool CachePolicy::canRereadMemory(const Value *Ptr,
                                  const Instruction *At) const {
  if (AnyUnknownWrite)
    return false;
  const RootSet &Roots = TA.roots(Ptr);
  if (Roots.empty())
    return false;
  bool AnyParameter = false;
  for (const Value *R : Roots) {
    // A raw buffer is freed by the primal before the reverse sweep runs.
    if (TA.isRawBuffer(R))
      return false;
    if (At && TA.allocationOf(R)) {
      // An allocation is disjoint from everything else: only its own
      // writes matter, and none may run after the read.
      auto It = AllocationWriters.find(R);
      if (It != AllocationWriters.end())
        for (const Instruction *W : It->second)
          if (isPotentiallyReachable(At, W, nullptr, &DT, &LI))
            return false;
      continue;
    }
    if (!isParameterRoot(R) || Written.contains(R))
      return false;
    AnyParameter = true;
  }
  return !AnyParameter || NoAlias || !AnyParameterWritten;
}

} // namespace enzpy
