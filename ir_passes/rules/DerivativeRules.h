//===- DerivativeRules.h - derivatives of intrinsics and libm ---*- C++ -*-===//
//
// The derivative of every math function the engine knows is one row of a
// table: the function's name (an LLVM intrinsic's base name such as
// "llvm.sin", or a libm name such as "log1p"; the float variant "log1pf"
// finds the same row) and a partial-derivative builder. The reverse sweep
// multiplies the partial by the result's adjoint and adds it to the
// argument's adjoint. Functions with a zero derivative (floor, ceil, ...)
// have rows whose builder returns null.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_DERIVATIVERULES_H
#define ENZPY_DERIVATIVERULES_H

#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/IR/IRBuilder.h"

namespace enzpy {

/// What a rule may ask for: the primal arguments and result as available in
/// the reverse sweep (each is fetched, or taped, only when asked for).
struct RuleInputs {
  llvm::IRBuilder<> &B;
  llvm::Type *Ty; // the float type of the call's result
  llvm::function_ref<llvm::Value *(unsigned)> Arg;
  llvm::function_ref<llvm::Value *()> Result;
};

/// d result / d argument I, or null when it is identically zero.
using PartialFn = llvm::Value *(*)(RuleInputs & In, unsigned I);

struct CallRule {
  const char *Name;
  unsigned NumArgs;
  PartialFn Partial;
};

/// The rule for a call's callee, or null when the table has none.
const CallRule *findCallRule(const llvm::Function *Callee);

/// Calls the math function \p Name on \p Args: the LLVM intrinsic when there
/// is one, the libm function (with the "f" suffix for float) otherwise.
llvm::Value *emitMathCall(llvm::IRBuilder<> &B, llvm::StringRef Name,
                          llvm::ArrayRef<llvm::Value *> Args);

} // namespace enzpy

#endif
