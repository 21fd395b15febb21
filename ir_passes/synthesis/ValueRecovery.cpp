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
#include <numeric>

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
      SE(Sk.P, TLI, AC, DT, LI),
      Cache(Sk.Canon, Sk.Req, Sk.TA, DT, LI, SE, AC, TLI),
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

/// \p I (defined in \p PDef) has one value during each execution of \p L,
/// and that value is available at every exit of \p L that returns: defined
/// before the loop, or loaded from an address that does not change in the
/// loop from memory that nothing in the loop writes.
bool ValueRecovery::invariantIn(const Instruction *I, const BasicBlock *PDef,
                                const Loop &L) const {
  if (L.contains(PDef)) {
    auto *PL = dyn_cast_or_null<LoadInst>(Sk.primalOf(I));
    if (!PL || !Cache.unchangedIn(PL, L) ||
        !SE.isLoopInvariant(
            SE.getSCEV(const_cast<Value *>(PL->getPointerOperand())), &L))
      return false;
  }
  SmallVector<BasicBlock *, 4> Exits;
  L.getExitBlocks(Exits);
  return all_of(Exits, [&](const BasicBlock *E) {
    return !Sk.Canon.returns(E) || DT.dominates(PDef, E);
  });
}

/// The outermost loop around \p R's block in which \p I is invariant and
/// whose exits the reverse enters it from (dedicated exits), if any.
const Loop *ValueRecovery::invariantLoop(const Instruction *I,
                                         const BasicBlock *PDef,
                                         const Frame &R) const {
  const Loop *Best = nullptr;
  for (const Loop *L = LI.getLoopFor(R.PB); L && invariantIn(I, PDef, *L);
       L = L->getParentLoop())
    if (L->hasDedicatedExits())
      Best = L;
  return Best;
}

bool ValueRecovery::freeIn(const Instruction *I, const Frame &R) const {
  const BasicBlock *PDef = Sk.primalOf(I->getParent());
  return reusable(PDef) || !LI.getLoopFor(PDef) || invariantLoop(I, PDef, R) ||
         R.Rebuilt.count(I);
}

/// Whether \p I can be recomputed in the reverse sweep from its operands:
/// address arithmetic, integer index arithmetic (wrapped indices' division
/// and remainder included), comparisons and selects, reads of memory that
/// the call never writes, and math functions whose value the forward sweep
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
  if (isa<GetElementPtrInst, ICmpInst, SelectInst, FreezeInst>(I))
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
    case Instruction::LShr:
    case Instruction::AShr:
      return true;
    // Integer division: the forward sweep did not trap on these operands.
    case Instruction::SDiv:
    case Instruction::UDiv:
    case Instruction::SRem:
    case Instruction::URem:
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

/// The phi of a counted loop's header around \p R's block, as a
/// ScalarEvolution expression of the primal (null otherwise).
static const SCEV *inductionOf(const PHINode *Phi, const Loop *L,
                               const DerivativeSkeleton &Sk,
                               ScalarEvolution &SE) {
  auto *PP = dyn_cast_or_null<PHINode>(Sk.primalOf(Phi));
  if (!PP || !SE.isSCEVable(PP->getType()))
    return nullptr;
  const SCEV *S = SE.getSCEV(const_cast<PHINode *>(PP));
  return isa<SCEVUnknown>(S) ? nullptr : S;
}

/// How many tape slots fetching \p DV would pop: 0 for values that are
/// reused, kept, hoisted, already fetched, or recomputable for free. Within
/// one query (its caller clears CostSeen first) a value shared by several
/// operands counts once, as it would be fetched once; the walk visits at
/// most CostBudget values and counts the rest as one pop. (A depth cap used
/// to decide this instead, which made the answer depend on the order in
/// which the reverse asked: the first of three coordinate differences was
/// taped because its re-read's address chain was deeper than the cap, the
/// next two were free because the first one's shadow address had rebuilt
/// that chain.)
unsigned ValueRecovery::popCost(Value *DV, Frame &R, unsigned Depth) {
  auto *I = dyn_cast<Instruction>(DV);
  if (!I || freeIn(I, R) || !CostSeen.insert(I).second)
    return 0;
  if (CostSeen.size() > CostBudget || Depth > CostBudget)
    return 1;
  if (auto *Phi = dyn_cast<PHINode>(I)) {
    const BasicBlock *PH = Sk.primalOf(Phi->getParent());
    const Loop *L = LI.getLoopFor(PH);
    const CountedLoop *LR = loopOfHeader(PH);
    if (!LR || !L->contains(R.PB))
      return 1;
    if (Phi == LR->Counter)
      return 0;
    const SCEV *S = inductionOf(Phi, L, Sk, SE);
    return S ? std::min(expandCost(S, R, Depth + 1), 1u) : 1;
  }
  if (!isRecomputable(I, Cache, Sk, NeededForward))
    return 1;
  unsigned Cost = 0;
  for (Value *Op : I->operands())
    Cost += popCost(Op, R, Depth + 1);
  return Cost;
}

unsigned ValueRecovery::expandCost(const SCEV *S, Frame &R, unsigned Depth) {
  constexpr unsigned Never = ~0u;
  if (isa<SCEVConstant>(S))
    return 0;
  if (auto *U = dyn_cast<SCEVUnknown>(S))
    return popCost(Sk.mapped(U->getValue()), R, Depth);
  if (auto *AR = dyn_cast<SCEVAddRecExpr>(S)) {
    if (!Loops.count(AR->getLoop()) || !AR->getLoop()->contains(R.PB) ||
        AR->getNumOperands() > 3)
      return Never;
  } else if (!isa<SCEVAddExpr, SCEVMulExpr, SCEVTruncateExpr,
                  SCEVZeroExtendExpr, SCEVSignExtendExpr, SCEVPtrToIntExpr>(
                 S)) {
    return Never;
  }
  unsigned Cost = 0;
  for (const SCEV *Op : S->operands()) {
    unsigned C = expandCost(Op, R, Depth);
    if (C == Never)
      return Never;
    Cost += C;
  }
  return Cost;
}

Value *ValueRecovery::expand(const SCEV *S, Frame &R) {
  IRBuilder<> H(R.Head->getTerminator());
  Type *T = S->getType();
  if (auto *C = dyn_cast<SCEVConstant>(S))
    return C->getValue();
  if (auto *U = dyn_cast<SCEVUnknown>(S))
    return fetchPrimal(U->getValue(), R);
  SmallVector<Value *, 4> Ops;
  for (const SCEV *Op : S->operands()) {
    Value *V = expand(Op, R);
    if (!V)
      return nullptr;
    Ops.push_back(V);
  }
  H.SetInsertPoint(R.Head->getTerminator());
  // Integer terms added to a pointer are byte offsets.
  auto Sum = [&](Value *A, Value *B) -> Value * {
    if (B->getType()->isPointerTy())
      std::swap(A, B);
    if (A->getType()->isPointerTy())
      return H.CreateGEP(H.getInt8Ty(), A, B);
    return H.CreateAdd(A, B);
  };
  if (isa<SCEVAddExpr>(S))
    return std::accumulate(Ops.begin() + 1, Ops.end(), Ops[0], Sum);
  if (isa<SCEVMulExpr>(S))
    return std::accumulate(
        Ops.begin() + 1, Ops.end(), Ops[0],
        [&](Value *A, Value *B) { return H.CreateMul(A, B); });
  if (isa<SCEVTruncateExpr>(S))
    return H.CreateTrunc(Ops[0], T);
  if (isa<SCEVZeroExtendExpr>(S))
    return H.CreateZExt(Ops[0], T);
  if (isa<SCEVSignExtendExpr>(S))
    return H.CreateSExt(Ops[0], T);
  if (isa<SCEVPtrToIntExpr>(S))
    return H.CreatePtrToInt(Ops[0], T);
  auto *AR = dyn_cast<SCEVAddRecExpr>(S);
  if (!AR)
    return nullptr;
  // {A,+,B,+,C} at iteration k: A + B*k + C*k*(k-1)/2.
  const CountedLoop &LR = Loops.find(AR->getLoop())->second;
  Value *K = H.CreateLoad(I64, LR.Remaining, "enzpy.iter");
  Value *Binom = K;
  Value *V = Ops[0];
  for (unsigned J = 1; J < Ops.size(); ++J) {
    if (J == 2)
      Binom = H.CreateLShr(
          H.CreateMul(K, H.CreateSub(K, ConstantInt::get(I64, 1))), 1);
    Type *StepT = Ops[J]->getType();
    V = Sum(V, H.CreateMul(Ops[J], H.CreateSExtOrTrunc(Binom, StepT)));
  }
  return V;
}

/// The value \p DV of the forward sweep, as usable in the reverse of a block:
/// itself when it is reusable; kept or hoisted when it has one value per
/// call or per execution of loops around the block; recomputed when that
/// costs no more tape than popping it (an address from a shared index, an
/// induction variable from the loops' counters, a re-read of memory nobody
/// writes); popped otherwise.
Value *ValueRecovery::fetch(Value *DV, Frame &R) {
  auto *I = dyn_cast<Instruction>(DV);
  if (!I)
    return DV;
  const BasicBlock *PDef = Sk.primalOf(I->getParent());
  if (reusable(PDef))
    return DV;
  auto It = R.Rebuilt.find(I);
  if (It != R.Rebuilt.end())
    return It->second;
  Value *V;
  if (!LI.getLoopFor(PDef))
    V = keep(I, R);
  else if (const Loop *L = invariantLoop(I, PDef, R))
    V = hoist(I, L, R);
  else
    V = recompute(I, R);
  if (!V)
    return R.Taped->pop(DV);
  R.Rebuilt[I] = V;
  return V;
}

/// A value defined once per call: stored where it is defined, loaded in
/// the reverse (the slot becomes SSA again after promotion).
Value *ValueRecovery::keep(Instruction *I, Frame &R) {
  AllocaInst *&Slot = Kept[I];
  if (!Slot) {
    IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
    Slot = EB.CreateAlloca(I->getType(), nullptr, I->getName() + ".kept");
    BasicBlock::iterator After = isa<PHINode>(I)
                                     ? I->getParent()->getFirstInsertionPt()
                                     : std::next(I->getIterator());
    new StoreInst(I, Slot, After);
  }
  IRBuilder<> H(R.Head->getTerminator());
  R.Notes.push_back({"kept", I});
  return H.CreateLoad(I->getType(), Slot, I->getName() + ".kept");
}

/// A value invariant in loop \p L around \p R's block: loaded from a slot
/// that emitHoisted fills where the reverse enters \p L.
Value *ValueRecovery::hoist(Instruction *I, const Loop *L, Frame &R) {
  AllocaInst *&Slot = Hoisted[{I, L}];
  if (!Slot) {
    IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
    Slot = EB.CreateAlloca(I->getType(), nullptr, I->getName() + ".hoisted");
    HoistPending.push_back({I, L});
  }
  IRBuilder<> H(R.Head->getTerminator());
  R.Notes.push_back({"hoisted", I});
  return H.CreateLoad(I->getType(), Slot, I->getName() + ".hoisted");
}

void ValueRecovery::enterLoop(const Loop *L, BasicBlock *Edge, Frame &From) {
  LoopEntries[L].push_back({Edge, &From});
}

/// Each hoisted value is fetched in the reverse of its loop's exit blocks
/// (once per execution of the loop: kept, hoisted further out, recomputed,
/// re-read or taped there) and stored on the edges into the loop. Fetching
/// may hoist more values: repeat until none is left.
void ValueRecovery::emitHoisted() {
  while (!HoistPending.empty()) {
    auto [I, L] = HoistPending.pop_back_val();
    AllocaInst *Slot = Hoisted.lookup({I, L});
    for (auto &[Edge, From] : LoopEntries.lookup(L))
      new StoreInst(fetch(I, *From), Slot,
                    Edge->getTerminator()->getIterator());
  }
}

Value *ValueRecovery::recompute(Instruction *I, Frame &R) {
  IRBuilder<> H(R.Head->getTerminator());
  if (auto *Phi = dyn_cast<PHINode>(I)) {
    const BasicBlock *PH = Sk.primalOf(Phi->getParent());
    const Loop *L = LI.getLoopFor(PH);
    const CountedLoop *LR = loopOfHeader(PH);
    if (!LR || !L->contains(R.PB))
      return nullptr;
    if (Phi == LR->Counter)
      return H.CreateLoad(I64, LR->Remaining, "enzpy.iter");
    // Induction variables: their recurrence at the iteration reversed.
    const SCEV *S = inductionOf(Phi, L, Sk, SE);
    CostSeen.clear();
    if (!S || expandCost(S, R, 1) > 1)
      return nullptr;
    Value *V = expand(S, R);
    if (!V || V->getType() != Phi->getType())
      return nullptr;
    R.Notes.push_back({"recompute", I});
    return V;
  }
  if (!isRecomputable(I, Cache, Sk, NeededForward))
    return nullptr;
  // Address arithmetic is always rebuilt (its index is shared); integer
  // values and reads when that pops no more than the value itself would;
  // float arithmetic only when it pops nothing.
  if (!isa<GetElementPtrInst>(I) &&
      !(isa<CastInst>(I) && I->getType()->isPointerTy())) {
    unsigned Cost = 0;
    CostSeen.clear();
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

bool ValueRecovery::isRecoverySlot(const AllocaInst *A) const {
  for (const auto &[L, CL] : Loops)
    if (CL.Remaining == A)
      return true;
  for (const auto &[V, Slot] : Kept)
    if (Slot == A)
      return true;
  for (const auto &[Key, Slot] : Hoisted)
    if (Slot == A)
      return true;
  return false;
}

} // namespace enzpy
