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
#include "numba/NumbaABI.h"
#include "rules/BlasRules.h"
#include "rules/DerivativeRules.h"
#include "rules/MemoryRules.h"
#include "synthesis/Adjoints.h"
#include "synthesis/ShadowAddresses.h"
#include "synthesis/Skeleton.h"
#include "synthesis/Synthesize.h"
#include "synthesis/Tape.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/Analysis/AssumptionCache.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/ScalarEvolution.h"
#include "llvm/Analysis/ScalarEvolutionExpressions.h"
#include "llvm/Analysis/TargetLibraryInfo.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/AsmParser/Parser.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/IntrinsicInst.h"
#include "llvm/IR/Module.h"
#include "llvm/IR/Operator.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Transforms/Utils/Cloning.h"
#include "llvm/Transforms/Utils/ScalarEvolutionExpander.h"
#include "llvm/Transforms/Utils/ValueMapper.h"
#include <optional>

using namespace llvm;

namespace enzpy {

namespace {

class ReverseSynthesizer {
public:
  ReverseSynthesizer(DerivativeSkeleton &Sk, raw_ostream *Log)
      : Sk(Sk), Canon(Sk.Canon), P(Sk.P), PExit(Canon.NormalExit),
        PRaise(Canon.RaiseExit), Req(Sk.Req), TA(Sk.TA), AA(Sk.AA), Log(Log),
        DT(P), LI(DT), TLII(P.getParent()->getTargetTriple()), TLI(TLII), AC(P),
        SE(P, TLI, AC, DT, LI), Cache(Canon, Req, TA, DT, LI), Ctx(Sk.Ctx),
        I64(Type::getInt64Ty(Ctx)), Width(Sk.width()), Adj(Sk) {}

  Expected<Function *> run();

private:
  struct BlockRev {
    const BasicBlock *PB = nullptr; // the primal block reversed
    BasicBlock *Head = nullptr;
    BasicBlock *Body = nullptr;
    std::optional<Tape::Frame> Frame;
    DenseMap<Value *, Value *> Rebuilt; // recomputed or re-read in Head
    SmallVector<std::pair<const char *, Value *>, 4> Notes; // for the log
    PHINode *Pid = nullptr;             // in the forward block
    SmallVector<BasicBlock *, 4> Preds; // primal predecessors, pid order
  };

  /// A loop whose reverse is driven by an iteration counter instead of a
  /// taped predecessor index: the forward sweep counts iterations, the count
  /// at exit is taped once per loop execution, and the reverse counts down.
  /// Affine induction variables are then recomputed from the count.
  struct LoopRev {
    PHINode *Counter = nullptr;      // forward: iterations before this one
    AllocaInst *Remaining = nullptr; // reverse: the iteration being reversed
    BasicBlock *Preheader = nullptr;
    BasicBlock *Latch = nullptr;
  };

  void expandTripBounds();
  void emitPushes();
  void createFunction();
  void findReaching();
  void createLoopCounters();
  void createPids();
  const LoopRev *loopOfHeader(const BasicBlock *B) const;
  void reverseBlock(BasicBlock *B);
  void reverseInstruction(Instruction &I, IRBuilder<> &RB, BlockRev &R);
  void createFinal();
  void logDecisions();

  // Values of the forward sweep as usable in the reverse of a block.
  Value *mapped(const Value *PV) const { return Sk.mapped(PV); }
  bool reusable(const BasicBlock *PDef) const;
  Value *fetch(Value *DV, BlockRev &R);
  Value *recompute(Instruction *I, BlockRev &R);
  unsigned popCost(Value *DV, BlockRev &R, unsigned Depth);
  Value *fetchPrimal(const Value *PV, BlockRev &R);
  Value *fetchShadow(const Value *PPtr, unsigned K, BlockRev &R);

  std::string laneName(const Twine &Base, unsigned K) const {
    return Sk.laneName(Base, K);
  }

  // Shadows of addresses (one per lane), computed in the forward sweep.
  Lanes shadow(const Value *PPtr);
  void createShadows();
  /// The forward clone of primal block \p PB.
  BasicBlock *forwardEnd(const BasicBlock *PB) const { return Sk.mapped(PB); }
  void reverseMemoryIntrinsic(AnyMemIntrinsic &MI, IRBuilder<> &RB,
                              BlockRev &R);
  void prepareBlas(const BlasCall &Call);
  void reverseBlas(const BlasCall &Call, IRBuilder<> &RB, BlockRev &R);
  bool blasActive(const BlasCall &Call) const;

  DerivativeSkeleton &Sk;
  const CanonicalFunction &Canon;
  Function &P;
  BasicBlock *PExit;
  BasicBlock *PRaise;
  const Request &Req;
  const TypeAnalysis &TA;
  const ActivityAnalysis &AA;
  raw_ostream *Log;
  DominatorTree DT;
  LoopInfo LI;
  TargetLibraryInfoImpl TLII;
  TargetLibraryInfo TLI;
  AssumptionCache AC;
  ScalarEvolution SE;
  CachePolicy Cache;
  LLVMContext &Ctx;
  Type *I64;
  /// The batch width: adjoints and shadows come in this many lanes; the
  /// forward sweep and the tape are shared by all of them.
  unsigned Width;

  Function *D = nullptr;
  BasicBlock *DEntry = nullptr;
  BasicBlock *DFinal = nullptr;
  DenseMap<const Loop *, LoopRev> Loops;
  /// Innermost loops with an upper bound on their iteration count, computed
  /// in the preheader (a primal value, cloned like the rest): the tape is
  /// reserved once before the loop instead of checked every iteration.
  DenseMap<const Loop *, Value *> TripBound;
  std::optional<Tape> TheTape;
  /// Adjoints of SSA values, one accumulator per lane.
  AdjointStore Adj;
  /// BLAS inputs the reverse needs but that may be overwritten: copies made
  /// in the forward sweep (call, argument) -> copy. And alpha, beta.
  DenseMap<std::pair<const Value *, unsigned>, Value *> SavedInputs;
  DenseMap<const Value *, std::pair<Value *, Value *>> BlasScalars;
  DenseMap<const BasicBlock *, BlockRev> Rev;
  SmallSetVector<const BasicBlock *, 32> Reaching; // blocks that can return
  std::string Decisions;
};

/// A forward value can be used directly in every reverse block when its
/// block runs exactly once on every path that returns normally.
bool ReverseSynthesizer::reusable(const BasicBlock *PDef) const {
  return !PDef || (DT.dominates(PDef, PExit) && !LI.getLoopFor(PDef));
}

/// Whether \p I can be recomputed in the reverse sweep from its operands:
/// address arithmetic, integer index arithmetic, and reads of memory that
/// the call never writes.
static bool isRecomputable(const Instruction *I, const CachePolicy &Cache,
                           const DerivativeSkeleton &Sk) {
  if (isa<GetElementPtrInst>(I))
    return true;
  if (isa<CastInst>(I))
    return !I->getType()->isFloatingPointTy() &&
           !I->getOperand(0)->getType()->isFloatingPointTy();
  if (isa<UnaryOperator>(I))
    return true;
  if (auto *BO = dyn_cast<BinaryOperator>(I))
    switch (BO->getOpcode()) {
    case Instruction::FAdd:
    case Instruction::FSub:
    case Instruction::FMul:
    case Instruction::Add:
    case Instruction::Sub:
    case Instruction::Mul:
    case Instruction::Shl:
    case Instruction::And:
    case Instruction::Or:
    case Instruction::Xor:
      return true;
    default:
      return false;
    }
  if (auto *L = dyn_cast<LoadInst>(I)) {
    // Loads the synthesis added (allocations' shadow pointers) have none.
    auto *PL = dyn_cast_or_null<LoadInst>(Sk.primalOf(L));
    return PL && Cache.canReread(PL);
  }
  return false;
}

/// How many tape slots fetching \p DV would pop (capped): 0 for values that
/// are reusable, already fetched, or recomputable for free.
unsigned ReverseSynthesizer::popCost(Value *DV, BlockRev &R, unsigned Depth) {
  auto *I = dyn_cast<Instruction>(DV);
  if (!I || reusable(Sk.primalOf(I->getParent())) || R.Rebuilt.count(I))
    return 0;
  if (Depth > 6 || !isRecomputable(I, Cache, Sk)) {
    if (auto *Phi = dyn_cast<PHINode>(I)) {
      const Loop *L = LI.getLoopFor(Sk.primalOf(Phi->getParent()));
      if (L && loopOfHeader(L->getHeader()) && L->contains(R.PB))
        return 0; // a counter or induction variable, see recompute()
    }
    return 1;
  }
  unsigned Cost = 0;
  for (Value *Op : I->operands())
    Cost += popCost(Op, R, Depth + 1);
  return Cost;
}

/// The value \p DV of the forward sweep, as usable in the reverse of a block:
/// itself when it is reusable; recomputed when that costs no more tape than
/// popping it (an address from a shared index, an induction variable from
/// the loop's counter, a re-read of memory nobody writes); popped otherwise.
Value *ReverseSynthesizer::fetch(Value *DV, BlockRev &R) {
  auto *I = dyn_cast<Instruction>(DV);
  if (!I || reusable(Sk.primalOf(I->getParent())))
    return DV;
  auto It = R.Rebuilt.find(I);
  if (It != R.Rebuilt.end())
    return It->second;
  if (Value *V = recompute(I, R)) {
    R.Rebuilt[I] = V;
    return V;
  }
  return R.Frame->pop(DV);
}

Value *ReverseSynthesizer::recompute(Instruction *I, BlockRev &R) {
  IRBuilder<> H(R.Head->getTerminator());
  if (auto *Phi = dyn_cast<PHINode>(I)) {
    const BasicBlock *PH = Sk.primalOf(Phi->getParent());
    const Loop *L = LI.getLoopFor(PH);
    const LoopRev *LR = loopOfHeader(PH);
    if (!LR || !L->contains(R.PB))
      return nullptr;
    Value *K = H.CreateLoad(I64, LR->Remaining, "enzpy.iter");
    if (Phi == LR->Counter)
      return K;
    // Phis the synthesis added (shadows of pointer phis) have no primal.
    auto *PP = dyn_cast_or_null<PHINode>(Sk.primalOf(Phi));
    if (!PP)
      return nullptr;
    auto *AR = dyn_cast<SCEVAddRecExpr>(SE.getSCEV(const_cast<PHINode *>(PP)));
    if (!AR || AR->getLoop() != L || !AR->isAffine())
      return nullptr;
    auto *Step = dyn_cast<SCEVConstant>(AR->getStepRecurrence(SE));
    if (!Step)
      return nullptr;
    Value *Start =
        fetch(mapped(PP->getIncomingValueForBlock(LR->Preheader)), R);
    H.SetInsertPoint(R.Head->getTerminator());
    if (Phi->getType()->isIntegerTy()) {
      Value *KT = H.CreateSExtOrTrunc(K, Phi->getType());
      Value *V = H.CreateAdd(
          Start,
          H.CreateMul(KT, ConstantInt::get(Phi->getType(),
                                           Step->getAPInt().getSExtValue())));
      R.Notes.push_back({"recompute", I});
      return V;
    }
    if (Phi->getType()->isPointerTy()) {
      Value *Off = H.CreateMul(
          K, ConstantInt::get(I64, Step->getAPInt().getSExtValue()));
      R.Notes.push_back({"recompute", I});
      return H.CreateGEP(H.getInt8Ty(), Start, Off);
    }
    return nullptr;
  }
  if (!isRecomputable(I, Cache, Sk))
    return nullptr;
  // Address arithmetic is always rebuilt (its index is shared); integer
  // values and reads when that pops no more than the value itself would;
  // float arithmetic only when it pops nothing.
  if (!isa<GetElementPtrInst>(I) &&
      !(isa<CastInst>(I) && I->getType()->isPointerTy())) {
    unsigned Cost = 0;
    for (Value *Op : I->operands())
      Cost += popCost(Op, R, 1);
    unsigned Limit = I->getType()->isFloatingPointTy() ? 0 : 1;
    if (Cost > Limit)
      return nullptr;
  }
  SmallVector<Value *, 4> Ops;
  for (Value *Op : I->operands())
    Ops.push_back(fetch(Op, R));
  Instruction *Copy = I->clone();
  for (unsigned K = 0; K < Ops.size(); ++K)
    Copy->setOperand(K, Ops[K]);
  Copy->setName(I->getName() + ".re");
  Copy->insertBefore(R.Head->getTerminator()->getIterator());
  R.Notes.push_back({isa<LoadInst>(I) ? "reread" : "recompute", I});
  return Copy;
}

Value *ReverseSynthesizer::fetchPrimal(const Value *PV, BlockRev &R) {
  return fetch(mapped(PV), R);
}

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
  for (const CallBase *A : Cache.keptAlive()) {
    auto *DA = cast<Instruction>(mapped(A));
    IRBuilder<> B(DA->getNextNode());
    B.CreateCall(Incref, {DA});
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
  for (unsigned I : Call.inputs()) {
    bool OtherActive = false;
    for (unsigned J : Call.inputs())
      OtherActive |= J != I && AA.pointsToActive(CB->getArgOperand(J));
    if (!OtherActive || Cache.canRereadMemory(CB->getArgOperand(I)))
      continue;
    // Copy before the call: malloc + memcpy, checked for null.
    IRBuilder<> B(DC);
    Value *Bytes = emitBlasInputBytes(
        B, Call, I, [&](unsigned K) { return DC->getArgOperand(K); });
    Module &M = *D->getParent();
    FunctionCallee Malloc = M.getOrInsertFunction(
        "malloc", FunctionType::get(B.getPtrTy(), {B.getInt64Ty()}, false));
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
  FunctionCallee Free = D->getParent()->getOrInsertFunction(
      "free", FunctionType::get(RB.getVoidTy(), {RB.getPtrTy()}, false));
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
  TheTape.emplace(*D, *DEntry);

  if (PRaise) {
    BasicBlock *DRaise = Sk.mapped(PRaise);
    TheTape->emitFree(DRaise->getTerminator());
  }
}

void ReverseSynthesizer::findReaching() {
  // In program order, so that the generated code reads in order.
  for (const BasicBlock &B : P)
    if (Canon.returns(&B))
      Reaching.insert(&B);
}

const ReverseSynthesizer::LoopRev *
ReverseSynthesizer::loopOfHeader(const BasicBlock *B) const {
  const Loop *L = LI.getLoopFor(B);
  if (!L || L->getHeader() != B)
    return nullptr;
  auto It = Loops.find(L);
  return It == Loops.end() ? nullptr : &It->second;
}

void ReverseSynthesizer::createLoopCounters() {
  for (Loop *L : LI.getLoopsInPreorder()) {
    BasicBlock *H = L->getHeader();
    BasicBlock *Pre = L->getLoopPreheader();
    BasicBlock *Latch = L->getLoopLatch();
    if (!Pre || !Latch || !Reaching.contains(H) || pred_size(H) != 2)
      continue;
    LoopRev &LR = Loops[L];
    LR.Preheader = Pre;
    LR.Latch = Latch;
    auto *DH = Sk.mapped(H);
    LR.Counter = PHINode::Create(I64, 2, H->getName() + ".iter");
    LR.Counter->insertBefore(DH->begin());
    auto *DL = Sk.mapped(Latch);
    IRBuilder<> B(DL->getTerminator());
    Value *Next = B.CreateAdd(LR.Counter, ConstantInt::get(I64, 1),
                              H->getName() + ".iter.next", true, true);
    LR.Counter->addIncoming(ConstantInt::get(I64, 0), Sk.mapped(Pre));
    LR.Counter->addIncoming(Next, DL);
    IRBuilder<> EB(DEntry, DEntry->getFirstInsertionPt());
    LR.Remaining = EB.CreateAlloca(I64, nullptr, H->getName() + ".rev.iter");
  }
}

void ReverseSynthesizer::createPids() {
  for (const BasicBlock *B : Reaching) {
    BlockRev &R = Rev[B];
    R.PB = B;
    R.Head = BasicBlock::Create(Ctx, "rev." + B->getName(), D);
    R.Body = BasicBlock::Create(Ctx, "rev." + B->getName() + ".body", D);
    BranchInst::Create(R.Body, R.Head);
    R.Frame.emplace(*TheTape, R.Head);
    SmallSetVector<BasicBlock *, 4> Preds;
    for (BasicBlock *Pred : predecessors(const_cast<BasicBlock *>(B)))
      Preds.insert(Pred);
    R.Preds.assign(Preds.begin(), Preds.end());
    if (R.Preds.size() < 2 || loopOfHeader(B))
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
    if (std::optional<BlasCall> Blas = matchBlasCall(*CB)) {
      if (blasActive(*Blas))
        reverseBlas(*Blas, RB, R);
      return;
    }
  if (numba::isAllocationCall(&I)) {
    FunctionCallee Decref = numba::decrefFunction(*D->getParent());
    auto *Alloc = cast<CallBase>(&I);
    if (Sk.hasShadowAllocation(Alloc))
      for (Value *SMI : Sk.shadowAllocation(Alloc))
        RB.CreateCall(Decref, {fetch(SMI, R)});
    // The array itself, kept alive for re-reads (see createShadows).
    if (Cache.keptAlive().contains(cast<CallBase>(&I)))
      RB.CreateCall(Decref, {fetchPrimal(&I, R)});
    return;
  }
  if (auto *L = dyn_cast<LoadInst>(&I)) {
    if (!AA.isActive(L))
      return;
    for (unsigned K = 0; K < Width; ++K) {
      Value *A = Adj.take(RB, L, K);
      Value *S = fetchShadow(L->getPointerOperand(), K, R);
      RB.CreateStore(AdjointStore::sum(RB, RB.CreateLoad(L->getType(), S), A),
                     S);
    }
    return;
  }
  if (auto *St = dyn_cast<StoreInst>(&I)) {
    if (!AA.pointsToActive(St->getPointerOperand()))
      return;
    Value *V = St->getValueOperand();
    for (unsigned K = 0; K < Width; ++K) {
      Value *S = fetchShadow(St->getPointerOperand(), K, R);
      if (AA.isActive(V))
        Adj.add(RB, V, K, RB.CreateLoad(V->getType(), S));
      RB.CreateStore(Constant::getNullValue(V->getType()), S);
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
  RuleExpr X(RB, I.getType(), Operand, Result);
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
    // Entering counted loops backwards: start from their last iteration.
    for (const Loop *L = LI.getLoopFor(Pred); L && !L->contains(B);
         L = L->getParentLoop())
      if (const LoopRev *LR = loopOfHeader(L->getHeader()))
        EB.CreateStore(fetch(LR->Counter, R), LR->Remaining);
    EB.CreateBr(Rev[Pred].Head);
  };
  if (B == &P.getEntryBlock()) {
    RB.CreateBr(DFinal);
  } else if (const LoopRev *LR = loopOfHeader(B)) {
    Value *K = RB.CreateLoad(I64, LR->Remaining);
    BasicBlock *FromPre = BasicBlock::Create(
        Ctx, "rev." + B->getName() + ".from." + LR->Preheader->getName(), D);
    BasicBlock *FromLatch = BasicBlock::Create(
        Ctx, "rev." + B->getName() + ".from." + LR->Latch->getName(), D);
    RB.CreateCondBr(RB.CreateICmpEQ(K, ConstantInt::get(I64, 0)), FromPre,
                    FromLatch);
    IRBuilder<> PB(FromPre);
    edgeTo(PB, LR->Preheader);
    IRBuilder<> LB(FromLatch);
    LB.CreateStore(LB.CreateSub(K, ConstantInt::get(I64, 1)), LR->Remaining);
    edgeTo(LB, LR->Latch);
  } else if (R.Preds.size() == 1) {
    edgeTo(RB, R.Preds[0]);
  } else {
    Value *Pid = fetch(R.Pid, R);
    BasicBlock *Unreach =
        BasicBlock::Create(Ctx, "rev." + B->getName() + ".bad", D);
    new UnreachableInst(Ctx, Unreach);
    SwitchInst *SW = RB.CreateSwitch(Pid, Unreach, R.Preds.size());
    for (unsigned Id = 0; Id < R.Preds.size(); ++Id) {
      BasicBlock *Edge = BasicBlock::Create(
          Ctx, "rev." + B->getName() + ".from." + R.Preds[Id]->getName(), D);
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
  TheTape->emitFree(Ret);
}

void ReverseSynthesizer::logDecisions() {
  if (!Log)
    return;
  *Log << "tape:\n";
  for (const BasicBlock *B : Reaching) {
    const BlockRev &R = Rev.find(B)->second;
    for (Value *V : R.Frame->pushed())
      *Log << "  tape " << describe(V) << " in block %" << B->getName() << "\n";
    for (auto &[What, V] : R.Notes)
      *Log << "  " << What << " " << describe(V) << " in block %"
           << B->getName() << "\n";
  }
}

/// An upper bound on the iterations of each innermost loop, expanded in its
/// preheader before the primal is cloned.
void ReverseSynthesizer::expandTripBounds() {
  SCEVExpander Expander(SE, "enzpy.trips");
  for (Loop *L : LI.getLoopsInPreorder()) {
    BasicBlock *Pre = L->getLoopPreheader();
    if (!L->isInnermost() || !Pre || !Canon.returns(L->getHeader()))
      continue;
    const SCEV *BTC = SE.getSymbolicMaxBackedgeTakenCount(L);
    if (isa<SCEVCouldNotCompute>(BTC) || !BTC->getType()->isIntegerTy() ||
        BTC->getType()->getIntegerBitWidth() > 64)
      continue;
    const SCEV *Trips =
        SE.getAddExpr(SE.getZeroExtendExpr(BTC, I64), SE.getOne(I64));
    if (!Expander.isSafeToExpandAt(Trips, Pre->getTerminator()))
      continue;
    TripBound[L] = Expander.expandCodeFor(Trips, I64, Pre->getTerminator());
  }
}

/// Each forward block pushes its frame; inside innermost loops whose trip
/// bound is known, one reservation in the preheader covers every iteration.
void ReverseSynthesizer::emitPushes() {
  DenseMap<const Loop *, unsigned> LoopSlots;
  for (const BasicBlock *B : Reaching)
    if (const Loop *L = LI.getLoopFor(B))
      if (TripBound.count(L))
        LoopSlots[L] += Rev[B].Frame->size();
  SmallVector<std::pair<Instruction *, Value *>, 4> Reserve;
  // In program order (not the map's), so that the output is reproducible.
  for (const Loop *L : LI.getLoopsInPreorder()) {
    unsigned Slots = LoopSlots.lookup(L);
    if (Slots == 0)
      continue;
    BasicBlock *Pre = forwardEnd(L->getLoopPreheader());
    IRBuilder<> B(Pre->getTerminator());
    Value *N = B.CreateMul(mapped(TripBound[L]), ConstantInt::get(I64, Slots),
                           "enzpy.reserve", /*HasNUW=*/true);
    Reserve.push_back({Pre->getTerminator(), N});
  }
  for (const BasicBlock *B : Reaching) {
    const Loop *L = LI.getLoopFor(B);
    bool Reserved = L && LoopSlots.lookup(L) > 0;
    Rev[B].Frame->emitPush(forwardEnd(B), !Reserved);
  }
  // After the preheaders' own pushes, so that those come first.
  for (auto &[Term, N] : Reserve)
    TheTape->emitReserve(Term, N);
}

Expected<Function *> ReverseSynthesizer::run() {
  expandTripBounds();
  createFunction();
  findReaching();
  createLoopCounters();
  createPids();
  createShadows();
  DFinal = nullptr;
  createFinal();
  for (const BasicBlock *B : Reaching)
    reverseBlock(const_cast<BasicBlock *>(B));
  if (PExit) {
    BasicBlock *DExit = forwardEnd(PExit);
    DExit->getTerminator()->eraseFromParent();
    BranchInst::Create(Rev[PExit].Head, DExit);
  }
  emitPushes();
  // After the pushes: the checks split blocks that the pushes end.
  Sk.emitNullChecks(TheTape->failureBlock());
  logDecisions();
  return D;
}

} // namespace

Expected<Function *> synthesizeReverse(DerivativeSkeleton &Sk,
                                       raw_ostream *Log) {
  ReverseSynthesizer S(Sk, Log);
  return S.run();
}

} // namespace enzpy
