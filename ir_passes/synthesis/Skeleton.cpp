//===- Skeleton.cpp - what every derivative function is built on ----------===//
#include "synthesis/Skeleton.h"
#include "driver/IRHelpers.h"
#include "numba/NumbaABI.h"
#include "rules/CustomRules.h"
#include "synthesis/ShadowAddresses.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/MDBuilder.h"
#include "llvm/IR/Module.h"
#include "llvm/Transforms/Utils/Cloning.h"

using namespace llvm;

namespace enzpy {

DerivativeSkeleton::DerivativeSkeleton(const CanonicalFunction &C,
                                       const Request &Req, Type *RetType,
                                       const TypeAnalysis &TA,
                                       const ActivityAnalysis &AA)
    : Canon(C), Req(Req), RetType(RetType), TA(TA), AA(AA), P(*C.F),
      Ctx(P.getContext()), Width(Req.Width) {}

std::string DerivativeSkeleton::laneName(const Twine &Base, unsigned K) const {
  return Width == 1 ? Base.str() : (Base + "." + Twine(K)).str();
}

void DerivativeSkeleton::create(ArrayRef<Trailing> Extra) {
  SmallVector<Type *, 16> Params(P.getFunctionType()->params());
  unsigned Next = Params.size();
  for (const ParamSpec &S : Req.Params)
    if (S.isDuplicated())
      Params.append(Width, PointerType::getUnqual(Ctx));
  for (const Trailing &T : Extra)
    Params.push_back(T.Ty);
  FunctionType *FT = FunctionType::get(Type::getInt32Ty(Ctx), Params, false);
  // A derivative that other derivatives call (RecursiveCalls.h) was
  // declared before its body is made.
  D = P.getParent()->getFunction(Req.Name);
  assert((!D || (D->isDeclaration() && D->getFunctionType() == FT)) &&
         "a derivative's name is taken by another function");
  if (!D)
    D = Function::Create(FT, GlobalValue::ExternalLinkage, Req.Name,
                         P.getParent());
  Entry = BasicBlock::Create(Ctx, "enzpy.entry", D);
  IRBuilder<> B(Entry);

  // The primal's return value goes to a local slot (a None return stores a
  // null pointer: give the slot room for it); D's retptr receives the
  // result struct.
  RetSlot = B.CreateAlloca(RetType ? RetType : PointerType::getUnqual(Ctx),
                           nullptr, "enzpy.ret");
  RetSlot->setAlignment(Align(8));
  D->getArg(numba::RetPtrParam)->setName("retptr");
  D->getArg(numba::ExcInfoParam)->setName("excinfo");
  VMap[P.getArg(numba::RetPtrParam)] = RetSlot;
  VMap[P.getArg(numba::ExcInfoParam)] = D->getArg(numba::ExcInfoParam);
  ShadowArgs.assign(Req.Params.size(), Lanes());
  for (unsigned I = 0; I < Req.Params.size(); ++I) {
    Argument *PA = numba::userParam(P, I), *A = numba::userParam(*D, I);
    A->setName(PA->getName());
    VMap[PA] = A;
    if (!Req.Params[I].isDuplicated())
      continue;
    for (unsigned K = 0; K < Width; ++K) {
      Argument *S = D->getArg(Next++);
      S->setName(laneName(PA->getName() + "'shadow", K));
      ShadowArgs[I].push_back(S);
    }
  }
  for (const Trailing &T : Extra) {
    Argument *A = D->getArg(Next++);
    A->setName(T.Name);
    TrailingArgs.push_back(A);
  }

  SmallVector<ReturnInst *, 4> Returns;
  CloneFunctionInto(D, &P, VMap, CloneFunctionChangeType::LocalChangesOnly,
                    Returns);
  // The caller checked that no two arrays share memory, and shadows never
  // share memory with an array (enzpy/_aliasing.py): with NoAlias, each
  // differentiated array and each shadow is reached through its own
  // parameter only, which lets O3 keep adjoints in registers and vectorize
  // loops that read one array and write another without runtime checks.
  for (unsigned I = 0; Req.NoAlias && I < Req.Params.size(); ++I) {
    Argument *A = numba::userParam(*D, I);
    if (!Req.Params[I].isDuplicated() || !A->getType()->isPointerTy())
      continue;
    A->addAttr(Attribute::NoAlias);
    for (Value *S : ShadowArgs[I])
      cast<Argument>(S)->addAttr(Attribute::NoAlias);
  }
  for (const BasicBlock &PB : P) {
    PrimalBlock[mapped(&PB)] = &PB;
    for (const Instruction &PI : PB)
      Primal[VMap[&PI]] = &PI;
  }
  BasicBlock *CloneEntry = mapped(&P.getEntryBlock());
  // Static allocas of the primal stay static in the new entry block.
  for (Instruction &I : make_early_inc_range(*CloneEntry))
    if (auto *AI = dyn_cast<AllocaInst>(&I))
      if (isa<Constant>(AI->getArraySize()))
        AI->moveBefore(Entry->end());
  B.SetInsertPoint(Entry);
  B.CreateBr(CloneEntry);
}

Value *DerivativeSkeleton::mapped(const Value *PV) const {
  if (isa<Constant>(PV))
    return const_cast<Value *>(PV);
  auto It = VMap.find(PV);
  assert(It != VMap.end() && "primal value without a clone");
  return It->second;
}

bool DerivativeSkeleton::lanesApart(const Value *PPtr) {
  SmallPtrSet<const Value *, 8> Seen = {PPtr, mapped(PPtr)};
  for (unsigned K = 0; K < Width; ++K)
    if (!Seen.insert(shadow(PPtr, K)).second)
      return false;
  return true;
}

BasicBlock *DerivativeSkeleton::mapped(const BasicBlock *PB) const {
  return cast<BasicBlock>(VMap.lookup(PB));
}

Argument *DerivativeSkeleton::trailing(unsigned I) const {
  return TrailingArgs[I];
}

void DerivativeSkeleton::eraseClone(Instruction *I) {
  Primal.erase(I);
  I->eraseFromParent();
}

void DerivativeSkeleton::createReturnShadows(
    function_ref<Value *(unsigned)> Init) {
  IRBuilder<> B(Entry, Entry->getFirstInsertionPt());
  for (unsigned K = 0; K < Width; ++K) {
    AllocaInst *S =
        B.CreateAlloca(RetType, nullptr, laneName("enzpy.ret'shadow", K));
    S->setAlignment(Align(8));
    RetShadow.push_back(S);
  }
  B.SetInsertPoint(Entry->getTerminator());
  for (unsigned K = 0; K < Width; ++K)
    B.CreateStore(Init(K), RetShadow[K]);
}

Value *DerivativeSkeleton::shadow(const Value *PPtr, unsigned K) {
  // A pointer to nowhere (a path where the array was never set up, e.g. an
  // allocation that failed and raised) mirrors to itself.
  if (isNowhere(PPtr))
    return const_cast<Value *>(PPtr);
  auto Found = Shadows.find(PPtr);
  if (Found != Shadows.end() && Found->second[K])
    return Found->second[K];
  std::string Name = (PPtr->getName() + "'shadow").str();
  Value *S = nullptr;
  if (auto *A = dyn_cast<Argument>(PPtr)) {
    S = A->getArgNo() == numba::RetPtrParam
            ? RetShadow[K]
            : ShadowArgs[numba::userParamIndex(*A)][K];
    assert(S && "shadow of a parameter that is not duplicated");
  } else if (auto *AI = dyn_cast<AllocaInst>(PPtr)) {
    // As many zeroed elements as the alloca, allocated where it is.
    const DataLayout &DL = P.getParent()->getDataLayout();
    Value *Count = mapped(AI->getArraySize());
    IRBuilder<> B(Ctx);
    if (isa<Constant>(Count))
      B.SetInsertPoint(Entry, Entry->getFirstInsertionPt());
    else
      B.SetInsertPoint(cast<Instruction>(mapped(AI))->getNextNode());
    AllocaInst *SA =
        B.CreateAlloca(AI->getAllocatedType(), Count, laneName(Name, K));
    SA->setAlignment(AI->getAlign());
    if (isa<Constant>(Count))
      B.SetInsertPoint(Entry->getTerminator());
    Value *Bytes =
        B.CreateMul(B.CreateZExtOrTrunc(Count, B.getInt64Ty()),
                    B.getInt64(DL.getTypeAllocSize(AI->getAllocatedType())));
    B.CreateMemSet(SA, B.getInt8(0), Bytes, AI->getAlign());
    S = SA;
  } else if (auto *GEP = dyn_cast<GetElementPtrInst>(PPtr)) {
    auto *DG = cast<GetElementPtrInst>(mapped(GEP));
    Value *Base = shadow(GEP->getPointerOperand(), K);
    IRBuilder<> B(DG->getNextNode());
    SmallVector<Value *, 4> Idx(DG->indices());
    S = B.CreateGEP(DG->getSourceElementType(), Base, Idx, laneName(Name, K),
                    DG->getNoWrapFlags());
  } else if (isa<PHINode>(PPtr) || isa<SelectInst>(PPtr)) {
    S = mirrorMerge(
        PPtr, K, Shadows, [&](const Value *In) { return shadow(In, K); },
        laneName(Name, K));
  } else if (auto *Cast = dyn_cast<CastInst>(PPtr)) {
    S = shadow(Cast->getOperand(0), K);
  } else if (isSpilledPointer(PPtr)) {
    // Its shadow was spilled beside it (see mirrorSpill).
    auto *L = cast<LoadInst>(PPtr);
    Value *Slot = shadow(L->getPointerOperand(), K);
    IRBuilder<> B(cast<Instruction>(mapped(L))->getNextNode());
    S = B.CreateLoad(L->getType(), Slot, laneName(Name, K));
  } else if (const CallBase *Alloc = TA.allocationOf(PPtr);
             Alloc && ruleResult(*Alloc).Data) {
    auto It = RuleResultData.find(Alloc);
    if (It == RuleResultData.end()) {
      zeroRuleResultShadows(*Alloc);
      It = RuleResultData.find(Alloc);
    }
    S = It->second[K];
  } else if (const CallBase *Alloc = TA.allocationOf(PPtr)) {
    Value *SMI = shadowAllocation(Alloc)[K];
    if (TA.isRawBuffer(PPtr)) {
      S = SMI; // the shadow raw buffer itself
    } else {
      IRBuilder<> B(cast<Instruction>(mapped(PPtr))->getNextNode());
      S = numba::emitDataPointer(B, SMI, laneName(Name, K));
    }
  }
  assert(S && "checkShadowable let an unmirrorable address through");
  Lanes &L = Shadows[PPtr];
  L.resize(Width, nullptr);
  L[K] = S;
  return S;
}

Value *DerivativeSkeleton::mirrorMerge(const Value *V, unsigned K,
                                       DenseMap<const Value *, Lanes> &Memo,
                                       function_ref<Value *(const Value *)> Of,
                                       const Twine &Name) {
  auto remember = [&](Value *M) {
    Lanes &L = Memo[V];
    L.resize(Width, nullptr);
    L[K] = M;
    return M;
  };
  if (auto *Phi = dyn_cast<PHINode>(V)) {
    auto *DP = cast<PHINode>(mapped(Phi));
    PHINode *M =
        PHINode::Create(DP->getType(), DP->getNumIncomingValues(), Name);
    M->insertBefore(DP->getIterator());
    remember(M); // before the incoming values: cycles
    for (unsigned I = 0; I < Phi->getNumIncomingValues(); ++I)
      M->addIncoming(Of(Phi->getIncomingValue(I)), DP->getIncomingBlock(I));
    return M;
  }
  if (auto *Sel = dyn_cast<SelectInst>(V)) {
    auto *DS = cast<SelectInst>(mapped(Sel));
    Value *T = Of(Sel->getTrueValue());
    Value *F = Of(Sel->getFalseValue());
    IRBuilder<> B(DS->getNextNode());
    return remember(B.CreateSelect(DS->getCondition(), T, F, Name));
  }
  return nullptr;
}

/// The shadows of an allocated array or raw buffer: allocated like it right
/// after it, and zeroed (the derivative of numba's uninitialized memory is
/// taken as zero).
/// `{ptr, ptr} enzpy.zero.shadow(ptr meminfo, ptr data)`: a zeroed shadow
/// of the array at \p data, as large as the allocation \p meminfo owns, and
/// the shadow of \p data in it (8 bytes when \p meminfo is null: the call
/// that returned it failed); {null, null} when out of memory.
static Function *zeroShadowHelper(Module &M) {
  LLVMContext &Ctx = M.getContext();
  Type *Ptr = PointerType::getUnqual(Ctx);
  StructType *Pair = StructType::get(Ptr, Ptr);
  bool Fresh = false;
  Function *H =
      internalHelper(M, "enzpy.zero.shadow",
                     FunctionType::get(Pair, {Ptr, Ptr}, false), Fresh);
  if (!Fresh)
    return H;
  BasicBlock *Entry = BasicBlock::Create(Ctx, "entry", H);
  BasicBlock *Owned = BasicBlock::Create(Ctx, "owned", H);
  BasicBlock *Alloc = BasicBlock::Create(Ctx, "alloc", H);
  BasicBlock *Zero = BasicBlock::Create(Ctx, "zero", H);
  BasicBlock *Fail = BasicBlock::Create(Ctx, "fail", H);
  Argument *MI = H->getArg(0), *Data = H->getArg(1);
  IRBuilder<> B(Entry);
  B.CreateCondBr(B.CreateIsNull(MI), Alloc, Owned);
  B.SetInsertPoint(Owned);
  Value *Size =
      B.CreateLoad(B.getInt64Ty(), B.CreateConstGEP1_64(B.getInt8Ty(), MI, 32));
  Value *Off = B.CreateSub(
      B.CreatePtrToInt(Data, B.getInt64Ty()),
      B.CreatePtrToInt(numba::emitDataPointer(B, MI), B.getInt64Ty()));
  Value *AtLeast8 =
      B.CreateBinaryIntrinsic(Intrinsic::umax, Size, B.getInt64(8));
  B.CreateBr(Alloc);
  B.SetInsertPoint(Alloc);
  PHINode *Bytes = B.CreatePHI(B.getInt64Ty(), 2);
  Bytes->addIncoming(B.getInt64(8), Entry);
  Bytes->addIncoming(AtLeast8, Owned);
  PHINode *At = B.CreatePHI(B.getInt64Ty(), 2);
  At->addIncoming(B.getInt64(0), Entry);
  At->addIncoming(Off, Owned);
  Value *SMI =
      B.CreateCall(numba::allocationFunction(M), {Bytes, B.getInt32(32)});
  B.CreateCondBr(B.CreateIsNull(SMI), Fail, Zero);
  B.SetInsertPoint(Zero);
  Value *Base = numba::emitDataPointer(B, SMI);
  B.CreateMemSet(Base, B.getInt8(0), Bytes, MaybeAlign());
  Value *R = B.CreateInsertValue(PoisonValue::get(Pair), SMI, 0);
  B.CreateRet(B.CreateInsertValue(R, B.CreateGEP(B.getInt8Ty(), Base, At), 1));
  B.SetInsertPoint(Fail);
  B.CreateRet(Constant::getNullValue(Pair));
  return H;
}

/// A rule's array result that carries derivatives though the call did not
/// (an active array written later, or passed where the rule may write):
/// zeroed shadows, made right after the result's reads.
void DerivativeSkeleton::zeroRuleResultShadows(const CallBase &Call) {
  RuleResult R = ruleResult(Call);
  auto *Data = cast<Instruction>(mapped(R.Data));
  IRBuilder<> B(Data->getNextNode());
  Function *H = zeroShadowHelper(*D->getParent());
  Lanes MemInfos, Datas;
  for (unsigned K = 0; K < Width; ++K) {
    Value *Pair = B.CreateCall(H, {mapped(R.MemInfo), Data});
    auto *SMI = cast<Instruction>(B.CreateExtractValue(Pair, 0));
    failIfNull(SMI);
    if (OnShadowAllocation)
      OnShadowAllocation(B, SMI);
    MemInfos.push_back(SMI);
    Datas.push_back(B.CreateExtractValue(Pair, 1));
  }
  setRuleResultShadows(&Call, std::move(MemInfos), std::move(Datas));
}

void DerivativeSkeleton::reserveRuleResultShadows(const CallBase &Call) {
  RuleResult R = ruleResult(Call);
  auto *After = cast<Instruction>(mapped(R.Data));
  Type *I8 = Type::getInt8Ty(Ctx);
  Value *Zero = ConstantInt::get(Type::getInt64Ty(Ctx), 0);
  Value *Poison = PoisonValue::get(PointerType::getUnqual(Ctx));
  Lanes MemInfos, Data;
  for (unsigned K = 0; K < Width; ++K)
    for (Lanes *L : {&MemInfos, &Data}) {
      // `gep i8, X, 0`: X set by fillRuleResultShadows, folded away later.
      auto *G = GetElementPtrInst::Create(I8, Poison, {Zero},
                                          laneName("rule.result'shadow", K));
      G->insertAfter(After->getIterator());
      L->push_back(G);
    }
  setRuleResultShadows(&Call, std::move(MemInfos), std::move(Data));
}

void DerivativeSkeleton::fillRuleResultShadows(const CallBase &Call,
                                               ArrayRef<Value *> MemInfos,
                                               ArrayRef<Value *> Data) {
  auto fill = [](const Lanes &Held, ArrayRef<Value *> Real) {
    for (unsigned K = 0; K < Held.size(); ++K)
      cast<GetElementPtrInst>(Held[K])->setOperand(0, Real[K]);
  };
  fill(ShadowAllocs.find(&Call)->second, MemInfos);
  fill(RuleResultData.find(&Call)->second, Data);
}

void DerivativeSkeleton::setRuleResultShadows(const CallBase *Call,
                                              Lanes MemInfos, Lanes Data) {
  ShadowAllocs[Call] = std::move(MemInfos);
  RuleResultData[Call] = std::move(Data);
}

const Lanes &DerivativeSkeleton::shadowAllocation(const CallBase *Alloc) {
  auto It = ShadowAllocs.find(Alloc);
  if (It != ShadowAllocs.end())
    return It->second;
  if (ruleResult(*Alloc).Data) {
    // Its call was not replaced (it carries no derivative): zero shadows.
    zeroRuleResultShadows(*Alloc);
    return ShadowAllocs[Alloc];
  }
  auto *DA = cast<CallBase>(mapped(Alloc));
  IRBuilder<> B(DA->getNextNode());
  SmallVector<Value *, 2> Args(DA->args());
  Lanes SMIs;
  for (unsigned K = 0; K < Width; ++K) {
    CallInst *SMI =
        B.CreateCall(DA->getFunctionType(), DA->getCalledOperand(), Args,
                     laneName(Alloc->getName() + "'shadow", K));
    failIfNull(SMI);
    Value *Data = numba::isRawAllocation(Alloc)
                      ? static_cast<Value *>(SMI)
                      : numba::emitDataPointer(B, SMI);
    B.CreateMemSet(Data, B.getInt8(0), DA->getArgOperand(0), MaybeAlign());
    if (OnShadowAllocation)
      OnShadowAllocation(B, SMI);
    SMIs.push_back(SMI);
  }
  return ShadowAllocs[Alloc] = std::move(SMIs);
}

void DerivativeSkeleton::mirrorSpill(
    const StoreInst &St,
    function_ref<Value *(const Value *, unsigned)> MemInfoShadow) {
  const Value *V = St.getValueOperand();
  if (!V->getType()->isPointerTy() ||
      !isa<AllocaInst>(getUnderlyingObject(St.getPointerOperand(), 0)))
    return;
  bool Address = Canon.returns(St.getParent()) && AA.pointsToActive(V);
  for (unsigned K = 0; K < Width; ++K) {
    Value *SV = Address ? shadow(V, K) : nullptr;
    if (!SV && MemInfoShadow)
      SV = MemInfoShadow(V, K);
    if (!SV)
      SV = ConstantPointerNull::get(PointerType::getUnqual(Ctx));
    Value *Slot = shadow(St.getPointerOperand(), K);
    IRBuilder<> B(cast<Instruction>(mapped(&St))->getNextNode());
    B.CreateAlignedStore(SV, Slot, St.getAlign());
  }
}

void DerivativeSkeleton::emitNullChecks(BasicBlock *Fail) {
  MDBuilder MDB(Ctx);
  for (Instruction *V : NullChecks) {
    Instruction *After = V->getNextNode();
    BasicBlock *BB = After->getParent();
    BasicBlock *Tail = BB->splitBasicBlock(After, BB->getName() + ".ok");
    BB->getTerminator()->eraseFromParent();
    IRBuilder<> B(BB);
    B.CreateCondBr(B.CreateIsNull(V), Fail, Tail,
                   MDB.createUnlikelyBranchWeights());
  }
  NullChecks.clear();
}

Value *DerivativeSkeleton::ruleStatusSlot() {
  if (!RuleStatus) {
    IRBuilder<> EB(Entry, Entry->getFirstInsertionPt());
    RuleStatus = EB.CreateAlloca(EB.getInt32Ty(), nullptr, "enzpy.rule.status");
    EB.CreateStore(EB.getInt32(0), RuleStatus);
  }
  return RuleStatus;
}

void DerivativeSkeleton::finishRuleStatus(ReturnInst *Ret) {
  if (!RuleStatus || !Ret)
    return;
  IRBuilder<> B(Ret);
  Value *S = B.CreateLoad(B.getInt32Ty(), RuleStatus);
  Value *Old = Ret->getReturnValue();
  Ret->setOperand(0,
                  B.CreateSelect(B.CreateICmpEQ(Old, B.getInt32(0)), S, Old));
}

void DerivativeSkeleton::storeResult(IRBuilder<> &B, ArrayRef<Value *> Values) {
  SmallVector<Type *, 8> Fields;
  for (Value *V : Values)
    Fields.push_back(V->getType());
  StructType *ST = StructType::get(Ctx, Fields);
  for (unsigned I = 0; I < Values.size(); ++I)
    B.CreateStore(Values[I],
                  B.CreateStructGEP(ST, D->getArg(numba::RetPtrParam), I));
}

} // namespace enzpy
