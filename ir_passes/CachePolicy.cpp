//===- CachePolicy.cpp - which reads the reverse sweep may repeat ---------===//
#include "CachePolicy.h"
#include "ActivityAnalysis.h"
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
                         const TypeAnalysis &TA) {
  Function &F = *C.F;
  // Roots that the function may write.
  DenseSet<const Value *> Written;
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
      if (CB->onlyReadsMemory())
        continue;
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
  if (Written.contains(UnknownRoot))
    return;
  bool AnyParameterWritten = false;
  for (const Value *R : Written)
    AnyParameterWritten |= isParameterRoot(R);

  for (Instruction &I : instructions(F)) {
    auto *L = dyn_cast<LoadInst>(&I);
    if (!L || L->isVolatile())
      continue;
    const RootSet &Roots = TA.roots(L->getPointerOperand());
    bool Ok = !Roots.empty();
    for (const Value *R : Roots)
      Ok &= isParameterRoot(R) && !Written.contains(R);
    if (Ok && !Req.NoAlias && AnyParameterWritten)
      Ok = false;
    if (Ok)
      Rereadable.insert(L);
  }
}

} // namespace enzpy
