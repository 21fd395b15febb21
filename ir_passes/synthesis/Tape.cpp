//===- Tape.cpp - the stack of values the reverse sweep needs -------------===//
#include "synthesis/Tape.h"
#include "driver/IRHelpers.h"
#include "numba/NumbaABI.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/IntrinsicInst.h"
#include "llvm/IR/MDBuilder.h"
#include "llvm/IR/Module.h"

using namespace llvm;

namespace enzpy {

Tape::Tape(Function &D, BasicBlock &Entry) : D(D) {
  LLVMContext &C = D.getContext();
  I64 = Type::getInt64Ty(C);
  Ptr = PointerType::getUnqual(C);
  IRBuilder<> B(&Entry, Entry.getFirstInsertionPt());
  Base = B.CreateAlloca(Ptr, nullptr, "enzpy.tape.base");
  Top = B.CreateAlloca(I64, nullptr, "enzpy.tape.top");
  Cap = B.CreateAlloca(I64, nullptr, "enzpy.tape.cap");
  FailStatus = B.CreateAlloca(B.getInt32Ty(), nullptr, "enzpy.fail.status");
  B.CreateStore(B.getInt32(numba::NoMemoryStatus), FailStatus);
  // The budget, in slots, read once per call.
  Value *Budget = B.CreateLoad(I64, budget(), "enzpy.tape.budget");
  Value *Header = ConstantInt::get(I64, HeaderBytes);
  Room =
      B.CreateSelect(B.CreateICmpULT(Budget, Header), ConstantInt::get(I64, 0),
                     B.CreateUDiv(B.CreateSub(Budget, Header),
                                  ConstantInt::get(I64, SlotBytes)),
                     "enzpy.tape.room");
  B.CreateStore(ConstantInt::get(I64, 0), Top);
  B.CreateStore(ConstantInt::get(I64, 0), Cap);
  // Start from the block the last call of this derivative left, if any
  // (its capacity is in its header; Cap holds 0 when there is none).
  Value *Got =
      B.CreateAtomicRMW(AtomicRMWInst::Xchg, spare(),
                        ConstantPointerNull::get(cast<PointerType>(Ptr)),
                        MaybeAlign(8), AtomicOrdering::SequentiallyConsistent);
  Value *Has = B.CreateIsNotNull(Got);
  B.CreateStore(B.CreateLoad(I64, B.CreateSelect(Has, Got, Cap)), Cap);
  B.CreateStore(
      B.CreateSelect(Has, B.CreateConstGEP1_64(B.getInt8Ty(), Got, HeaderBytes),
                     ConstantPointerNull::get(cast<PointerType>(Ptr))),
      Base);
}

Value *Tape::budget() {
  return D.getParent()->getOrInsertGlobal("enzpy_tape_budget",
                                          ArrayType::get(I64, 2));
}

BasicBlock *Tape::refusal(Value *Need, BasicBlock *From) {
  if (!Refuse) {
    Refuse = BasicBlock::Create(D.getContext(), "enzpy.tape.refused", &D);
    IRBuilder<> B(Refuse);
    RefusedNeed = B.CreatePHI(I64, 4, "enzpy.tape.refused.need");
    // The bytes asked for go to the budget's second word, for the message.
    B.CreateStore(
        B.CreateAdd(B.CreateMul(RefusedNeed, ConstantInt::get(I64, SlotBytes)),
                    ConstantInt::get(I64, HeaderBytes)),
        B.CreateConstGEP2_64(ArrayType::get(I64, 2), budget(), 0, 1));
    B.CreateStore(B.getInt32(numba::TapeBudgetStatus), FailStatus);
    B.CreateBr(failureBlock());
  }
  RefusedNeed->addIncoming(Need, From);
  return Refuse;
}

GlobalVariable *Tape::spare() {
  Module &M = *D.getParent();
  const char *Name = "enzpy.tape.spare";
  if (GlobalVariable *G = M.getNamedGlobal(Name))
    return G;
  return new GlobalVariable(
      M, Ptr, /*isConstant=*/false, GlobalValue::InternalLinkage,
      ConstantPointerNull::get(cast<PointerType>(Ptr)), Name);
}

Value *Tape::raw(IRBuilder<> &B, Value *BaseV) {
  return B.CreateSelect(
      B.CreateIsNull(BaseV), BaseV,
      B.CreateConstGEP1_64(B.getInt8Ty(), BaseV, -int64_t(HeaderBytes)));
}

BasicBlock *Tape::failureBlock() {
  if (Oom)
    return Oom;
  Oom = BasicBlock::Create(D.getContext(), "enzpy.tape.oom", &D);
  IRBuilder<> B(Oom);
  B.CreateCall(libcFree(*D.getParent()), {raw(B, B.CreateLoad(Ptr, Base))});
  B.CreateRet(B.CreateLoad(B.getInt32Ty(), FailStatus));
  return Oom;
}

void Tape::slotAccess(Instruction &I) {
  if (!Scope) {
    MDBuilder MDB(D.getContext());
    Scope = MDB.createAnonymousAliasScope(
        MDB.createAnonymousAliasScopeDomain("enzpy.tape"), "slots");
  }
  addAliasScopes(I, {Scope}, {});
  Slots.insert(&I);
}

void Tape::separate() {
  if (!Scope)
    return; // nothing was taped
  for (Instruction &I : instructions(D))
    if (isa<LoadInst, StoreInst, AnyMemIntrinsic>(I) && !Slots.contains(&I))
      addAliasScopes(I, {}, {Scope});
}

void Tape::emitFree(Instruction *Before) {
  // Keep the block for the next call (its pages are mapped already: a fresh
  // tape of many MB costs a page fault per 4 KB), unless it is larger than
  // SpareLimit; a block left there before is freed.
  IRBuilder<> B(Before);
  FunctionCallee Free = libcFree(*D.getParent());
  Value *Raw = raw(B, B.CreateLoad(Ptr, Base));
  Value *CapV = B.CreateLoad(I64, Cap);
  Value *Keep = B.CreateAnd(
      B.CreateIsNotNull(Raw),
      B.CreateICmpULE(CapV, ConstantInt::get(I64, SpareLimit / SlotBytes)));
  B.CreateStore(CapV, B.CreateSelect(Keep, Raw, Cap)); // the header
  Value *Null = ConstantPointerNull::get(cast<PointerType>(Ptr));
  Value *Old = B.CreateAtomicRMW(AtomicRMWInst::Xchg, spare(),
                                 B.CreateSelect(Keep, Raw, Null), MaybeAlign(8),
                                 AtomicOrdering::SequentiallyConsistent);
  B.CreateCall(Free, {Old});
  B.CreateCall(Free, {B.CreateSelect(Keep, Null, Raw)});
}

Tape::Frame::Frame(Tape &T, BasicBlock *Head) : T(T), Head(Head) {
  IRBuilder<> B(Head->getTerminator());
  Value *OldTop = B.CreateLoad(T.I64, T.Top, "enzpy.top");
  Base = B.CreateLoad(T.Ptr, T.Base, "enzpy.base");
  // The frame size is patched in by emitPush once every pop is known; a
  // plain instruction (not the builder) so that "- 0" is not folded away.
  NewTop = BinaryOperator::CreateSub(OldTop, ConstantInt::get(T.I64, 0),
                                     "enzpy.frame");
  NewTop->insertBefore(Head->getTerminator()->getIterator());
  B.SetInsertPoint(Head->getTerminator());
  B.CreateStore(NewTop, T.Top);
}

Value *Tape::Frame::pop(Value *Forward) {
  auto It = Popped.find(Forward);
  if (It != Popped.end())
    return It->second;
  IRBuilder<> B(Head->getTerminator());
  unsigned Slot = Pushed.size();
  Pushed.push_back(Forward);
  Value *Idx = B.CreateAdd(NewTop, ConstantInt::get(T.I64, Slot));
  Value *Addr = B.CreateGEP(T.I64, Base, Idx);
  LoadInst *L = B.CreateAlignedLoad(Forward->getType(), Addr, Align(8),
                                    Forward->getName() + ".tape");
  T.slotAccess(*L);
  Popped[Forward] = L;
  return L;
}

Value *Tape::emitEnsure(Instruction *Term, Value *Extra) {
  BasicBlock *BB = Term->getParent();
  LLVMContext &C = BB->getContext();
  BasicBlock *Tail = BB->splitBasicBlock(Term, BB->getName() + ".push");
  BB->getTerminator()->eraseFromParent();
  IRBuilder<> B(BB);
  Value *OldTop = B.CreateLoad(I64, Top);
  Value *Need = B.CreateAdd(OldTop, Extra);
  Value *CapV = B.CreateLoad(I64, Cap);
  BasicBlock *Grow = BasicBlock::Create(C, "enzpy.tape.grow", &D);
  BasicBlock *Grown = BasicBlock::Create(C, "enzpy.tape.grown", &D);
  MDBuilder MDB(C);
  B.CreateCondBr(B.CreateICmpUGT(Need, CapV), Grow, Tail,
                 MDB.createUnlikelyBranchWeights());
  // Grow: capacity max(2 * cap, need + 1024) slots, at most the budget's.
  B.SetInsertPoint(Grow);
  BasicBlock *Alloc = BasicBlock::Create(C, "enzpy.tape.alloc", &D);
  B.CreateCondBr(B.CreateICmpUGT(Need, Room), refusal(Need, Grow), Alloc,
                 MDB.createUnlikelyBranchWeights());
  B.SetInsertPoint(Alloc);
  Value *Old = B.CreateLoad(Ptr, Base);
  Value *Twice = B.CreateShl(CapV, 1);
  Value *Min = B.CreateAdd(Need, ConstantInt::get(I64, 1024));
  Value *Wanted = B.CreateSelect(B.CreateICmpUGT(Twice, Min), Twice, Min);
  // Need <= Room here: the cap keeps Need.
  Value *NewCap = B.CreateSelect(B.CreateICmpUGT(Wanted, Room), Room, Wanted);
  Value *Bytes =
      B.CreateAdd(B.CreateMul(NewCap, ConstantInt::get(I64, SlotBytes)),
                  ConstantInt::get(I64, HeaderBytes));
  Value *NewRaw =
      B.CreateCall(libcRealloc(*D.getParent()), {raw(B, Old), Bytes});
  B.CreateCondBr(B.CreateIsNull(NewRaw), failureBlock(), Grown,
                 MDB.createUnlikelyBranchWeights());
  B.SetInsertPoint(Grown);
  Value *NewBase = B.CreateConstGEP1_64(B.getInt8Ty(), NewRaw, HeaderBytes);
  B.CreateStore(NewBase, Base);
  B.CreateStore(NewCap, Cap);
  B.CreateBr(Tail);
  return OldTop;
}

void Tape::emitReserve(Instruction *Before, Value *Slots) {
  emitEnsure(Before, Slots);
}

void Tape::Frame::emitPush(BasicBlock *BB, bool Checked) {
  unsigned K = Pushed.size();
  NewTop->setOperand(1, ConstantInt::get(T.I64, K));
  if (K == 0)
    return;
  Instruction *Term = BB->getTerminator();
  Value *KV = ConstantInt::get(T.I64, K);
  Value *Top;
  if (Checked) {
    Top = T.emitEnsure(Term, KV);
  } else {
    IRBuilder<> B(Term);
    Top = B.CreateLoad(T.I64, T.Top);
  }
  // Store the frame and bump the top, just before the terminator.
  IRBuilder<> B(Term);
  Value *Base = B.CreateLoad(T.Ptr, T.Base);
  for (unsigned I = 0; I < K; ++I) {
    Value *Addr =
        B.CreateGEP(T.I64, Base, B.CreateAdd(Top, ConstantInt::get(T.I64, I)));
    T.slotAccess(*B.CreateAlignedStore(Pushed[I], Addr, Align(8)));
  }
  B.CreateStore(B.CreateAdd(Top, KV), T.Top);
}

} // namespace enzpy
