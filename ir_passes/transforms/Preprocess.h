//===- Preprocess.h - bring the primal into canonical form ------*- C++ -*-===//
//
// Takes numba's module (stage 2 of its pipeline: per-function simplified, not
// inlined, not vectorized), keeps only the requested function, promotes
// memory to registers, simplifies the CFG, gives loops preheaders, and
// splits numba's status-code returns into one normal exit (status 0 or -2:
// the function returned) and one raise exit (any other status: an exception
// is in *excinfo). Assumes the numba native calling convention
// i32 f(ptr retptr, ptr excinfo, args...).
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_PREPROCESS_H
#define ENZPY_PREPROCESS_H

#include "driver/Request.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/Error.h"

namespace llvm {
class Module;
class Function;
class BasicBlock;
} // namespace llvm

namespace enzpy {

struct CanonicalFunction {
  llvm::Function *F = nullptr;
  llvm::BasicBlock *NormalExit = nullptr; // `ret i32 0`; null if never returns
  llvm::BasicBlock *RaiseExit = nullptr;  // `ret i32 %status`; may be null
  /// Blocks from which the normal exit can be reached. Code outside them
  /// only runs on the way to raising an exception: it has no derivative.
  llvm::SmallPtrSet<const llvm::BasicBlock *, 32> Returning;
  /// Functions that had a body in the module but are still called after
  /// inlining: recursive ones.
  llvm::StringSet<> Recursive;
  bool returns(const llvm::BasicBlock *BB) const {
    return Returning.contains(BB);
  }
};

llvm::Expected<CanonicalFunction> preprocess(llvm::Module &M,
                                             const Request &Req);

} // namespace enzpy

#endif
