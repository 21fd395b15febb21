//===- ShadowAddresses.cpp - which addresses have shadows -----------------===//
#include "synthesis/ShadowAddresses.h"
#include "driver/Diagnostics.h"
#include "numba/NumbaABI.h"
#include "rules/CustomRules.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/IntrinsicInst.h"

using namespace llvm;

namespace enzpy {

bool isNowhere(const Value *V) {
  return isa<ConstantPointerNull>(V) || isa<UndefValue>(V);
}

bool isSpilledPointer(const Value *V) {
  auto *L = dyn_cast<LoadInst>(V);
  return L && L->getType()->isPointerTy() &&
         isa<AllocaInst>(getUnderlyingObject(L->getPointerOperand(), 0)) &&
         !isRuleResultRead(L);
}

/// Address computations whose shadow the engine can mirror.
static bool isShadowableAddress(const Value *V, const TypeAnalysis &TA) {
  return isa<Argument>(V) || isa<AllocaInst>(V) || isa<GetElementPtrInst>(V) ||
         isa<PHINode>(V) || isa<SelectInst>(V) || isa<BitCastInst>(V) ||
         isa<AddrSpaceCastInst>(V) || TA.allocationOf(V) || isSpilledPointer(V);
}

Error checkShadowable(const CanonicalFunction &C, const ActivityAnalysis &AA) {
  SmallPtrSet<const Value *, 32> Seen;
  SmallVector<std::pair<const Value *, const Instruction *>, 32> Work;
  for (const BasicBlock &BB : *C.F)
    for (const Instruction &I : BB) {
      const Value *Ptr = nullptr;
      if (auto *L = dyn_cast<LoadInst>(&I))
        Ptr = AA.isActive(L) ? L->getPointerOperand() : nullptr;
      else if (auto *S = dyn_cast<StoreInst>(&I))
        Ptr = AA.pointsToActive(S->getPointerOperand()) ? S->getPointerOperand()
                                                        : nullptr;
      else if (numba::isRawFree(I))
        Ptr = AA.pointsToActive(I.getOperand(0)) ? I.getOperand(0) : nullptr;
      if (Ptr)
        Work.push_back({Ptr, &I});
      if (auto *MI = dyn_cast<AnyMemIntrinsic>(&I)) {
        if (AA.pointsToActive(MI->getRawDest()))
          Work.push_back({MI->getRawDest(), &I});
        if (auto *MT = dyn_cast<AnyMemTransferInst>(MI))
          if (AA.pointsToActive(MT->getRawSource()))
            Work.push_back({MT->getRawSource(), &I});
      }
    }
  while (!Work.empty()) {
    auto [V, User] = Work.pop_back_val();
    if (!Seen.insert(V).second)
      continue;
    if (!isShadowableAddress(V, AA.types()))
      return makeError("unsupported",
                       "an address into differentiable memory (" +
                           AA.describeMemory(V) +
                           ") cannot be mirrored onto its shadow",
                       User);
    auto *I = dyn_cast<Instruction>(V);
    if (!I)
      continue;
    auto push = [&](const Value *Op) { Work.push_back({Op, I}); };
    if (auto *GEP = dyn_cast<GetElementPtrInst>(I)) {
      push(GEP->getPointerOperand());
    } else if (isa<PHINode>(I) || isa<SelectInst>(I)) {
      // Every way in must be active memory (or nowhere).
      SmallVector<const Value *, 4> Ins;
      if (auto *Sel = dyn_cast<SelectInst>(I))
        Ins = {Sel->getTrueValue(), Sel->getFalseValue()};
      else
        Ins.append(cast<PHINode>(I)->incoming_values().begin(),
                   cast<PHINode>(I)->incoming_values().end());
      for (const Value *In : Ins) {
        if (isNowhere(In))
          continue;
        if (!AA.pointsToActive(In))
          return makeError("unsupported",
                           "a pointer that may point into either "
                           "differentiable or constant memory (" +
                               AA.describeMemory(I) + ") is not supported",
                           I);
        push(In);
      }
    } else if (isa<CastInst>(I))
      push(I->getOperand(0));
    else if (isSpilledPointer(I)) {
      // The type analysis gives a pointer loaded from a stack slot the roots
      // of every pointer stored there: a slot that holds a constant array's
      // pointer at one time and a differentiable one's at another (numba's
      // optimized helpers reuse one for each operand) has a shadow that is
      // null while it holds the constant one, and the derivative would read
      // or write through it.
      for (const Value *R : AA.types().roots(I))
        if (R != UnknownRoot && !AA.isActiveRoot(R))
          return makeError(
              "unsupported",
              "a pointer that may point into either differentiable or "
              "constant memory (" +
                  AA.describeMemory(I) +
                  ") is not supported: pass the constant array as "
                  "Duplicated, with a shadow of zeros",
              I);
      Work.push_back({cast<LoadInst>(I)->getPointerOperand(), I});
    }
  }
  return Error::success();
}

} // namespace enzpy
