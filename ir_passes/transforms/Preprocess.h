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
// Functions that take part in recursion (a cycle of LLVM's call graph,
// found with scc_iterator) are not inlined: their calls stay calls, every
// other callee is inlined into the primal and into them, and their bodies
// stay in the module for driver/RecursiveCalls.h, which gives each one that
// a derivative reaches derivatives of its own (canonicalCopy).
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_PREPROCESS_H
#define ENZPY_PREPROCESS_H

#include "driver/Request.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/Error.h"

namespace llvm {
class CallBase;
class Module;
class Twine;
class Type;
class Function;
class BasicBlock;
} // namespace llvm

namespace enzpy {

/// Marks the recursive functions a derivative module carries (copies of
/// numba's and their derivatives): differentiating such a module again is
/// refused.
constexpr llvm::StringLiteral RecursiveCopyAttr = "enzpy-recursive-copy";

/// The derivative that stands for a recursive call in the derivative of its
/// caller: a derivative of the callee, of the request's ABI
/// (native/enzpy_native.h), internal to the module.
struct CallDerivative {
  llvm::Function *Fn = nullptr;
  Request Req;
  /// What the callee stores through retptr (null for None).
  llvm::Type *RetType = nullptr;
  /// The user parameters through which the callee may read memory.
  llvm::SmallVector<unsigned, 4> ReadParams;
};

struct CanonicalFunction {
  llvm::Function *F = nullptr;
  llvm::BasicBlock *NormalExit = nullptr; // `ret i32 0`; null if never returns
  llvm::BasicBlock *RaiseExit = nullptr;  // `ret i32 %status`; may be null
  /// Blocks from which the normal exit can be reached. Code outside them
  /// only runs on the way to raising an exception: it has no derivative.
  llvm::SmallPtrSet<const llvm::BasicBlock *, 32> Returning;
  /// The functions that take part in recursion: calls to them stay calls.
  llvm::StringSet<> Recursive;
  /// The recursive calls that need a derivative, and the derivative each
  /// one calls (filled in after the activity analysis).
  llvm::DenseMap<const llvm::CallBase *, CallDerivative> CallDerivatives;
  /// Headers of the loops numba.prange wrote (synthesis/ParallelLoops.h),
  /// with their "file:line".
  llvm::MapVector<const llvm::BasicBlock *, std::string> ParallelLoops;
  bool isRecursiveCall(const llvm::CallBase &CB) const;
  bool returns(const llvm::BasicBlock *BB) const {
    return Returning.contains(BB);
  }
};

llvm::Expected<CanonicalFunction> preprocess(llvm::Module &M,
                                             const Request &Req);

/// A canonical copy of the recursive function \p G (after preprocess()),
/// named \p Name: the primal of one of G's derivatives.
CanonicalFunction canonicalCopy(llvm::Function &G, const llvm::Twine &Name,
                                const llvm::StringSet<> &Recursive);

/// The type of what \p G stores through its retptr (null if nothing).
llvm::Type *storedReturnType(const llvm::Function &G);

} // namespace enzpy

#endif
