//===- MemoryScopes.cpp - what the derivative's memory accesses cannot alias =//
#include "synthesis/MemoryScopes.h"
#include "llvm/IR/MDBuilder.h"

using namespace llvm;

namespace enzpy {

MemoryScopes::MemoryScopes(LLVMContext &Ctx, unsigned Width) {
  MDBuilder MDB(Ctx);
  MDNode *Domain = MDB.createAnonymousAliasScopeDomain("enzpy.memory");
  Primal = MDB.createAnonymousAliasScope(Domain, "primal");
  for (unsigned K = 0; K < Width; ++K)
    Lanes.push_back(
        MDB.createAnonymousAliasScope(Domain, "lane " + std::to_string(K)));
}

void MemoryScopes::tag(Instruction &I, MDNode *Own) {
  LLVMContext &Ctx = I.getContext();
  SmallVector<Metadata *, 8> Others;
  if (Own != Primal)
    Others.push_back(Primal);
  for (MDNode *L : Lanes)
    if (L != Own)
      Others.push_back(L);
  I.setMetadata(LLVMContext::MD_alias_scope,
                MDNode::concatenate(I.getMetadata(LLVMContext::MD_alias_scope),
                                    MDNode::get(Ctx, {Own})));
  I.setMetadata(LLVMContext::MD_noalias,
                MDNode::concatenate(I.getMetadata(LLVMContext::MD_noalias),
                                    MDNode::get(Ctx, Others)));
}

void MemoryScopes::primal(Instruction &I) { tag(I, Primal); }

void MemoryScopes::lane(Instruction &I, unsigned K) { tag(I, Lanes[K]); }

} // namespace enzpy
