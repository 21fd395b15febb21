//===- DerivativeRules.cpp - derivatives of intrinsics and libm -----------===//
#include "rules/DerivativeRules.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/IR/Intrinsics.h"
#include "llvm/IR/Module.h"
#include <cmath>

using namespace llvm;

namespace enzpy {

static Constant *fp(Type *T, double V) { return ConstantFP::get(T, V); }

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
      {"acos", Intrinsic::acos},   {"atan", Intrinsic::atan}};
  auto It = Intrinsics.find(Name);
  if (It != Intrinsics.end())
    return B.CreateIntrinsic(It->second, {T}, Args);
  Module *M = B.GetInsertBlock()->getModule();
  std::string Sym = Name.str();
  if (T->isFloatTy())
    Sym += "f";
  SmallVector<Type *, 3> Params(Args.size(), T);
  FunctionCallee Fn =
      M->getOrInsertFunction(Sym, FunctionType::get(T, Params, false));
  return B.CreateCall(Fn, Args);
}

// Shorthands for the table below.
static Value *sq(IRBuilder<> &B, Value *X) { return B.CreateFMul(X, X); }
static Value *recip(IRBuilder<> &B, Value *X) {
  return B.CreateFDiv(fp(X->getType(), 1.0), X);
}
static Value *sign(IRBuilder<> &B, Value *X) {
  return emitMathCall(B, "copysign", {fp(X->getType(), 1.0), X});
}
#define X0 In.Arg(0)
#define X1 In.Arg(1)
#define R In.Result()
#define BB In.B
#define T0 In.Ty

static const CallRule Rules[] = {
    // Trigonometric and hyperbolic functions.
    {"sin", 1,
     [](RuleInputs &In, unsigned) { return emitMathCall(BB, "cos", {X0}); }},
    {"cos", 1,
     [](RuleInputs &In, unsigned) {
       return BB.CreateFNeg(emitMathCall(BB, "sin", {X0}));
     }},
    {"tan", 1,
     [](RuleInputs &In, unsigned) {
       return BB.CreateFAdd(fp(T0, 1.0), sq(BB, R));
     }},
    {"asin", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       return recip(BB, emitMathCall(BB, "sqrt",
                                     {BB.CreateFSub(fp(T0, 1.0), sq(BB, X))}));
     }},
    {"acos", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       return BB.CreateFNeg(
           recip(BB, emitMathCall(BB, "sqrt",
                                  {BB.CreateFSub(fp(T0, 1.0), sq(BB, X))})));
     }},
    {"atan", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       return recip(BB, BB.CreateFAdd(fp(T0, 1.0), sq(BB, X)));
     }},
    {"sinh", 1,
     [](RuleInputs &In, unsigned) { return emitMathCall(BB, "cosh", {X0}); }},
    {"cosh", 1,
     [](RuleInputs &In, unsigned) { return emitMathCall(BB, "sinh", {X0}); }},
    {"tanh", 1,
     [](RuleInputs &In, unsigned) {
       return BB.CreateFSub(fp(T0, 1.0), sq(BB, R));
     }},
    {"asinh", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       return recip(BB, emitMathCall(BB, "sqrt",
                                     {BB.CreateFAdd(sq(BB, X), fp(T0, 1.0))}));
     }},
    {"acosh", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       return recip(BB, emitMathCall(BB, "sqrt",
                                     {BB.CreateFSub(sq(BB, X), fp(T0, 1.0))}));
     }},
    {"atanh", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       return recip(BB, BB.CreateFSub(fp(T0, 1.0), sq(BB, X)));
     }},
    {"atan2", 2,
     [](RuleInputs &In, unsigned I) {
       // atan2(y, x): d/dy = x / (x^2 + y^2), d/dx = -y / (x^2 + y^2).
       Value *Y = X0, *X = X1;
       Value *Den = BB.CreateFAdd(sq(BB, X), sq(BB, Y));
       return I == 0 ? BB.CreateFDiv(X, Den)
                     : BB.CreateFDiv(BB.CreateFNeg(Y), Den);
     }},
    {"hypot", 2,
     [](RuleInputs &In, unsigned I) {
       Value *Num = I == 0 ? X0 : X1;
       Value *H = R;
       // At the origin the derivative is taken as 0, not NaN.
       Value *Zero = fp(T0, 0.0);
       return BB.CreateSelect(BB.CreateFCmpOEQ(H, Zero), Zero,
                              BB.CreateFDiv(Num, H));
     }},
    // Exponentials and logarithms.
    {"exp", 1, [](RuleInputs &In, unsigned) { return R; }},
    {"exp2", 1,
     [](RuleInputs &In, unsigned) {
       Value *Res = R;
       return BB.CreateFMul(Res, fp(T0, M_LN2));
     }},
    {"expm1", 1,
     [](RuleInputs &In, unsigned) {
       Value *Res = R;
       return BB.CreateFAdd(Res, fp(T0, 1.0));
     }},
    {"log", 1, [](RuleInputs &In, unsigned) { return recip(BB, X0); }},
    {"log2", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       return recip(BB, BB.CreateFMul(X, fp(T0, M_LN2)));
     }},
    {"log10", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       return recip(BB, BB.CreateFMul(X, fp(T0, M_LN10)));
     }},
    {"log1p", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       return recip(BB, BB.CreateFAdd(X, fp(T0, 1.0)));
     }},
    {"sqrt", 1,
     [](RuleInputs &In, unsigned) {
       Value *Res = R;
       return BB.CreateFDiv(fp(T0, 0.5), Res);
     }},
    {"cbrt", 1,
     [](RuleInputs &In, unsigned) {
       Value *Res = R;
       return recip(BB, BB.CreateFMul(fp(T0, 3.0), sq(BB, Res)));
     }},
    {"pow", 2,
     [](RuleInputs &In, unsigned I) -> Value * {
       Value *X = X0, *Y = X1;
       Type *T = In.Ty;
       if (I == 0) // y * x^(y-1)
         return BB.CreateFMul(
             Y, emitMathCall(BB, "pow", {X, BB.CreateFSub(Y, fp(T, 1.0))}));
       // x^y * log(x); taken as 0 at x == 0 (the limit for y > 0).
       Value *D = BB.CreateFMul(R, emitMathCall(BB, "log", {X}));
       return BB.CreateSelect(BB.CreateFCmpOEQ(X, fp(T, 0.0)), fp(T, 0.0), D);
     }},
    {"powi", 2,
     [](RuleInputs &In, unsigned I) -> Value * {
       if (I != 0)
         return nullptr; // integer exponent
       Value *X = X0, *N = X1;
       Value *NF = BB.CreateSIToFP(N, T0);
       Value *Nm1 = BB.CreateSub(N, ConstantInt::get(N->getType(), 1));
       Value *P = BB.CreateIntrinsic(Intrinsic::powi,
                                     {X->getType(), N->getType()}, {X, Nm1});
       return BB.CreateFMul(NF, P);
     }},
    {"erf", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       Value *E = emitMathCall(BB, "exp", {BB.CreateFNeg(sq(BB, X))});
       return BB.CreateFMul(fp(T0, 2.0 / std::sqrt(M_PI)), E);
     }},
    {"erfc", 1,
     [](RuleInputs &In, unsigned) {
       Value *X = X0;
       Value *E = emitMathCall(BB, "exp", {BB.CreateFNeg(sq(BB, X))});
       return BB.CreateFMul(fp(T0, -2.0 / std::sqrt(M_PI)), E);
     }},
    // Sign, magnitude, rounding.
    {"fabs", 1, [](RuleInputs &In, unsigned) { return sign(BB, X0); }},
    {"copysign", 2,
     [](RuleInputs &In, unsigned I) -> Value * {
       if (I != 0)
         return nullptr;
       return BB.CreateFMul(sign(BB, X0), sign(BB, X1));
     }},
    {"floor", 1, [](RuleInputs &, unsigned) -> Value * { return nullptr; }},
    {"ceil", 1, [](RuleInputs &, unsigned) -> Value * { return nullptr; }},
    {"trunc", 1, [](RuleInputs &, unsigned) -> Value * { return nullptr; }},
    {"round", 1, [](RuleInputs &, unsigned) -> Value * { return nullptr; }},
    {"roundeven", 1, [](RuleInputs &, unsigned) -> Value * { return nullptr; }},
    {"rint", 1, [](RuleInputs &, unsigned) -> Value * { return nullptr; }},
    {"nearbyint", 1, [](RuleInputs &, unsigned) -> Value * { return nullptr; }},
    // Fused and two-argument arithmetic.
    {"fma", 3,
     [](RuleInputs &In, unsigned I) -> Value * {
       if (I == 2)
         return fp(T0, 1.0);
       return I == 0 ? X1 : X0;
     }},
    {"fmuladd", 3,
     [](RuleInputs &In, unsigned I) -> Value * {
       if (I == 2)
         return fp(T0, 1.0);
       return I == 0 ? X1 : X0;
     }},
    {"fmod", 2,
     [](RuleInputs &In, unsigned I) -> Value * {
       if (I == 0)
         return fp(T0, 1.0);
       Value *Q = emitMathCall(BB, "trunc", {BB.CreateFDiv(X0, X1)});
       return BB.CreateFNeg(Q);
     }},
    // min/max: the derivative goes to the argument that was chosen (the
    // first one on ties).
    {"minnum", 2,
     [](RuleInputs &In, unsigned I) -> Value * {
       Value *C = BB.CreateFCmpOLE(X0, X1);
       if (I == 1)
         C = BB.CreateNot(C);
       return BB.CreateUIToFP(C, T0);
     }},
    {"maxnum", 2,
     [](RuleInputs &In, unsigned I) -> Value * {
       Value *C = BB.CreateFCmpOGE(X0, X1);
       if (I == 1)
         C = BB.CreateNot(C);
       return BB.CreateUIToFP(C, T0);
     }},
};

#undef X0
#undef X1
#undef R
#undef BB
#undef T0

const CallRule *findCallRule(const Function *Callee) {
  static const StringMap<const CallRule *> ByName = [] {
    StringMap<const CallRule *> M;
    for (const CallRule &Rule : Rules)
      M[Rule.Name] = &Rule;
    // Aliases: IEEE min/max variants and the libm spellings of rows.
    M["minimum"] = M["minimumnum"] = M["fmin"] = M["minnum"];
    M["maximum"] = M["maximumnum"] = M["fmax"] = M["maxnum"];
    return M;
  }();
  if (!Callee)
    return nullptr;
  StringRef Name;
  if (Callee->isIntrinsic()) {
    Name = Intrinsic::getBaseName(Callee->getIntrinsicID());
    if (!Name.consume_front("llvm."))
      return nullptr;
  } else {
    Name = Callee->getName();
  }
  auto It = ByName.find(Name);
  if (It == ByName.end() && !Callee->isIntrinsic() && Name.ends_with("f") &&
      Callee->getReturnType()->isFloatTy())
    It = ByName.find(Name.drop_back());
  if (It == ByName.end())
    return nullptr;
  if (Callee->arg_size() != It->second->NumArgs)
    return nullptr;
  return It->second;
}

} // namespace enzpy
