//===- RecursiveCalls.h - derivatives of recursive callees ------*- C++ -*-===//
//
// Preprocessing inlines every callee except recursive functions (members of
// a cycle of the call graph). A recursive call that takes or returns
// something differentiable (ActivityAnalysis::needsCallDerivative) is
// differentiated by calling a derivative of the callee, built here by the
// same pipeline as the requested one: a canonical copy of the callee, its
// type and activity analyses under a request derived from the call site, and
// the synthesizer of the requested mode. Calls inside that copy get
// derivatives the same way, so a recursive function (or a group of mutually
// recursive ones) ends up calling its own derivatives. One derivative is
// made per callee and activity pattern (which float arguments are active,
// which arrays carry shadows, whether the result is), shared by every call
// with that pattern.
//
//  - Forward mode: the callee's forward derivative, with its primal result
//    (return_primal): the caller's copy of the call becomes a call of it,
//    which computes the primal result and its tangents in one go.
//  - Reverse mode: the callee's combined reverse derivative G_rev(args,
//    shadows, dret) -> adjoints of its Active arguments. The forward sweep of
//    the caller calls the primal callee; the reverse of that call calls
//    G_rev, which runs the callee's body forward again (calling the primal
//    callee for its own recursive calls) and then its reverse. This is sound
//    only when the callee writes no memory that its caller can see (it reads
//    its arguments and returns a value): re-running it must not change what
//    the caller's forward sweep left behind. Other recursive functions are
//    refused; they need split mode (a tape per call). The cost: each level
//    re-runs the calls below it, O(depth^2) for linear recursion.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_RECURSIVECALLS_H
#define ENZPY_RECURSIVECALLS_H

#include "analysis/ActivityAnalysis.h"
#include "analysis/TypeAnalysis.h"
#include "driver/Request.h"
#include "transforms/Preprocess.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/Error.h"
#include <deque>
#include <memory>

namespace llvm {
class FunctionType;
class Module;
} // namespace llvm

namespace enzpy {

class RecursiveCalls {
public:
  RecursiveCalls(llvm::Module &M, const Request &Top) : M(M), Top(Top) {}

  /// Gives every recursive call of \p C that needs a derivative one (in
  /// C.CallDerivatives), analysing the primal of each new derivative the
  /// same way, transitively. Errors name the construct in the callee. In
  /// reverse mode, also checks that the memory each such call reads is
  /// unchanged when its reverse re-runs the callee. \p Req is C's request.
  llvm::Error plan(CanonicalFunction &C, const Request &Req,
                   const ActivityAnalysis &AA);
  /// Synthesizes the bodies of the derivatives planned.
  llvm::Error synthesizeAll();
  /// Removes the callees' canonical copies (once synthesis is done).
  void eraseCopies();

private:
  struct Derivative {
    Request Req;
    llvm::Function *Callee = nullptr;
    CallDerivative Call;
    CanonicalFunction C;
    std::unique_ptr<TypeAnalysis> TA;
    std::unique_ptr<ActivityAnalysis> AA;
  };
  Request requestFor(const llvm::CallBase &CB,
                     const ActivityAnalysis &AA) const;
  Derivative &derivativeFor(const llvm::CallBase &CB,
                            const ActivityAnalysis &AA, bool &Created);
  llvm::Error analyse(Derivative &D, const llvm::StringSet<> &Recursive);

  llvm::Module &M;
  const Request &Top;
  std::deque<Derivative> Derivatives; // stable addresses
  llvm::StringMap<Derivative *> ByKey;
};

/// The type of the derivative function \p Req asks for, of the primal
/// \p Primal whose result has type \p RetType (native/enzpy_native.h).
llvm::FunctionType *derivativeType(const llvm::Function &Primal,
                                   const Request &Req, llvm::Type *RetType);

} // namespace enzpy

#endif
