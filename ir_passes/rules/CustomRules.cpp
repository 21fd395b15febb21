//===- CustomRules.cpp - rules given as forward and reverse functions -----===//
#include "rules/CustomRules.h"
#include "driver/Diagnostics.h"
#include "driver/IRHelpers.h"
#include "driver/Request.h"
#include "numba/NumbaABI.h"
#include "rules/UserRules.h"
#include "transforms/Preprocess.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/AsmParser/Parser.h"
#include "llvm/IR/CFG.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/DerivedTypes.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/Module.h"
#include "llvm/Support/SourceMgr.h"

using namespace llvm;

namespace enzpy {

namespace {

constexpr StringLiteral CustomAttr = "enzpy-custom-rule";
constexpr StringLiteral ForwardAttr = "enzpy-custom-forward";
constexpr StringLiteral AugmentedAttr = "enzpy-custom-augmented";
constexpr StringLiteral ReverseAttr = "enzpy-custom-reverse";
constexpr StringLiteral ArgsAttr = "enzpy-custom-args";
constexpr StringLiteral OwnersAttr = "enzpy-custom-tape-owners";
constexpr StringLiteral ForwardResultAttr = "enzpy-custom-forward-result";
constexpr StringLiteral AugmentedResultAttr = "enzpy-custom-augmented-result";
constexpr StringLiteral ReverseResultAttr = "enzpy-custom-reverse-result";
constexpr StringLiteral PendingAttr = "enzpy-custom-pending";
constexpr StringLiteral AlwaysActiveAttr = "enzpy-custom-always-active";
constexpr StringLiteral ResultAttr = "enzpy-custom-result";
constexpr StringLiteral AugmentedShadowsAttr = "enzpy-custom-augmented-shadows";
constexpr StringLiteral WritesNothingAttr = "enzpy-custom-writes-nothing";

/// The LLVM type spelled \p S (null for an empty string or a bad one).
Type *parsedType(StringRef S, const Module &M) {
  if (S.empty())
    return nullptr;
  SMDiagnostic Err;
  Type *T = parseType(S, Err, M);
  return T && !T->isVoidTy() ? T : nullptr;
}
/// Wrapper parameters before the operands: retptr, excinfo, active,
/// overwritten, lanes.
constexpr unsigned WrapperLead = 5;

unsigned hiddenOf(const Function &F) {
  return numba::hasNativeSignature(*F.getFunctionType()) &&
                 !F.isDeclaration() && !isAddressFunction(F)
             ? numba::NumHiddenParams
             : 0;
}

/// "a4d,p9,f7,o8": kind and operand (after the hidden ones) of each
/// argument ('a' an array's data pointer, 'p' a raw pointer, 'f' a float,
/// 'o' anything else), and the float type ('d', 'f') memory holds where
/// known.
bool parseArgs(StringRef S, unsigned Hidden,
               SmallVectorImpl<CustomCall::Arg> &Out) {
  SmallVector<StringRef, 8> Parts;
  S.split(Parts, ',', -1, false);
  for (StringRef P : Parts) {
    char Elem = 0;
    if ((P[0] == 'a' || P[0] == 'p') && (P.back() == 'd' || P.back() == 'f')) {
      Elem = P.back();
      P = P.drop_back();
    }
    bool ReadOnly = (P[0] == 'a' || P[0] == 'p') && P.consume_back("r");
    if (P.size() < 2)
      return false;
    CustomCall::ArgKind K;
    switch (P[0]) {
    case 'a':
    case 'p':
      K = CustomCall::ArgKind::Memory;
      break;
    case 'f':
      K = CustomCall::ArgKind::Float;
      break;
    case 'o':
      K = CustomCall::ArgKind::Other;
      break;
    default:
      return false;
    }
    unsigned Operand;
    if (P.drop_front().getAsInteger(10, Operand))
      return false;
    Out.push_back({K, Operand + Hidden, Elem, P[0] == 'p', ReadOnly});
  }
  return true;
}

Function *ruleFunction(const Function &F, StringRef Attr) {
  StringRef Sym = F.getFnAttribute(Attr).getValueAsString();
  return Sym.empty() ? nullptr : F.getParent()->getFunction(Sym);
}

void leafTypes(Type *T, SmallVectorImpl<Type *> &Out) {
  if (auto *ST = dyn_cast<StructType>(T)) {
    for (Type *E : ST->elements())
      leafTypes(E, Out);
  } else if (auto *AT = dyn_cast<ArrayType>(T)) {
    for (uint64_t I = 0; I < AT->getNumElements(); ++I)
      leafTypes(AT->getElementType(), Out);
  } else {
    Out.push_back(T);
  }
}

} // namespace

/// What \p G returns to its caller: the stored type of an njit function
/// (numba stores a null pointer for None), the return type of a C function;
/// null for nothing.
static Type *resultOf(const Function &G, unsigned Hidden) {
  Type *T = Hidden ? storedReturnType(G) : G.getReturnType();
  return !T || T->isVoidTy() || T->isPointerTy() ? nullptr : T;
}

Type *CustomCall::result() const {
  if (returnsArray()) {
    // numba may store an array structure field by field: the wrappers say.
    for (Type *T : {AugmentedResult, ForwardResult})
      if (auto *ST = dyn_cast_or_null<StructType>(T))
        return ST->getElementType(0);
    return nullptr;
  }
  return resultOf(*Callee, Hidden);
}

bool CustomCall::returnsFloat() const {
  Type *T = result();
  return T && T->isFloatingPointTy();
}

bool CustomCall::mayWrite(unsigned Operand) const {
  if (!Call->getArgOperand(Operand)->getType()->isPointerTy())
    return false;
  for (const Arg &A : Args)
    if (A.Operand == Operand && A.ReadOnly)
      return false;
  return Hidden ? mayWriteThrough(*Callee, Operand) : true;
}

bool CustomCall::storesThrough(unsigned Operand) const {
  return Hidden && Call->getArgOperand(Operand)->getType()->isPointerTy() &&
         mayWriteThrough(*Callee, Operand, /*OnlyStores=*/true);
}

bool hasCustomRule(const Function *F) {
  return F && F->hasFnAttribute(CustomAttr);
}

std::optional<CustomCall> matchCustomCall(const CallBase &CB) {
  const Function *F = CB.getCalledFunction();
  if (!hasCustomRule(F))
    return std::nullopt;
  CustomCall C;
  C.Call = &CB;
  C.Callee = F;
  C.Hidden = hiddenOf(*F);
  if (!parseArgs(F->getFnAttribute(ArgsAttr).getValueAsString(), C.Hidden,
                 C.Args))
    return std::nullopt;
  C.Forward = ruleFunction(*F, ForwardAttr);
  C.Augmented = ruleFunction(*F, AugmentedAttr);
  C.Reverse = ruleFunction(*F, ReverseAttr);
  const Module &M = *F->getParent();
  C.ForwardResult =
      parsedType(F->getFnAttribute(ForwardResultAttr).getValueAsString(), M);
  C.AugmentedResult =
      parsedType(F->getFnAttribute(AugmentedResultAttr).getValueAsString(), M);
  C.ReverseResult =
      parsedType(F->getFnAttribute(ReverseResultAttr).getValueAsString(), M);
  SmallVector<StringRef, 4> Owners;
  F->getFnAttribute(OwnersAttr)
      .getValueAsString()
      .split(Owners, ',', -1, false);
  for (StringRef O : Owners) {
    unsigned I;
    if (!O.getAsInteger(10, I))
      C.TapeOwners.push_back(I);
  }
  C.Name = F->getFnAttribute(CustomAttr).getValueAsString().str();
  C.Pending = F->hasFnAttribute(PendingAttr);
  C.AlwaysActive = F->hasFnAttribute(AlwaysActiveAttr);
  C.AugmentedShadows = F->hasFnAttribute(AugmentedShadowsAttr);
  C.WritesNothing = F->hasFnAttribute(WritesNothingAttr);
  StringRef Res = F->getFnAttribute(ResultAttr).getValueAsString();
  if (C.Hidden && (Res == "d" || Res == "f"))
    C.ResultElem = Res[0];
  return C;
}

/// Whether \p L reads the pointer at byte \p Offset of \p Slot.
static bool readsField(const Instruction *I, const Value *Slot,
                       int64_t Offset) {
  auto *L = dyn_cast_or_null<LoadInst>(I);
  if (!L || !L->getType()->isPointerTy())
    return false;
  const DataLayout &DL = L->getModule()->getDataLayout();
  APInt Off(64, 0);
  const Value *Base =
      L->getPointerOperand()->stripAndAccumulateConstantOffsets(DL, Off, true);
  return Base == Slot->stripPointerCasts() && Off == Offset;
}

static bool returnsArray(const CallBase &CB) {
  const Function *F = CB.getCalledFunction();
  return hasCustomRule(F) && F->hasFnAttribute(ResultAttr) && hiddenOf(*F) &&
         CB.arg_size() > numba::RetPtrParam;
}

RuleResult ruleResult(const CallBase &CB) {
  if (!returnsArray(CB))
    return {};
  const Value *Slot = CB.getArgOperand(numba::RetPtrParam);
  auto *MI = const_cast<Instruction *>(CB.getNextNode());
  Instruction *Data = MI ? MI->getNextNode() : nullptr;
  if (!readsField(MI, Slot, numba::ArrayMemInfoOffset) ||
      !readsField(Data, Slot, numba::ArrayDataOffset))
    return {};
  return {cast<LoadInst>(MI), cast<LoadInst>(Data)};
}

const CallBase *ruleResultCall(const Value *V) {
  auto *L = dyn_cast<LoadInst>(V);
  const Instruction *MI = L ? L->getPrevNode() : nullptr;
  auto *CB = dyn_cast_or_null<CallBase>(MI ? MI->getPrevNode() : nullptr);
  return CB && ruleResult(*CB).Data == L ? CB : nullptr;
}

const CallBase *ruleResultOwner(const Value *V) {
  auto *L = dyn_cast<LoadInst>(V);
  auto *CB = dyn_cast_or_null<CallBase>(L ? L->getPrevNode() : nullptr);
  return CB && ruleResult(*CB).MemInfo == L ? CB : nullptr;
}

bool isRuleResultRead(const Value *V) {
  return ruleResultCall(V) || ruleResultOwner(V);
}

/// Whether some path runs from \p From to \p To without entering \p Avoid.
static bool reachesAvoiding(const Instruction *From, const Instruction *To,
                            const BasicBlock *Avoid) {
  const BasicBlock *Start = From->getParent(), *Goal = To->getParent();
  if (Start == Goal && From->comesBefore(To))
    return true;
  SmallVector<const BasicBlock *, 16> Work(successors(Start));
  SmallPtrSet<const BasicBlock *, 16> Seen;
  while (!Work.empty()) {
    const BasicBlock *B = Work.pop_back_val();
    if (B == Avoid || !Seen.insert(B).second)
      continue;
    if (B == Goal)
      return true;
    append_range(Work, successors(B));
  }
  return false;
}

void canonicalizeRuleResults(Function &F) {
  SmallVector<CallBase *, 4> Calls;
  for (Instruction &I : instructions(F))
    if (auto *CB = dyn_cast<CallBase>(&I); CB && returnsArray(*CB))
      Calls.push_back(CB);
  if (Calls.empty())
    return;
  DominatorTree DT(F);
  struct Canonical {
    LoadInst *MI, *Data;
  };
  DenseMap<CallBase *, Canonical> Canon;
  for (CallBase *CB : Calls) {
    Value *Slot = CB->getArgOperand(numba::RetPtrParam);
    IRBuilder<> B(CB);
    Value *DataField =
        B.CreateConstGEP1_64(B.getInt8Ty(), Slot, numba::ArrayDataOffset);
    B.SetInsertPoint(CB->getNextNode());
    LoadInst *MI = B.CreateLoad(B.getPtrTy(), Slot, "rule.result.meminfo");
    LoadInst *Data = B.CreateLoad(B.getPtrTy(), DataField, "rule.result.data");
    Canon[CB] = {MI, Data};
  }
  // Each slot: who writes it, and the reads of the two fields.
  DenseMap<const AllocaInst *, SmallVector<Instruction *, 4>> Writers;
  DenseMap<const AllocaInst *, SmallVector<LoadInst *, 4>> Reads;
  for (CallBase *CB : Calls) {
    auto *Alloca = dyn_cast<AllocaInst>(
        getUnderlyingObject(CB->getArgOperand(numba::RetPtrParam), 0));
    if (!Alloca || Writers.count(Alloca))
      continue;
    SmallVector<const Value *, 8> Work = {Alloca};
    SmallPtrSet<const Value *, 8> Seen;
    while (!Work.empty()) {
      const Value *P = Work.pop_back_val();
      if (!Seen.insert(P).second)
        continue;
      for (const User *U : P->users()) {
        auto *UI = const_cast<Instruction *>(cast<Instruction>(U));
        if (isa<GetElementPtrInst>(UI) || isa<CastInst>(UI))
          Work.push_back(UI);
        else if (auto *L = dyn_cast<LoadInst>(UI))
          Reads[Alloca].push_back(L);
        else if (!UI->isLifetimeStartOrEnd() &&
                 (UI->mayWriteToMemory() || isa<CallBase>(UI)))
          Writers[Alloca].push_back(UI);
      }
    }
  }
  // A read takes the canonical loads of the call whose result it reads:
  // one that dominates it, with every other writer of the slot unable to
  // reach it but through that call (the zeroing numba does right before
  // the call counts as part of it). Loops that numba's optimizer versioned
  // share one slot between the copies of a call.
  for (CallBase *CB : Calls) {
    auto *Alloca = dyn_cast<AllocaInst>(
        getUnderlyingObject(CB->getArgOperand(numba::RetPtrParam), 0));
    if (!Alloca)
      continue;
    const Value *Slot = CB->getArgOperand(numba::RetPtrParam);
    Canonical C = Canon[CB];
    for (LoadInst *&L : Reads[Alloca]) {
      if (!L || L == C.MI || L == C.Data || !DT.dominates(C.Data, L))
        continue;
      LoadInst *To = readsField(L, Slot, numba::ArrayMemInfoOffset) ? C.MI
                     : readsField(L, Slot, numba::ArrayDataOffset)  ? C.Data
                                                                    : nullptr;
      if (!To)
        continue;
      bool Only = all_of(Writers[Alloca], [&](Instruction *W) {
        if (W == CB)
          return true;
        if (W->getParent() == CB->getParent())
          return W->comesBefore(CB);
        return !reachesAvoiding(W, L, CB->getParent());
      });
      if (!Only)
        continue;
      L->replaceAllUsesWith(To);
      L->eraseFromParent();
      L = nullptr;
    }
  }
}

Error markCustomRule(Module &M, const RuleSpec &R) {
  // A C function called through its address gets a function of its own,
  // named as the request says.
  Function *G = M.getFunction(R.Callee);
  if (!G && R.Address)
    G = addressFunction(M, R.Address, R.Callee);
  if (!G)
    return Error::success(); // not called here
  if (G->hasFnAttribute(CustomAttr))
    return Error::success(); // marked by an earlier run
  auto bad = [&](const Twine &Why) {
    return makeError("rule", "the rule for '" + Twine(R.Display) + "' " + Why);
  };
  unsigned Hidden = hiddenOf(*G);
  SmallVector<CustomCall::Arg, 8> Args;
  if (!parseArgs(R.Args, Hidden, Args))
    return bad("has a malformed argument list (internal error)");
  if (!R.Result.empty()) {
    if (!Hidden || (R.Result != "d" && R.Result != "f"))
      return bad("has a malformed result kind (internal error)");
    G->addFnAttr(ResultAttr, R.Result);
  }
  if (R.AlwaysActive)
    G->addFnAttr(AlwaysActiveAttr);
  if (R.AugmentedShadows)
    G->addFnAttr(AugmentedShadowsAttr);
  if (R.WritesNothing)
    G->addFnAttr(WritesNothingAttr);
  if (R.Pending) {
    for (const CustomCall::Arg &A : Args)
      if (A.Operand >= G->getFunctionType()->getNumParams())
        return bad("has a malformed argument list (internal error)");
    G->addFnAttr(CustomAttr, R.Display);
    G->addFnAttr(ArgsAttr, R.Args);
    G->addFnAttr(PendingAttr);
    if (Hidden)
      G->setLinkage(GlobalValue::InternalLinkage);
    return Error::success();
  }
  FunctionType *GT = G->getFunctionType();
  SmallVector<Type *, 8> Xs(GT->param_begin() + Hidden, GT->param_end());
  Type *I64 = Type::getInt64Ty(M.getContext());
  Type *Ptr = PointerType::getUnqual(M.getContext());
  SmallVector<Type *, 8> Ss;
  for (const CustomCall::Arg &A : Args) {
    if (A.Operand >= GT->getNumParams())
      return bad("has a malformed argument list (internal error)");
    Type *T = GT->getParamType(A.Operand);
    Ss.push_back(A.Kind == CustomCall::ArgKind::Memory  ? Ptr
                 : A.Kind == CustomCall::ArgKind::Float ? T
                                                        : I64);
  }
  Type *Result = resultOf(*G, Hidden);
  if (!R.Result.empty()) {
    // A new array (numba may store its structure field by field).
    Result = nullptr;
    for (StringRef T : {R.AugmentedResult, R.ForwardResult})
      if (auto *ST = dyn_cast_or_null<StructType>(parsedType(T, M)))
        Result = ST->getElementType(0);
  }
  bool FloatResult = Result && Result->isFloatingPointTy();
  auto expectParams = [&](Function *W, StringRef What,
                          ArrayRef<ArrayRef<Type *>> Groups) -> Error {
    SmallVector<Type *, 16> Want = {Ptr, Ptr, I64, I64, I64};
    for (ArrayRef<Type *> Gr : Groups)
      Want.append(Gr.begin(), Gr.end());
    FunctionType *WT = W->getFunctionType();
    if (WT->getNumParams() != Want.size())
      return bad("has a " + What + " function that takes " +
                 Twine(WT->getNumParams() - WrapperLead) +
                 " values where the call passes " +
                 Twine(Want.size() - WrapperLead) + " (internal error)");
    for (unsigned K = 0; K < Want.size(); ++K)
      if (WT->getParamType(K) != Want[K])
        return bad("has a " + What +
                   " function whose parameter types do not match the "
                   "function's (internal error)");
    return Error::success();
  };
  Function *Fwd = R.Forward.empty() ? nullptr : M.getFunction(R.Forward);
  Function *Aug = R.Augmented.empty() ? nullptr : M.getFunction(R.Augmented);
  Function *Rev = R.Reverse.empty() ? nullptr : M.getFunction(R.Reverse);
  if ((!R.Forward.empty() && !Fwd) || (!R.Augmented.empty() && !Aug) ||
      (!R.Reverse.empty() && !Rev) || (!Aug != !Rev))
    return bad("has functions that were not compiled into the module "
               "(internal error)");
  if (Fwd)
    if (Error E = expectParams(Fwd, "forward", {Xs, Ss}))
      return E;
  if (Aug) {
    SmallVector<Type *, 8> AugSs;
    if (R.AugmentedShadows)
      AugSs = Ss;
    if (Error E = expectParams(Aug, "augmented", {Xs, AugSs}))
      return E;
    if ((!R.AugmentedResult.empty() && !parsedType(R.AugmentedResult, M)) ||
        (!R.ForwardResult.empty() && !parsedType(R.ForwardResult, M)) ||
        (!R.ReverseResult.empty() && !parsedType(R.ReverseResult, M)))
      return bad("has a result type the engine cannot read (internal error)");
    Type *AugRet = parsedType(R.AugmentedResult, M);
    SmallVector<Type *, 16> Leaves;
    if (Result) {
      auto *ST = dyn_cast_or_null<StructType>(AugRet);
      if (!ST || ST->getNumElements() != 2 || ST->getElementType(0) != Result)
        return bad("has an augmented function that does not return "
                   "(result, tape) (internal error)");
      leafTypes(ST->getElementType(1), Leaves);
    } else if (AugRet) {
      leafTypes(AugRet, Leaves);
    }
    SmallVector<Type *, 1> Trail;
    if (FloatResult)
      Trail.push_back(Result);
    else if (!R.Result.empty())
      Trail.push_back(Ptr); // the array result's shadow
    if (Error E = expectParams(Rev, "reverse", {Leaves, Xs, Ss, Trail}))
      return E;
  }
  G->addFnAttr(CustomAttr, R.Display);
  G->addFnAttr(ForwardAttr, R.Forward);
  G->addFnAttr(AugmentedAttr, R.Augmented);
  G->addFnAttr(ReverseAttr, R.Reverse);
  G->addFnAttr(ArgsAttr, R.Args);
  G->addFnAttr(ForwardResultAttr, R.ForwardResult);
  G->addFnAttr(AugmentedResultAttr, R.AugmentedResult);
  G->addFnAttr(ReverseResultAttr, R.ReverseResult);
  std::string Owners;
  for (unsigned O : R.TapeOwners)
    Owners += (Owners.empty() ? "" : ",") + std::to_string(O);
  G->addFnAttr(OwnersAttr, Owners);
  // A rule function comes compiled (a declaration the loader resolves) or
  // with its body, which stays private to the derivative.
  for (Function *W : {Fwd, Aug, Rev})
    if (W) {
      if (!W->isDeclaration())
        W->setLinkage(GlobalValue::InternalLinkage);
      markRuleHelper(*W);
    }
  if (Hidden)
    G->setLinkage(GlobalValue::InternalLinkage);
  return Error::success();
}

/// `i32 W.guarded(ptr status, ptr ret, ptr exc, ...)`: calls W unless an
/// earlier rule function of this derivative failed (*status != 0); when W is
/// skipped or fails, its result slot is zeroed (null tape leaves, a zero
/// result: nothing stale is released or read) and the first failure's status
/// is kept in *status. The derivative runs on, and returns that status.
static Function *guarded(Function *W, Type *RT) {
  Module &M = *W->getParent();
  LLVMContext &Ctx = M.getContext();
  SmallVector<Type *, 16> Params = {PointerType::getUnqual(Ctx)};
  Params.append(W->getFunctionType()->param_begin(),
                W->getFunctionType()->param_end());
  bool Fresh = false;
  Function *G = internalHelper(
      M, (W->getName() + ".guarded").str(),
      FunctionType::get(Type::getInt32Ty(Ctx), Params, false), Fresh);
  if (!Fresh)
    return G;
  BasicBlock *Entry = BasicBlock::Create(Ctx, "entry", G);
  BasicBlock *Run = BasicBlock::Create(Ctx, "run", G);
  BasicBlock *Failed = BasicBlock::Create(Ctx, "failed", G);
  BasicBlock *Skip = BasicBlock::Create(Ctx, "skip", G);
  BasicBlock *Done = BasicBlock::Create(Ctx, "done", G);
  Argument *Status = G->getArg(0), *Ret = G->getArg(1);
  IRBuilder<> B(Entry);
  Value *Before = B.CreateLoad(B.getInt32Ty(), Status);
  B.CreateCondBr(B.CreateICmpEQ(Before, B.getInt32(0)), Run, Skip);
  B.SetInsertPoint(Run);
  SmallVector<Value *, 16> Args;
  for (unsigned K = 1; K < G->arg_size(); ++K)
    Args.push_back(G->getArg(K));
  Value *S = B.CreateCall(W, Args);
  B.CreateCondBr(B.CreateICmpEQ(S, B.getInt32(0)), Done, Failed);
  B.SetInsertPoint(Failed);
  B.CreateStore(S, Status);
  B.CreateBr(Skip);
  B.SetInsertPoint(Skip);
  if (RT)
    B.CreateStore(Constant::getNullValue(RT), Ret);
  Value *Kept = B.CreateLoad(B.getInt32Ty(), Status);
  B.CreateBr(Done);
  B.SetInsertPoint(Done);
  PHINode *Out = B.CreatePHI(B.getInt32Ty(), 2);
  Out->addIncoming(S, Run);
  Out->addIncoming(Kept, Skip);
  B.CreateRet(Out);
  return G;
}

Value *emitRuleCall(IRBuilder<> &B, IRBuilder<> &EntryB, Function *W, Type *RT,
                    Value *StatusSlot, Value *Exc, const RuleCallInfo &Info,
                    ArrayRef<Value *> Operands, Value *&Result) {
  // A wrapper that returns None still stores numba's None value (a null
  // pointer) through its result pointer: the slot must hold one.
  Value *Slot = EntryB.CreateAlloca(RT ? RT : B.getPtrTy(), nullptr,
                                    W->getName() + ".result");
  SmallVector<Value *, 16> Args = {StatusSlot,
                                   Slot,
                                   Exc,
                                   B.getInt64(Info.Active),
                                   B.getInt64(Info.Overwritten),
                                   B.getInt64(Info.lanes())};
  Args.append(Operands.begin(), Operands.end());
  Value *Status = B.CreateCall(guarded(W, RT), Args);
  Result = RT ? B.CreateLoad(RT, Slot) : nullptr;
  return Status;
}

void appendRuleShadows(IRBuilder<> &B, const CustomCall &CC, uint64_t Active,
                       function_ref<Value *(const Value *)> ShadowOf,
                       function_ref<Value *(const Value *)> FloatOf,
                       SmallVectorImpl<Value *> &Operands) {
  for (unsigned I = 0; I < CC.Args.size(); ++I) {
    const Value *PA = CC.Call->getArgOperand(CC.Args[I].Operand);
    switch (CC.Args[I].Kind) {
    case CustomCall::ArgKind::Memory:
      Operands.push_back(Active >> I & 1
                             ? ShadowOf(PA)
                             : ConstantPointerNull::get(B.getPtrTy()));
      break;
    case CustomCall::ArgKind::Float:
      Operands.push_back(FloatOf(PA));
      break;
    case CustomCall::ArgKind::Other:
      Operands.push_back(B.getInt64(0));
      break;
    }
  }
}

void flattenLeaves(IRBuilder<> &B, Value *V, SmallVectorImpl<Value *> &Out) {
  Type *T = V->getType();
  unsigned N = 0;
  if (auto *ST = dyn_cast<StructType>(T))
    N = ST->getNumElements();
  else if (auto *AT = dyn_cast<ArrayType>(T))
    N = AT->getNumElements();
  else {
    Out.push_back(V);
    return;
  }
  for (unsigned I = 0; I < N; ++I)
    flattenLeaves(B, B.CreateExtractValue(V, I), Out);
}

} // namespace enzpy
