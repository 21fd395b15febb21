//===- IRHelpers.cpp - C library and helper functions in a module ---------===//
#include "driver/IRHelpers.h"
#include "llvm/IR/DerivedTypes.h"
#include "llvm/IR/Instruction.h"

using namespace llvm;

namespace enzpy {

FunctionCallee libcMalloc(Module &M) {
  LLVMContext &C = M.getContext();
  return M.getOrInsertFunction("malloc",
                               FunctionType::get(PointerType::getUnqual(C),
                                                 {Type::getInt64Ty(C)}, false));
}

FunctionCallee libcCalloc(Module &M) {
  LLVMContext &C = M.getContext();
  Type *I64 = Type::getInt64Ty(C);
  return M.getOrInsertFunction(
      "calloc",
      FunctionType::get(PointerType::getUnqual(C), {I64, I64}, false));
}

FunctionCallee libcRealloc(Module &M) {
  LLVMContext &C = M.getContext();
  Type *Ptr = PointerType::getUnqual(C);
  return M.getOrInsertFunction(
      "realloc", FunctionType::get(Ptr, {Ptr, Type::getInt64Ty(C)}, false));
}

FunctionCallee libcFree(Module &M) {
  LLVMContext &C = M.getContext();
  return M.getOrInsertFunction(
      "free", FunctionType::get(Type::getVoidTy(C), {PointerType::getUnqual(C)},
                                false));
}

Function *internalHelper(Module &M, StringRef Name, FunctionType *FT,
                         bool &Fresh) {
  Fresh = false;
  if (Function *F = M.getFunction(Name))
    return F;
  Fresh = true;
  return Function::Create(FT, GlobalValue::InternalLinkage, Name, M);
}

void addAliasScopes(Instruction &I, ArrayRef<Metadata *> Scopes,
                    ArrayRef<Metadata *> NotScopes) {
  LLVMContext &Ctx = I.getContext();
  for (auto [Kind, Add] : {std::pair{LLVMContext::MD_alias_scope, Scopes},
                           std::pair{LLVMContext::MD_noalias, NotScopes}})
    if (!Add.empty())
      I.setMetadata(Kind, MDNode::concatenate(I.getMetadata(Kind),
                                              MDNode::get(Ctx, Add)));
}

} // namespace enzpy
