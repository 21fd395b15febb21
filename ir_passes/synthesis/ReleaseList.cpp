//===- ReleaseList.cpp - references a reverse derivative must drop --------===//
#include "synthesis/ReleaseList.h"
#include "driver/IRHelpers.h"
#include "numba/NumbaABI.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/Module.h"

using namespace llvm;

namespace enzpy {

static StructType *stateType(LLVMContext &C) {
  Type *Ptr = PointerType::getUnqual(C), *I64 = Type::getInt64Ty(C);
  return StructType::get(C, {Ptr, I64, I64});
}

/// ptr append(ptr state, ptr item): the list's storage, or null when it
/// could not grow.
static Function *appendFn(Module &M) {
  LLVMContext &C = M.getContext();
  Type *Ptr = PointerType::getUnqual(C), *I64 = Type::getInt64Ty(C);
  StructType *ST = stateType(C);
  bool Fresh;
  Function *F =
      internalHelper(M, "enzpy.release.append",
                     FunctionType::get(Ptr, {Ptr, Ptr}, false), Fresh);
  if (!Fresh)
    return F;
  BasicBlock *Entry = BasicBlock::Create(C, "entry", F);
  BasicBlock *Grow = BasicBlock::Create(C, "grow", F);
  BasicBlock *Grown = BasicBlock::Create(C, "grown", F);
  BasicBlock *Store = BasicBlock::Create(C, "store", F);
  BasicBlock *Fail = BasicBlock::Create(C, "fail", F);
  Argument *S = F->getArg(0), *Item = F->getArg(1);
  IRBuilder<> B(Entry);
  Value *BaseP = B.CreateStructGEP(ST, S, 0),
        *SizeP = B.CreateStructGEP(ST, S, 1),
        *CapP = B.CreateStructGEP(ST, S, 2);
  Value *Base = B.CreateLoad(Ptr, BaseP), *Size = B.CreateLoad(I64, SizeP),
        *Cap = B.CreateLoad(I64, CapP);
  B.CreateCondBr(B.CreateICmpULT(Size, Cap), Store, Grow);
  B.SetInsertPoint(Grow);
  Value *NewCap = B.CreateSelect(B.CreateICmpEQ(Cap, B.getInt64(0)),
                                 B.getInt64(16), B.CreateShl(Cap, 1));
  Value *NewBase =
      B.CreateCall(libcRealloc(M), {Base, B.CreateMul(NewCap, B.getInt64(8))});
  B.CreateCondBr(B.CreateIsNull(NewBase), Fail, Grown);
  B.SetInsertPoint(Grown);
  B.CreateStore(NewBase, BaseP);
  B.CreateStore(NewCap, CapP);
  B.CreateBr(Store);
  B.SetInsertPoint(Store);
  PHINode *Storage = B.CreatePHI(Ptr, 2);
  Storage->addIncoming(Base, Entry);
  Storage->addIncoming(NewBase, Grown);
  B.CreateStore(Item, B.CreateGEP(Ptr, Storage, Size));
  B.CreateStore(B.CreateAdd(Size, B.getInt64(1)), SizeP);
  B.CreateRet(Storage);
  B.SetInsertPoint(Fail);
  B.CreateRet(ConstantPointerNull::get(cast<PointerType>(Ptr)));
  return F;
}

/// void releaseAll(ptr state): NRT_decref (or NRT_Free) every item (nulls
/// skipped), then free the list's storage.
static Function *releaseFn(Module &M, ReleaseList::Kind K) {
  LLVMContext &C = M.getContext();
  Type *Ptr = PointerType::getUnqual(C), *I64 = Type::getInt64Ty(C);
  StructType *ST = stateType(C);
  bool Fresh;
  bool Raw = K == ReleaseList::Kind::RawBuffers;
  Function *F = internalHelper(
      M, Raw ? "enzpy.release.all.raw" : "enzpy.release.all",
      FunctionType::get(Type::getVoidTy(C), {Ptr}, false), Fresh);
  if (!Fresh)
    return F;
  BasicBlock *Entry = BasicBlock::Create(C, "entry", F);
  BasicBlock *Loop = BasicBlock::Create(C, "loop", F);
  BasicBlock *Drop = BasicBlock::Create(C, "drop", F);
  BasicBlock *Next = BasicBlock::Create(C, "next", F);
  BasicBlock *Done = BasicBlock::Create(C, "done", F);
  Argument *S = F->getArg(0);
  IRBuilder<> B(Entry);
  Value *BaseP = B.CreateStructGEP(ST, S, 0),
        *SizeP = B.CreateStructGEP(ST, S, 1),
        *CapP = B.CreateStructGEP(ST, S, 2);
  Value *Base = B.CreateLoad(Ptr, BaseP), *Size = B.CreateLoad(I64, SizeP);
  B.CreateCondBr(B.CreateICmpEQ(Size, B.getInt64(0)), Done, Loop);
  B.SetInsertPoint(Loop);
  PHINode *I = B.CreatePHI(I64, 2);
  I->addIncoming(B.getInt64(0), Entry);
  Value *Item = B.CreateLoad(Ptr, B.CreateGEP(Ptr, Base, I));
  B.CreateCondBr(B.CreateIsNull(Item), Next, Drop);
  B.SetInsertPoint(Drop);
  B.CreateCall(Raw ? numba::rawFreeFunction(M) : numba::decrefFunction(M),
               {Item});
  B.CreateBr(Next);
  B.SetInsertPoint(Next);
  Value *I1 = B.CreateAdd(I, B.getInt64(1));
  I->addIncoming(I1, Next);
  B.CreateCondBr(B.CreateICmpULT(I1, Size), Loop, Done);
  B.SetInsertPoint(Done);
  B.CreateCall(libcFree(M), {Base});
  B.CreateStore(ConstantPointerNull::get(cast<PointerType>(Ptr)), BaseP);
  B.CreateStore(B.getInt64(0), SizeP);
  B.CreateStore(B.getInt64(0), CapP);
  B.CreateRetVoid();
  return F;
}

ReleaseList::ReleaseList(Function &D, BasicBlock &Entry, Kind K) : D(D), K(K) {
  LLVMContext &C = D.getContext();
  IRBuilder<> B(&Entry, Entry.getFirstInsertionPt());
  State = B.CreateAlloca(stateType(C), nullptr, "enzpy.release");
  B.SetInsertPoint(Entry.getTerminator());
  B.CreateStore(Constant::getNullValue(stateType(C)), State);
}

Instruction *ReleaseList::emitAppend(IRBuilder<> &B, Value *Item) {
  return B.CreateCall(appendFn(*D.getParent()), {State, Item});
}

void ReleaseList::emitReleaseAll(Instruction *Before) {
  IRBuilder<> B(Before);
  B.CreateCall(releaseFn(*D.getParent(), K), {State});
}

} // namespace enzpy
