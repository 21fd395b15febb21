//===- MemoryRules.cpp - derivatives of memory fills and copies -----------===//
#include "rules/MemoryRules.h"
#include "driver/IRHelpers.h"
#include "llvm/IR/Module.h"

using namespace llvm;

namespace enzpy {

/// for k: s[k] += d[k]; d[k] = 0 — the adjoint of copying \p Elem values
/// from s to d. When the two overlap (memmove), every d[k] must be read
/// before the update of an s[j] at the same address: k runs upwards when d
/// lies above s and downwards otherwise (the opposite of the primal's own
/// safe order), so an overlapping copy needs no temporary.
static FunctionCallee copyAdjointFn(Module &M, Type *Elem) {
  LLVMContext &C = M.getContext();
  std::string Name =
      "enzpy.copy.adjoint." + std::string(Elem->isFloatTy() ? "f32" : "f64");
  Type *Ptr = PointerType::getUnqual(C), *I64 = Type::getInt64Ty(C);
  bool Fresh;
  Function *F = internalHelper(
      M, Name, FunctionType::get(Type::getVoidTy(C), {Ptr, Ptr, I64}, false),
      Fresh);
  if (!Fresh)
    return F;
  Argument *Dst = F->getArg(0), *Src = F->getArg(1), *Bytes = F->getArg(2);
  BasicBlock *Entry = BasicBlock::Create(C, "entry", F);
  BasicBlock *Loop = BasicBlock::Create(C, "loop", F);
  BasicBlock *Exit = BasicBlock::Create(C, "exit", F);
  IRBuilder<> B(Entry);
  unsigned Size = Elem->isFloatTy() ? 4 : 8;
  Value *N = B.CreateUDiv(Bytes, ConstantInt::get(I64, Size));
  Value *Up = B.CreateICmpUGE(Dst, Src, "up");
  Value *Last = B.CreateSub(N, ConstantInt::get(I64, 1));
  B.CreateCondBr(B.CreateICmpEQ(N, ConstantInt::get(I64, 0)), Exit, Loop);
  B.SetInsertPoint(Loop);
  PHINode *K = B.CreatePHI(I64, 2);
  K->addIncoming(ConstantInt::get(I64, 0), Entry);
  Value *Idx = B.CreateSelect(Up, K, B.CreateSub(Last, K));
  Value *PD = B.CreateGEP(Elem, Dst, Idx), *PS = B.CreateGEP(Elem, Src, Idx);
  Value *V = B.CreateLoad(Elem, PD);
  B.CreateStore(ConstantFP::get(Elem, 0.0), PD);
  B.CreateStore(B.CreateFAdd(B.CreateLoad(Elem, PS), V), PS);
  Value *Next = B.CreateAdd(K, ConstantInt::get(I64, 1));
  K->addIncoming(Next, Loop);
  B.CreateCondBr(B.CreateICmpEQ(Next, N), Exit, Loop);
  B.SetInsertPoint(Exit);
  B.CreateRetVoid();
  return F;
}

void emitMemoryTangent(IRBuilder<> &B, Value *DestShadow, Value *SrcShadow,
                       Value *Len, bool MayOverlap) {
  if (SrcShadow && MayOverlap)
    B.CreateMemMove(DestShadow, MaybeAlign(), SrcShadow, MaybeAlign(), Len);
  else if (SrcShadow)
    B.CreateMemCpy(DestShadow, MaybeAlign(), SrcShadow, MaybeAlign(), Len);
  else
    B.CreateMemSet(DestShadow, B.getInt8(0), Len, MaybeAlign());
}

void emitMemoryTranspose(IRBuilder<> &B, Type *Elem, Value *DestShadow,
                         Value *SrcShadow, Value *Len) {
  if (SrcShadow)
    B.CreateCall(copyAdjointFn(*B.GetInsertBlock()->getModule(), Elem),
                 {DestShadow, SrcShadow, Len});
  else
    B.CreateMemSet(DestShadow, B.getInt8(0), Len, MaybeAlign());
}

} // namespace enzpy
