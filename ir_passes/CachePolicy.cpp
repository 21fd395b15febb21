//===- CachePolicy.cpp - which reads the reverse sweep may repeat ---------===//
#include "CachePolicy.h"
#include "ActivityAnalysis.h"
#include "BlasRules.h"
#include "DerivativeRules.h"
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
  return A && A->getArgNo() >= 2;
}

CachePolicy::CachePolicy(const CanonicalFunction &C, const Request &Req,
                         const TypeAnalysis &TA)
    : TA(TA), NoAlias(Req.NoAlias) {
  Function &F = *C.F;
  auto writes = [&](const Value *Ptr) {
    for (const Value *R : TA.roots(Ptr))
      Written.insert(R);
  };
  for (Instruction &I : instructions(F)) {
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
      // BLAS calls write their output array only.
      if (std::optional<BlasCall> Blas = matchBlasCall(*CB)) {
        writes(CB->getArgOperand(Blas->output()));
        continue;
      }
      const Function *Callee = CB->getCalledFunction();
      // Reference counting touches only the meminfo, never array data.
      if (Callee && isInactiveRuntimeCall(Callee->getName()))
        continue;
      Written.insert(UnknownRoot);
      for (const Value *A : CB->args())
        if (A->getType()->isPointerTy())
          writes(A);
    } else if (I.mayWriteToMemory() && !isa<FenceInst>(I)) {
      Written.insert(UnknownRoot);
    }
  }
  AnyUnknownWrite = Written.contains(UnknownRoot);
  for (const Value *R : Written)
    AnyParameterWritten |= isParameterRoot(R);

  for (Instruction &I : instructions(F))
    if (auto *L = dyn_cast<LoadInst>(&I))
      if (!L->isVolatile() && canRereadMemory(L->getPointerOperand()))
        Rereadable.insert(L);
}

bool CachePolicy::canRereadMemory(const Value *Ptr) const {
  if (AnyUnknownWrite)
    return false;
  const RootSet &Roots = TA.roots(Ptr);
  if (Roots.empty())
    return false;
  for (const Value *R : Roots)
    if (!isParameterRoot(R) || Written.contains(R))
      return false;
  return NoAlias || !AnyParameterWritten;
}

} // namespace enzpy
