//===- MemoryScopes.h - what the derivative's memory accesses cannot alias ===//
//
// A derivative touches three kinds of memory that the calling contract keeps
// apart: the primal's (arguments, their allocations), each batch lane's
// shadows, and the tape. Python refuses a shadow that shares memory with any
// primal array or with another lane's shadow before anything runs
// (_aliasing.py, design §3.3 c), and shadows of the function's own
// allocations are fresh allocations. Alias analysis cannot see any of this
// once pointers pass through phis, stack slots or the arguments of a call
// without `noalias`, and the loop vectorizer then checks every pair of them
// at run time, or gives up when there are too many pairs (a batch of eight
// lanes over three rotated buffers).
//
// This unit states it with scoped-noalias metadata: one domain per
// derivative, a scope for primal memory and one per lane. An access tagged
// with a scope is `!noalias` of every other scope. Only accesses whose class
// synthesis knows are tagged; everything else (calls, rule wrappers, code
// inlined later) makes no claim.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SYNTHESIS_MEMORYSCOPES_H
#define ENZPY_SYNTHESIS_MEMORYSCOPES_H

#include "llvm/ADT/SmallVector.h"
#include "llvm/IR/Instruction.h"
#include "llvm/IR/Metadata.h"

namespace enzpy {

class MemoryScopes {
public:
  MemoryScopes(llvm::LLVMContext &Ctx, unsigned Width);

  /// \p I (a load or store) touches primal memory only.
  void primal(llvm::Instruction &I);
  /// \p I (a load or store) touches the shadow memory of lane \p K only.
  void lane(llvm::Instruction &I, unsigned K);

private:
  llvm::MDNode *Primal;
  llvm::SmallVector<llvm::MDNode *, 4> Lanes;
  void tag(llvm::Instruction &I, llvm::MDNode *Own);
};

} // namespace enzpy

#endif
