//===- UserRules.cpp - derivative rules registered from Python ------------===//
#include "rules/UserRules.h"
#include "driver/Diagnostics.h"
#include "driver/Request.h"
#include "numba/NumbaABI.h"
#include "rules/CustomRules.h"
#include "rules/DerivativeRules.h"
#include "transforms/Preprocess.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/IntrinsicInst.h"
#include "llvm/IR/Module.h"

using namespace llvm;

namespace enzpy {

namespace {

/// On a partials function: kept although nothing calls it before synthesis.
constexpr StringLiteral RuleHelperAttr = "enzpy-rule-helper";
/// The name the rule was registered under, for messages.
constexpr StringLiteral RuleNameAttr = "enzpy-rule-name";
/// The float types the partials function returns: 'd' or 'f' each.
constexpr StringLiteral OutputsAttr = "enzpy-rule-outputs";
/// The partials function takes the function's result as a last argument.
constexpr StringLiteral WithResultAttr = "enzpy-rule-with-result";
/// On a function that calls a C function through its address
/// (addressFunction).
constexpr StringLiteral AddressFnAttr = "enzpy-address-function";

unsigned hiddenParams(const Function &F) {
  Attribute A = F.getFnAttribute(HiddenParamsAttr);
  unsigned N = 0;
  if (A.isStringAttribute())
    A.getValueAsString().getAsInteger(10, N);
  return N;
}

/// What the partials function of \p W's rule returns, as a structure of
/// floats (numba's layout of a float or of a tuple of floats).
StructType *partialsType(const Function &W) {
  SmallVector<Type *, 3> Elems;
  StringRef Outs = W.getFnAttribute(OutputsAttr).getValueAsString();
  for (char C : Outs)
    Elems.push_back(C == 'f' ? Type::getFloatTy(W.getContext())
                             : Type::getDoubleTy(W.getContext()));
  return StructType::get(W.getContext(), Elems);
}

/// The partial derivative of a call of a rule-carrying function with
/// respect to its operand \p I: element k of what the partials function
/// returns for the primal arguments, k counting the float arguments before
/// \p I. The partials function follows numba's calling convention; if it
/// raises, the partial is NaN (loud, never a plausible number).
Partial userPartial(RuleExpr &X, unsigned I) {
  const Function *Callee = X.Callee;
  assert(Callee && Callee->hasFnAttribute(PartialsAttr));
  unsigned Hidden = hiddenParams(*Callee);
  FunctionType *FT = Callee->getFunctionType();
  if (I < Hidden || !FT->getParamType(I)->isFloatingPointTy())
    return Partial();
  unsigned Element = 0;
  for (unsigned K = Hidden; K < I; ++K)
    Element += FT->getParamType(K)->isFloatingPointTy();
  Module *M = X.B.GetInsertBlock()->getModule();
  Function *P =
      M->getFunction(Callee->getFnAttribute(PartialsAttr).getValueAsString());
  assert(P && "applyUserRules checked the partials function");
  StructType *RT = partialsType(*Callee);
  IRBuilder<> &B = X.B;
  Function *D = B.GetInsertBlock()->getParent();
  IRBuilder<> EB(&D->getEntryBlock(), D->getEntryBlock().getFirstInsertionPt());
  Value *Ret = EB.CreateAlloca(RT, nullptr, "rule.partials");
  Value *Exc = EB.CreateAlloca(B.getPtrTy(), nullptr, "rule.exc");
  SmallVector<Value *, 6> Args = {Ret, Exc};
  for (unsigned K = Hidden; K < FT->getNumParams(); ++K)
    Args.push_back(X.x(K));
  if (Callee->hasFnAttribute(WithResultAttr))
    Args.push_back(X.result());
  Value *Status = B.CreateCall(P, Args);
  Value *V = B.CreateLoad(RT->getElementType(Element),
                          B.CreateStructGEP(RT, Ret, Element));
  if (V->getType() != X.Ty)
    V = B.CreateFPCast(V, X.Ty);
  V = B.CreateSelect(B.CreateICmpNE(Status, B.getInt32(0)),
                     ConstantFP::getNaN(X.Ty), V);
  return Partial(V);
}

const ScalarRule UserRow = {ScalarRule::Callee, "enzpy.user", 0, userPartial};

/// The number of float parameters of \p FT from \p First on.
unsigned floatParams(FunctionType *FT, unsigned First) {
  unsigned N = 0;
  for (unsigned K = First; K < FT->getNumParams(); ++K)
    N += FT->getParamType(K)->isFloatingPointTy();
  return N;
}

/// Check that \p P, the partials function of a rule for a function with
/// \p NumFloats float arguments of the types of \p Args, returns as many
/// floats.
Error checkPartials(const Function *P, const RuleSpec &R, ArrayRef<Type *> Args,
                    Type *Result, unsigned NumFloats) {
  auto bad = [&](const Twine &Why) {
    return makeError("rule", "the partial derivatives given for '" +
                                 Twine(R.Display) + "' " + Why);
  };
  if (!P || P->isDeclaration())
    return bad("were not compiled into the module (internal error)");
  FunctionType *PT = P->getFunctionType();
  SmallVector<Type *, 6> Expected(Args);
  if (R.WithResult)
    Expected.push_back(Result);
  if (!numba::hasNativeSignature(*PT) ||
      PT->getNumParams() != numba::NumHiddenParams + Expected.size())
    return bad("take other arguments than the function");
  for (unsigned K = 0; K < Expected.size(); ++K)
    if (PT->getParamType(numba::NumHiddenParams + K) != Expected[K])
      return bad("take an argument of another type than the function's "
                 "argument " +
                 Twine(K));
  unsigned Found = R.Outputs.size();
  if (Found != NumFloats)
    return bad("return " + Twine(Found) + " value(s); expected " +
               Twine(NumFloats) + ", one per float argument");
  return Error::success();
}

void markRule(Function &W, const RuleSpec &R, unsigned Hidden) {
  std::string Outs;
  for (const std::string &T : R.Outputs)
    Outs += T == "float" ? 'f' : 'd';
  W.addFnAttr(OutputsAttr, Outs);
  W.addFnAttr(PartialsAttr, R.Partials);
  if (R.WithResult)
    W.addFnAttr(WithResultAttr);
  W.addFnAttr(HiddenParamsAttr, std::to_string(Hidden));
  W.addFnAttr(RuleNameAttr, R.Display);
}

/// An njit function with a rule: each call `status = g(ret, exc, args...)`
/// becomes `v = W(exc, slot, args...)`, `status = load slot`, `store v, ret`
/// with W a function that calls g: a call returning the float, which the
/// user row differentiates, keeping g's exceptions.
Error wrapNumbaFunction(Module &M, Function &G, const RuleSpec &R) {
  FunctionType *FT = G.getFunctionType();
  Type *T = storedReturnType(G);
  SmallVector<Type *, 4> Args(FT->param_begin() + numba::NumHiddenParams,
                              FT->param_end());
  if (!T || !T->isFloatingPointTy() || any_of(Args, [](Type *A) {
        return !A->isFloatingPointTy() && !A->isIntegerTy();
      }))
    return makeError("rule", "a rule given by partial derivatives is for a "
                             "function of scalars returning one float; '" +
                                 Twine(R.Display) + "' is not one");
  if (Error E = checkPartials(M.getFunction(R.Partials), R, Args, T,
                              floatParams(FT, numba::NumHiddenParams)))
    return E;
  LLVMContext &Ctx = M.getContext();
  Type *Ptr = PointerType::getUnqual(Ctx);
  SmallVector<Type *, 6> WParams = {Ptr, Ptr};
  WParams.append(Args);
  Function *W = Function::Create(FunctionType::get(T, WParams, false),
                                 GlobalValue::InternalLinkage,
                                 "enzpy.rule." + R.Callee, M);
  markRule(*W, R, 2);
  {
    IRBuilder<> B(BasicBlock::Create(Ctx, "entry", W));
    Value *Ret = B.CreateAlloca(T);
    B.CreateStore(ConstantFP::getNaN(T), Ret);
    SmallVector<Value *, 6> CallArgs = {Ret, W->getArg(0)};
    for (unsigned K = 2; K < W->arg_size(); ++K)
      CallArgs.push_back(W->getArg(K));
    B.CreateStore(B.CreateCall(&G, CallArgs), W->getArg(1));
    B.CreateRet(B.CreateLoad(T, Ret));
  }
  for (User *U : make_early_inc_range(G.users())) {
    auto *CB = dyn_cast<CallInst>(U);
    if (!CB || CB->getCalledFunction() != &G || CB->getFunction() == W)
      continue;
    Function *Caller = CB->getFunction();
    IRBuilder<> EB(&Caller->getEntryBlock(),
                   Caller->getEntryBlock().getFirstInsertionPt());
    Value *Slot = EB.CreateAlloca(EB.getInt32Ty(), nullptr, "rule.status");
    IRBuilder<> B(CB);
    SmallVector<Value *, 6> CallArgs = {CB->getArgOperand(numba::ExcInfoParam),
                                        Slot};
    CallArgs.append(CB->arg_begin() + numba::NumHiddenParams, CB->arg_end());
    CallInst *V = B.CreateCall(W, CallArgs);
    V->setDebugLoc(CB->getDebugLoc());
    B.CreateStore(V, CB->getArgOperand(numba::RetPtrParam));
    CB->replaceAllUsesWith(B.CreateLoad(B.getInt32Ty(), Slot));
    CB->eraseFromParent();
  }
  return Error::success();
}

/// A C function with a rule, `T g(args...)`: declared by name (marked in
/// place) or called through a constant address (each such call calls a
/// marked function that calls the address).
Error markCFunction(Module &M, const RuleSpec &R) {
  FunctionType *FT = nullptr;
  Function *Declared = R.Address ? nullptr : M.getFunction(R.Callee);
  Function *W = nullptr;
  if (Declared)
    FT = Declared->getFunctionType();
  else if (R.Address &&
           (W = addressFunction(M, R.Address, "enzpy.rule.cfunc." + R.Display)))
    FT = W->getFunctionType();
  if (!FT)
    return Error::success(); // not called here
  SmallVector<Type *, 4> Args(FT->params());
  if (!FT->getReturnType()->isFloatingPointTy() || any_of(Args, [](Type *A) {
        return !A->isFloatingPointTy() && !A->isIntegerTy();
      }))
    return makeError("rule", "a rule given by partial derivatives is for a "
                             "function of scalars returning one float; '" +
                                 Twine(R.Display) + "' is not one");
  if (Error E = checkPartials(M.getFunction(R.Partials), R, Args,
                              FT->getReturnType(), floatParams(FT, 0)))
    return E;
  markRule(Declared ? *Declared : *W, R, 0);
  return Error::success();
}

} // namespace

/// The address a callee pointer holds when it is a constant: an integer
/// cast to a pointer, or read from a constant global holding one (numba
/// keeps the addresses of ctypes functions and cfuncs in such globals).
static uint64_t constantAddress(const Value *Callee) {
  if (auto *L = dyn_cast<LoadInst>(Callee))
    if (auto *GV = dyn_cast<GlobalVariable>(L->getPointerOperand());
        GV && GV->hasInitializer())
      Callee = GV->getInitializer();
  if (auto *CE = dyn_cast<ConstantExpr>(Callee);
      CE && CE->getOpcode() == Instruction::IntToPtr)
    if (auto *CI = dyn_cast<ConstantInt>(CE->getOperand(0)))
      return CI->getZExtValue();
  return 0;
}

Function *addressFunction(Module &M, uint64_t Address, const Twine &Name) {
  SmallVector<CallInst *, 4> Calls;
  for (Function &G : M)
    for (Instruction &I : instructions(G))
      if (auto *CB = dyn_cast<CallInst>(&I);
          CB && constantAddress(CB->getCalledOperand()) == Address)
        Calls.push_back(CB);
  if (Calls.empty())
    return nullptr;
  FunctionType *FT = Calls.front()->getFunctionType();
  Function *W = Function::Create(FT, GlobalValue::InternalLinkage, Name, M);
  W->addFnAttr(AddressFnAttr);
  IRBuilder<> B(BasicBlock::Create(M.getContext(), "entry", W));
  SmallVector<Value *, 4> CallArgs;
  for (Argument &A : W->args())
    CallArgs.push_back(&A);
  Constant *Target =
      ConstantExpr::getIntToPtr(B.getInt64(Address), B.getPtrTy());
  CallInst *Call = B.CreateCall(FT, Target, CallArgs);
  if (FT->getReturnType()->isVoidTy())
    B.CreateRetVoid();
  else
    B.CreateRet(Call);
  for (CallInst *CB : Calls)
    CB->setCalledFunction(W);
  return W;
}

bool isAddressFunction(const Function &F) {
  return F.hasFnAttribute(AddressFnAttr);
}

Error applyUserRules(Module &M, const Request &Req) {
  for (const RuleSpec &R : Req.Rules) {
    if (R.Custom) {
      if (Error E = markCustomRule(M, R))
        return E;
      continue;
    }
    Function *G = R.Address ? nullptr : M.getFunction(R.Callee);
    if (G && G->hasFnAttribute(PartialsAttr))
      continue; // marked by an earlier run (a derivative differentiated again)
    if (Function *P = M.getFunction(R.Partials)) {
      P->setLinkage(GlobalValue::InternalLinkage);
      P->addFnAttr(RuleHelperAttr);
    }
    if (G && !G->isDeclaration() &&
        numba::hasNativeSignature(*G->getFunctionType())) {
      if (Error E = wrapNumbaFunction(M, *G, R))
        return E;
    } else if (Error E = markCFunction(M, R)) {
      return E;
    }
  }
  for (const std::string &Name : Req.Inactive)
    if (Function *G = M.getFunction(Name); G && !G->isDeclaration()) {
      G->addFnAttr(InactiveAttr);
      G->setLinkage(GlobalValue::InternalLinkage);
    }
  return Error::success();
}

const ScalarRule *userRule() { return &UserRow; }

bool isInactiveFunction(const Function *F) {
  return F && F->hasFnAttribute(InactiveAttr);
}

bool isRuleHelper(const Function &F) {
  return F.hasFnAttribute(RuleHelperAttr);
}

void markRuleHelper(Function &F) { F.addFnAttr(RuleHelperAttr); }

bool staysCall(const Function *F) {
  return isInactiveFunction(F) || hasCustomRule(F);
}

std::string ruleFunctionName(const Function &F) {
  if (Attribute A = F.getFnAttribute(RuleNameAttr); A.isStringAttribute())
    return A.getValueAsString().str();
  std::string Q = numba::pythonQualifiedName(F.getName());
  return Q.empty() ? displayName(F.getName()) : Q;
}

bool mayWriteThrough(const Function &F, unsigned ArgNo, bool OnlyStores) {
  if (F.isDeclaration())
    return !OnlyStores;
  bool Unknown = false; // a use the walk cannot follow

  // Follow the pointer and every pointer derived from it, also through local
  // memory it is stored into (numba keeps array structures in allocas); any
  // write through one of them, or an escape the walk cannot follow, counts.
  SmallPtrSet<const Value *, 16> Derived;
  SmallPtrSet<const Value *, 4> Holders; // allocas holding a derived pointer
  SmallVector<const Value *, 16> Work;
  auto derive = [&](const Value *V) {
    if (Derived.insert(V).second)
      Work.push_back(V);
  };
  auto holdIn = [&](const Value *Slot) {
    const Value *Obj = getUnderlyingObject(Slot, 0);
    if (!isa<AllocaInst>(Obj))
      return false;
    if (Holders.insert(Obj).second)
      for (const Instruction &I : instructions(F))
        if (auto *L = dyn_cast<LoadInst>(&I);
            L && L->getType()->isPointerTy() &&
            getUnderlyingObject(L->getPointerOperand(), 0) == Obj)
          derive(L);
    return true;
  };
  derive(F.getArg(ArgNo));
  while (!Work.empty()) {
    const Value *V = Work.pop_back_val();
    for (const User *U : V->users()) {
      if (isa<GetElementPtrInst>(U) || isa<PHINode>(U) || isa<SelectInst>(U) ||
          (isa<CastInst>(U) && U->getType()->isPointerTy())) {
        derive(U);
      } else if (auto *SI = dyn_cast<StoreInst>(U)) {
        if (SI->getPointerOperand() == V)
          return true;
        if (!holdIn(SI->getPointerOperand()))
          Unknown = true; // stored where the walk cannot follow
      } else if (auto *CB = dyn_cast<CallBase>(U)) {
        if (numba::isRefcountCall(*CB) || !CB->mayWriteToMemory())
          continue;
        for (unsigned K = 0; K < CB->arg_size(); ++K)
          if (CB->getArgOperand(K) == V && !CB->onlyReadsMemory(K)) {
            if (isa<MemIntrinsic>(CB) && K == 0)
              return true; // the destination of a fill or copy
            Unknown = true;
          }
      } else if (isa<LoadInst>(U) || isa<ICmpInst>(U)) {
        continue;
      } else {
        Unknown = true; // atomics, ptrtoint, returns, ...
      }
      if (Unknown && !OnlyStores)
        return true;
    }
  }
  return false;
}

} // namespace enzpy
