//===- TypeAnalysis.cpp - which memory holds which floats -----------------===//
#include "TypeAnalysis.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/DataLayout.h"
#include "llvm/IR/Function.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/Module.h"
#include "Diagnostics.h"
#include <cstdint>

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

TypeAnalysis::TypeAnalysis(Function &F, const Request &Req) : F(F), Req(Req) {
  LLVMContext &Ctx = F.getContext();
  // Seeds: parameters and allocas are their own roots.
  for (Argument &A : F.args()) {
    if (!A.getType()->isPointerTy())
      continue;
    Roots[&A].insert(&A);
    if (A.getArgNo() == 0)
      Elem[&A] = Req.RetType == "void" ? nullptr : floatNamed(Ctx, Req.RetType);
    else if (A.getArgNo() >= 2) {
      const ParamSpec &S = Req.Params[A.getArgNo() - 2];
      if (S.isDuplicated())
        Elem[&A] = floatNamed(Ctx, S.Elem);
    }
  }
  for (Instruction &I : instructions(F))
    if (auto *AI = dyn_cast<AllocaInst>(&I)) {
      Roots[AI].insert(AI);
      Elem[AI] = floatElementOf(AI->getAllocatedType());
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
  bool Changed = true;
  while (Changed) {
    Changed = false;
    for (Instruction &I : instructions(F)) {
      if (!I.getType()->isPointerTy() || isa<AllocaInst>(I))
        continue;
      RootSet New;
      if (auto *GEP = dyn_cast<GetElementPtrInst>(&I))
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
}

const RootSet &TypeAnalysis::roots(const Value *Ptr) const {
  auto It = Roots.find(Ptr->stripPointerCasts());
  return It == Roots.end() ? Empty : It->second;
}

Type *TypeAnalysis::elementType(const Value *Root) const {
  auto It = Elem.find(Root);
  return It == Elem.end() ? nullptr : It->second;
}

const ParamSpec *TypeAnalysis::paramSpec(const Value *Root) const {
  if (Root == UnknownRoot)
    return nullptr;
  if (auto *A = dyn_cast<Argument>(Root))
    if (A->getParent() == &F && A->getArgNo() >= 2)
      return &Req.Params[A->getArgNo() - 2];
  return nullptr;
}

bool TypeAnalysis::isRetPtr(const Value *Root) const {
  if (Root == UnknownRoot)
    return false;
  auto *A = dyn_cast<Argument>(Root);
  return A && A->getParent() == &F && A->getArgNo() == 0;
}

void TypeAnalysis::print(raw_ostream &OS) const {
  OS << "types:\n";
  for (Argument &A : F.args())
    if (Type *T = elementType(&A))
      OS << "  memory " << describe(&A) << " holds " << *T << "\n";
  for (const Instruction &I : instructions(F))
    if (isa<AllocaInst>(I))
      if (Type *T = elementType(&I))
        OS << "  memory " << describe(&I) << " holds " << *T << "\n";
}

} // namespace enzpy
