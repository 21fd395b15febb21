//===- Adjoints.cpp - adjoint accumulators of the reverse sweep -----------===//
#include "synthesis/Adjoints.h"
#include "llvm/IR/Constants.h"

using namespace llvm;

namespace enzpy {

Value *AdjointStore::sum(IRBuilder<> &B, Value *Sum, Value *Delta) {
  Value *V = B.CreateFAdd(Sum, Delta);
  // Adjoints are sums whose order no rule fixes: reassoc lets a loop that
  // accumulates one (a scalar parameter's adjoint over all iterations) keep
  // partial sums in vector lanes instead of a serial chain of adds.
  if (auto *I = dyn_cast<Instruction>(V)) {
    I->setHasNoSignedZeros(true);
    I->setHasAllowReassoc(true);
  }
  return V;
}

AllocaInst *AdjointStore::slot(const Value *PV, unsigned K) {
  auto It = Slots.find({PV, K});
  if (It != Slots.end())
    return It->second;
  IRBuilder<> B(Sk.Entry, Sk.Entry->getFirstInsertionPt());
  AllocaInst *Slot = B.CreateAlloca(PV->getType(), nullptr,
                                    Sk.laneName(PV->getName() + ".adj", K));
  B.SetInsertPoint(Sk.Entry->getTerminator());
  B.CreateStore(ConstantFP::get(PV->getType(), 0.0), Slot);
  Slots[{PV, K}] = Slot;
  return Slot;
}

void AdjointStore::add(IRBuilder<> &B, const Value *PV, unsigned K,
                       Value *Delta) {
  if (!Delta || !Sk.AA.isActive(PV))
    return;
  AllocaInst *Slot = slot(PV, K);
  B.CreateStore(sum(B, B.CreateLoad(PV->getType(), Slot), Delta), Slot);
}

Value *AdjointStore::take(IRBuilder<> &B, const Value *PV, unsigned K) {
  AllocaInst *Slot = slot(PV, K);
  Value *A =
      B.CreateLoad(PV->getType(), Slot, Sk.laneName(PV->getName() + ".d", K));
  B.CreateStore(ConstantFP::get(PV->getType(), 0.0), Slot);
  return A;
}

Lanes AdjointStore::takeAll(IRBuilder<> &B, const Value *PV) {
  Lanes A;
  for (unsigned K = 0; K < Sk.width(); ++K)
    A.push_back(take(B, PV, K));
  return A;
}

const Value *AdjointStore::valueOf(const AllocaInst *Slot) const {
  for (const auto &[Key, A] : Slots)
    if (A == Slot)
      return Key.first;
  return nullptr;
}

} // namespace enzpy
