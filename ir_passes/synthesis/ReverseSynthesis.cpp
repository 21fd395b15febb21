//===- ReverseSynthesis.cpp - combined reverse-mode derivative ------------===//
//
// Builds the derivative function of native/enzpy_native.h's ABI in combined
// mode: the primal's blocks run first (the augmented forward sweep) and push
// onto the tape what their reverse will need; the normal exit then enters
// the reverse sweep, which visits the blocks that ran in reverse order (the
// tape says which predecessor each merge block was entered from), turns
// every active instruction into adjoint updates, and finally writes the
// adjoints of Active parameters into the result. Adjoints of SSA values live
// in accumulators (allocas that later optimization promotes); the shadow of
// an address is computed beside the primal address in the forward sweep.
//
// Shadow memory follows docs/design.md §3.1: a load from active memory
// adds its adjoint into the shadow; a store reads the shadow into the stored
// value's adjoint and zeroes it (the overwritten contents had no influence).
// Values read from memory are taped when they are read, so memory that is
// overwritten later is handled correctly.
//
// A recursive call (CanonicalFunction::CallDerivatives) runs as the primal
// call in the forward sweep; its reverse calls the callee's reverse
// derivative (driver/RecursiveCalls.h).
//
// Batch mode (Request::Width W > 1): every adjoint accumulator, shadow
// address and shadow allocation comes in W lanes (W shadow arguments per
// duplicated parameter, W seeds of the return, W adjoints per Active
// parameter); each rule fetches its forward values once and applies its
// partial to every lane. The forward sweep and the tape are shared: W
// cotangents cost one primal evaluation. Width 1 is the plain case.
//
// Assumes preprocess() ran (one normal exit, one raise exit) and that the
// activity analysis accepted the function.
//
//===----------------------------------------------------------------------===//
#include "analysis/CachePolicy.h"
#include "driver/Diagnostics.h"
#include "driver/IRHelpers.h"
#include "numba/NumbaABI.h"
#include "rules/BlasRules.h"
#include "rules/CustomRules.h"
#include "rules/DerivativeRules.h"
#include "rules/MemoryRules.h"
#include "synthesis/Adjoints.h"
#include "synthesis/MemoryScopes.h"
#include "synthesis/ParallelLoops.h"
#include "synthesis/ReleaseList.h"
#include "synthesis/ShadowAddresses.h"
#include "synthesis/Skeleton.h"
#include "synthesis/Synthesize.h"
#include "synthesis/Tape.h"
#include "synthesis/UnneededStores.h"
#include "synthesis/ValueRecovery.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/Analysis/AssumptionCache.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/ScalarEvolution.h"
#include "llvm/Analysis/ScalarEvolutionExpressions.h"
#include "llvm/Analysis/TargetLibraryInfo.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/AsmParser/Parser.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/IntrinsicInst.h"
#include "llvm/IR/MDBuilder.h"
#include "llvm/IR/Module.h"
#include "llvm/IR/Operator.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Transforms/Utils/Cloning.h"
#include "llvm/Transforms/Utils/ScalarEvolutionExpander.h"
#include "llvm/Transforms/Utils/ValueMapper.h"
#include <optional>

using namespace llvm;

namespace enzpy {

/// A loop's iteration count as the reverse sweep starts counting down from
/// it: when it comes from the tape, the load says that it is a count (non-
/// negative, below INT64_MAX), so that the indices recomputed from it
/// (i = k + 1) are known not to wrap and numba's negative-index fix-ups
/// fold away in the reverse loop as they did in the primal's.
static Value *countFrom(Value *Count) {
  if (auto *Ld = dyn_cast<LoadInst>(Count);
      Ld && !Ld->hasMetadata(LLVMContext::MD_range)) {
    Type *T = Ld->getType();
    MDBuilder MDB(Ld->getContext());
    Ld->setMetadata(
        LLVMContext::MD_range,
        MDB.createRange(APInt(T->getIntegerBitWidth(), 0),
                        APInt::getSignedMaxValue(T->getIntegerBitWidth())));
  }
  return Count;
}

namespace {

class ReverseSynthesizer {
public:
  ReverseSynthesizer(DerivativeSkeleton &Sk, DecisionLog *Log)
      : Sk(Sk), Canon(Sk.Canon), P(Sk.P), PExit(Canon.NormalExit),
        PRaise(Canon.RaiseExit), Req(Sk.Req), TA(Sk.TA), AA(Sk.AA), Log(Log),
        Ctx(Sk.Ctx), I64(Type::getInt64Ty(Ctx)), Width(Sk.width()), VR(Sk),
        Adj(Sk), Par(Sk, VR, Adj) {}

  Expected<Function *> run();

private:
  /// The reverse of one primal block: its head (where forward values are
  /// recovered, see ValueRecovery) branches to its body (the adjoint
  /// updates), which ends by branching to the reverse of the predecessor the
  /// forward sweep came from.
  struct BlockRev {
    const BasicBlock *PB = nullptr; // the primal block reversed
    BasicBlock *Body = nullptr;
    ValueRecovery::Frame *Rec = nullptr;
    PHINode *Pid = nullptr;             // in the forward block
    SmallVector<BasicBlock *, 4> Preds; // primal predecessors, pid order
    BasicBlock *head() const { return Rec->Head; }
  };

  void createFunction();
  void findReaching();
  void createPids();
  void reverseBlock(BasicBlock *B);
  void reverseInstruction(Instruction &I, IRBuilder<> &RB, BlockRev &R);
  void createFinal();
  void markReverseMathCalls();

  Value *fetch(Value *DV, BlockRev &R) { return VR.fetch(DV, *R.Rec); }
  Value *fetchPrimal(const Value *PV, BlockRev &R) {
    return VR.fetchPrimal(PV, *R.Rec);
  }
  Value *fetchShadow(const Value *PPtr, unsigned K, BlockRev &R);
  Value *mapped(const Value *PV) const { return Sk.mapped(PV); }
  std::string laneName(const Twine &Base, unsigned K) const {
    return Sk.laneName(Base, K);
  }

  // Shadows of addresses (one per lane), computed in the forward sweep.
  Lanes shadow(const Value *PPtr);
  void createShadows();
  void reverseMemoryIntrinsic(AnyMemIntrinsic &MI, IRBuilder<> &RB,
                              BlockRev &R);
  void prepareBlas(const BlasCall &Call);
  void reverseBlas(const BlasCall &Call, IRBuilder<> &RB, BlockRev &R);
  bool blasActive(const BlasCall &Call) const;
  void reverseRecursiveCall(const CallBase &CB, const CallDerivative &CD,
                            IRBuilder<> &RB, BlockRev &R);
  void prepareCustom(const CustomCall &CC);
  void reverseCustom(const CustomCall &CC, IRBuilder<> &RB, BlockRev &R);

  DerivativeSkeleton &Sk;
  const CanonicalFunction &Canon;
  Function &P;
  BasicBlock *PExit;
  BasicBlock *PRaise;
  const Request &Req;
  const TypeAnalysis &TA;
  const ActivityAnalysis &AA;
  DecisionLog *Log;
  LLVMContext &Ctx;
  Type *I64;
  /// The batch width: adjoints and shadows come in this many lanes; the
  /// forward sweep and the tape are shared by all of them.
  unsigned Width;
  ValueRecovery VR;
  /// Adjoints of SSA values, one accumulator per lane.
  AdjointStore Adj;
  /// prange loops whose reverse runs on numba's threads.
  ParallelReverse Par;
  /// References to drop on every way out (shadow allocations, arrays kept
  /// alive for re-reads), and shadows of raw buffers to free.
  std::optional<ReleaseList> Release, RawRelease;
  ReleaseList &release(ReleaseList::Kind K = ReleaseList::Kind::MemInfos) {
    std::optional<ReleaseList> &L =
        K == ReleaseList::Kind::MemInfos ? Release : RawRelease;
    if (!L)
      L.emplace(*D, *DEntry, K);
    return *L;
  }
  ReturnInst *FinalRet = nullptr;

  Function *D = nullptr;
  BasicBlock *DEntry = nullptr;
  BasicBlock *DFinal = nullptr;
  /// BLAS inputs the reverse needs but that may be overwritten: copies made
  /// in the forward sweep (call, argument) -> copy. And alpha, beta.
  DenseMap<std::pair<const Value *, unsigned>, Value *> SavedInputs;
  DenseMap<const Value *, std::pair<Value *, Value *>> BlasScalars;
  /// Custom-rule calls: the tape leaves their augmented function returned,
  /// and the activity and overwritten masks they were given.
  struct CustomTape {
    SmallVector<Value *, 8> Leaves;
    uint64_t Active = 0, Overwritten = 0;
  };
  DenseMap<const Value *, CustomTape> CustomTapes;
  DenseMap<const BasicBlock *, BlockRev> Rev;
  BlockSet Reaching; // blocks that can return
  std::optional<MemoryScopes> Scopes;
  void tagPrimalAccesses();
};

Value *ReverseSynthesizer::fetchShadow(const Value *PPtr, unsigned K,
                                       BlockRev &R) {
  return fetch(shadow(PPtr)[K], R);
}

Lanes ReverseSynthesizer::shadow(const Value *PPtr) {
  Lanes S;
  for (unsigned K = 0; K < Width; ++K)
    S.push_back(Sk.shadow(PPtr, K));
  return S;
}

/// Every shadow address the reverse sweep will use, created up front so
/// that allocations' shadows exist before any block's reverse is built.
void ReverseSynthesizer::createShadows() {
  // Arrays the reverse sweep re-reads must outlive the primal's own
  // release of them: one more reference until the reverse passes them.
  FunctionCallee Incref = numba::increfFunction(*D->getParent());
  for (const CallBase *A : VR.cache().keptAlive()) {
    auto *DA = cast<Instruction>(mapped(TA.allocationMemInfo(A)));
    IRBuilder<> B(DA->getNextNode());
    B.CreateCall(Incref, {DA});
    Sk.failIfNull(release().emitAppend(B, DA));
  }
  for (const BasicBlock *B : Reaching)
    for (const Instruction &I : *B) {
      if (auto *L = dyn_cast<LoadInst>(&I)) {
        if (AA.isActive(L))
          shadow(L->getPointerOperand());
      } else if (auto *S = dyn_cast<StoreInst>(&I)) {
        if (AA.pointsToActive(S->getPointerOperand()))
          shadow(S->getPointerOperand());
        // A pointer spilled to the stack: its shadow goes beside it.
        Sk.mirrorSpill(*S);
      } else if (auto *CB = dyn_cast<CallBase>(&I);
                 CB && Canon.CallDerivatives.count(CB)) {
        const CallDerivative &CD = Canon.CallDerivatives.find(CB)->second;
        if (CD.Req.RetActive)
          shadow(CB->getArgOperand(numba::RetPtrParam));
        for (unsigned K = 0; K < CD.Req.Params.size(); ++K)
          if (CD.Req.Params[K].isDuplicated())
            shadow(CB->getArgOperand(K + numba::NumHiddenParams));
      } else if (auto *CB = dyn_cast<CallBase>(&I);
                 CB && matchCustomCall(*CB)) {
        CustomCall CC = *matchCustomCall(*CB);
        if (AA.customCallActive(CC))
          prepareCustom(CC);
      } else if (auto *CB = dyn_cast<CallBase>(&I); CB && matchBlasCall(*CB)) {
        BlasCall Call = *matchBlasCall(*CB);
        if (blasActive(Call))
          prepareBlas(Call);
      } else if (auto *MI = dyn_cast<AnyMemIntrinsic>(&I)) {
        if (AA.pointsToActive(MI->getRawDest())) {
          shadow(MI->getRawDest());
          if (auto *MT = dyn_cast<AnyMemTransferInst>(MI))
            if (AA.pointsToActive(MT->getRawSource()))
              shadow(MT->getRawSource());
        }
      }
    }
}

bool ReverseSynthesizer::blasActive(const BlasCall &Call) const {
  return AA.pointsToActive(Call.Call->getArgOperand(Call.output()));
}

/// Shadows of the call's arrays; copies of the inputs whose contents the
/// reverse needs but which may change before it runs; alpha and beta.
void ReverseSynthesizer::prepareBlas(const BlasCall &Call) {
  const CallBase *CB = Call.Call;
  SmallVector<unsigned, 3> Arrays(Call.inputs());
  Arrays.push_back(Call.output());
  for (unsigned I : Arrays)
    if (AA.pointsToActive(CB->getArgOperand(I)))
      shadow(CB->getArgOperand(I));
  auto *DC = cast<CallBase>(mapped(CB));
  auto IsActive = [&](unsigned J) {
    return AA.pointsToActive(CB->getArgOperand(J));
  };
  for (unsigned I : Call.inputs()) {
    if (!Call.reverseReadsInput(I, IsActive) ||
        VR.cache().canRereadMemory(CB->getArgOperand(I)))
      continue;
    // Copy before the call: malloc + memcpy, checked for null.
    IRBuilder<> B(DC);
    Value *Bytes = emitBlasInputBytes(
        B, Call, I, [&](unsigned K) { return DC->getArgOperand(K); });
    Module &M = *D->getParent();
    FunctionCallee Malloc = libcMalloc(M);
    CallInst *Copy = B.CreateCall(Malloc, {Bytes}, "enzpy.blas.saved");
    Sk.failIfNull(Copy);
    B.CreateMemCpy(Copy, MaybeAlign(), DC->getArgOperand(I), MaybeAlign(),
                   Bytes);
    SavedInputs[{CB, I}] = Copy;
  }
  IRBuilder<> B(DC->getNextNode());
  Value *Alpha = ConstantFP::get(Call.Elem, 1.0);
  Value *Beta = ConstantFP::get(Call.Elem, 0.0);
  if (auto A = Call.alpha())
    Alpha = B.CreateLoad(Call.Elem, DC->getArgOperand(*A), "enzpy.alpha");
  if (auto Bt = Call.beta()) {
    // beta is read before the call overwrites anything it might alias.
    IRBuilder<> BB(DC);
    Beta = BB.CreateLoad(Call.Elem, DC->getArgOperand(*Bt), "enzpy.beta");
  }
  BlasScalars[CB] = {Alpha, Beta};
}

void ReverseSynthesizer::reverseBlas(const BlasCall &Call, IRBuilder<> &RB,
                                     BlockRev &R) {
  const CallBase *CB = Call.Call;
  auto ArgFn = [&](unsigned I) { return fetchPrimal(CB->getArgOperand(I), R); };
  SmallSetVector<Value *, 2> ToFree; // the same copy serves every lane
  auto InputFn = [&](unsigned I) -> Value * {
    auto It = SavedInputs.find({CB, I});
    if (It == SavedInputs.end())
      return fetchPrimal(CB->getArgOperand(I), R);
    Value *Copy = fetch(It->second, R);
    ToFree.insert(Copy);
    return Copy;
  };
  auto [Alpha, Beta] = BlasScalars.lookup(CB);
  Value *AlphaV = fetch(Alpha, R), *BetaV = fetch(Beta, R);
  // One reverse per lane: the lanes' shadows are separate arrays.
  for (unsigned K = 0; K < Width; ++K) {
    auto ShadowFn = [&](unsigned I) -> Value * {
      const Value *Ptr = CB->getArgOperand(I);
      return AA.pointsToActive(Ptr) ? fetchShadow(Ptr, K, R) : nullptr;
    };
    BlasReverseInputs In{ArgFn, InputFn, ShadowFn, AlphaV, BetaV};
    emitBlasReverse(RB, Call, In);
  }
  FunctionCallee Free = libcFree(*D->getParent());
  for (Value *Copy : ToFree)
    RB.CreateCall(Free, {Copy});
}

void ReverseSynthesizer::reverseMemoryIntrinsic(AnyMemIntrinsic &MI,
                                                IRBuilder<> &RB, BlockRev &R) {
  if (!AA.pointsToActive(MI.getRawDest()))
    return;
  auto *MT = dyn_cast<AnyMemTransferInst>(&MI);
  bool Copy = MT && AA.pointsToActive(MT->getRawSource());
  Type *Elem = nullptr;
  for (const Value *Root : TA.roots(MI.getRawDest()))
    Elem = TA.elementType(Root);
  Value *Len = fetchPrimal(MI.getLength(), R);
  for (unsigned K = 0; K < Width; ++K)
    emitMemoryTranspose(RB, Elem, fetchShadow(MI.getRawDest(), K, R),
                        Copy ? fetchShadow(MT->getRawSource(), K, R) : nullptr,
                        Len);
}

/// The reverse of a recursive call: the callee's reverse derivative
/// (RecursiveCalls.h), seeded with the adjoint that collected in the shadow
/// of the call's return slot, accumulates into the shadows of the arrays it
/// was passed and returns the adjoints of its Active arguments. (It re-runs
/// the callee forward: the callee writes nothing its caller can see.)
void ReverseSynthesizer::reverseRecursiveCall(const CallBase &CB,
                                              const CallDerivative &CD,
                                              IRBuilder<> &RB, BlockRev &R) {
  const Request &Sub = CD.Req;
  SmallVector<Type *, 8> Fields;
  for (unsigned I = 0; I < Sub.Params.size(); ++I)
    if (Sub.Params[I].Act == Activity::Active)
      Fields.append(Width,
                    CB.getArgOperand(I + numba::NumHiddenParams)->getType());
  StructType *ResultTy = StructType::get(Ctx, Fields);
  Value *Result;
  {
    IRBuilder<> EB(DEntry, DEntry->getFirstInsertionPt());
    Result = EB.CreateAlloca(ResultTy, nullptr, "enzpy.recursive.adjoints");
  }
  SmallVector<Value *, 16> Args = {Result};
  for (unsigned I = numba::ExcInfoParam; I < CB.arg_size(); ++I)
    Args.push_back(fetchPrimal(CB.getArgOperand(I), R));
  auto arg = [&](unsigned I) {
    return CB.getArgOperand(I + numba::NumHiddenParams);
  };
  for (unsigned I = 0; I < Sub.Params.size(); ++I)
    if (Sub.Params[I].isDuplicated())
      for (unsigned K = 0; K < Width; ++K)
        Args.push_back(fetchShadow(arg(I), K, R));
  if (Sub.RetActive) {
    // The call wrote its result: the slot's adjoint is consumed.
    const Value *RetPtr = CB.getArgOperand(numba::RetPtrParam);
    for (unsigned K = 0; K < Width; ++K) {
      Value *S = fetchShadow(RetPtr, K, R);
      Args.push_back(RB.CreateLoad(CD.RetType, S));
      RB.CreateStore(Constant::getNullValue(CD.RetType), S);
    }
  }
  RB.CreateCall(CD.Fn, Args);
  unsigned Field = 0;
  for (unsigned I = 0; I < Sub.Params.size(); ++I) {
    if (Sub.Params[I].Act != Activity::Active)
      continue;
    Type *T = arg(I)->getType();
    for (unsigned K = 0; K < Width; ++K)
      Adj.add(RB, arg(I), K,
              RB.CreateLoad(T, RB.CreateStructGEP(ResultTy, Result, Field++)));
  }
}

/// The forward sweep of a call with a custom rule calls its augmented
/// function instead (rules/CustomRules.h): the primal's effects, and a tape
/// whose leaves the reverse fetches like any forward value; the MemInfos
/// among them are released on every way out.
void ReverseSynthesizer::prepareCustom(const CustomCall &CC) {
  const CallBase &CB = *CC.Call;
  CustomTape &T = CustomTapes[&CB];
  for (unsigned I = 0; I < CC.Args.size(); ++I) {
    const Value *PA = CB.getArgOperand(CC.Args[I].Operand);
    bool Active =
        CC.Args[I].Kind == CustomCall::ArgKind::Memory
            ? AA.pointsToActive(PA)
            : CC.Args[I].Kind == CustomCall::ArgKind::Float && AA.isActive(PA);
    if (Active) {
      T.Active |= uint64_t(1) << I;
      if (CC.Args[I].Kind == CustomCall::ArgKind::Memory)
        shadow(PA);
    }
    if (PA->getType()->isPointerTy() && !VR.cache().canRereadMemory(PA, &CB))
      T.Overwritten |= uint64_t(1) << I;
  }
  if (CC.Hidden && CC.returnsFloat() &&
      AA.pointsToActive(CB.getArgOperand(numba::RetPtrParam)))
    shadow(CB.getArgOperand(numba::RetPtrParam));
  // A new array it returns: zeroed shadows, made after the result's reads
  // (DerivativeSkeleton::zeroRuleResultShadows), where the reverse
  // accumulates its cotangent.
  if (RuleResult RR = ruleResult(CB); RR.Data && AA.pointsToActive(RR.Data))
    shadow(RR.Data);
  auto *DC = cast<CallBase>(mapped(&CB));
  IRBuilder<> B(DC);
  IRBuilder<> EB(DEntry, DEntry->getFirstInsertionPt());
  SmallVector<Value *, 16> Operands(DC->arg_begin() + CC.Hidden, DC->arg_end());
  auto Zero = [](const Value *PA) {
    return Constant::getNullValue(PA->getType());
  };
  if (CC.AugmentedShadows) // the first lane's shadows, as forward gets them
    appendRuleShadows(
        B, CC, T.Active, [&](const Value *PA) { return Sk.shadow(PA, 0); },
        Zero, Operands);
  Value *Exc = CC.Hidden ? DC->getArgOperand(numba::ExcInfoParam)
                         : D->getArg(numba::ExcInfoParam);
  Value *Result = nullptr;
  Value *Status = emitRuleCall(
      B, EB, CC.Augmented, CC.AugmentedResult, Sk.ruleStatusSlot(), Exc,
      {T.Active, T.Overwritten, Width, 0, AA.customResultActive(CC)}, Operands,
      Result);
  Value *Y = nullptr, *Tape = Result;
  if (CC.result()) {
    Y = B.CreateExtractValue(Result, 0);
    Tape = B.CreateExtractValue(Result, 1);
  }
  if (Tape)
    flattenLeaves(B, Tape, T.Leaves);
  for (unsigned O : CC.TapeOwners)
    if (O < T.Leaves.size())
      Sk.failIfNull(release().emitAppend(B, T.Leaves[O]));
  if (CC.Hidden) {
    if (Y)
      B.CreateStore(Y, DC->getArgOperand(numba::RetPtrParam));
    DC->replaceAllUsesWith(Status);
  } else {
    if (Y)
      DC->replaceAllUsesWith(Y);
  }
  DC->eraseFromParent();
}

/// The reverse of a call with a custom rule: its reverse function, once per
/// lane, turns the cotangents in the shadows of what the call wrote into
/// those of what it read, and returns its float arguments' cotangents.
void ReverseSynthesizer::reverseCustom(const CustomCall &CC, IRBuilder<> &RB,
                                       BlockRev &R) {
  const CallBase &CB = *CC.Call;
  const CustomTape &T = CustomTapes.find(&CB)->second;
  SmallVector<Value *, 16> Common;
  for (Value *L : T.Leaves)
    Common.push_back(fetch(L, R));
  for (unsigned K = CC.Hidden; K < CB.arg_size(); ++K)
    Common.push_back(fetchPrimal(CB.getArgOperand(K), R));
  IRBuilder<> EB(DEntry, DEntry->getFirstInsertionPt());
  for (unsigned K = 0; K < Width; ++K) {
    SmallVector<Value *, 16> Operands(Common);
    appendRuleShadows(
        RB, CC, T.Active,
        [&](const Value *PA) { return fetchShadow(PA, K, R); },
        [](const Value *PA) { return Constant::getNullValue(PA->getType()); },
        Operands);
    if (CC.returnsFloat()) {
      Type *RT = CC.result();
      Value *YBar = Constant::getNullValue(RT);
      if (CC.Hidden) {
        const Value *RetPtr = CB.getArgOperand(numba::RetPtrParam);
        if (AA.pointsToActive(RetPtr)) {
          Value *S = fetchShadow(RetPtr, K, R);
          YBar = RB.CreateLoad(RT, S);
          RB.CreateStore(Constant::getNullValue(RT), S);
        }
      } else if (AA.isActive(&CB)) {
        YBar = Adj.take(RB, &CB, K);
      }
      Operands.push_back(YBar);
    } else if (CC.returnsArray()) {
      // The cotangent of the array it returned, in the result's shadow.
      const Value *Data = ruleResult(CB).Data;
      Operands.push_back(AA.pointsToActive(Data)
                             ? fetchShadow(Data, K, R)
                             : ConstantPointerNull::get(RB.getPtrTy()));
    }
    Value *Result = nullptr;
    // A failure is kept in the rule status slot (the derivative returns it).
    emitRuleCall(RB, EB, CC.Reverse, CC.ReverseResult, Sk.ruleStatusSlot(),
                 D->getArg(numba::ExcInfoParam),
                 {T.Active, T.Overwritten, Width, K, AA.customResultActive(CC)},
                 Operands, Result);
    if (!Result)
      continue;
    SmallVector<Value *, 4> Cotangents;
    flattenLeaves(RB, Result, Cotangents);
    unsigned Next = 0;
    for (const CustomCall::Arg &A : CC.Args) {
      if (A.Kind != CustomCall::ArgKind::Float)
        continue;
      const Value *PA = CB.getArgOperand(A.Operand);
      Value *C = Next < Cotangents.size() ? Cotangents[Next] : nullptr;
      ++Next;
      if (!C || !AA.isActive(PA))
        continue;
      if (C->getType() != PA->getType())
        C = RB.CreateFPCast(C, PA->getType());
      Adj.add(RB, PA, K, C);
    }
  }
}

/// The skeleton, with the return value's cotangents (one per lane) as
/// trailing parameters when the return is seeded, and the tape.
void ReverseSynthesizer::createFunction() {
  SmallVector<DerivativeSkeleton::Trailing, 4> Extra;
  if (Req.RetActive)
    for (unsigned K = 0; K < Width; ++K)
      Extra.push_back({Sk.RetType, laneName("dret", K)});
  Sk.create(Extra);
  D = Sk.D;
  DEntry = Sk.Entry;
  if (Req.RetActive)
    Sk.createReturnShadows([&](unsigned K) { return Sk.trailing(K); });
  VR.createTape();
  Scopes.emplace(Ctx, Width);
  // Shadows live until every way out of the derivative (ReleaseList.h).
  Sk.OnShadowAllocation = [this](IRBuilder<> &B, Value *SMI) {
    Sk.failIfNull(release(numba::isRawAllocation(SMI)
                              ? ReleaseList::Kind::RawBuffers
                              : ReleaseList::Kind::MemInfos)
                      .emitAppend(B, SMI));
  };

  if (PRaise) {
    BasicBlock *DRaise = Sk.mapped(PRaise);
    VR.tape().emitFree(DRaise->getTerminator());
  }
}

void ReverseSynthesizer::findReaching() {
  // In program order, so that the generated code reads in order.
  for (const BasicBlock &B : P)
    if (Canon.returns(&B))
      Reaching.insert(&B);
}

void ReverseSynthesizer::createPids() {
  for (const BasicBlock *B : Reaching) {
    BlockRev &R = Rev[B];
    R.PB = B;
    BasicBlock *Head = BasicBlock::Create(Ctx, "rev." + B->getName(), D);
    R.Body = BasicBlock::Create(Ctx, "rev." + B->getName() + ".body", D);
    BranchInst::Create(R.Body, Head);
    R.Rec = &VR.createFrame(B, Head);
    SmallSetVector<BasicBlock *, 4> Preds;
    for (BasicBlock *Pred : predecessors(const_cast<BasicBlock *>(B)))
      Preds.insert(Pred);
    R.Preds.assign(Preds.begin(), Preds.end());
    if (R.Preds.size() < 2 || VR.loopOfHeader(B))
      continue;
    auto *DB = Sk.mapped(B);
    IRBuilder<> PB(DB, DB->getFirstNonPHIIt());
    PB.SetInsertPoint(DB, DB->getFirstNonPHIIt());
    R.Pid = PB.CreatePHI(Type::getInt32Ty(Ctx), R.Preds.size() + 1,
                         B->getName() + ".from");
    for (BasicBlock *Pred : predecessors(const_cast<BasicBlock *>(B))) {
      unsigned Id =
          std::find(R.Preds.begin(), R.Preds.end(), Pred) - R.Preds.begin();
      R.Pid->addIncoming(PB.getInt32(Id), Sk.mapped(Pred));
    }
  }
}

void ReverseSynthesizer::reverseInstruction(Instruction &I, IRBuilder<> &RB,
                                            BlockRev &R) {
  if (auto *MI = dyn_cast<AnyMemIntrinsic>(&I))
    return reverseMemoryIntrinsic(*MI, RB, R);
  if (auto *CB = dyn_cast<CallBase>(&I))
    if (std::optional<CustomCall> CC = matchCustomCall(*CB)) {
      if (CustomTapes.count(CB))
        reverseCustom(*CC, RB, R);
      return;
    }
  if (auto *CB = dyn_cast<CallBase>(&I))
    if (std::optional<BlasCall> Blas = matchBlasCall(*CB)) {
      if (blasActive(*Blas))
        reverseBlas(*Blas, RB, R);
      return;
    }
  if (auto *CB = dyn_cast<CallBase>(&I)) {
    auto Found = Canon.CallDerivatives.find(CB);
    if (Found != Canon.CallDerivatives.end())
      return reverseRecursiveCall(*CB, Found->second, RB, R);
  }
  if (numba::isAllocationCall(&I))
    return; // its shadow and extra reference are on the release list
  if (auto *L = dyn_cast<LoadInst>(&I)) {
    if (!AA.isActive(L))
      return;
    bool Apart = Sk.lanesApart(L->getPointerOperand());
    for (unsigned K = 0; K < Width; ++K) {
      Value *A = Adj.take(RB, L, K);
      Value *S = fetchShadow(L->getPointerOperand(), K, R);
      if (Value *Off = Par.copyOffset(RB, *L, K, Width))
        S = RB.CreateGEP(RB.getInt8Ty(), S, Off);
      LoadInst *Old = RB.CreateLoad(L->getType(), S);
      StoreInst *New = RB.CreateStore(AdjointStore::sum(RB, Old, A), S);
      if (Apart) {
        Scopes->lane(*Old, K);
        Scopes->lane(*New, K);
      }
    }
    return;
  }
  if (auto *St = dyn_cast<StoreInst>(&I)) {
    if (!AA.pointsToActive(St->getPointerOperand()))
      return;
    Value *V = St->getValueOperand();
    bool Apart = Sk.lanesApart(St->getPointerOperand());
    for (unsigned K = 0; K < Width; ++K) {
      Value *S = fetchShadow(St->getPointerOperand(), K, R);
      if (AA.isActive(V)) {
        LoadInst *Old = RB.CreateLoad(V->getType(), S);
        if (Apart)
          Scopes->lane(*Old, K);
        Adj.add(RB, V, K, Old);
      }
      StoreInst *Zero = RB.CreateStore(Constant::getNullValue(V->getType()), S);
      if (Apart)
        Scopes->lane(*Zero, K);
    }
    return;
  }
  if (!AA.isActive(&I))
    return;
  // adjoint_i += partial_i * adjoint: the rule fetches the forward values
  // its partials need once, and each partial serves every lane.
  const ScalarRule *Rule = findScalarRule(I);
  assert(Rule && "activity analysis accepted an operation without a rule");
  Lanes A = Adj.takeAll(RB, &I);
  // function_ref does not own its callable: keep the lambdas alive.
  auto Operand = [&](unsigned K) { return fetchPrimal(ruleOperand(I, K), R); };
  auto Result = [&]() { return fetchPrimal(&I, R); };
  RuleExpr X(RB, I.getType(), Operand, Result, ruleCallee(I));
  for (unsigned K = 0, N = ruleOperandCount(I); K < N; ++K) {
    const Value *Op = ruleOperand(I, K);
    if (!AA.isActive(Op))
      continue;
    Partial P = Rule->Partial(X, K);
    for (unsigned L = 0; L < Width; ++L)
      Adj.add(RB, Op, L, applyPartial(RB, P, A[L], Op->getType()));
  }
}

void ReverseSynthesizer::reverseBlock(BasicBlock *B) {
  BlockRev &R = Rev[B];
  IRBuilder<> RB(R.Body);
  for (Instruction &I : reverse(*B))
    if (!isa<PHINode>(I))
      reverseInstruction(I, RB, R);
  // Phis are evaluated together on entry: take all their adjoints first.
  SmallVector<std::pair<PHINode *, Lanes>, 4> PhiAdj;
  for (PHINode &Phi : B->phis())
    if (AA.isActive(&Phi))
      PhiAdj.push_back({&Phi, Adj.takeAll(RB, &Phi)});
  auto edgeTo = [&](IRBuilder<> &EB, BasicBlock *Pred) {
    for (auto &[Phi, A] : PhiAdj)
      for (unsigned K = 0; K < Width; ++K)
        Adj.add(EB, Phi->getIncomingValueForBlock(Pred), K, A[K]);
    // Entering loops backwards: counted ones start from their last
    // iteration; values invariant in them are recovered here.
    for (const Loop *L = VR.loops().getLoopFor(Pred); L && !L->contains(B);
         L = L->getParentLoop()) {
      VR.enterLoop(L, EB.GetInsertBlock(), *R.Rec);
      Par.enterLoop(EB, L, Width);
      if (const ValueRecovery::CountedLoop *LR =
              VR.loopOfHeader(L->getHeader()))
        EB.CreateStore(countFrom(fetch(LR->Counter, R)), LR->Remaining);
    }
    EB.CreateBr(Rev[Pred].head());
  };
  if (B == &P.getEntryBlock()) {
    RB.CreateBr(DFinal);
  } else if (const ValueRecovery::CountedLoop *LR = VR.loopOfHeader(B)) {
    Value *K = RB.CreateLoad(I64, LR->Remaining);
    BasicBlock *FromPre = BasicBlock::Create(
        Ctx, "rev." + B->getName() + ".from." + LR->Preheader->getName(), D);
    BasicBlock *FromLatch = BasicBlock::Create(
        Ctx, "rev." + B->getName() + ".from." + LR->Latch->getName(), D);
    Value *First = RB.CreateICmpEQ(K, ConstantInt::get(I64, 0));
    Par.noteExit(B, cast<ICmpInst>(First));
    RB.CreateCondBr(First, FromPre, FromLatch);
    IRBuilder<> PB(FromPre);
    // A sum of a prange loop hands on the adjoint of its last value: the
    // same, and known, when the iterations' reverses run apart.
    auto InLoop = PhiAdj;
    for (auto &[Phi, A] : PhiAdj)
      for (unsigned K = 0; K < Width; ++K)
        if (Value *Start = Par.sumStart(PB, Phi, K, Width))
          A[K] = Start;
    edgeTo(PB, LR->Preheader);
    PhiAdj = InLoop;
    IRBuilder<> LB(FromLatch);
    LB.CreateStore(LB.CreateSub(K, ConstantInt::get(I64, 1), "", true, true),
                   LR->Remaining);
    edgeTo(LB, LR->Latch);
  } else if (R.Preds.size() == 1) {
    edgeTo(RB, R.Preds[0]);
  } else {
    // The last predecessor is the switch's default: the forward sweep
    // records nothing else, and the reverse gets no way out that no path
    // takes (a loop's reverse keeps one exit).
    Value *Pid = fetch(R.Pid, R);
    SwitchInst *SW = nullptr;
    for (unsigned Id = R.Preds.size(); Id-- > 0;) {
      BasicBlock *Edge = BasicBlock::Create(
          Ctx, "rev." + B->getName() + ".from." + R.Preds[Id]->getName(), D);
      if (!SW)
        SW = RB.CreateSwitch(Pid, Edge, R.Preds.size() - 1);
      else
        SW->addCase(RB.getInt32(Id), Edge);
      IRBuilder<> EB(Edge);
      edgeTo(EB, R.Preds[Id]);
    }
  }
}

/// Result struct: the primal return value (when asked for), then each
/// Active parameter's adjoint in each lane.
void ReverseSynthesizer::createFinal() {
  DFinal = BasicBlock::Create(Ctx, "enzpy.final", D);
  IRBuilder<> B(DFinal);
  SmallVector<Value *, 8> Values;
  if (Req.ReturnPrimal && Sk.RetType)
    Values.push_back(B.CreateLoad(Sk.RetType, Sk.RetSlot));
  for (unsigned I = 0; I < Req.Params.size(); ++I) {
    if (Req.Params[I].Act != Activity::Active)
      continue;
    Argument *PA = numba::userParam(P, I);
    for (unsigned K = 0; K < Width; ++K)
      Values.push_back(AA.isActive(PA) ? static_cast<Value *>(B.CreateLoad(
                                             PA->getType(), Adj.slot(PA, K)))
                                       : ConstantFP::get(PA->getType(), 0.0));
  }
  Sk.storeResult(B, Values);
  ReturnInst *Ret = B.CreateRet(B.getInt32(0));
  VR.tape().emitFree(Ret);
  FinalRet = Ret;
}

/// Loads and stores that copy a primal one (the forward sweep, re-reads)
/// touch primal memory only (MemoryScopes).
void ReverseSynthesizer::tagPrimalAccesses() {
  for (Instruction &I : instructions(*D))
    if (isa<LoadInst, StoreInst>(I) && Sk.primalOf(&I))
      Scopes->primal(I);
}

Expected<Function *> ReverseSynthesizer::run() {
  VR.expandTripBounds();
  Par.plan();
  createFunction();
  findReaching();
  VR.createLoopCounters(Reaching);
  createPids();
  createShadows();
  DFinal = nullptr;
  createFinal();
  for (const BasicBlock *B : Reaching)
    reverseBlock(const_cast<BasicBlock *>(B));
  if (PExit) {
    BasicBlock *DExit = Sk.mapped(PExit);
    DExit->getTerminator()->eraseFromParent();
    BranchInst::Create(Rev[PExit].head(), DExit);
  }
  VR.emitHoisted();
  VR.emitPushes(Reaching);
  // After the pushes: the checks split blocks that the pushes end.
  BasicBlock *Fail = VR.tape().failureBlock();
  for (std::optional<ReleaseList> *L : {&Release, &RawRelease})
    if (*L) { // every way out drops what the derivative took
      (*L)->emitReleaseAll(FinalRet);
      (*L)->emitReleaseAll(Fail->getTerminator());
      if (PRaise)
        (*L)->emitReleaseAll(Sk.mapped(PRaise)->getTerminator());
    }
  Par.instrumentForward();
  Par.freeTables(Fail->getTerminator());
  if (PRaise)
    Par.freeTables(Sk.mapped(PRaise)->getTerminator());
  Sk.emitNullChecks(Fail);
  Sk.finishRuleStatus(FinalRet);
  markReverseMathCalls();
  tagPrimalAccesses();
  VR.tape().separate();
  UnneededStores NoNeed(Sk);
  NoNeed.drop();
  Par.outline();
  Par.freeTables(FinalRet);
  if (Log) {
    VR.record(*Log, Reaching);
    Par.record(*Log);
    NoNeed.record(*Log);
  }
  return D;
}

/// Every math call of the reverse sweep (the blocks that are not clones of
/// the primal's) computes the derivative: the rules' partials and the
/// values recovered by recomputation (sin x beside the rule's cos x).
void ReverseSynthesizer::markReverseMathCalls() {
  for (BasicBlock &B : *D)
    if (!Sk.primalOf(&B))
      for (Instruction &I : B)
        if (auto *CB = dyn_cast<CallBase>(&I); CB && isPureMathCall(*CB))
          markDerivativeCall(CB);
}

} // namespace

Expected<Function *> synthesizeReverse(DerivativeSkeleton &Sk,
                                       DecisionLog *Log) {
  ReverseSynthesizer S(Sk, Log);
  return S.run();
}

} // namespace enzpy
