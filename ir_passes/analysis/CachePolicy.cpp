//===- CachePolicy.cpp - which reads the reverse sweep may repeat ---------===//
#include "analysis/CachePolicy.h"
#include "analysis/ActivityAnalysis.h"
#include "numba/NumbaABI.h"
#include "rules/BlasRules.h"
#include "rules/CustomRules.h"
#include "rules/DerivativeRules.h"
#include "llvm/Analysis/AliasAnalysis.h"
#include "llvm/Analysis/BasicAliasAnalysis.h"
#include "llvm/Analysis/CFG.h"
#include "llvm/Analysis/DependenceAnalysis.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/ScalarEvolution.h"
#include "llvm/Analysis/ScalarEvolutionExpressions.h"
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
                         const TypeAnalysis &TA, DominatorTree &DT,
                         LoopInfo &LI)
    : TA(TA), NoAlias(Req.NoAlias), DT(DT), LI(LI) {
  analyze(C, nullptr);
}

CachePolicy::CachePolicy(const CanonicalFunction &C, const Request &Req,
                         const TypeAnalysis &TA, DominatorTree &DT,
                         LoopInfo &LI, ScalarEvolution &SE, AssumptionCache &AC,
                         TargetLibraryInfo &TLI)
    : TA(TA), NoAlias(Req.NoAlias), DT(DT), LI(LI), SE(&SE) {
  Function &F = *C.F;
  AAResults AAR(TLI);
  BasicAAResult BasicAA(F.getDataLayout(), F, TLI, AC, &DT);
  AAR.addAAResult(BasicAA);
  DependenceInfo DI(&F, &AAR, &SE, &LI);
  analyze(C, &DI);
}

void CachePolicy::analyze(const CanonicalFunction &C, DependenceInfo *DI) {
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
      // A call with a custom rule writes what its function may write
      // through its arguments, and its return slot.
      if (std::optional<CustomCall> CC = matchCustomCall(*CB)) {
        if (CC->Hidden)
          writes(CB->getArgOperand(numba::RetPtrParam));
        if (RuleResult R = ruleResult(*CB); R.Data)
          writes(R.Data); // the new array it returns
        for (unsigned K = CC->Hidden; K < CB->arg_size(); ++K)
          if (CC->mayWrite(K))
            writes(CB->getArgOperand(K));
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

  // The reverse function of a custom rule gets the arrays the call was
  // passed, and may read them: arrays allocated in the function must
  // outlive the primal's release of them (raw buffers are never re-read:
  // the rule keeps copies, canRereadMemory).
  for (Instruction &I : instructions(F))
    if (auto *CB = dyn_cast<CallBase>(&I); CB && C.returns(I.getParent()))
      if (std::optional<CustomCall> CC = matchCustomCall(*CB))
        for (const CustomCall::Arg &A : CC->Args)
          if (A.Kind == CustomCall::ArgKind::Memory)
            for (const Value *R : TA.roots(CB->getArgOperand(A.Operand)))
              if (const CallBase *Alloc = TA.allocationOf(R);
                  Alloc && !TA.isRawBuffer(R))
                KeptAlive.insert(Alloc);
  for (Instruction &I : instructions(F))
    if (auto *L = dyn_cast<LoadInst>(&I))
      if (C.returns(L->getParent()) && !L->isVolatile() &&
          (canRereadMemory(L->getPointerOperand(), L) ||
           (DI && intactAfter(L, *DI)))) {
        Rereadable.insert(L);
        for (const Value *R : TA.roots(L->getPointerOperand()))
          if (const CallBase *A = TA.allocationOf(R))
            KeptAlive.insert(A);
      }
}

/// A bound of \p S over the iterations of the loops nested in \p T
/// (an upper bound when \p Upper): each recurrence of such a loop is
/// replaced by its first or last value, as its step's sign says. Null when
/// some part of \p S has no such bound.
static const SCEV *boundInside(const SCEV *S, const Loop &T, bool Upper,
                               ScalarEvolution &SE) {
  if (SE.isLoopInvariant(S, &T))
    return S;
  if (auto *AR = dyn_cast<SCEVAddRecExpr>(S)) {
    if (!AR->isAffine())
      return nullptr;
    const SCEV *Step = AR->getStepRecurrence(SE);
    if (AR->getLoop() == &T) {
      const SCEV *Start = boundInside(AR->getStart(), T, Upper, SE);
      return Start ? SE.getAddRecExpr(Start, Step, &T, SCEV::FlagAnyWrap)
                   : nullptr;
    }
    if (!T.contains(AR->getLoop()))
      return nullptr;
    bool Rising = SE.isKnownNonNegative(Step);
    if (!Rising && !SE.isKnownNonPositive(Step))
      return nullptr;
    if (Rising != Upper)
      return boundInside(AR->getStart(), T, Upper, SE);
    const SCEV *Trips = SE.getBackedgeTakenCount(AR->getLoop());
    if (isa<SCEVCouldNotCompute>(Trips))
      return nullptr;
    return boundInside(AR->evaluateAtIteration(Trips, SE), T, Upper, SE);
  }
  if (auto *Add = dyn_cast<SCEVAddExpr>(S)) {
    SmallVector<const SCEV *, 4> Ops;
    for (const SCEV *Op : Add->operands()) {
      const SCEV *B = boundInside(Op, T, Upper, SE);
      if (!B)
        return nullptr;
      Ops.push_back(B);
    }
    return SE.getAddExpr(Ops);
  }
  return nullptr;
}

/// Whether \p S, in the outermost loop \p T around \p L, writes only
/// above what \p L reads: in the same iteration of \p T its lowest
/// address is past the highest one \p L reads, and both move by the same
/// non-negative stride per iteration of \p T (row t + 1 written, row t read).
static bool writesAboveLater(LoadInst *L, StoreInst *S, const Loop &T,
                             ScalarEvolution &SE) {
  const SCEV *ReadMax =
      boundInside(SE.getSCEV(L->getPointerOperand()), T, true, SE);
  const SCEV *WriteMin =
      boundInside(SE.getSCEV(S->getPointerOperand()), T, false, SE);
  if (!ReadMax || !WriteMin)
    return false;
  const SCEV *Gap = SE.getMinusSCEV(WriteMin, ReadMax);
  if (isa<SCEVCouldNotCompute>(Gap) || !SE.isLoopInvariant(Gap, &T))
    return false;
  const SCEV *Stride = SE.getZero(Gap->getType());
  if (auto *AR = dyn_cast<SCEVAddRecExpr>(WriteMin))
    Stride = AR->getStepRecurrence(SE);
  uint64_t Size =
      L->getDataLayout().getTypeStoreSize(L->getType()).getFixedValue();
  // Facts from the conditions guarding the loop count (a shape known to be
  // at least 3 where an inner loop runs).
  auto Known = [&](ICmpInst::Predicate P, const SCEV *A, const SCEV *B) {
    return SE.isKnownPredicate(P, A, B) ||
           SE.isLoopEntryGuardedByCond(&T, P, A, B);
  };
  // The gap also in units of its constant factor (elements rather than
  // bytes), the form in which loop guards bound it. The quotient is an
  // unsigned division: it stands for the gap only when it is below the
  // largest signed value over the unit (a negative gap, -296 bytes, divides
  // into 2^61 - 37, not -37), and the gap must be the unit times it.
  uint64_t Unit = SE.getConstantMultiple(Gap).getLimitedValue(Size);
  auto GapAtLeast = [&](const SCEV *G, uint64_t Unit) {
    Type *Ty = G->getType();
    const SCEV *UnitS = SE.getConstant(Ty, Unit);
    const SCEV *Q = SE.getUDivExactExpr(G, UnitS);
    unsigned Bits = Ty->getIntegerBitWidth();
    const SCEV *Limit =
        SE.getConstant(APInt::getSignedMaxValue(Bits).udiv(APInt(Bits, Unit)));
    return SE.getMulExpr(Q, UnitS) == G &&
           Known(ICmpInst::ICMP_SLE, Q, Limit) &&
           Known(ICmpInst::ICMP_SGE, Q,
                 SE.getConstant(Ty, divideCeil(Size, Unit)));
  };
  return Known(ICmpInst::ICMP_SGE, Stride, SE.getZero(Stride->getType())) &&
         (GapAtLeast(Gap, 1) || (Unit > 1 && GapAtLeast(Gap, Unit)));
}

/// Whether some instance of \p S may run after some instance of \p L and
/// write the element it read. Not when the dependence analysis finds no
/// dependence, or one where, in the first shared loop whose direction is
/// not "same iteration", \p S runs in earlier iterations only; not when
/// both lie in one outermost loop in which \p S writes above what \p L
/// read (writesAboveLater).
static bool mayOverwriteLater(LoadInst *L, StoreInst *S, DependenceInfo &DI,
                              const LoopInfo &LI, ScalarEvolution &SE) {
  std::unique_ptr<Dependence> D = DI.depends(L, S);
  if (!D)
    return false;
  if (!D->isConfused()) {
    for (unsigned K = 1, N = D->getLevels(); K <= N; ++K) {
      unsigned Dir = D->getDirection(K);
      if (Dir & Dependence::DVEntry::LT)
        break;
      if (!(Dir & Dependence::DVEntry::EQ))
        return false;
    }
  }
  const Loop *T = LI.getLoopFor(L->getParent());
  if (!T)
    return true;
  T = T->getOutermostLoop();
  return !T->contains(S) || !writesAboveLater(L, S, *T, SE);
}

bool CachePolicy::intactAfter(const LoadInst *L, DependenceInfo &DI) const {
  const RootSet &Read = TA.roots(L->getPointerOperand());
  if (AnyUnknownWrite || Read.size() != 1)
    return false;
  const Value *Root = Read.front();
  bool Parameter = isParameterRoot(Root);
  if (TA.isRawBuffer(Root) || (!Parameter && !TA.allocationOf(Root)))
    return false;
  for (auto &[W, Ptr] : Writes) {
    if (!Ptr || TA.roots(Ptr).empty())
      return false; // unknown memory
    const RootSet &To = TA.roots(Ptr);
    bool Same = false;
    for (const Value *R : To) {
      if (R == UnknownRoot ||
          (Parameter && !NoAlias && R != Root && isParameterRoot(R)))
        return false;
      Same |= R == Root;
    }
    if (!Same || !isPotentiallyReachable(L, W, nullptr, &DT, &LI))
      continue;
    auto *S = dyn_cast<StoreInst>(W);
    if (!S || To.size() != 1 ||
        mayOverwriteLater(const_cast<LoadInst *>(L), const_cast<StoreInst *>(S),
                          DI, LI, *SE))
      return false;
  }
  return true;
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
