//===- ValueRecovery.cpp - forward values in the reverse sweep ------------===//
#include "synthesis/ValueRecovery.h"
#include "driver/Diagnostics.h"
#include "numba/NumbaABI.h"
#include "rules/DerivativeRules.h"
#include "llvm/Analysis/ScalarEvolutionExpressions.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/CFG.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Module.h"
#include "llvm/Transforms/Utils/ScalarEvolutionExpander.h"

using namespace llvm;

namespace enzpy {

/// The primal values the forward sweep needs for itself: those that reach a
/// write to memory (other than the return slot when the primal value is not
/// returned), a call with effects, or control flow. The others feed only a
/// return value nobody reads: the forward sweep computes them only when the
/// reverse sweep's tape asks for them.
static DenseSet<const Value *> forwardNeeded(const Function &P,
                                             bool ReturnPrimal) {
  const Argument *RetPtr = P.getArg(numba::RetPtrParam);
  DenseSet<const Value *> Needed;
  SmallVector<const Instruction *, 32> Work;
  auto need = [&](const Value *V) {
    if (auto *I = dyn_cast<Instruction>(V); I && Needed.insert(I).second)
      Work.push_back(I);
  };
  for (const Instruction &I : instructions(P)) {
    if (auto *S = dyn_cast<StoreInst>(&I);
        S && !ReturnPrimal &&
        getUnderlyingObject(S->getPointerOperand()) == RetPtr)
      continue;
    if (I.isTerminator() || I.mayHaveSideEffects())
      need(&I);
  }
  while (!Work.empty())
    for (const Value *Op : Work.pop_back_val()->operands())
      need(Op);
  return Needed;
}

ValueRecovery::ValueRecovery(DerivativeSkeleton &Sk)
    : Sk(Sk), I64(Type::getInt64Ty(Sk.Ctx)), DT(Sk.P), LI(DT),
      TLII(Sk.P.getParent()->getTargetTriple()), TLI(TLII), AC(Sk.P),
      SE(Sk.P, TLI, AC, DT, LI), Cache(Sk.Canon, Sk.Req, Sk.TA, DT, LI),
      NeededForward(forwardNeeded(Sk.P, Sk.Req.ReturnPrimal)) {}

void ValueRecovery::createTape() { TheTape.emplace(*Sk.D, *Sk.Entry); }

ValueRecovery::Frame &ValueRecovery::createFrame(const BasicBlock *PB,
                                                 BasicBlock *Head) {
  auto F = std::make_unique<Frame>();
  F->PB = PB;
  F->Head = Head;
  F->Taped.emplace(*TheTape, Head);
  Frame &Ref = *F;
  Frames[PB] = std::move(F);
  return Ref;
}

/// A forward value can be used directly in every reverse block when its
/// block runs exactly once on every path that returns normally.
bool ValueRecovery::reusable(const BasicBlock *PDef) const {
  return !PDef ||
         (DT.dominates(PDef, Sk.Canon.NormalExit) && !LI.getLoopFor(PDef));
}

/// Whether \p I can be recomputed in the reverse sweep from its operands:
/// address arithmetic, integer index arithmetic, reads of memory that the
/// call never writes, and math functions whose value the forward sweep
/// would compute only for the tape (sin x in sum(x^2 sin x), where the
/// reverse needs cos x too: recomputed beside it, the two become one
/// sincos, and the forward loop that only filled the tape disappears).
static bool isRecomputable(const Instruction *I, const CachePolicy &Cache,
                           const DerivativeSkeleton &Sk,
                           const DenseSet<const Value *> &NeededForward) {
  if (auto *CB = dyn_cast<CallBase>(I)) {
    const Value *PV = Sk.primalOf(CB);
    return PV && !NeededForward.contains(PV) && isPureMathCall(*CB);
  }
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
unsigned ValueRecovery::popCost(Value *DV, Frame &R, unsigned Depth) {
  auto *I = dyn_cast<Instruction>(DV);
  if (!I || reusable(Sk.primalOf(I->getParent())) || R.Rebuilt.count(I))
    return 0;
  if (Depth > 6 || !isRecomputable(I, Cache, Sk, NeededForward)) {
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
Value *ValueRecovery::fetch(Value *DV, Frame &R) {
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
  return R.Taped->pop(DV);
}

Value *ValueRecovery::recompute(Instruction *I, Frame &R) {
  IRBuilder<> H(R.Head->getTerminator());
  if (auto *Phi = dyn_cast<PHINode>(I)) {
    const BasicBlock *PH = Sk.primalOf(Phi->getParent());
    const Loop *L = LI.getLoopFor(PH);
    const CountedLoop *LR = loopOfHeader(PH);
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
        fetch(Sk.mapped(PP->getIncomingValueForBlock(LR->Preheader)), R);
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
  if (!isRecomputable(I, Cache, Sk, NeededForward))
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

Value *ValueRecovery::fetchPrimal(const Value *PV, Frame &R) {
  return fetch(Sk.mapped(PV), R);
}

const ValueRecovery::CountedLoop *
ValueRecovery::loopOfHeader(const BasicBlock *B) const {
  const Loop *L = LI.getLoopFor(B);
  if (!L || L->getHeader() != B)
    return nullptr;
  auto It = Loops.find(L);
  return It == Loops.end() ? nullptr : &It->second;
}

void ValueRecovery::createLoopCounters(const BlockSet &Reaching) {
  for (Loop *L : LI.getLoopsInPreorder()) {
    BasicBlock *H = L->getHeader();
    BasicBlock *Pre = L->getLoopPreheader();
    BasicBlock *Latch = L->getLoopLatch();
    if (!Pre || !Latch || !Reaching.contains(H) || pred_size(H) != 2)
      continue;
    CountedLoop &LR = Loops[L];
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
    IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
    LR.Remaining = EB.CreateAlloca(I64, nullptr, H->getName() + ".rev.iter");
  }
}

/// An upper bound on the iterations of each innermost loop, expanded in its
/// preheader before the primal is cloned.
void ValueRecovery::expandTripBounds() {
  SCEVExpander Expander(SE, "enzpy.trips");
  for (Loop *L : LI.getLoopsInPreorder()) {
    BasicBlock *Pre = L->getLoopPreheader();
    if (!L->isInnermost() || !Pre || !Sk.Canon.returns(L->getHeader()))
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
void ValueRecovery::emitPushes(const BlockSet &Reaching) {
  DenseMap<const Loop *, unsigned> LoopSlots;
  for (const BasicBlock *B : Reaching)
    if (const Loop *L = LI.getLoopFor(B))
      if (TripBound.count(L))
        LoopSlots[L] += frame(B).Taped->size();
  SmallVector<std::pair<Instruction *, Value *>, 4> Reserve;
  // In program order (not the map's), so that the output is reproducible.
  for (const Loop *L : LI.getLoopsInPreorder()) {
    unsigned Slots = LoopSlots.lookup(L);
    if (Slots == 0)
      continue;
    BasicBlock *Pre = Sk.mapped(L->getLoopPreheader());
    IRBuilder<> B(Pre->getTerminator());
    Value *N =
        B.CreateMul(Sk.mapped(TripBound[L]), ConstantInt::get(I64, Slots),
                    "enzpy.reserve", /*HasNUW=*/true);
    Reserve.push_back({Pre->getTerminator(), N});
  }
  for (const BasicBlock *B : Reaching) {
    const Loop *L = LI.getLoopFor(B);
    bool Reserved = L && LoopSlots.lookup(L) > 0;
    frame(B).Taped->emitPush(Sk.mapped(B), !Reserved);
  }
  // After the preheaders' own pushes, so that those come first.
  for (auto &[Term, N] : Reserve)
    TheTape->emitReserve(Term, N);
}

void ValueRecovery::record(DecisionLog &Log, const BlockSet &Reaching) const {
  Log.begin("tape");
  for (const BasicBlock *B : Reaching) {
    const Frame &R = *Frames.find(B)->second;
    for (Value *V : R.Taped->pushed())
      Log.record("tape", V, B);
    for (auto &[What, V] : R.Notes)
      Log.record(What, V, B);
  }
}

} // namespace enzpy
