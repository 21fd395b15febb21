//===- TypeAnalysis.cpp - which memory holds which floats -----------------===//
#include "analysis/TypeAnalysis.h"
#include "driver/Diagnostics.h"
#include "numba/NumbaABI.h"
#include "rules/BlasRules.h"
#include "rules/CustomRules.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/DataLayout.h"
#include "llvm/IR/Function.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/IntrinsicInst.h"
#include "llvm/IR/Module.h"
#include <cstdint>
#include <optional>

using namespace llvm;

namespace enzpy {

// A sentinel address that no real Value has (aligned, non-null, and distinct
// from DenseMap's empty and tombstone keys).
const Value *const UnknownRoot =
    reinterpret_cast<const Value *>(static_cast<uintptr_t>(64));

static Type *floatNamed(LLVMContext &Ctx, StringRef Name) {
  if (Name == "double")
    return Type::getDoubleTy(Ctx);
  if (Name == "float")
    return Type::getFloatTy(Ctx);
  return nullptr;
}

/// The float type an allocation holds, when it is a float, an array of
/// floats, or a struct of one float type.
static Type *floatElementOf(Type *T) {
  if (T->isFloatingPointTy())
    return T;
  if (auto *AT = dyn_cast<ArrayType>(T))
    return floatElementOf(AT->getElementType());
  if (auto *ST = dyn_cast<StructType>(T)) {
    Type *Common = nullptr;
    for (Type *E : ST->elements()) {
      Type *FE = floatElementOf(E);
      if (!FE || (Common && Common != FE))
        return nullptr;
      Common = FE;
    }
    return Common;
  }
  return nullptr;
}

/// \p V with pointer casts, "null or V" selects and phis looked through (numba
/// guards allocations that way).
static const Value *throughNullGuards(const Value *V, unsigned Depth = 0) {
  while (true) {
    V = V->stripPointerCasts();
    // A merge of the value with null on the paths where the allocation
    // failed (numba's allocator before O3 returns it through such a phi).
    if (auto *Phi = dyn_cast<PHINode>(V); Phi && Depth < 4) {
      const Value *Only = nullptr;
      for (const Value *In : Phi->incoming_values()) {
        In = throughNullGuards(In, Depth + 1);
        if (isa<ConstantPointerNull>(In) || In == Phi)
          continue;
        if (Only && Only != In)
          return V;
        Only = In;
      }
      if (!Only)
        return V;
      V = Only;
      continue;
    }
    auto *Sel = dyn_cast<SelectInst>(V);
    if (!Sel)
      return V;
    if (isa<ConstantPointerNull>(Sel->getTrueValue()))
      V = Sel->getFalseValue();
    else if (isa<ConstantPointerNull>(Sel->getFalseValue()))
      V = Sel->getTrueValue();
    else
      return V;
  }
}

/// The allocation whose data pointer \p I reads (a load of the MemInfo's
/// data field, or numba's NRT_MemInfo_data_fast), if it does.
static const CallBase *allocationRead(const Instruction *I) {
  if (auto *CB = dyn_cast<CallBase>(I)) {
    if (numba::isDataPointerCall(*CB) &&
        numba::isAllocationCall(throughNullGuards(CB->getArgOperand(0))))
      return cast<CallBase>(throughNullGuards(CB->getArgOperand(0)));
    return nullptr;
  }
  auto *L = dyn_cast<LoadInst>(I);
  if (!L || !L->getType()->isPointerTy())
    return nullptr;
  const DataLayout &DL = L->getModule()->getDataLayout();
  APInt Offset(64, 0);
  const Value *Base = throughNullGuards(
      L->getPointerOperand()->stripAndAccumulateConstantOffsets(DL, Offset,
                                                                true));
  if (numba::isAllocationCall(Base) && Offset == numba::MemInfoDataOffset)
    return cast<CallBase>(Base);
  return nullptr;
}

TypeAnalysis::TypeAnalysis(Function &F, const Request &Req) : F(F), Req(Req) {
  LLVMContext &Ctx = F.getContext();
  // Seeds: parameters and allocas are their own roots.
  for (Argument &A : F.args()) {
    if (!A.getType()->isPointerTy())
      continue;
    Roots[&A].insert(&A);
    if (A.getArgNo() == numba::RetPtrParam)
      Elem[&A] = Req.RetType == "void" ? nullptr : floatNamed(Ctx, Req.RetType);
    else if (numba::isUserParam(A)) {
      const ParamSpec &S = Req.Params[numba::userParamIndex(A)];
      if (S.isDuplicated())
        Elem[&A] = floatNamed(Ctx, S.Elem);
    }
  }
  for (Instruction &I : instructions(F)) {
    if (auto *AI = dyn_cast<AllocaInst>(&I)) {
      Roots[AI].insert(AI);
      Elem[AI] = floatElementOf(AI->getAllocatedType());
    }
    if (const CallBase *A = allocationRead(&I)) {
      Roots[&I].insert(&I);
      Allocations[&I] = A;
    } else if (const CallBase *RC = ruleResultCall(&I)) {
      // A new array a function with a custom rule returned.
      Roots[&I].insert(&I);
      Allocations[&I] = RC;
    } else if (numba::isRawAllocation(&I)) {
      // A raw buffer is its own root (numba's temporaries: sources of slice
      // assignments, LAPACK's right-hand sides).
      Roots[&I].insert(&I);
      Allocations[&I] = cast<CallBase>(&I);
    }
  }

  // Propagate through address computations to a fixpoint (phis make
  // cycles).
  auto rootsOfOperand = [&](const Value *V, RootSet &Out) {
    V = V->stripPointerCasts();
    if (isa<ConstantPointerNull>(V) || isa<UndefValue>(V))
      return;
    if (auto *GV = dyn_cast<GlobalValue>(V)) {
      Out.insert(GV);
      return;
    }
    auto It = Roots.find(V);
    if (It != Roots.end())
      Out.insert(It->second.begin(), It->second.end());
    else if (!isa<Instruction>(V) && !isa<Argument>(V))
      Out.insert(UnknownRoot); // a constant expression we do not model
  };
  // Pointers kept in local allocations (numba spills array structs to the
  // stack when their address is passed to a runtime helper): a pointer
  // stored at a constant offset of an alloca and loaded back from there
  // keeps its roots. An alloca written at unknown offsets, or copied into,
  // loses track.
  const DataLayout &DL = F.getParent()->getDataLayout();
  using Slot = std::pair<const Value *, int64_t>;
  DenseMap<Slot, SmallVector<const Value *, 2>> SlotStores;
  DenseSet<const Value *> Opaque;
  auto slotOf = [&](const Value *Ptr) -> std::optional<Slot> {
    APInt Off(64, 0);
    const Value *Base = Ptr->stripAndAccumulateConstantOffsets(DL, Off, true);
    if (isa<AllocaInst>(Base))
      return Slot{Base, Off.getSExtValue()};
    return std::nullopt;
  };
  auto underlyingAllocas = [&](const Value *Ptr, auto &&Fn) {
    const Value *Base = getUnderlyingObject(Ptr, 0);
    if (isa<AllocaInst>(Base))
      Fn(Base);
  };
  for (Instruction &I : instructions(F)) {
    if (auto *S = dyn_cast<StoreInst>(&I)) {
      if (!S->getValueOperand()->getType()->isPointerTy())
        continue;
      if (auto Sl = slotOf(S->getPointerOperand()))
        SlotStores[*Sl].push_back(S->getValueOperand());
      else
        underlyingAllocas(S->getPointerOperand(),
                          [&](const Value *A) { Opaque.insert(A); });
    } else if (auto *MT = dyn_cast<AnyMemTransferInst>(&I)) {
      underlyingAllocas(MT->getRawDest(),
                        [&](const Value *A) { Opaque.insert(A); });
    } else if (auto *CB = dyn_cast<CallBase>(&I);
               CB && !isa<IntrinsicInst>(CB) && !CB->onlyReadsMemory() &&
               !(CB->getCalledFunction() &&
                 numba::isInactiveRuntimeCall(
                     CB->getCalledFunction()->getName()))) {
      // A call may write pointers into a local allocation it is passed
      // (the return slot of a call that stays a call): what is loaded
      // back is unknown, never nothing. numba's runtime helpers write
      // integers only (the shape and strides of a reshape).
      for (unsigned K = 0; K < CB->arg_size(); ++K)
        if (CB->getArgOperand(K)->getType()->isPointerTy() &&
            !CB->onlyReadsMemory(K))
          underlyingAllocas(CB->getArgOperand(K),
                            [&](const Value *A) { Opaque.insert(A); });
    }
  }

  bool Changed = true;
  while (Changed) {
    Changed = false;
    for (Instruction &I : instructions(F)) {
      if (!I.getType()->isPointerTy() || isa<AllocaInst>(I) ||
          Allocations.count(&I) || numba::isRawAllocation(&I))
        continue;
      RootSet New;
      auto *Ld = dyn_cast<LoadInst>(&I);
      std::optional<Slot> Sl =
          Ld ? slotOf(Ld->getPointerOperand()) : std::nullopt;
      if (Sl && !Opaque.contains(Sl->first)) {
        auto It = SlotStores.find(*Sl);
        if (It != SlotStores.end())
          for (const Value *V : It->second)
            rootsOfOperand(V, New);
      } else if (auto *GEP = dyn_cast<GetElementPtrInst>(&I))
        rootsOfOperand(GEP->getPointerOperand(), New);
      else if (auto *Phi = dyn_cast<PHINode>(&I))
        for (Value *In : Phi->incoming_values())
          rootsOfOperand(In, New);
      else if (auto *Sel = dyn_cast<SelectInst>(&I)) {
        rootsOfOperand(Sel->getTrueValue(), New);
        rootsOfOperand(Sel->getFalseValue(), New);
      } else if (isa<CastInst>(I) && I.getOperand(0)->getType()->isPointerTy())
        rootsOfOperand(I.getOperand(0), New);
      else
        New.insert(UnknownRoot); // loaded, returned by a call, inttoptr
      RootSet &Old = Roots[&I];
      if (New.size() != Old.size()) {
        Old = New;
        Changed = true;
      }
    }
  }

  // What each alloca holds: the roots of the pointers stored into it, and
  // unknown memory when something is copied into it.
  for (Instruction &I : instructions(F)) {
    if (auto *S = dyn_cast<StoreInst>(&I)) {
      if (!S->getValueOperand()->getType()->isPointerTy())
        continue;
      const RootSet &Stored = roots(S->getValueOperand());
      underlyingAllocas(S->getPointerOperand(), [&](const Value *A) {
        Contents[A].insert(Stored.begin(), Stored.end());
      });
    } else if (auto *MT = dyn_cast<AnyMemTransferInst>(&I)) {
      underlyingAllocas(MT->getRawDest(), [&](const Value *A) {
        Contents[A].insert(UnknownRoot);
      });
    }
  }

  // Allocated arrays: the float type they are accessed with, if only one.
  DenseMap<const Value *, Type *> Seen;
  DenseSet<const Value *> Mixed;
  for (Instruction &I : instructions(F)) {
    Type *AccessTy = nullptr;
    const Value *Ptr = nullptr;
    if (auto *L = dyn_cast<LoadInst>(&I)) {
      AccessTy = L->getType();
      Ptr = L->getPointerOperand();
    } else if (auto *S = dyn_cast<StoreInst>(&I)) {
      AccessTy = S->getValueOperand()->getType();
      Ptr = S->getPointerOperand();
    } else {
      continue;
    }
    for (const Value *R : roots(Ptr)) {
      if (!Allocations.count(R))
        continue;
      Type *&T = Seen[R];
      if (!AccessTy->isFloatingPointTy() || (T && T != AccessTy))
        Mixed.insert(R);
      T = AccessTy;
    }
  }
  // Arrays passed to calls that say what they hold (a BLAS helper's kind, a
  // custom rule's argument types): an array only such calls read and write
  // has no access of its own to take a type from.
  for (Instruction &I : instructions(F)) {
    auto *CB = dyn_cast<CallBase>(&I);
    if (!CB)
      continue;
    SmallVector<std::pair<const Value *, Type *>, 4> Said;
    if (std::optional<BlasCall> Blas = matchBlasCall(*CB)) {
      for (unsigned A : Blas->inputs())
        Said.push_back({CB->getArgOperand(A), Blas->Elem});
      Said.push_back({CB->getArgOperand(Blas->output()), Blas->Elem});
    } else if (std::optional<CustomCall> CC = matchCustomCall(*CB)) {
      for (const CustomCall::Arg &A : CC->Args)
        if (A.Kind == CustomCall::ArgKind::Memory && A.Elem)
          Said.push_back(
              {CB->getArgOperand(A.Operand),
               A.Elem == 'd' ? Type::getDoubleTy(Ctx) : Type::getFloatTy(Ctx)});
      if (RuleResult R = ruleResult(*CB); R.Data)
        Said.push_back({R.Data, CC->ResultElem == 'd' ? Type::getDoubleTy(Ctx)
                                                      : Type::getFloatTy(Ctx)});
    }
    for (auto [Ptr, T] : Said)
      for (const Value *R : roots(Ptr)) {
        if (!Allocations.count(R))
          continue;
        Type *&Known = Seen[R];
        if (Known && Known != T)
          Mixed.insert(R);
        Known = T;
      }
  }
  for (auto &[R, T] : Seen)
    if (!Mixed.contains(R))
      Elem[R] = T;
  // An allocation only ever copied into takes its source's type.
  for (int Round = 0; Round < 2; ++Round)
    for (Instruction &I : instructions(F))
      if (auto *MT = dyn_cast<AnyMemTransferInst>(&I)) {
        Type *SrcT = nullptr;
        for (const Value *R : roots(MT->getRawSource()))
          if (Type *E = elementType(R))
            SrcT = E;
        if (!SrcT)
          continue;
        for (const Value *R : roots(MT->getRawDest()))
          if (Allocations.count(R) && !Elem.count(R) && !Mixed.contains(R))
            Elem[R] = SrcT;
      }
}

const CallBase *TypeAnalysis::allocationOf(const Value *Root) const {
  return Allocations.lookup(Root);
}

const Value *TypeAnalysis::allocationMemInfo(const CallBase *Alloc) const {
  if (numba::isAllocationCall(Alloc))
    return Alloc;
  return ruleResult(*Alloc).MemInfo;
}

bool TypeAnalysis::isRawBuffer(const Value *Root) const {
  const CallBase *A = allocationOf(Root);
  return A && A == Root;
}

const RootSet &TypeAnalysis::roots(const Value *Ptr) const {
  auto It = Roots.find(Ptr->stripPointerCasts());
  return It == Roots.end() ? Empty : It->second;
}

RootSet TypeAnalysis::reachableRoots(const Value *Ptr) const {
  RootSet Out = roots(Ptr);
  for (unsigned I = 0; I < Out.size(); ++I) { // Out grows as it is walked
    auto It = Contents.find(Out[I]);
    if (It != Contents.end())
      Out.insert(It->second.begin(), It->second.end());
  }
  return Out;
}

Type *TypeAnalysis::elementType(const Value *Root) const {
  auto It = Elem.find(Root);
  return It == Elem.end() ? nullptr : It->second;
}

const ParamSpec *TypeAnalysis::paramSpec(const Value *Root) const {
  if (Root == UnknownRoot)
    return nullptr;
  if (auto *A = dyn_cast<Argument>(Root))
    if (A->getParent() == &F && numba::isUserParam(*A))
      return &Req.Params[numba::userParamIndex(*A)];
  return nullptr;
}

bool TypeAnalysis::isRetPtr(const Value *Root) const {
  if (Root == UnknownRoot)
    return false;
  auto *A = dyn_cast<Argument>(Root);
  return A && A->getParent() == &F && A->getArgNo() == numba::RetPtrParam;
}

void TypeAnalysis::record(DecisionLog &Log) const {
  Log.begin("types");
  auto holds = [](Type *T) {
    std::string S;
    raw_string_ostream OS(S);
    OS << "holds " << *T;
    return S;
  };
  for (Argument &A : F.args())
    if (Type *T = elementType(&A))
      Log.record("memory", &A, nullptr, holds(T));
  for (const Instruction &I : instructions(F))
    if (isa<AllocaInst>(I) || Allocations.count(&I))
      if (Type *T = elementType(&I))
        Log.record("memory", &I, nullptr, holds(T));
}

} // namespace enzpy
