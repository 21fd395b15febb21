//===- BlasRules.cpp - derivatives of numba's BLAS calls ------------------===//
//
// Argument lists (numba/_lapack.c):
//   numba_xxdot(kind, conj, n, x, y, out)                  out = x . y
//   numba_xxgemv(kind, trans, m, n, alpha, a, lda, x, beta, y)
//       y = alpha op(A) x + beta y,   A is m x n (column-major, lda)
//   numba_xxgemm(kind, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta,
//                c, ldc)
//       C = alpha op(A) op(B) + beta C,  op(A) m x k, op(B) k x n, C m x n
//   numba_xxnrm2(kind, n, x, incx, out)                    out = ||x||_2
//
//===----------------------------------------------------------------------===//
#include "rules/BlasRules.h"
#include "driver/IRHelpers.h"
#include "numba/NumbaABI.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/Module.h"

using namespace llvm;

namespace enzpy {

SmallVector<unsigned, 2> BlasCall::inputs() const {
  switch (Kind) {
  case Dot:
    return {3, 4};
  case Gemv:
    return {5, 7};
  case Gemm:
    return {7, 9};
  case Nrm2:
    return {2};
  }
  return {};
}

unsigned BlasCall::output() const {
  switch (Kind) {
  case Dot:
    return 5;
  case Gemv:
    return 9;
  case Gemm:
    return 12;
  case Nrm2:
    return 4;
  }
  return 0;
}

/// The argument position of a scalar that gemv and gemm take by address (a
/// dot product and a norm have neither alpha nor beta).
static std::optional<unsigned> scalarArg(BlasCall::Op Kind, unsigned InGemv,
                                         unsigned InGemm) {
  if (Kind == BlasCall::Dot || Kind == BlasCall::Nrm2)
    return std::nullopt;
  return Kind == BlasCall::Gemv ? InGemv : InGemm;
}

std::optional<unsigned> BlasCall::alpha() const {
  return scalarArg(Kind, 4, 6);
}

std::optional<unsigned> BlasCall::beta() const {
  return scalarArg(Kind, 8, 11);
}

bool BlasCall::reverseReadsInput(unsigned I,
                                 function_ref<bool(unsigned)> IsActive) const {
  if (Kind == Nrm2)
    return IsActive(I);
  for (unsigned J : inputs())
    if (J != I && IsActive(J))
      return true;
  return false;
}

std::optional<BlasCall> matchBlasCall(const CallBase &CB) {
  const Function *F = CB.getCalledFunction();
  if (!F)
    return std::nullopt;
  BlasCall C{BlasCall::Dot, &CB, nullptr};
  StringRef N = F->getName();
  unsigned Args;
  if (N == numba::BlasDot) {
    C.Kind = BlasCall::Dot;
    Args = 6;
  } else if (N == numba::BlasGemv) {
    C.Kind = BlasCall::Gemv;
    Args = 10;
  } else if (N == numba::BlasGemm) {
    C.Kind = BlasCall::Gemm;
    Args = 14;
  } else if (N == numba::BlasNrm2) {
    C.Kind = BlasCall::Nrm2;
    Args = 5;
  } else {
    return std::nullopt;
  }
  if (CB.arg_size() != Args)
    return std::nullopt;
  auto *KindC = dyn_cast<ConstantInt>(CB.getArgOperand(0));
  if (!KindC)
    return std::nullopt;
  LLVMContext &Ctx = CB.getContext();
  if (KindC->getZExtValue() == 'd')
    C.Elem = Type::getDoubleTy(Ctx);
  else if (KindC->getZExtValue() == 's')
    C.Elem = Type::getFloatTy(Ctx);
  else
    return std::nullopt; // complex kinds
  // A dot's conj flag (np.vdot passes 1) changes nothing for real kinds.
  return C;
}

static FunctionCallee gemvFn(Module &M) {
  LLVMContext &C = M.getContext();
  Type *I8 = Type::getInt8Ty(C), *I64 = Type::getInt64Ty(C),
       *P = PointerType::getUnqual(C);
  return M.getOrInsertFunction(
      numba::BlasGemv,
      FunctionType::get(Type::getInt32Ty(C),
                        {I8, I8, I64, I64, P, P, I64, P, P, P}, false));
}

static FunctionCallee gemmFn(Module &M) {
  LLVMContext &C = M.getContext();
  Type *I8 = Type::getInt8Ty(C), *I64 = Type::getInt64Ty(C),
       *P = PointerType::getUnqual(C);
  return M.getOrInsertFunction(numba::BlasGemm,
                               FunctionType::get(Type::getInt32Ty(C),
                                                 {I8, I8, I8, I64, I64, I64, P,
                                                  P, I64, P, I64, P, P, I64},
                                                 false));
}

/// A stack slot holding \p V (BLAS takes scalars by address).
static Value *slot(IRBuilder<> &B, Value *V) {
  Function *F = B.GetInsertBlock()->getParent();
  IRBuilder<> EB(&F->getEntryBlock(), F->getEntryBlock().getFirstInsertionPt());
  AllocaInst *A = EB.CreateAlloca(V->getType());
  B.CreateStore(V, A);
  return A;
}

/// BLAS rejects leading dimensions below 1, even for empty matrices.
static Value *atLeastOne(IRBuilder<> &B, Value *V) {
  return B.CreateSelect(B.CreateICmpSLT(V, B.getInt64(1)), B.getInt64(1), V);
}

static Value *flip(IRBuilder<> &B, Value *Trans) {
  Value *IsN = B.CreateICmpEQ(Trans, B.getInt8('n'));
  return B.CreateSelect(IsN, B.getInt8('t'), B.getInt8('n'));
}

/// y[0..n) *= s (s == 0 stores zeros, whatever y held).
static void scale(IRBuilder<> &B, Type *Elem, Value *Y, Value *N, Value *S) {
  Function *F = B.GetInsertBlock()->getParent();
  LLVMContext &C = B.getContext();
  BasicBlock *Pre = B.GetInsertBlock();
  BasicBlock *Loop = BasicBlock::Create(C, "enzpy.blas.scale", F);
  BasicBlock *Done = BasicBlock::Create(C, "enzpy.blas.scaled", F);
  B.CreateCondBr(B.CreateICmpSGT(N, B.getInt64(0)), Loop, Done);
  B.SetInsertPoint(Loop);
  PHINode *K = B.CreatePHI(B.getInt64Ty(), 2);
  K->addIncoming(B.getInt64(0), Pre);
  Value *P = B.CreateGEP(Elem, Y, K);
  Value *Zero = ConstantFP::get(Elem, 0.0);
  Value *Scaled = B.CreateSelect(B.CreateFCmpOEQ(S, Zero), Zero,
                                 B.CreateFMul(B.CreateLoad(Elem, P), S));
  B.CreateStore(Scaled, P);
  Value *Next = B.CreateAdd(K, B.getInt64(1));
  K->addIncoming(Next, Loop);
  B.CreateCondBr(B.CreateICmpSLT(Next, N), Loop, Done);
  B.SetInsertPoint(Done);
}

/// A strided loop over x[0], x[incx], ..., x[(n - 1) incx] (and y at the
/// same offsets), as an internal helper of the module, so that the
/// derivative's own control flow is left as the synthesizers built it:
///   dot:  T enzpy.blas.sdot.T(n, x, y, incx) = sum_k x[k incx] y[k incx]
///   axpy: void enzpy.blas.saxpy.T(n, a, x, y, incx): y[k incx] += a x[k incx]
static Value *emitStrided(IRBuilder<> &B, Type *Elem, bool Dot, Value *N,
                          Value *A, Value *X, Value *Y, Value *Inc) {
  Module &M = *B.GetInsertBlock()->getModule();
  LLVMContext &C = M.getContext();
  Type *I64 = B.getInt64Ty(), *P = B.getPtrTy();
  FunctionType *FT = Dot ? FunctionType::get(Elem, {I64, P, P, I64}, false)
                         : FunctionType::get(Type::getVoidTy(C),
                                             {I64, Elem, P, P, I64}, false);
  std::string Name = (Twine(Dot ? "enzpy.blas.sdot." : "enzpy.blas.saxpy.") +
                      (Elem->isFloatTy() ? "f32" : "f64"))
                         .str();
  bool Fresh = false;
  Function *Fn = internalHelper(M, Name, FT, Fresh);
  if (Fresh) {
    auto Arg = Fn->arg_begin();
    Value *HN = &*Arg++;
    Value *HA = Dot ? nullptr : &*Arg++;
    Value *HX = &*Arg++, *HY = &*Arg++, *HInc = &*Arg++;
    BasicBlock *Entry = BasicBlock::Create(C, "entry", Fn);
    BasicBlock *Loop = BasicBlock::Create(C, "loop", Fn);
    BasicBlock *Done = BasicBlock::Create(C, "done", Fn);
    IRBuilder<> H(Entry);
    Value *Zero = ConstantFP::get(Elem, 0.0);
    H.CreateCondBr(H.CreateICmpSGT(HN, H.getInt64(0)), Loop, Done);
    H.SetInsertPoint(Loop);
    PHINode *K = H.CreatePHI(I64, 2);
    PHINode *Acc = H.CreatePHI(Elem, 2);
    K->addIncoming(H.getInt64(0), Entry);
    Acc->addIncoming(Zero, Entry);
    Value *Off = H.CreateMul(K, HInc);
    Value *Xk = H.CreateLoad(Elem, H.CreateGEP(Elem, HX, Off));
    Value *PY = H.CreateGEP(Elem, HY, Off);
    Value *Yk = H.CreateLoad(Elem, PY);
    Value *NextAcc = Acc;
    if (Dot)
      NextAcc = H.CreateFAdd(Acc, H.CreateFMul(Xk, Yk));
    else
      H.CreateStore(H.CreateFAdd(Yk, H.CreateFMul(HA, Xk)), PY);
    Value *Next = H.CreateAdd(K, H.getInt64(1));
    K->addIncoming(Next, Loop);
    Acc->addIncoming(NextAcc, Loop);
    H.CreateCondBr(H.CreateICmpSLT(Next, HN), Loop, Done);
    H.SetInsertPoint(Done);
    PHINode *Out = H.CreatePHI(Elem, 2);
    Out->addIncoming(Zero, Entry);
    Out->addIncoming(NextAcc, Loop);
    if (Dot)
      H.CreateRet(Out);
    else
      H.CreateRetVoid();
  }
  if (Dot)
    return B.CreateCall(Fn, {N, X, Y, Inc});
  return B.CreateCall(Fn, {N, A, X, Y, Inc});
}

/// 1 / r, and 0 where r == 0: the norm's derivative x / r is taken as 0 at
/// x = 0 (docs/design.md §8.4, as hypot at the origin).
static Value *safeRecip(IRBuilder<> &B, Value *R) {
  Value *Zero = ConstantFP::get(R->getType(), 0.0);
  return B.CreateSelect(B.CreateFCmpOEQ(R, Zero), Zero,
                        B.CreateFDiv(ConstantFP::get(R->getType(), 1.0), R));
}

/// ||x||, computed again by the same nrm2 call into a stack slot.
static Value *emitNorm(IRBuilder<> &B, const BlasCall &Call, Value *Kind,
                       Value *N, Value *X, Value *Inc) {
  Module &M = *B.GetInsertBlock()->getModule();
  const CallBase &CB = *Call.Call;
  FunctionCallee Nrm2 = M.getOrInsertFunction(CB.getCalledFunction()->getName(),
                                              CB.getFunctionType());
  Value *Out = slot(B, ConstantFP::get(Call.Elem, 0.0));
  B.CreateCall(Nrm2, {Kind, N, X, Inc, Out});
  return B.CreateLoad(Call.Elem, Out);
}

Value *emitBlasInputBytes(IRBuilder<> &B, const BlasCall &Call, unsigned I,
                          function_ref<Value *(unsigned)> arg) {
  Value *Size = B.getInt64(Call.Elem->isFloatTy() ? 4 : 8);
  Value *Count = nullptr;
  switch (Call.Kind) {
  case BlasCall::Dot:
    Count = arg(2);
    break;
  case BlasCall::Nrm2: // x[0], x[incx], ..., x[(n - 1) incx]
    Count = B.CreateSelect(
        B.CreateICmpSGT(arg(1), B.getInt64(0)),
        B.CreateAdd(B.CreateMul(B.CreateSub(arg(1), B.getInt64(1)), arg(3)),
                    B.getInt64(1)),
        B.getInt64(0));
    break;
  case BlasCall::Gemv: {
    Value *IsN = B.CreateICmpEQ(arg(1), B.getInt8('n'));
    if (I == 5) // A: lda x n
      Count = B.CreateMul(arg(6), arg(3));
    else // x: n for 'n', m for 't'
      Count = B.CreateSelect(IsN, arg(3), arg(2));
    break;
  }
  case BlasCall::Gemm: {
    // A is stored lda x (k for 'n', m for 't'); B is ldb x (n for 'n', k).
    Value *IsNA = B.CreateICmpEQ(arg(1), B.getInt8('n'));
    Value *IsNB = B.CreateICmpEQ(arg(2), B.getInt8('n'));
    if (I == 7)
      Count = B.CreateMul(arg(8), B.CreateSelect(IsNA, arg(5), arg(3)));
    else
      Count = B.CreateMul(arg(10), B.CreateSelect(IsNB, arg(4), arg(5)));
    break;
  }
  }
  return B.CreateMul(Count, Size);
}

void emitBlasReverse(IRBuilder<> &B, const BlasCall &Call,
                     BlasReverseInputs &In) {
  Module &M = *B.GetInsertBlock()->getModule();
  Type *Elem = Call.Elem;
  Value *Kind = In.Arg(0);
  Value *One = slot(B, ConstantFP::get(Elem, 1.0));
  switch (Call.Kind) {
  case BlasCall::Nrm2: {
    // r = ||x||: dx += dr x / r.
    Value *SOut = In.Shadow(4);
    Value *D = B.CreateLoad(Elem, SOut);
    B.CreateStore(ConstantFP::get(Elem, 0.0), SOut);
    Value *SX = In.Shadow(2);
    if (!SX)
      break;
    Value *N = In.Arg(1), *Inc = In.Arg(3), *X = In.Input(2);
    Value *Scale =
        B.CreateFMul(D, safeRecip(B, emitNorm(B, Call, Kind, N, X, Inc)));
    emitStrided(B, Elem, /*Dot=*/false, N, Scale, X, SX, Inc);
    break;
  }
  case BlasCall::Dot: {
    // out = x . y: dx += dout * y, dy += dout * x (as n x 1 gemv's).
    Value *N = In.Arg(2);
    Value *SOut = In.Shadow(5);
    Value *D = B.CreateLoad(Elem, SOut);
    B.CreateStore(ConstantFP::get(Elem, 0.0), SOut);
    Value *DSlot = slot(B, D);
    FunctionCallee Gemv = gemvFn(M);
    // dx += dout * y: gemv('n', m = n, n = 1, alpha = dout, A = y as an
    // n x 1 matrix, x = [1], beta = 1, y = dx); likewise dy.
    for (auto [Target, Other] : {std::pair{3u, 4u}, std::pair{4u, 3u}})
      if (Value *S = In.Shadow(Target))
        B.CreateCall(Gemv, {Kind, B.getInt8('n'), N, B.getInt64(1), DSlot,
                            In.Input(Other), atLeastOne(B, N), One, One, S});
    break;
  }
  case BlasCall::Gemv: {
    Value *Trans = In.Arg(1), *Mm = In.Arg(2), *Nn = In.Arg(3);
    Value *Lda = In.Arg(6);
    Value *IsN = B.CreateICmpEQ(Trans, B.getInt8('n'));
    Value *LenY = B.CreateSelect(IsN, Mm, Nn);
    Value *SY = In.Shadow(9);
    Value *AlphaSlot = slot(B, In.Alpha);
    FunctionCallee Gemm = gemmFn(M), Gemv = gemvFn(M);
    if (Value *SA = In.Shadow(5)) {
      // 'n': dA (m x n) += alpha * dy (m x 1) * x^T (1 x n)
      // 't': dA (m x n) += alpha * x (m x 1) * dy^T (1 x n)
      Value *X = In.Input(7);
      Value *Left = B.CreateSelect(IsN, SY, X);
      Value *Right = B.CreateSelect(IsN, X, SY);
      B.CreateCall(Gemm, {Kind, B.getInt8('n'), B.getInt8('n'), Mm, Nn,
                          B.getInt64(1), AlphaSlot, Left, atLeastOne(B, Mm),
                          Right, B.getInt64(1), One, SA, Lda});
    }
    if (Value *SX = In.Shadow(7))
      // dx += alpha * op(A)^T dy
      B.CreateCall(Gemv, {Kind, flip(B, Trans), Mm, Nn, AlphaSlot, In.Input(5),
                          Lda, SY, One, SX});
    scale(B, Elem, SY, LenY, In.Beta);
    break;
  }
  case BlasCall::Gemm: {
    Value *TA = In.Arg(1), *TB = In.Arg(2);
    Value *Mm = In.Arg(3), *Nn = In.Arg(4), *Kk = In.Arg(5);
    Value *Lda = In.Arg(8), *Ldb = In.Arg(10), *Ldc = In.Arg(13);
    Value *SC = In.Shadow(12);
    Value *AlphaSlot = slot(B, In.Alpha);
    FunctionCallee Gemm = gemmFn(M);
    Value *IsNA = B.CreateICmpEQ(TA, B.getInt8('n'));
    Value *IsNB = B.CreateICmpEQ(TB, B.getInt8('n'));
    // dX += alpha * (a product of dC and the other input), whose operands
    // depend on whether X was transposed; each pair is (when 'n', when 't').
    using Choice = std::pair<Value *, Value *>;
    auto accumulate = [&](Value *IsN, Choice T1, Choice T2, Choice M1,
                          Choice N1, Value *K1, Choice X, Choice LdX, Choice Y,
                          Choice LdY, Value *Out, Value *LdOut) {
      auto pick = [&](Choice C) {
        return B.CreateSelect(IsN, C.first, C.second);
      };
      B.CreateCall(Gemm,
                   {Kind, pick(T1), pick(T2), pick(M1), pick(N1), K1, AlphaSlot,
                    pick(X), pick(LdX), pick(Y), pick(LdY), One, Out, LdOut});
    };
    Value *N = B.getInt8('n'), *T = B.getInt8('t');
    if (Value *SA = In.Shadow(7)) {
      // 'n': dA (m x k) += alpha dC op(B)^T   = gemm(n, flip(tb), m, k, n)
      // 't': dA (k x m) += alpha op(B) dC^T   = gemm(tb, t, k, m, n)
      Value *Bv = In.Input(9);
      accumulate(IsNA, {N, TB}, {flip(B, TB), T}, {Mm, Kk}, {Kk, Mm}, Nn,
                 {SC, Bv}, {Ldc, Ldb}, {Bv, SC}, {Ldb, Ldc}, SA, Lda);
    }
    if (Value *SB = In.Shadow(9)) {
      // 'n': dB (k x n) += alpha op(A)^T dC   = gemm(flip(ta), n, k, n, m)
      // 't': dB (n x k) += alpha dC^T op(A)   = gemm(t, ta, n, k, m)
      Value *Av = In.Input(7);
      accumulate(IsNB, {flip(B, TA), T}, {N, TA}, {Kk, Nn}, {Nn, Kk}, Mm,
                 {Av, SC}, {Lda, Ldc}, {SC, Av}, {Ldc, Lda}, SB, Ldb);
    }
    // dC_before = beta dC (column by column would respect ldc; numba's C is
    // a fresh contiguous array, ldc == m).
    scale(B, Elem, SC, B.CreateMul(Ldc, Nn), In.Beta);
    break;
  }
  }
}

void emitBlasTangent(IRBuilder<> &B, const BlasCall &Call,
                     BlasTangentInputs &In) {
  const CallBase &CB = *Call.Call;
  Module &M = *B.GetInsertBlock()->getModule();
  FunctionCallee Callee = M.getOrInsertFunction(
      CB.getCalledFunction()->getName(), CB.getFunctionType());
  unsigned Out = Call.output();
  auto call = [&](ArrayRef<std::pair<unsigned, Value *>> Replace) {
    SmallVector<Value *, 14> Args;
    for (unsigned I = 0; I < CB.arg_size(); ++I)
      Args.push_back(In.Arg(I));
    for (auto &[I, V] : Replace)
      Args[I] = V;
    B.CreateCall(Callee, Args);
  };
  SmallVector<std::pair<unsigned, Value *>, 2> Active;
  for (unsigned I : Call.inputs())
    if (Value *S = In.Shadow(I))
      Active.push_back({I, S});
  Value *SOut = In.Shadow(Out);
  if (Call.Kind == BlasCall::Nrm2) {
    // dr = <x, dx> / r, from the primal result the call just wrote.
    Value *N = In.Arg(1), *X = In.Arg(2), *Inc = In.Arg(3);
    Value *R = B.CreateLoad(Call.Elem, In.Arg(4));
    Value *Sum = ConstantFP::get(Call.Elem, 0.0);
    if (Value *SX = In.Shadow(2))
      Sum = emitStrided(B, Call.Elem, /*Dot=*/true, N, nullptr, X, SX, Inc);
    B.CreateStore(B.CreateFMul(Sum, safeRecip(B, R)), SOut);
    return;
  }
  if (Call.Kind == BlasCall::Dot) {
    // -0.0 is the identity of fadd: a single term folds to itself.
    Value *Sum = ConstantFP::getNegativeZero(Call.Elem);
    Function *F = B.GetInsertBlock()->getParent();
    for (auto &[I, S] : Active) {
      IRBuilder<> EB(&F->getEntryBlock(),
                     F->getEntryBlock().getFirstInsertionPt());
      AllocaInst *Tmp = EB.CreateAlloca(Call.Elem);
      call({{I, S}, {Out, Tmp}});
      Sum = B.CreateFAdd(Sum, B.CreateLoad(Call.Elem, Tmp));
    }
    B.CreateStore(Sum, SOut);
    return;
  }
  if (Active.empty()) {
    // alpha = 0: BLAS reads neither input and leaves beta * dout.
    call({{Out, SOut},
          {*Call.alpha(), slot(B, ConstantFP::get(Call.Elem, 0.0))}});
    return;
  }
  bool First = true;
  for (auto &[I, S] : Active) {
    SmallVector<std::pair<unsigned, Value *>, 3> Replace = {{I, S},
                                                            {Out, SOut}};
    if (!First) // the second product accumulates
      Replace.push_back(
          {*Call.beta(), slot(B, ConstantFP::get(Call.Elem, 1.0))});
    call(Replace);
    First = false;
  }
}

} // namespace enzpy
