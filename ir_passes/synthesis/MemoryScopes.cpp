//===- MemoryScopes.cpp - what the derivative's memory accesses cannot alias =//
#include "synthesis/MemoryScopes.h"
#include "driver/IRHelpers.h"
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
  SmallVector<Metadata *, 8> Others;
  for (MDNode *S : Lanes)
    if (S != Own)
      Others.push_back(S);
  if (Own != Primal)
    Others.push_back(Primal);
  addAliasScopes(I, {Own}, Others);
}

void MemoryScopes::primal(Instruction &I) { tag(I, Primal); }

void MemoryScopes::lane(Instruction &I, unsigned K) { tag(I, Lanes[K]); }

} // namespace enzpy
