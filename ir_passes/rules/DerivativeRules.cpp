//===- DerivativeRules.cpp - the table of scalar derivative rules ---------===//
#include "rules/DerivativeRules.h"
#include "numba/NumbaABI.h"
#include "rules/UserRules.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/Intrinsics.h"
#include "llvm/IR/Module.h"
#include <array>
#include <cmath>
#include <limits>

using namespace llvm;

namespace enzpy {

Value *emitMathCall(IRBuilder<> &B, StringRef Name, ArrayRef<Value *> Args) {
  Type *T = Args[0]->getType();
  static const StringMap<Intrinsic::ID> Intrinsics = {
      {"sin", Intrinsic::sin},     {"cos", Intrinsic::cos},
      {"tan", Intrinsic::tan},     {"exp", Intrinsic::exp},
      {"exp2", Intrinsic::exp2},   {"log", Intrinsic::log},
      {"log2", Intrinsic::log2},   {"log10", Intrinsic::log10},
      {"sqrt", Intrinsic::sqrt},   {"fabs", Intrinsic::fabs},
      {"pow", Intrinsic::pow},     {"floor", Intrinsic::floor},
      {"trunc", Intrinsic::trunc}, {"copysign", Intrinsic::copysign},
      {"sinh", Intrinsic::sinh},   {"cosh", Intrinsic::cosh},
      {"tanh", Intrinsic::tanh},   {"asin", Intrinsic::asin},
      {"acos", Intrinsic::acos},   {"atan", Intrinsic::atan},
      {"rint", Intrinsic::rint}};
  Value *Call;
  auto It = Intrinsics.find(Name);
  if (It != Intrinsics.end()) {
    Call = B.CreateIntrinsic(It->second, {T}, Args);
  } else {
    Module *M = B.GetInsertBlock()->getModule();
    std::string Sym = Name.str();
    if (T->isFloatTy())
      Sym += "f";
    SmallVector<Type *, 3> Params(Args.size(), T);
    FunctionCallee Fn =
        M->getOrInsertFunction(Sym, FunctionType::get(T, Params, false));
    Call = B.CreateCall(Fn, Args);
  }
  markDerivativeCall(Call);
  return Call;
}

/// The metadata kind that marks the derivative's own calls.
static constexpr const char *DerivativeCallMD = "enzpy.derivative";

void markDerivativeCall(Value *V) {
  if (auto *CB = dyn_cast<CallBase>(V))
    CB->setMetadata(DerivativeCallMD, MDNode::get(CB->getContext(), {}));
}

bool isDerivativeCall(const CallBase &CB) {
  return CB.getMetadata(DerivativeCallMD) != nullptr;
}

Value *RuleExpr::c(double V) { return ConstantFP::get(Ty, V); }

Value *RuleExpr::call(StringRef Name, ArrayRef<Value *> Args) {
  return emitMathCall(B, Name, Args);
}

namespace {

using E = RuleExpr;
constexpr auto Op = ScalarRule::Opcode;
constexpr auto Fn = ScalarRule::Callee;

Partial one(E &, unsigned) { return Partial::one(); }
Partial zero(E &, unsigned) { return Partial(); }
/// A function of an integer-valued rounding: zero almost everywhere.
constexpr PartialFn Flat = zero;

/// 1 / sqrt(S): the derivative of the inverse trigonometric and hyperbolic
/// functions.
Value *rsqrt(E &X, Value *S) { return X.recip(X.call("sqrt", {S})); }

/// min/max: the derivative goes to the argument that was returned: the first
/// one on ties, the other one when one is NaN (fmax(x, NaN) is x).
Partial choose(E &X, unsigned I) {
  return Partial::where(X.B.CreateFCmpOEQ(X.result(), X.x(0)), I == 0);
}

/// fmod(a, b) = a - n * b with the integer n = trunc(a / b) of exact
/// arithmetic. The rounded a / b can be n + 1 (fmod(1, 0.1) is 0.1 - 5.5e-17:
/// n = 9, a / b = 10.0), so n is recovered from the exact remainder r:
/// (a - r) / b is n to within two roundings.
Partial fmod(E &X, unsigned I) {
  if (I == 0)
    return Partial::one();
  Value *N = X.div(X.sub(X.x(0), X.result()), X.x(1));
  return X.neg(X.call("rint", {N}));
}

/// fma(a, b, c) = a * b + c.
Partial fma(E &X, unsigned I) {
  if (I == 2)
    return Partial::one();
  return X.x(I == 0 ? 1 : 0);
}

/// \p D, and 1/2 where both operands are the same infinity (a tie, where
/// inf - inf makes the formula NaN).
Partial infiniteTieIsHalf(E &X, Value *D) {
  Value *Tie = X.B.CreateAnd(
      X.B.CreateFCmpOEQ(X.x(0), X.x(1)),
      X.B.CreateFCmpOEQ(X.call("fabs", {X.x(0)}),
                        X.c(std::numeric_limits<double>::infinity())));
  return Partial(X.select(Tie, X.c(0.5), D));
}

// One row per operation. Aliases (other names of a row) are in findRow.
const ScalarRule Rules[] = {
    // Arithmetic instructions.
    {Op, "fadd", 2, one},
    {Op, "fsub", 2,
     [](E &, unsigned I) {
       return I == 0 ? Partial::one() : Partial::minusOne();
     }},
    {Op, "fmul", 2, [](E &X, unsigned I) { return Partial(X.x(1 - I)); }},
    {Op, "fdiv", 2,
     [](E &X, unsigned I) -> Partial {
       // Unbounded: a / 0 in a branch a select drops (safe division).
       if (I == 0) // d(a/b)/da = 1/b
         return Partial::unbounded(X.recip(X.x(1)));
       // d(a/b)/db = -(a/b)/b
       return Partial::unbounded(X.neg(X.div(X.result(), X.x(1))));
     }},
    {Op, "frem", 2, fmod},
    {Op, "fneg", 1, [](E &, unsigned) { return Partial::minusOne(); }},
    {Op, "fpext", 1, one},
    {Op, "fptrunc", 1, one},
    {Op, "freeze", 1, one},
    // select(c, t, f): the derivative goes to the operand that was chosen.
    {Op, "select", 3,
     [](E &X, unsigned I) -> Partial {
       if (I == 0)
         return Partial(); // the condition
       return Partial::where(X.x(0), I == 1);
     }},

    // Trigonometric and hyperbolic functions.
    {Fn, "sin", 1,
     [](E &X, unsigned) { return Partial(X.call("cos", {X.x(0)})); }},
    {Fn, "cos", 1,
     [](E &X, unsigned) { return Partial(X.neg(X.call("sin", {X.x(0)}))); }},
    {Fn, "tan", 1,
     [](E &X, unsigned) { return Partial(X.add(X.c(1.0), X.sq(X.result()))); }},
    {Fn, "asin", 1,
     [](E &X, unsigned) {
       return Partial::unbounded(rsqrt(X, X.sub(X.c(1.0), X.sq(X.x(0)))));
     }},
    {Fn, "acos", 1,
     [](E &X, unsigned) {
       return Partial::unbounded(
           X.neg(rsqrt(X, X.sub(X.c(1.0), X.sq(X.x(0))))));
     }},
    {Fn, "atan", 1,
     [](E &X, unsigned) {
       return Partial(X.recip(X.add(X.c(1.0), X.sq(X.x(0)))));
     }},
    {Fn, "sinh", 1,
     [](E &X, unsigned) { return Partial(X.call("cosh", {X.x(0)})); }},
    {Fn, "cosh", 1,
     [](E &X, unsigned) { return Partial(X.call("sinh", {X.x(0)})); }},
    {Fn, "tanh", 1,
     [](E &X, unsigned) { return Partial(X.sub(X.c(1.0), X.sq(X.result()))); }},
    {Fn, "asinh", 1,
     [](E &X, unsigned) {
       return Partial(rsqrt(X, X.add(X.sq(X.x(0)), X.c(1.0))));
     }},
    {Fn, "acosh", 1,
     [](E &X, unsigned) {
       return Partial::unbounded(rsqrt(X, X.sub(X.sq(X.x(0)), X.c(1.0))));
     }},
    {Fn, "atanh", 1,
     [](E &X, unsigned) {
       return Partial::unbounded(X.recip(X.sub(X.c(1.0), X.sq(X.x(0)))));
     }},
    {Fn, "atan2", 2,
     [](E &X, unsigned I) {
       // atan2(y, x): d/dy = x / (x^2 + y^2), d/dx = -y / (x^2 + y^2).
       Value *Y = X.x(0), *Xv = X.x(1);
       Value *Den = X.add(X.sq(Xv), X.sq(Y));
       return Partial::unbounded(I == 0 ? X.div(Xv, Den)
                                        : X.div(X.neg(Y), Den));
     }},
    {Fn, "hypot", 2,
     [](E &X, unsigned I) {
       // x_i / hypot; taken as 0 at the origin, not NaN.
       Value *H = X.result();
       return Partial(X.select(X.isZero(H), X.c(0.0), X.div(X.x(I), H)));
     }},

    // Exponentials and logarithms.
    {Fn, "exp", 1, [](E &X, unsigned) { return Partial(X.result()); }},
    {Fn, "exp2", 1,
     [](E &X, unsigned) { return Partial(X.mul(X.result(), X.c(M_LN2))); }},
    {Fn, "expm1", 1,
     [](E &X, unsigned) { return Partial(X.add(X.result(), X.c(1.0))); }},
    {Fn, "log", 1,
     [](E &X, unsigned) { return Partial::unbounded(X.recip(X.x(0))); }},
    {Fn, "log2", 1,
     [](E &X, unsigned) {
       return Partial::unbounded(X.recip(X.mul(X.x(0), X.c(M_LN2))));
     }},
    {Fn, "log10", 1,
     [](E &X, unsigned) {
       return Partial::unbounded(X.recip(X.mul(X.x(0), X.c(M_LN10))));
     }},
    {Fn, "log1p", 1,
     [](E &X, unsigned) {
       return Partial::unbounded(X.recip(X.add(X.x(0), X.c(1.0))));
     }},
    {Fn, "sqrt", 1,
     [](E &X, unsigned) {
       // 0.5 / sqrt(x); +inf at both zeros (sqrt(-0) is -0), the one-sided
       // derivative.
       return Partial::unbounded(X.div(X.c(0.5), X.call("fabs", {X.result()})));
     }},
    {Fn, "cbrt", 1,
     [](E &X, unsigned) {
       return Partial::unbounded(X.recip(X.mul(X.c(3.0), X.sq(X.result()))));
     }},
    {Fn, "pow", 2,
     [](E &X, unsigned I) {
       Value *Base = X.x(0), *Exp = X.x(1);
       if (I == 0) // y * x^(y-1); 0 for y == 0 (x^0 == 1), even at x == 0
         return Partial::unbounded(
             X.zeroWins(Exp, X.call("pow", {Base, X.sub(Exp, X.c(1.0))})));
       // x^y * log(x); taken as 0 at x == 0 (the limit for y > 0).
       Value *D = X.mul(X.result(), X.call("log", {Base}));
       return Partial::unbounded(X.select(X.isZero(Base), X.c(0.0), D));
     }},
    {Fn, "powi", 2,
     [](E &X, unsigned I) -> Partial {
       if (I != 0)
         return Partial(); // an integer exponent
       // n * x^(n-1); 0 for n == 0, even at x == 0
       Value *Base = X.x(0), *N = X.x(1);
       Value *Nm1 = X.B.CreateSub(N, ConstantInt::get(N->getType(), 1));
       Value *P = X.B.CreateIntrinsic(
           Intrinsic::powi, {Base->getType(), N->getType()}, {Base, Nm1});
       return X.zeroWins(X.B.CreateSIToFP(N, X.Ty), P);
     }},
    {Fn, "erf", 1,
     [](E &X, unsigned) {
       Value *G = X.call("exp", {X.neg(X.sq(X.x(0)))});
       return Partial(X.mul(X.c(2.0 / std::sqrt(M_PI)), G));
     }},
    {Fn, "erfc", 1,
     [](E &X, unsigned) {
       Value *G = X.call("exp", {X.neg(X.sq(X.x(0)))});
       return Partial(X.mul(X.c(-2.0 / std::sqrt(M_PI)), G));
     }},

    // Sign, magnitude, rounding.
    // |x|: +1 for x >= 0, both zeros included (JAX's choice; the sign of a
    // zero is often an accident of rounding), -1 below.
    {Fn, "fabs", 1,
     [](E &X, unsigned) { return Partial::signWhere(X.nonNegative(X.x(0))); }},
    {Fn, "copysign", 2,
     [](E &X, unsigned I) -> Partial {
       if (I != 0)
         return Partial(); // only the sign is taken from the second
       // copysign(a, b) = |a| * sign(b): fabs's partial times sign(b).
       Value *S = X.sign(X.x(1));
       return X.select(X.nonNegative(X.x(0)), S, X.neg(S));
     }},
    {Fn, "floor", 1, Flat},
    {Fn, "ceil", 1, Flat},
    {Fn, "trunc", 1, Flat},
    {Fn, "round", 1, Flat},
    {Fn, "roundeven", 1, Flat},
    {Fn, "rint", 1, Flat},
    {Fn, "nearbyint", 1, Flat},

    // Fused and two-argument arithmetic.
    {Fn, "fma", 3, fma},
    {Fn, "fmuladd", 3, fma},
    {Fn, "fmod", 2, fmod},
    {Fn, "minnum", 2, choose},
    {Fn, "maxnum", 2, choose},
    // numba's C helper nextafter(x, y): x moved by one ulp towards y.
    {Fn, "numba_nextafter", 2,
     [](E &, unsigned I) { return I == 0 ? Partial::one() : Partial(); }},

    // Library functions (LibraryFunctions below): numba's implementation
    // computes the value, these rows the derivative.
    // logaddexp(a, b) = log(e^a + e^b): d/da = e^a / (e^a + e^b) = e^(a - r),
    // 1/2 at a tie (r = a + log 2); a smooth formula there, so that a second
    // derivative (hvp) is right too.
    {Fn, "enzpy.lib.logaddexp", 2,
     [](E &X, unsigned I) {
       return infiniteTieIsHalf(X, X.call("exp", {X.sub(X.x(I), X.result())}));
     }},
    // logaddexp2(a, b) = log2(2^a + 2^b): d/da = 2^(a - r).
    {Fn, "enzpy.lib.logaddexp2", 2,
     [](E &X, unsigned I) {
       return infiniteTieIsHalf(X, X.call("exp2", {X.sub(X.x(I), X.result())}));
     }},
};

/// numba's implementations that the rows above replace.
constexpr const char *LogAddExpImpl = "numba.np.npyfuncs._generate_logaddexp."
                                      "<locals>.ol_npy_logaddexp.<locals>.impl";
/// x ** n for a float x and an integer n: a square-and-multiply loop whose
/// iterations the reverse sweep would tape; its derivative is powi's.
constexpr const char *IntPowerImpl =
    "numba.cpython.numbers.int_power_impl.<locals>.int_power";
const LibraryFunction LibraryFunctions[] = {
    {LogAddExpImpl, "exp", "enzpy.lib.logaddexp"},
    {LogAddExpImpl, "exp2", "enzpy.lib.logaddexp2"},
    {IntPowerImpl, nullptr, "enzpy.lib.int_power"},
};

/// Other names of rows: IEEE min/max variants and libm spellings.
const std::pair<const char *, const char *> Aliases[] = {
    {"minimum", "minnum"},
    {"minimumnum", "minnum"},
    {"fmin", "minnum"},
    {"maximum", "maxnum"},
    {"maximumnum", "maxnum"},
    {"fmax", "maxnum"},
    {"enzpy.lib.int_power", "powi"},
};

const ScalarRule *findRow(ScalarRule::KeyKind On, StringRef Name) {
  using Index = std::array<StringMap<const ScalarRule *>, 2>;
  static const Index ByKey = [] {
    Index Maps;
    for (const ScalarRule &Rule : Rules)
      Maps[Rule.On][Rule.Name] = &Rule;
    for (auto &[Alias, Row] : Aliases)
      Maps[Fn][Alias] = Maps[Fn][Row];
    return Maps;
  }();
  return ByKey[On].lookup(Name);
}

} // namespace

const ScalarRule *findCallRule(const Function *Callee) {
  if (!Callee)
    return nullptr;
  if (Callee->hasFnAttribute(PartialsAttr))
    return userRule();
  StringRef Name;
  if (Callee->isIntrinsic()) {
    Name = Intrinsic::getBaseName(Callee->getIntrinsicID());
    if (!Name.consume_front("llvm."))
      return nullptr;
  } else {
    Name = Callee->getName();
  }
  const ScalarRule *Rule = findRow(Fn, Name);
  // libm's float variants: "log1pf" is log1p on floats.
  if (!Rule && !Callee->isIntrinsic() && Name.ends_with("f") &&
      Callee->getReturnType()->isFloatTy())
    Rule = findRow(Fn, Name.drop_back());
  if (!Rule || Callee->arg_size() != Rule->NumOperands)
    return nullptr;
  return Rule;
}

bool isPureMathCall(const CallBase &CB) {
  const Function *Callee = CB.getCalledFunction();
  if (!findCallRule(Callee))
    return false;
  return Callee->isIntrinsic() || Callee->isDeclaration() ||
         Callee->doesNotAccessMemory();
}

const ScalarRule *findScalarRule(const Instruction &I) {
  if (auto *CB = dyn_cast<CallBase>(&I))
    return findCallRule(CB->getCalledFunction());
  if (!I.getType()->isFloatingPointTy())
    return nullptr;
  const ScalarRule *Rule = findRow(Op, I.getOpcodeName());
  return Rule && Rule->NumOperands == I.getNumOperands() ? Rule : nullptr;
}

const Value *ruleOperand(const Instruction &I, unsigned K) {
  if (auto *CB = dyn_cast<CallBase>(&I))
    return CB->getArgOperand(K);
  return I.getOperand(K);
}

unsigned ruleOperandCount(const Instruction &I) {
  if (auto *CB = dyn_cast<CallBase>(&I))
    return CB->arg_size();
  return I.getNumOperands();
}

const Function *ruleCallee(const Instruction &I) {
  auto *CB = dyn_cast<CallBase>(&I);
  return CB ? CB->getCalledFunction() : nullptr;
}

ArrayRef<ScalarRule> scalarRules() { return Rules; }

ArrayRef<LibraryFunction> libraryFunctions() { return LibraryFunctions; }

const LibraryFunction *findLibraryFunction(const Function &Impl) {
  if (Impl.isDeclaration())
    return nullptr;
  std::string Name = numba::pythonQualifiedName(Impl.getName());
  auto calls = [&](StringRef Key) {
    for (const Instruction &I : instructions(Impl))
      if (auto *CB = dyn_cast<CallBase>(&I))
        if (const ScalarRule *R = findCallRule(CB->getCalledFunction());
            R && StringRef(R->Name) == Key)
          return true;
    return false;
  };
  for (const LibraryFunction &L : LibraryFunctions)
    if (Name == L.Implementation && (!L.Calls || calls(L.Calls)))
      return &L;
  return nullptr;
}

Value *applyPartial(IRBuilder<> &B, const Partial &P, Value *Seed, Type *To) {
  Value *V = nullptr;
  Value *Zero = Constant::getNullValue(Seed->getType());
  switch (P.S) {
  case Partial::Zero:
    return nullptr;
  case Partial::One:
    V = Seed;
    break;
  case Partial::MinusOne:
    V = B.CreateFNeg(Seed);
    break;
  case Partial::Factor:
    V = B.CreateFMul(Seed, P.V);
    // A zero seed wins (docs/design.md §8.4): where no derivative flows in (a
    // branch a select dropped, a direction or cotangent that is zero), an
    // infinite or NaN partial must not make 0 * inf = NaN. A finite constant
    // (1/b for a constant b) needs no guard.
    if (auto *C = dyn_cast<ConstantFP>(P.V);
        P.ZeroSeedWins && (!C || !C->getValueAPF().isFinite()))
      V = B.CreateSelect(B.CreateFCmpOEQ(Seed, Zero), Zero, V);
    break;
  case Partial::WhereTrue:
    V = B.CreateSelect(P.V, Seed, Zero);
    break;
  case Partial::WhereFalse:
    V = B.CreateSelect(P.V, Zero, Seed);
    break;
  case Partial::SignWhere:
    V = B.CreateSelect(P.V, Seed, B.CreateFNeg(Seed));
    break;
  }
  return V->getType() == To ? V : B.CreateFPCast(V, To);
}

Value *sumTangents(IRBuilder<> &B, ArrayRef<std::pair<Partial, Value *>> Terms,
                   Type *To) {
  SmallVector<std::pair<Partial, Value *>, 3> Live;
  for (const auto &T : Terms)
    if (T.second && !T.first.isZero())
      Live.push_back(T);
  // A choice between two operands is a select of their tangents.
  if (Live.size() == 2 && Live[0].first.V == Live[1].first.V) {
    Partial::Shape S0 = Live[0].first.S, S1 = Live[1].first.S;
    if ((S0 == Partial::WhereTrue && S1 == Partial::WhereFalse) ||
        (S0 == Partial::WhereFalse && S1 == Partial::WhereTrue)) {
      Value *T = S0 == Partial::WhereTrue ? Live[0].second : Live[1].second;
      Value *F = S0 == Partial::WhereTrue ? Live[1].second : Live[0].second;
      Value *V = B.CreateSelect(Live[0].first.V, T, F);
      return V->getType() == To ? V : B.CreateFPCast(V, To);
    }
  }
  Value *Sum = nullptr;
  for (auto &[P, Tangent] : Live) {
    Value *Term = applyPartial(B, P, Tangent, To);
    Sum = Sum ? B.CreateFAdd(Sum, Term) : Term;
  }
  return Sum;
}

} // namespace enzpy
