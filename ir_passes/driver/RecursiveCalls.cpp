//===- RecursiveCalls.cpp - derivatives of recursive callees --------------===//
#include "driver/RecursiveCalls.h"
#include "analysis/CachePolicy.h"
#include "driver/Diagnostics.h"
#include "numba/NumbaABI.h"
#include "synthesis/ShadowAddresses.h"
#include "synthesis/Synthesize.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/IntrinsicInst.h"
#include "llvm/IR/Module.h"
#include "llvm/Support/raw_ostream.h"

using namespace llvm;

namespace enzpy {

static std::string printedType(const Type *T) {
  std::string S;
  raw_string_ostream OS(S);
  T->print(OS);
  return S;
}

FunctionType *derivativeType(const Function &Primal, const Request &Req,
                             Type *RetType) {
  LLVMContext &Ctx = Primal.getContext();
  SmallVector<Type *, 16> Params(Primal.getFunctionType()->params());
  for (const ParamSpec &S : Req.Params)
    if (S.isDuplicated())
      Params.append(Req.Width, PointerType::getUnqual(Ctx));
  if (Req.DiffMode == Mode::Forward) {
    for (unsigned I = 0; I < Req.Params.size(); ++I)
      if (Req.Params[I].Act == Activity::Active)
        Params.append(Req.Width,
                      Primal.getArg(I + numba::NumHiddenParams)->getType());
  } else if (Req.RetActive) {
    Params.append(Req.Width, RetType);
  }
  return FunctionType::get(Type::getInt32Ty(Ctx), Params, false);
}

/// What the derivative of the call \p CB must take and return, from the
/// activity of its arguments and of the memory its result goes to.
Request RecursiveCalls::requestFor(const CallBase &CB,
                                   const ActivityAnalysis &AA) const {
  const Function &Callee = *CB.getCalledFunction();
  Request R;
  R.Function = Callee.getName().str();
  R.DiffMode = Top.DiffMode;
  R.Width = Top.Width;
  R.Optimize = false;
  // The caller needs the primal result of a forward derivative; a reverse
  // derivative runs after the primal call has delivered it.
  R.ReturnPrimal = Top.DiffMode == Mode::Forward;
  Type *Ret = storedReturnType(Callee);
  if (Ret && Ret->isPointerTy())
    Ret = nullptr; // None
  R.RetType = Ret ? printedType(Ret) : "void";
  R.RetActive = Ret && Ret->isFloatingPointTy() &&
                AA.pointsToActive(CB.getArgOperand(numba::RetPtrParam));
  for (const Value *A : drop_begin(CB.args(), numba::NumHiddenParams)) {
    ParamSpec S;
    if (A->getType()->isFloatingPointTy() && AA.isActive(A)) {
      S.Act = Activity::Active;
      S.Elem = printedType(A->getType());
    } else if (A->getType()->isPointerTy() && AA.pointsToActive(A)) {
      S.Act = Activity::Dup;
      S.Elem = printedType(AA.shadowElementType(A));
    }
    R.Params.push_back(S);
  }
  return R;
}

static std::string keyOf(const Request &R) {
  std::string K = R.Function + (R.RetActive ? "|ret" : "|const");
  for (const ParamSpec &S : R.Params)
    K += "|" + activityName(S.Act).str() + ":" + S.Elem;
  return K;
}

RecursiveCalls::Derivative &
RecursiveCalls::derivativeFor(const CallBase &CB, const ActivityAnalysis &AA,
                              bool &Created) {
  Request R = requestFor(CB, AA);
  std::string Key = keyOf(R);
  Created = false;
  if (Derivative *Found = ByKey.lookup(Key))
    return *Found;
  Created = true;
  Derivative &D = Derivatives.emplace_back();
  ByKey[Key] = &D;
  D.Callee = CB.getCalledFunction();
  R.Name = (Twine(Top.Name) + ".recursive." + Twine(Derivatives.size()) + "." +
            D.Callee->getName())
               .str();
  D.Req = std::move(R);
  Type *Ret = storedReturnType(*D.Callee);
  D.Call.RetType = Ret && !Ret->isPointerTy() ? Ret : nullptr;
  D.Call.Req = D.Req;
  // A pointer the callee does more with than count references may be read.
  for (unsigned I = 0; I < D.Req.Params.size(); ++I) {
    const Argument *P = numba::userParam(*D.Callee, I);
    if (P->getType()->isPointerTy() && any_of(P->users(), [](const User *U) {
          auto *CB = dyn_cast<CallBase>(U);
          return !CB || !numba::isRefcountCall(*CB);
        }))
      D.Call.ReadParams.push_back(I);
  }
  D.Call.Fn = Function::Create(derivativeType(*D.Callee, D.Req, D.Call.RetType),
                               GlobalValue::InternalLinkage, D.Req.Name, M);
  D.Call.Fn->addFnAttr(RecursiveCopyAttr);
  return D;
}

/// Whether a write through \p Ptr may change memory that the function's
/// caller can see: its arguments' arrays, globals, memory of unknown origin.
static bool callerVisible(const TypeAnalysis &TA, const Value *Ptr) {
  for (const Value *R : TA.roots(Ptr)) {
    if (R == UnknownRoot || isa<GlobalValue>(R))
      return true;
    if (auto *A = dyn_cast<Argument>(R); A && numba::isUserParam(*A))
      return true;
  }
  return false;
}

/// Reverse mode re-runs a recursive function's body inside its reverse
/// derivative: that must leave everything its caller can see as it was.
static Error checkNoVisibleWrites(const CanonicalFunction &C,
                                  const ActivityAnalysis &AA,
                                  const Function &Callee) {
  const TypeAnalysis &TA = AA.types();
  std::string Name = displayName(Callee.getName());
  for (const Instruction &I : instructions(*C.F)) {
    if (!C.returns(I.getParent()))
      continue;
    const Instruction *Writer = nullptr;
    if (auto *SI = dyn_cast<StoreInst>(&I)) {
      if (callerVisible(TA, SI->getPointerOperand()))
        Writer = SI;
    } else if (auto *MI = dyn_cast<AnyMemIntrinsic>(&I)) {
      if (callerVisible(TA, MI->getRawDest()))
        Writer = MI;
    } else if (auto *CB = dyn_cast<CallBase>(&I)) {
      if (CB->mayWriteToMemory() && !numba::isRefcountCall(I) &&
          !numba::isAllocationCall(CB) && !CB->isLifetimeStartOrEnd())
        for (unsigned K = 0; K < CB->arg_size(); ++K) {
          const Value *A = CB->getArgOperand(K);
          if (A->getType()->isPointerTy() && K != numba::RetPtrParam &&
              K != numba::ExcInfoParam && callerVisible(TA, A) &&
              !CB->onlyReadsMemory(K) && !AA.needsCallDerivative(*CB))
            Writer = CB;
        }
    }
    if (Writer)
      return makeError(
          "unsupported",
          "the recursive function '" + Name +
              "' writes memory that its caller can see; reverse mode "
              "differentiates recursive functions that only read their "
              "arguments and return a value, and this one needs split mode "
              "(a tape per call, issue #8)",
          Writer);
  }
  return Error::success();
}

/// The reverse of a recursive call re-runs the callee on the memory its
/// arguments point to: that memory must still hold what the call read.
static Error checkInputsKept(const CanonicalFunction &C, const Request &Req,
                             const TypeAnalysis &TA) {
  if (C.CallDerivatives.empty())
    return Error::success();
  DominatorTree DT(*C.F);
  LoopInfo LI(DT);
  CachePolicy Cache(C, Req, TA, DT, LI);
  for (const auto &[CB, CD] : C.CallDerivatives)
    for (unsigned I : CD.ReadParams) {
      if (Cache.canRereadMemory(CB->getArgOperand(I + numba::NumHiddenParams),
                                CB))
        continue;
      Function &Callee = *CB->getCalledFunction();
      return makeError(
          "unsupported",
          "reverse mode runs the recursive function '" +
              displayName(Callee.getName()) +
              "' again in the reverse sweep, and the array it reads through "
              "its argument '" +
              numba::pythonArgName(*numba::userParam(Callee, I)) +
              "' may have changed since the call (written later, or "
              "overlapping an array that is written); this needs split mode "
              "(a tape per call, issue #8)",
          CB);
    }
  return Error::success();
}

Error RecursiveCalls::analyse(Derivative &D, const StringSet<> &Recursive) {
  D.C = canonicalCopy(*D.Callee, D.Req.Name + ".primal", Recursive);
  D.TA = std::make_unique<TypeAnalysis>(*D.C.F, D.Req);
  D.AA = std::make_unique<ActivityAnalysis>(D.C, D.Req, *D.TA);
  if (Error E = D.AA->run())
    return E;
  if (Error E = checkShadowable(D.C, *D.AA))
    return E;
  // Recursive calls that get derivatives are checked as callees.
  if (D.Req.DiffMode == Mode::Reverse)
    if (Error E = checkNoVisibleWrites(D.C, *D.AA, *D.Callee))
      return E;
  return plan(D.C, D.Req, *D.AA);
}

Error RecursiveCalls::plan(CanonicalFunction &C, const Request &Req,
                           const ActivityAnalysis &AA) {
  SmallVector<Derivative *, 4> New;
  for (const Instruction &I : instructions(*C.F))
    if (auto *CB = dyn_cast<CallBase>(&I); CB && AA.needsCallDerivative(*CB)) {
      bool Created = false;
      Derivative &D = derivativeFor(*CB, AA, Created);
      C.CallDerivatives[CB] = D.Call;
      if (Created)
        New.push_back(&D);
    }
  for (Derivative *D : New)
    if (Error E = analyse(*D, C.Recursive))
      return E;
  if (Req.DiffMode == Mode::Reverse)
    return checkInputsKept(C, Req, AA.types());
  return Error::success();
}

Error RecursiveCalls::synthesizeAll() {
  for (Derivative &D : Derivatives) {
    Expected<Function *> F = synthesize(D.C, D.Req, *D.TA, *D.AA, nullptr);
    if (!F)
      return F.takeError();
  }
  return Error::success();
}

void RecursiveCalls::eraseCopies() {
  for (Derivative &D : Derivatives)
    if (D.C.F) {
      D.C.F->eraseFromParent();
      D.C.F = nullptr;
    }
}

} // namespace enzpy
