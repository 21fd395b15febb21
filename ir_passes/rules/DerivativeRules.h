//===- DerivativeRules.h - the table of scalar derivative rules -*- C++ -*-===//
//
// Every differentiable scalar operation is one row of one table: what it is
// (an instruction opcode such as "fmul", or a callee: an LLVM intrinsic's base
// name without "llvm.", or a libm name; "log1pf" finds the "log1p" row), how
// many operands it has, and its partial derivatives d result / d operand_i,
// written once in terms of the primal operands and result.
//
// No synthesizer knows any specific operation. From a row they derive:
//   forward mode   tangent   = sum_i partial_i * tangent_i     (sumTangents)
//   reverse mode   adjoint_i += partial_i * adjoint            (applyPartial)
//   batch mode     the partials are built once and shared by the W lanes.
// A partial is one of a few shapes (zero, one, minus one, a factor, "one
// where a condition holds, else zero", or "+1 where a condition holds, else
// -1") so that the synthesizers emit the cheapest code for it: no
// multiplications by one, selects instead of multiplications by 0/1 or by +-1
// (which would turn an infinite seed into NaN).
//
// At special points (docs/design.md §8.4) a zero wins over an infinite or
// undefined factor, twice: a rule writes a product whose factor can be zero
// where the other one is infinite with RuleExpr::zeroWins (pow at x = 0 with
// y = 0), and a partial that can be infinite or NaN where the primal is finite
// (sqrt at 0) is marked Partial::unbounded, so that applyPartial gives 0 for a
// zero seed: a path that carries no derivative (a branch a select dropped, a
// direction the caller did not ask for) does not turn the result into NaN.
//
// Operations whose derivative is not a set of scalar partials (BLAS products,
// memory copies and fills) are linear maps on memory: rules/BlasRules and
// rules/MemoryRules give each as a tangent and its transpose.
//
// Adding a derivative: add a row to the table in DerivativeRules.cpp.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_RULES_DERIVATIVERULES_H
#define ENZPY_RULES_DERIVATIVERULES_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/IR/IRBuilder.h"
#include <utility>

namespace enzpy {

/// d result / d operand, in a shape the synthesizers can apply cheaply.
struct Partial {
  enum Shape : unsigned char {
    Zero,
    One,
    MinusOne,
    Factor,     // V (a float of the result's type)
    WhereTrue,  // 1 where the i1 V holds, else 0
    WhereFalse, // 1 where the i1 V does not hold, else 0
    SignWhere,  // +1 where the i1 V holds, else -1
  };
  Shape S = Zero;
  llvm::Value *V = nullptr;
  /// A zero seed gives 0 (not 0 * inf = NaN): set by rows whose factor can
  /// be infinite or NaN where the primal is finite. Costs a select, so rows
  /// with bounded partials (fmul, sin, exp, ...) leave it unset.
  bool ZeroSeedWins = false;

  /// A factor; null means zero.
  Partial(llvm::Value *Factor = nullptr)
      : S(Factor ? Partial::Factor : Zero), V(Factor) {}
  /// A factor that can be infinite or NaN where the primal is finite.
  static Partial unbounded(llvm::Value *Factor) {
    Partial P(Factor);
    P.ZeroSeedWins = true;
    return P;
  }
  static Partial one() { return Partial(One, nullptr); }
  static Partial minusOne() { return Partial(MinusOne, nullptr); }
  /// 1 where \p Cond == \p When, else 0.
  static Partial where(llvm::Value *Cond, bool When) {
    return Partial(When ? WhereTrue : WhereFalse, Cond);
  }
  /// +1 where \p Cond holds, else -1.
  static Partial signWhere(llvm::Value *Cond) {
    return Partial(SignWhere, Cond);
  }
  bool isZero() const { return S == Zero; }

private:
  Partial(Shape S, llvm::Value *V) : S(S), V(V) {}
};

/// What a rule writes its partials with: the primal operands and result (as
/// available where the derivative is built; the reverse sweep fetches or
/// tapes each only when a rule asks for it) and a few arithmetic helpers,
/// so that rows read like the formulas they implement.
class RuleExpr {
public:
  RuleExpr(llvm::IRBuilder<> &B, llvm::Type *Ty,
           llvm::function_ref<llvm::Value *(unsigned)> Operand,
           llvm::function_ref<llvm::Value *()> Result,
           const llvm::Function *Callee = nullptr)
      : B(B), Ty(Ty), Callee(Callee), OperandFn(Operand), ResultFn(Result) {}

  llvm::Value *x(unsigned I) { return OperandFn(I); }
  llvm::Value *result() { return ResultFn(); }
  llvm::Value *c(double V);
  llvm::Value *add(llvm::Value *A, llvm::Value *C) {
    return B.CreateFAdd(A, C);
  }
  llvm::Value *sub(llvm::Value *A, llvm::Value *C) {
    return B.CreateFSub(A, C);
  }
  llvm::Value *mul(llvm::Value *A, llvm::Value *C) {
    return B.CreateFMul(A, C);
  }
  llvm::Value *div(llvm::Value *A, llvm::Value *C) {
    return B.CreateFDiv(A, C);
  }
  llvm::Value *neg(llvm::Value *A) { return B.CreateFNeg(A); }
  llvm::Value *sq(llvm::Value *A) { return mul(A, A); }
  llvm::Value *recip(llvm::Value *A) { return div(c(1.0), A); }
  /// +1 or -1 with the sign of \p A.
  llvm::Value *sign(llvm::Value *A) { return call("copysign", {c(1.0), A}); }
  llvm::Value *isZero(llvm::Value *A) { return B.CreateFCmpOEQ(A, c(0.0)); }
  /// A >= 0, true at both zeros.
  llvm::Value *nonNegative(llvm::Value *A) {
    return B.CreateFCmpOGE(A, c(0.0));
  }
  /// \p Z * \p A, and exactly 0 where \p Z is 0 even if \p A is infinite or
  /// NaN: for a product whose factor \p Z vanishes exactly where \p A blows
  /// up while the derivative has a limit (one select, no extra call).
  llvm::Value *zeroWins(llvm::Value *Z, llvm::Value *A) {
    return select(isZero(Z), c(0.0), mul(Z, A));
  }
  llvm::Value *select(llvm::Value *Cond, llvm::Value *A, llvm::Value *C) {
    return B.CreateSelect(Cond, A, C);
  }
  /// The math function \p Name (see emitMathCall).
  llvm::Value *call(llvm::StringRef Name, llvm::ArrayRef<llvm::Value *> Args);

  /// For rules that need more than the helpers.
  llvm::IRBuilder<> &B;
  /// The float type of the result.
  llvm::Type *Ty;
  /// The called function, for a call (rows for user rules read their
  /// partials function from it, rules/UserRules.h).
  const llvm::Function *Callee;

private:
  llvm::function_ref<llvm::Value *(unsigned)> OperandFn;
  llvm::function_ref<llvm::Value *()> ResultFn;
};

/// The partial derivative with respect to operand \p I.
using PartialFn = Partial (*)(RuleExpr &E, unsigned I);

struct ScalarRule {
  enum KeyKind : unsigned char { Opcode, Callee };
  KeyKind On;
  const char *Name;
  unsigned NumOperands;
  PartialFn Partial;
};

/// A library function numba implements with code whose derivative is not
/// the function's (np.logaddexp returns x + log(2) where x == y: the branch's
/// derivative is (1, 0), the function's (1/2, 1/2)). Preprocessing replaces
/// each call of the implementation with a call of a scalar function named
/// \c Row, defined with the implementation's body, and the table's row of
/// that name gives its derivative (docs/design.md §8.5).
struct LibraryFunction {
  /// The Python qualified name of numba's implementation.
  const char *Implementation;
  /// A math function (a row key: "exp") that the implementation calls and
  /// its namesakes do not, where one generator makes the implementations of
  /// several functions under one name (np.logaddexp calls exp, logaddexp2
  /// exp2); null where the name alone decides.
  const char *Calls;
  /// The row that differentiates it (a Callee key).
  const char *Row;
};

/// The library function \p Impl implements, or null.
const LibraryFunction *findLibraryFunction(const llvm::Function &Impl);
/// Every library function, for documentation and tests.
llvm::ArrayRef<LibraryFunction> libraryFunctions();

/// The row for \p I (an instruction by opcode, or a call by callee), or null.
const ScalarRule *findScalarRule(const llvm::Instruction &I);
/// The row for calls to \p Callee, or null. A function carrying a user
/// rule (rules/UserRules.h) has the user row, for any number of operands.
const ScalarRule *findCallRule(const llvm::Function *Callee);
/// A call of a math function that has a row and whose result depends on its
/// arguments only (an intrinsic, a libm declaration, or a function that
/// touches no memory): calling it again with the same arguments gives the
/// same value, so the reverse sweep may recompute it instead of taping it.
bool isPureMathCall(const llvm::CallBase &CB);
/// The operands a rule's partials refer to: a call's arguments, or an
/// instruction's operands.
const llvm::Value *ruleOperand(const llvm::Instruction &I, unsigned K);
unsigned ruleOperandCount(const llvm::Instruction &I);
/// The function \p I calls (for RuleExpr), or null.
const llvm::Function *ruleCallee(const llvm::Instruction &I);
/// Every row, for documentation and tests.
llvm::ArrayRef<ScalarRule> scalarRules();

/// \p Seed * \p P, converted to \p To (null when \p P is zero); 0 for a zero
/// seed when \p P is unbounded.
llvm::Value *applyPartial(llvm::IRBuilder<> &B, const Partial &P,
                          llvm::Value *Seed, llvm::Type *To);
/// sum_i P_i * tangent_i in \p To, null when every term is zero. A term's
/// tangent may be null (zero).
llvm::Value *
sumTangents(llvm::IRBuilder<> &B,
            llvm::ArrayRef<std::pair<Partial, llvm::Value *>> Terms,
            llvm::Type *To);

/// Calls the math function \p Name on \p Args: the LLVM intrinsic when there
/// is one, the libm function (with the "f" suffix for float) otherwise. The
/// call is marked as the derivative's own (markDerivativeCall).
llvm::Value *emitMathCall(llvm::IRBuilder<> &B, llvm::StringRef Name,
                          llvm::ArrayRef<llvm::Value *> Args);

/// Marks \p V, when it is a call, as computing the derivative (a rule's
/// partial, a value recomputed by the reverse sweep) rather than the primal:
/// post-optimization may give such calls vector variants (transforms/PostOpt)
/// that round differently from numba's scalar libm, which the primal's own
/// calls keep, so that the primal values a derivative computes equal f's.
void markDerivativeCall(llvm::Value *V);
bool isDerivativeCall(const llvm::CallBase &CB);

} // namespace enzpy

#endif
