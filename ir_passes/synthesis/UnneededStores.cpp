//===- UnneededStores.cpp - primal writes nobody reads --------------------===//
//
// See UnneededStores.h: the stores of the primal to a DuplicatedNoNeed array
// are erased when nothing in the derivative can read them back.
//
//===----------------------------------------------------------------------===//
#include "synthesis/UnneededStores.h"
#include "numba/NumbaABI.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/IR/Instructions.h"

using namespace llvm;

namespace enzpy {

namespace {

/// Whether the integer \p Addr (an address turned into an integer) only
/// feeds arithmetic and comparisons (numba's overlap checks of slice
/// assignments), never a pointer again, memory or a call.
bool onlyCompared(Value *Addr) {
  SmallSetVector<Value *, 8> Seen;
  Seen.insert(Addr);
  for (unsigned I = 0; I < Seen.size(); ++I)
    for (User *U : Seen[I]->users()) {
      if (isa<ICmpInst>(U))
        continue;
      if (!isa<BinaryOperator>(U) && !isa<CastInst>(U) && !isa<PHINode>(U) &&
          !isa<SelectInst>(U))
        return false;
      if (isa<IntToPtrInst>(U) || !U->getType()->isIntegerTy())
        return false;
      Seen.insert(U);
    }
  return true;
}

/// Collects into \p Stores the stores through pointers derived from \p Root
/// (address arithmetic and merges of such addresses). Returns why \p Root's
/// memory may be observed otherwise, or "" when those stores are all that
/// touch it.
std::string observers(Argument &Root, SmallVectorImpl<StoreInst *> &Stores) {
  SmallSetVector<Value *, 16> Derived;
  Derived.insert(&Root);
  for (unsigned I = 0; I < Derived.size(); ++I) {
    Value *V = Derived[I];
    for (User *U : V->users()) {
      if (auto *St = dyn_cast<StoreInst>(U)) {
        if (St->getValueOperand() == V)
          return "its address is stored to memory";
        if (!St->isSimple())
          return "a volatile or atomic store writes it";
        Stores.push_back(St);
      } else if (isa<GetElementPtrInst>(U) || isa<PHINode>(U) ||
                 isa<SelectInst>(U)) {
        Derived.insert(U);
      } else if (isa<ICmpInst>(U) ||
                 (isa<PtrToIntInst>(U) && onlyCompared(U))) {
        // Compares addresses; reads nothing.
      } else if (isa<LoadInst>(U)) {
        return "the derivative reads it";
      } else if (isa<CallBase>(U)) {
        return "a call is given a pointer into it";
      } else {
        return "its address escapes (" +
               std::string(cast<Instruction>(U)->getOpcodeName()) + ")";
      }
    }
  }
  // A store through a merge of this array's addresses with another one's
  // may write elsewhere: only merges of this array's own addresses qualify.
  for (Value *V : Derived) {
    auto FromRoot = [&](Value *In) {
      return Derived.count(In) || isa<UndefValue>(In);
    };
    if (auto *Phi = dyn_cast<PHINode>(V)) {
      if (!all_of(Phi->incoming_values(), FromRoot))
        return "a merge mixes it with other memory";
    } else if (auto *Sel = dyn_cast<SelectInst>(V)) {
      if (!FromRoot(Sel->getTrueValue()) || !FromRoot(Sel->getFalseValue()))
        return "a merge mixes it with other memory";
    }
  }
  return "";
}

} // namespace

void UnneededStores::drop() {
  const Request &Req = Sk.Req;
  for (unsigned I = 0; I < Req.Params.size(); ++I) {
    Argument *A = numba::userParam(*Sk.D, I);
    if (Req.Params[I].Act != Activity::DupNoNeed ||
        !A->getType()->isPointerTy())
      continue;
    if (!Req.NoAlias) {
      Decisions.push_back(
          {A, "kept: the arrays were not checked apart (another argument "
              "may read this memory)"});
      continue;
    }
    SmallVector<StoreInst *, 8> Stores;
    std::string Why = observers(*A, Stores);
    if (!Why.empty()) {
      Decisions.push_back({A, "kept: " + Why});
      continue;
    }
    for (StoreInst *St : Stores)
      Sk.eraseClone(St);
    Decisions.push_back(
        {A, "dropped " + std::to_string(Stores.size()) +
                " store(s): nothing reads the contents the caller "
                "does not need"});
  }
}

void UnneededStores::record(DecisionLog &Log) const {
  if (Decisions.empty())
    return;
  Log.begin("no-need");
  for (const Decision &D : Decisions)
    Log.record("no-need", D.Param, nullptr, D.Detail);
}

} // namespace enzpy
