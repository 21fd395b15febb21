//===- ParallelLoops.cpp - reverse sweeps of prange loops on threads ------===//
//
// See ParallelLoops.h for what runs in parallel and why it is safe.
//
//===----------------------------------------------------------------------===//
#include "synthesis/ParallelLoops.h"
#include "driver/Diagnostics.h"
#include "driver/IRHelpers.h"
#include "numba/NumbaABI.h"
#include "rules/DerivativeRules.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/ScalarEvolution.h"
#include "llvm/Analysis/ScalarEvolutionExpressions.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/DebugInfoMetadata.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/IntrinsicInst.h"
#include "llvm/IR/Module.h"
#include "llvm/Transforms/Utils/BasicBlockUtils.h"
#include "llvm/Transforms/Utils/CodeExtractor.h"
#include "llvm/Transforms/Utils/ScalarEvolutionExpander.h"
#include <optional>

using namespace llvm;

namespace enzpy {

// --- marking -----------------------------------------------------------------

static bool isPrangeLine(const DILocation *Loc, const Request &Req) {
  for (const DILocation *L = Loc; L; L = L->getInlinedAt())
    for (const auto &[File, Line] : Req.ParallelLoops)
      if (L->getLine() == Line && sourcePath(L) == File)
        return true;
  return false;
}

void markParallelLoops(CanonicalFunction &C, const Request &Req) {
  if (Req.ParallelLoops.empty())
    return;
  DominatorTree DT(*C.F);
  LoopInfo LI(DT);
  for (Loop *L : LI.getLoopsInPreorder()) {
    bool Inside = false;
    for (Loop *Up = L->getParentLoop(); Up && !Inside; Up = Up->getParentLoop())
      Inside = C.ParallelLoops.count(Up->getHeader());
    BasicBlock *Latch = L->getLoopLatch();
    if (Inside || !Latch)
      continue;
    const DILocation *Loc = Latch->getTerminator()->getDebugLoc().get();
    if (Loc && isPrangeLine(Loc, Req))
      C.ParallelLoops[L->getHeader()] =
          sourcePath(Loc) + ":" + std::to_string(Loc->getLine());
  }
}

// --- planning
// ------------------------------------------------------------------

namespace {

/// How often \p L's back edge runs when it leaves through its latch: the
/// reverse sweep runs only after the forward one ended normally, so ways
/// out that raise an exception (numba's checks) do not count.
const SCEV *completedTrips(ScalarEvolution &SE, const Loop &L) {
  BasicBlock *Latch = L.getLoopLatch();
  return Latch && L.isLoopExiting(Latch) ? SE.getExitCount(&L, Latch)
                                         : SE.getBackedgeTakenCount(&L);
}

/// The block \p L leaves to when its iterations end normally: the only one
/// its latch leaves to, when no other way out reaches a return.
BasicBlock *normalExit(const Loop &L, const CanonicalFunction &Canon) {
  BasicBlock *Latch = L.getLoopLatch(), *Exit = nullptr;
  SmallVector<Loop::Edge, 4> Edges;
  L.getExitEdges(Edges);
  for (auto [From, To] : Edges) {
    if (!Canon.returns(To))
      continue;
    if (From != Latch || Exit)
      return nullptr;
    Exit = const_cast<BasicBlock *>(To);
  }
  return Exit;
}

/// The byte addresses [Lo, Hi] where an access of one iteration of loop L
/// may start, over the loops inside L; integer expressions.
struct Span {
  const SCEV *Lo, *Hi;
};

std::optional<Span> spanIn(ScalarEvolution &SE, const SCEV *S, const Loop &L) {
  // Values the loop computes (a loaded index): nothing to bound with.
  if (SCEVExprContains(S, [&](const SCEV *X) {
        if (auto *U = dyn_cast<SCEVUnknown>(X))
          if (auto *I = dyn_cast<Instruction>(U->getValue()))
            return L.contains(I);
        return false;
      }))
    return std::nullopt;
  auto Inner = [&](const SCEV *X) {
    auto *R = dyn_cast<SCEVAddRecExpr>(X);
    return R && R->getLoop() != &L && L.contains(R->getLoop());
  };
  if (!SCEVExprContains(S, Inner))
    return Span{S, S};
  if (auto *AR = dyn_cast<SCEVAddRecExpr>(S)) {
    const Loop *In = AR->getLoop();
    if (In == &L || !AR->isAffine())
      return std::nullopt;
    std::optional<Span> Start = spanIn(SE, AR->getStart(), L);
    const SCEV *BTC = completedTrips(SE, *In);
    if (!Start || isa<SCEVCouldNotCompute>(BTC))
      return std::nullopt;
    const SCEV *Step = AR->getStepRecurrence(SE);
    const SCEV *Move =
        SE.getMulExpr(Step, SE.getTruncateOrZeroExtend(BTC, Step->getType()));
    if (SE.isKnownNonNegative(Step))
      return Span{Start->Lo, SE.getAddExpr(Start->Hi, Move)};
    if (SE.isKnownNonPositive(Step))
      return Span{SE.getAddExpr(Start->Lo, Move), Start->Hi};
    return std::nullopt;
  }
  if (auto *Add = dyn_cast<SCEVAddExpr>(S)) {
    SmallVector<const SCEV *, 4> Los, His;
    for (const SCEV *Op : Add->operands()) {
      std::optional<Span> P = spanIn(SE, Op, L);
      if (!P)
        return std::nullopt;
      Los.push_back(P->Lo);
      His.push_back(P->Hi);
    }
    return Span{SE.getAddExpr(Los), SE.getAddExpr(His)};
  }
  return std::nullopt;
}

/// numba's index fix-ups (`i < 0 ? i + n : i`) as the branch the loop always
/// takes, where ScalarEvolution decides the condition for every iteration.
class FixupFolder : public SCEVRewriteVisitor<FixupFolder> {
public:
  explicit FixupFolder(ScalarEvolution &SE) : SCEVRewriteVisitor(SE) {}
  const SCEV *visitUnknown(const SCEVUnknown *U) {
    auto *Sel = dyn_cast<SelectInst>(U->getValue());
    auto *Cmp = Sel ? dyn_cast<ICmpInst>(Sel->getCondition()) : nullptr;
    if (!Cmp || !SE.isSCEVable(Cmp->getOperand(0)->getType()))
      return U;
    const SCEV *A = visit(SE.getSCEV(Cmp->getOperand(0)));
    const SCEV *B = visit(SE.getSCEV(Cmp->getOperand(1)));
    if (SE.isKnownPredicate(Cmp->getPredicate(), A, B))
      return visit(SE.getSCEV(Sel->getTrueValue()));
    if (SE.isKnownPredicate(Cmp->getInversePredicate(), A, B))
      return visit(SE.getSCEV(Sel->getFalseValue()));
    return U;
  }
};

/// One access of a loop: where it starts, per iteration, and its size.
struct Access {
  Instruction *I;
  Span Where;
  uint64_t Size;
  bool Store;
};

/// A condition the preheader checks at run time: A Pred B (or C Pred2 D).
struct Check {
  CmpInst::Predicate Pred;
  const SCEV *A, *B;
  CmpInst::Predicate Pred2 = CmpInst::BAD_ICMP_PREDICATE;
  const SCEV *C = nullptr, *D = nullptr;
};

/// An affine recurrence of exactly loop L, or null.
const SCEVAddRecExpr *affineIn(const SCEV *S, const Loop &L) {
  auto *R = dyn_cast<SCEVAddRecExpr>(S);
  return R && R->getLoop() == &L && R->isAffine() ? R : nullptr;
}

} // namespace

/// Why \p Phi, a header phi of \p L with a derivative, is not a sum: one
/// that each iteration only adds to (s += t, s -= t, on any of the paths
/// through the iteration) and that nothing else in the loop reads. The
/// adjoint of such a phi is the same in every iteration: that of the sum's
/// last value. Its members go to \p Members.
static std::string notASum(const Loop &L, const PHINode &Phi,
                           SmallPtrSetImpl<const Value *> &Members) {
  const char *Why = "it carries a value with a derivative from one "
                    "iteration to the next other than a sum (s += t)";
  const Value *Last = Phi.getIncomingValueForBlock(L.getLoopLatch());
  SmallVector<const Value *, 8> Work{&Phi};
  Members.insert(&Phi);
  while (!Work.empty()) {
    const Value *X = Work.pop_back_val();
    for (const User *U : X->users()) {
      auto *UI = cast<Instruction>(U);
      if (!L.contains(UI) || UI == &Phi) {
        if (X != Last)
          return Why;
        continue;
      }
      bool Adds = (UI->getOpcode() == Instruction::FAdd &&
                   UI->getOperand(0) != UI->getOperand(1)) ||
                  (UI->getOpcode() == Instruction::FSub &&
                   UI->getOperand(0) == X && UI->getOperand(1) != X) ||
                  (isa<PHINode>(UI) && UI->getParent() != L.getHeader());
      if (!Adds)
        return Why;
      if (Members.insert(UI).second)
        Work.push_back(UI);
    }
  }
  if (!Members.count(Last))
    return Why;
  for (const Value *M : Members)
    if (auto *P = dyn_cast<PHINode>(M); P && P != &Phi)
      for (const Value *In : P->incoming_values())
        if (!Members.count(In))
          return Why;
  return "";
}

std::string ParallelReverse::eligible(const Loop &L,
                                      SmallVectorImpl<Value *> &Conds,
                                      SmallVectorImpl<const PHINode *> &Sums) {
  ScalarEvolution &SE = VR.scev();
  const ActivityAnalysis &AA = Sk.AA;
  const DataLayout &DL = Sk.P.getParent()->getDataLayout();
  Type *I64 = Type::getInt64Ty(Sk.Ctx);
  BasicBlock *Pre = L.getLoopPreheader(), *Exit = normalExit(L, Sk.Canon);
  if (!L.getLoopLatch() || pred_size(L.getHeader()) != 2)
    return "it is not a counted loop";
  if (!Pre || !Exit || !Exit->getSinglePredecessor())
    return "it has more than one way out";
  const SCEV *BTC = completedTrips(SE, L);
  if (isa<SCEVCouldNotCompute>(BTC))
    return "its trip count is not known when it starts";
  SmallPtrSet<const Value *, 8> SumMembers, SumLasts;
  for (PHINode &Phi : L.getHeader()->phis())
    if (AA.isActive(&Phi)) {
      std::string Why = notASum(L, Phi, SumMembers);
      if (!Why.empty())
        return Why;
      Sums.push_back(&Phi);
      SumLasts.insert(Phi.getIncomingValueForBlock(L.getLoopLatch()));
    }
  SmallVector<Access, 16> Accesses;
  for (BasicBlock *B : L.blocks())
    for (Instruction &I : *B) {
      if (AA.isActive(&I) && !SumLasts.count(&I))
        for (const User *U : I.users())
          if (auto *UI = dyn_cast<Instruction>(U); UI && !L.contains(UI))
            return "a value with a derivative is used after it";
      if (auto *CB = dyn_cast<CallBase>(&I)) {
        if (isPureMathCall(*CB) || findScalarRule(I) ||
            numba::isRefcountCall(I) || CB->doesNotAccessMemory() ||
            isa<DbgInfoIntrinsic>(CB) || CB->isLifetimeStartOrEnd())
          continue;
        const Function *Callee = CB->getCalledFunction();
        return "it calls " + (Callee ? displayName(Callee->getName())
                                     : std::string("a function"));
      }
      if (isa<AtomicRMWInst, AtomicCmpXchgInst, FenceInst>(I))
        return "it has atomic operations";
      Value *Ptr = getLoadStorePointerOperand(&I);
      if (!Ptr) {
        if (I.mayReadOrWriteMemory())
          return "it touches memory in a way the engine cannot bound";
        continue;
      }
      if (isa<AllocaInst>(getUnderlyingObject(Ptr)))
        return "it uses stack memory";
      std::optional<Span> S = spanIn(
          SE, SE.getPtrToIntExpr(FixupFolder(SE).visit(SE.getSCEV(Ptr)), I64),
          L);
      if (!S)
        return "the engine cannot bound the elements an iteration touches "
               "(" +
               describe(&I) + ")";
      Accesses.push_back(
          {&I, *S, DL.getTypeStoreSize(getLoadStoreType(&I)).getFixedValue(),
           isa<StoreInst>(I)});
    }
  SmallVector<Check, 8> Checks;
  auto Size = [&](uint64_t N) { return SE.getConstant(I64, N); };
  // The first and last byte an access may touch over the whole loop.
  auto Total = [&](const Access &A) -> std::optional<Span> {
    const SCEVAddRecExpr *Lo = affineIn(A.Where.Lo, L),
                         *Hi = affineIn(A.Where.Hi, L);
    if (!Lo && !Hi && SE.isLoopInvariant(A.Where.Lo, &L) &&
        SE.isLoopInvariant(A.Where.Hi, &L))
      return Span{A.Where.Lo, SE.getAddExpr(A.Where.Hi, Size(A.Size - 1))};
    if (!Lo || !Hi)
      return std::nullopt;
    const SCEV *Step = Lo->getStepRecurrence(SE);
    const SCEV *LoEnd = Lo->evaluateAtIteration(BTC, SE);
    const SCEV *HiEnd = Hi->evaluateAtIteration(BTC, SE);
    if (SE.isKnownNonNegative(Step))
      return Span{Lo->getStart(), SE.getAddExpr(HiEnd, Size(A.Size - 1))};
    if (SE.isKnownNonPositive(Step))
      return Span{LoEnd, SE.getAddExpr(Hi->getStart(), Size(A.Size - 1))};
    return std::nullopt;
  };
  for (const Access &S : Accesses) {
    if (!S.Store)
      continue;
    const SCEVAddRecExpr *Lo = affineIn(S.Where.Lo, L),
                         *Hi = affineIn(S.Where.Hi, L);
    if (!Lo || !Hi || Lo->getStepRecurrence(SE) != Hi->getStepRecurrence(SE))
      return "a store does not move with the loop's index";
    const SCEV *Step = Lo->getStepRecurrence(SE);
    const SCEV *AbsStep = SE.isKnownPositive(Step)   ? Step
                          : SE.isKnownNegative(Step) ? SE.getNegativeSCEV(Step)
                                                     : nullptr;
    if (!AbsStep)
      return "a store's step may be zero";
    // What one iteration writes is narrower than the step: iterations
    // write disjoint bytes.
    const SCEV *Width = SE.getAddExpr(
        SE.getMinusSCEV(Hi->getStart(), Lo->getStart()), Size(S.Size));
    if (!SE.isKnownPredicate(ICmpInst::ICMP_ULE, Width, AbsStep))
      Checks.push_back({ICmpInst::ICMP_ULE, Width, AbsStep});
    std::optional<Span> ST = Total(S);
    if (!ST)
      return "a store does not move with the loop's index";
    for (const Access &A : Accesses) {
      if (&A == &S)
        continue;
      // Inside the store's window of the same iteration.
      const SCEVAddRecExpr *ALo = affineIn(A.Where.Lo, L),
                           *AHi = affineIn(A.Where.Hi, L);
      if (ALo && AHi && ALo->getStepRecurrence(SE) == Step &&
          AHi->getStepRecurrence(SE) == Step &&
          SE.isKnownPredicate(ICmpInst::ICMP_SGE,
                              SE.getMinusSCEV(ALo->getStart(), Lo->getStart()),
                              SE.getZero(I64)) &&
          SE.isKnownPredicate(
              ICmpInst::ICMP_SLE,
              SE.getMinusSCEV(SE.getAddExpr(AHi->getStart(), Size(A.Size)),
                              SE.getAddExpr(Hi->getStart(), Size(S.Size))),
              SE.getZero(I64)))
        continue;
      // Else apart from everything the store writes, checked at run time.
      std::optional<Span> AT = Total(A);
      if (!AT)
        return "the engine cannot bound the elements an iteration touches";
      Checks.push_back({ICmpInst::ICMP_ULT, AT->Hi, ST->Lo, ICmpInst::ICMP_ULT,
                        ST->Hi, AT->Lo});
    }
  }
  // Reads of memory with derivatives add into its shadow in the reverse.
  // They must all move with the loop's index by one step: chunks run in
  // two waves (even, then odd), so that chunks that run together are a
  // chunk apart; each pair of such reads must then stay within a chunk of
  // each other (checked once the chunk's length is known) or touch apart
  // memory.
  SmallVector<const Access *, 8> Reads;
  for (const Access &A : Accesses)
    if (!A.Store && AA.isActive(A.I))
      Reads.push_back(&A);
  struct Pair {
    const SCEV *Reach;
    Check Apart;
  };
  SmallVector<Pair, 8> Pairs;
  const SCEV *ReadAbs = nullptr;
  auto inWaves = [&]() {
    const SCEV *ReadStep = nullptr;
    for (const Access *A : Reads) {
      const SCEVAddRecExpr *Lo = affineIn(A->Where.Lo, L),
                           *Hi = affineIn(A->Where.Hi, L);
      if (!Lo || !Hi ||
          Lo->getStepRecurrence(SE) != Hi->getStepRecurrence(SE) ||
          (ReadStep && ReadStep != Lo->getStepRecurrence(SE)))
        return false;
      ReadStep = Lo->getStepRecurrence(SE);
    }
    if (!ReadStep)
      return true;
    ReadAbs = SE.isKnownPositive(ReadStep)   ? ReadStep
              : SE.isKnownNegative(ReadStep) ? SE.getNegativeSCEV(ReadStep)
                                             : nullptr;
    if (!ReadAbs)
      return false;
    for (unsigned I = 0; I < Reads.size(); ++I)
      for (unsigned J = I; J < Reads.size(); ++J) {
        const Access &A = *Reads[I], &B = *Reads[J];
        auto *ALo = affineIn(A.Where.Lo, L), *AHi = affineIn(A.Where.Hi, L);
        auto *BLo = affineIn(B.Where.Lo, L), *BHi = affineIn(B.Where.Hi, L);
        const SCEV *Reach = SE.getSMaxExpr(
            SE.getMinusSCEV(SE.getAddExpr(AHi->getStart(), Size(A.Size)),
                            BLo->getStart()),
            SE.getMinusSCEV(SE.getAddExpr(BHi->getStart(), Size(B.Size)),
                            ALo->getStart()));
        // Within two steps: a chunk apart for any chunk length.
        if (SE.isKnownPredicate(ICmpInst::ICMP_SLT, Reach,
                                SE.getMulExpr(ReadAbs, SE.getConstant(I64, 2))))
          continue;
        std::optional<Span> AT = Total(A), BT = Total(B);
        if (!AT || !BT)
          return false;
        Pairs.push_back({Reach, Check{ICmpInst::ICMP_ULT, AT->Hi, BT->Lo,
                                      ICmpInst::ICMP_ULT, BT->Hi, AT->Lo}});
      }
    return true;
  };
  if (!inWaves())
    return "chunks may read the same elements at once (a read of memory with "
           "derivatives that does not move with the loop's index)";
  // The trip count and the checks, in the preheader.
  Instruction *At = Pre->getTerminator();
  SCEVExpander Exp(SE, "enzpy.par");
  const SCEV *Trip =
      SE.getAddExpr(SE.getTruncateOrZeroExtend(BTC, I64), SE.getOne(I64));
  auto expandable = [&](const SCEV *X) {
    return !X || Exp.isSafeToExpandAt(X, At);
  };
  auto checkable = [&](const Check &C) {
    return expandable(C.A) && expandable(C.B) && expandable(C.C) &&
           expandable(C.D);
  };
  if (!expandable(Trip))
    return "its trip count cannot be computed before it starts";
  for (const Check &C : Checks)
    if (!checkable(C))
      return "the check that its iterations touch apart memory cannot be "
             "computed before it starts";
  for (const Pair &P : Pairs)
    if (!checkable(P.Apart) || !expandable(P.Reach) || !expandable(ReadAbs))
      return "the check that its iterations read apart memory cannot be "
             "computed before it starts";
  Conds.push_back(Exp.expandCodeFor(Trip, I64, At));
  IRBuilder<> B(At);
  auto emit = [&](const Check &C) {
    Value *Ok = B.CreateICmp(C.Pred, Exp.expandCodeFor(C.A, I64, At),
                             Exp.expandCodeFor(C.B, I64, At));
    if (C.C)
      Ok = B.CreateOr(Ok, B.CreateICmp(C.Pred2, Exp.expandCodeFor(C.C, I64, At),
                                       Exp.expandCodeFor(C.D, I64, At)));
    return Ok;
  };
  Value *Safe = B.getTrue();
  for (const Check &C : Checks)
    Safe = B.CreateAnd(Safe, emit(C), "enzpy.par.safe");
  Conds.push_back(Safe);
  // Per pair of reads: reach, step, apart; the forward sweep asks
  // reach < step * (chunk + 1), or apart.
  for (const Pair &P : Pairs) {
    Conds.push_back(Exp.expandCodeFor(P.Reach, I64, At));
    Conds.push_back(Exp.expandCodeFor(ReadAbs, I64, At));
    Conds.push_back(emit(P.Apart));
  }
  return "";
}

void ParallelReverse::plan() {
  for (const auto &[H, Where] : Sk.Canon.ParallelLoops) {
    const Loop *L = VR.loops().getLoopFor(H);
    SmallVector<Value *, 2> TripSafe;
    SmallVector<const PHINode *, 2> Sums;
    std::string Why = L && L->getHeader() == H
                          ? eligible(*L, TripSafe, Sums)
                          : "it is not a loop after canonicalization";
    if (!Why.empty()) {
      Refused.push_back({H, Why});
      continue;
    }
    Plan Pl;
    Pl.L = L;
    Pl.Trip = TripSafe[0];
    Pl.Safe = TripSafe[1];
    Pl.Reads.assign(TripSafe.begin() + 2, TripSafe.end());
    Pl.Sums = Sums;
    for (const BasicBlock *B : L->blocks())
      PlanOfBlock[B] = Plans.size();
    Plans.push_back(Pl);
  }
}

void ParallelReverse::noteExit(const BasicBlock *PH, ICmpInst *Cmp) {
  auto It = PlanOfBlock.find(PH);
  if (It != PlanOfBlock.end() && Plans[It->second].L->getHeader() == PH)
    Plans[It->second].Exit = Cmp;
}

AllocaInst *ParallelReverse::sumSlot(Plan &Pl, const PHINode *Phi, unsigned K,
                                     unsigned Width) {
  if (Pl.SumStarts.empty()) {
    IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
    for (const PHINode *P : Pl.Sums)
      for (unsigned L = 0; L < Width; ++L)
        Pl.SumStarts.push_back(
            EB.CreateAlloca(P->getType(), nullptr, "enzpy.par.sum"));
  }
  return Pl.SumStarts[(find(Pl.Sums, Phi) - Pl.Sums.begin()) * Width + K];
}

void ParallelReverse::enterLoop(IRBuilder<> &B, const Loop *L, unsigned Width) {
  auto It = PlanOfBlock.find(L->getHeader());
  if (It == PlanOfBlock.end() || Plans[It->second].L != L)
    return;
  Plan &Pl = Plans[It->second];
  for (const PHINode *Phi : Pl.Sums) {
    const Value *Last = Phi->getIncomingValueForBlock(L->getLoopLatch());
    for (unsigned K = 0; K < Width; ++K)
      B.CreateStore(B.CreateLoad(Phi->getType(), Adj.slot(Last, K)),
                    sumSlot(Pl, Phi, K, Width));
  }
}

Value *ParallelReverse::sumStart(IRBuilder<> &B, const PHINode *Phi, unsigned K,
                                 unsigned Width) {
  auto It = PlanOfBlock.find(Phi->getParent());
  if (It == PlanOfBlock.end() || !is_contained(Plans[It->second].Sums, Phi))
    return nullptr;
  return B.CreateLoad(Phi->getType(),
                      sumSlot(Plans[It->second], Phi, K, Width));
}

// --- the forward sweep's chunk tables
// -------------------------------------------- A table: [0] the next table of
// the list, [1] the number of chunks K, [2] the chunk's length, [3] the trip
// count, [4 + k] the tape's top where chunk k starts (k = 0..K; [4 + K] where
// the loop ends).
static constexpr unsigned TableHead = 4;

static Value *field(IRBuilder<> &B, Value *Tbl, Value *Index) {
  return B.CreateGEP(B.getInt64Ty(), Tbl, Index);
}
static Value *field(IRBuilder<> &B, Value *Tbl, uint64_t Index) {
  return field(B, Tbl, B.getInt64(Index));
}

void ParallelReverse::instrumentForward() {
  if (Plans.empty())
    return;
  Function &D = *Sk.D;
  Module &M = *D.getParent();
  Type *I64 = Type::getInt64Ty(Sk.Ctx);
  Type *Ptr = PointerType::getUnqual(Sk.Ctx);
  IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
  FunctionCallee Threads =
      M.getOrInsertFunction("get_num_threads", FunctionType::get(I64, false));
  for (Plan &Pl : Plans) {
    const Loop &L = *Pl.L;
    if (!VR.loopOfHeader(L.getHeader())) {
      Pl.Outcome = "serial: it is not a counted loop";
      continue;
    }
    BasicBlock *FP = cast<BasicBlock>(Sk.mapped(L.getLoopPreheader()));
    BasicBlock *FH = cast<BasicBlock>(Sk.mapped(L.getHeader()));
    BasicBlock *FE = cast<BasicBlock>(Sk.mapped(normalExit(L, Sk.Canon)));
    AllocaInst *TableSlot = EB.CreateAlloca(Ptr, nullptr, "enzpy.par.table");
    // Each loop has its own list: one whose reverse stays serial leaves
    // its tables to the way out.
    Pl.Tables = EB.CreateAlloca(Ptr, nullptr, "enzpy.par.tables");
    EB.CreateStore(ConstantPointerNull::get(cast<PointerType>(Ptr)), Pl.Tables);
    Pl.Index = EB.CreateAlloca(I64, nullptr, "enzpy.par.chunks");
    Pl.Next = EB.CreateAlloca(I64, nullptr, "enzpy.par.next");
    // Two chunks per thread (the reverse runs them in two waves) when the
    // checks pass and there is more than one thread; else one chunk.
    IRBuilder<> B(FP->getTerminator());
    Value *Trip = Sk.mapped(Pl.Trip), *Safe = Sk.mapped(Pl.Safe);
    Value *T = B.CreateCall(Threads);
    Value *Many = B.CreateAnd(Safe, B.CreateICmpUGT(T, B.getInt64(1)));
    Value *K = B.CreateSelect(
        Many, B.CreateBinaryIntrinsic(Intrinsic::umin, B.CreateShl(T, 1), Trip),
        B.getInt64(1));
    K = B.CreateBinaryIntrinsic(Intrinsic::umax, K, B.getInt64(1));
    auto chunkOf = [&](Value *N) {
      Value *C =
          B.CreateUDiv(B.CreateAdd(Trip, B.CreateSub(N, B.getInt64(1))), N);
      return B.CreateBinaryIntrinsic(Intrinsic::umax, C, B.getInt64(1));
    };
    Value *Chunk = chunkOf(K);
    // Reads a chunk apart touch apart memory.
    Value *Near = B.getTrue();
    for (unsigned I = 0; I + 2 < Pl.Reads.size(); I += 3) {
      Value *Reach = Sk.mapped(Pl.Reads[I]);
      Value *Step = Sk.mapped(Pl.Reads[I + 1]);
      Value *Span = B.CreateMul(Step, B.CreateAdd(Chunk, B.getInt64(1)));
      Near = B.CreateAnd(Near, B.CreateOr(B.CreateICmpSLT(Reach, Span),
                                          Sk.mapped(Pl.Reads[I + 2])));
    }
    K = B.CreateSelect(Near, K, B.getInt64(1), "enzpy.par.k");
    Chunk = B.CreateSelect(Near, Chunk, chunkOf(K), "enzpy.par.chunk");
    Value *Bytes =
        B.CreateMul(B.CreateAdd(K, B.getInt64(TableHead + 1)), B.getInt64(8));
    CallInst *Tbl = B.CreateCall(libcMalloc(M), {Bytes}, "enzpy.par.table");
    Sk.failIfNull(Tbl);
    B.CreateStore(Chunk, field(B, Tbl, 2));
    B.CreateStore(Trip, field(B, Tbl, 3));
    B.CreateStore(Tbl, TableSlot);
    // The table joins the list now, so that a way out that raises frees it.
    B.CreateStore(B.CreateLoad(Ptr, Pl.Tables), field(B, Tbl, uint64_t(0)));
    B.CreateStore(Tbl, Pl.Tables);
    B.CreateStore(B.getInt64(0), Pl.Index);
    B.CreateStore(B.getInt64(0), Pl.Next);
    // Header: at the start of each chunk, where the tape is.
    Instruction *At = &*FH->getFirstNonPHIIt();
    IRBuilder<> HB(At);
    Value *Counter = VR.loopOfHeader(L.getHeader())->Counter;
    Value *Next = HB.CreateLoad(I64, Pl.Next);
    Instruction *Then =
        SplitBlockAndInsertIfThen(HB.CreateICmpEQ(Counter, Next), At, false);
    IRBuilder<> TB(Then);
    Value *Tb = TB.CreateLoad(Ptr, TableSlot);
    Value *Idx = TB.CreateLoad(I64, Pl.Index);
    TB.CreateStore(TB.CreateLoad(I64, VR.tape().topSlot()),
                   field(TB, Tb, TB.CreateAdd(Idx, TB.getInt64(TableHead))));
    TB.CreateStore(TB.CreateAdd(Idx, TB.getInt64(1)), Pl.Index);
    TB.CreateStore(TB.CreateAdd(Next, TB.CreateLoad(I64, field(TB, Tb, 2))),
                   Pl.Next);
    // Exit: where the loop's frames end.
    IRBuilder<> XB(&*FE->getFirstNonPHIIt());
    Value *Tx = XB.CreateLoad(Ptr, TableSlot);
    Value *Chunks = XB.CreateLoad(I64, Pl.Index);
    XB.CreateStore(XB.CreateLoad(I64, VR.tape().topSlot()),
                   field(XB, Tx, XB.CreateAdd(Chunks, XB.getInt64(TableHead))));
    XB.CreateStore(Chunks, field(XB, Tx, 1));
  }
}

void ParallelReverse::freeTables(Instruction *Before) {
  LLVMContext &C = Sk.Ctx;
  Type *Ptr = PointerType::getUnqual(C);
  for (const Plan &Pl : Plans) {
    if (!Pl.Tables)
      continue;
    BasicBlock *Pre = Before->getParent();
    BasicBlock *Done = SplitBlock(Pre, Before->getIterator(),
                                  static_cast<DominatorTree *>(nullptr));
    BasicBlock *Loop =
        BasicBlock::Create(C, "enzpy.par.free", Pre->getParent(), Done);
    Pre->getTerminator()->eraseFromParent();
    IRBuilder<> B(Pre);
    Value *Head = B.CreateLoad(Ptr, Pl.Tables);
    B.CreateCondBr(B.CreateIsNull(Head), Done, Loop);
    B.SetInsertPoint(Loop);
    PHINode *T = B.CreatePHI(Ptr, 2);
    T->addIncoming(Head, Pre);
    Value *Next = B.CreateLoad(Ptr, field(B, T, uint64_t(0)));
    B.CreateCall(libcFree(*Sk.D->getParent()), {T});
    T->addIncoming(Next, Loop);
    B.CreateCondBr(B.CreateIsNull(Next), Done, Loop);
  }
}

// --- outlining the reverse loops
// ----------------------------------------------------

void ParallelReverse::outline() {
  for (Plan &Pl : Plans)
    if (Pl.Outcome.empty())
      outlineOne(Pl);
}

namespace {
/// How the wrapper passes one input of the outlined chunk.
enum class Pass { Shared, Begin, Top, Countdown, Zeroed, Copied };
} // namespace

void ParallelReverse::outlineOne(Plan &Pl) {
  Function &D = *Sk.D;
  Module &M = *D.getParent();
  LLVMContext &C = Sk.Ctx;
  Type *I64 = Type::getInt64Ty(C);
  PointerType *Ptr = PointerType::getUnqual(C);
  auto fail = [&](StringRef Why) { Pl.Outcome = ("serial: " + Why).str(); };
  if (!Pl.Exit)
    return fail("the reverse loop was not found (internal)");
  DominatorTree DT(D);
  LoopInfo LI(DT);
  Loop *RL = LI.getLoopFor(Pl.Exit->getParent());
  if (!RL || !RL->getExitBlock())
    return fail("the reverse loop was not found (internal)");
  const ValueRecovery::CountedLoop *CL = VR.loopOfHeader(Pl.L->getHeader());
  SmallVector<BasicBlock *, 32> Blocks(RL->blocks());
  // The chunk's first iteration replaces the 0 the countdown stops at.
  auto *Zero = dyn_cast<ConstantInt>(Pl.Exit->getOperand(1));
  if (!Zero || !Zero->isZero())
    return fail("the reverse loop's exit was not found (internal)");
  auto *Begin = new FreezeInst(Zero, "enzpy.chunk.begin",
                               Sk.Entry->getTerminator()->getIterator());
  Pl.Exit->setOperand(1, Begin);
  CodeExtractorAnalysisCache CEAC(D);
  CodeExtractor CE(Blocks, &DT, false, nullptr, nullptr, nullptr, false, false,
                   nullptr, "enzpy.chunk");
  SetVector<Value *> In, Out, Sinks;
  if (CE.isEligible())
    CE.findInputsOutputs(In, Out, Sinks);
  // Stack slots the reverse of an iteration writes: those of the engine's
  // own making only (adjoints, the tape's top, countdowns, recovered values).
  auto writtenIn = [&](AllocaInst *A) {
    for (User *U : A->users())
      if (auto *I = dyn_cast<Instruction>(U);
          I && RL->contains(I->getParent()) && I->mayWriteToMemory())
        return true;
    return false;
  };
  bool Unknown = false;
  for (Value *V : In)
    if (auto *A = dyn_cast<AllocaInst>(V); A && writtenIn(A))
      Unknown |= A != VR.tape().topSlot() && A != CL->Remaining &&
                 !Adj.valueOf(A) && !VR.isRecoverySlot(A);
  if (!CE.isEligible() || !Out.empty() || Unknown) {
    Pl.Exit->setOperand(1, Zero);
    Begin->eraseFromParent();
    return fail(!CE.isEligible() ? "the reverse loop cannot be outlined"
                : !Out.empty()   ? "values leave the reverse loop"
                                 : "the reverse loop writes a stack slot of "
                                   "unknown use");
  }
  Function *F = CE.extractCodeRegion(CEAC);
  if (!F || !F->hasOneUse())
    return fail("the reverse loop cannot be outlined");
  auto *CI = cast<CallInst>(F->user_back());
  for (const Attribute &A : D.getAttributes().getFnAttrs())
    if (A.isStringAttribute())
      F->addFnAttr(A);
  F->addFnAttr(Attribute::NoUnwind);
  // What the derivative knows of its arrays holds in the chunk too.
  for (unsigned I = 0; I < CI->arg_size(); ++I)
    if (auto *DA = dyn_cast<Argument>(CI->getArgOperand(I));
        DA && DA->hasNoAliasAttr())
      F->getArg(I)->addAttr(Attribute::NoAlias);
  SmallPtrSet<const Value *, 2> SumLasts;
  for (const PHINode *Phi : Pl.Sums)
    SumLasts.insert(Phi->getIncomingValueForBlock(Pl.L->getLoopLatch()));
  // How each input reaches a chunk.
  SmallVector<Pass, 16> How;
  SmallVector<unsigned, 4> Outer; // the Zeroed inputs, in order
  for (unsigned I = 0; I < CI->arg_size(); ++I) {
    Value *V = CI->getArgOperand(I);
    auto *A = dyn_cast<AllocaInst>(V);
    bool Written = false;
    for (User *U : F->getArg(I)->users())
      Written |= isa<StoreInst>(U) || isa<AtomicRMWInst>(U) ||
                 (isa<CallBase>(U) && cast<Instruction>(U)->mayWriteToMemory());
    Pass P = Pass::Shared;
    if (V == Begin)
      P = Pass::Begin;
    else if (A && A == VR.tape().topSlot())
      P = Pass::Top;
    else if (A && A == CL->Remaining)
      P = Pass::Countdown;
    else if (A && Written) {
      const Value *PV = Adj.valueOf(A);
      auto *PI = dyn_cast_or_null<Instruction>(PV);
      P = PV && !(PI && Pl.L->contains(PI)) ? Pass::Zeroed : Pass::Copied;
    }
    if (P == Pass::Zeroed)
      Outer.push_back(I);
    How.push_back(P);
  }
  // The chunk works on its own copies of the stack slots it is given (read
  // at its start; the tape's top and the sums of adjoints put back at its
  // end): promoted to registers, and apart from every other memory.
  {
    BasicBlock &Root = F->getEntryBlock();
    IRBuilder<> FB(&Root, Root.getFirstInsertionPt());
    SmallVector<ReturnInst *, 2> Rets;
    for (BasicBlock &BB : *F)
      if (auto *Ret = dyn_cast<ReturnInst>(BB.getTerminator()))
        Rets.push_back(Ret);
    for (unsigned I = 0; I < CI->arg_size(); ++I) {
      auto *A = dyn_cast<AllocaInst>(CI->getArgOperand(I));
      if (!A)
        continue;
      Argument *Arg = F->getArg(I);
      Type *T = A->getAllocatedType();
      AllocaInst *Local = FB.CreateAlloca(T, nullptr, A->getName() + ".own");
      Arg->replaceAllUsesWith(Local);
      // An adjoint of a value the loop defines is zero between iterations
      // (the reverse takes it): known, so that it is no carried value. A
      // sum's last value is the exception: its adjoint is the same in
      // every iteration.
      auto *PI = dyn_cast_or_null<Instruction>(Adj.valueOf(A));
      FB.CreateStore(PI && Pl.L->contains(PI) && !SumLasts.count(PI)
                         ? static_cast<Value *>(Constant::getNullValue(T))
                         : FB.CreateLoad(T, Arg),
                     Local);
      if (How[I] == Pass::Top || How[I] == Pass::Zeroed)
        for (ReturnInst *Ret : Rets) {
          IRBuilder<> RB(Ret);
          RB.CreateStore(RB.CreateLoad(T, Local), Arg);
        }
    }
  }
  // The context every chunk reads: the inputs, then the table, the
  // partial sums of the Zeroed slots, and the base of the schedule.
  SmallVector<Type *, 16> Fields;
  for (Value *V : CI->args())
    Fields.push_back(V->getType());
  unsigned TableField = Fields.size();
  Fields.append({Ptr, Ptr, Ptr});
  StructType *Ctx = StructType::get(C, Fields);
  SmallVector<Type *, 4> PartTypes;
  for (unsigned I : Outer)
    PartTypes.push_back(
        cast<AllocaInst>(CI->getArgOperand(I))->getAllocatedType());
  StructType *Part = StructType::get(C, PartTypes);
  const DataLayout &DL = M.getDataLayout();
  uint64_t PartBytes = std::max<uint64_t>(DL.getTypeAllocSize(Part), 8);

  // The wrapper numba's threading layer calls: rows of the schedule are
  // chunks (args[0] moves by 8 bytes per row; args[1] is the context).
  Function *W = Function::Create(
      FunctionType::get(Type::getVoidTy(C), {Ptr, Ptr, Ptr, Ptr}, false),
      GlobalValue::InternalLinkage, F->getName() + ".threads", M);
  // The derivative's target and math attributes (what O3 vectorizes for).
  for (const Attribute &A : D.getAttributes().getFnAttrs())
    if (A.isStringAttribute())
      W->addFnAttr(A);
  W->addFnAttr(Attribute::NoUnwind);
  {
    BasicBlock *WEntry = BasicBlock::Create(C, "entry", W);
    BasicBlock *WLoop = BasicBlock::Create(C, "chunk", W);
    BasicBlock *WDone = BasicBlock::Create(C, "done", W);
    IRBuilder<> B(WEntry);
    SmallVector<AllocaInst *, 16> Priv(How.size(), nullptr);
    for (unsigned I = 0; I < How.size(); ++I)
      if (How[I] != Pass::Shared && How[I] != Pass::Begin)
        Priv[I] = B.CreateAlloca(
            cast<AllocaInst>(CI->getArgOperand(I))->getAllocatedType());
    Value *RowPtr = B.CreateLoad(Ptr, W->getArg(0));
    Value *CtxP = B.CreateLoad(Ptr, B.CreateConstGEP1_64(Ptr, W->getArg(0), 1));
    Value *Rows = B.CreateLoad(I64, W->getArg(1));
    Value *Tbl = B.CreateLoad(Ptr, B.CreateStructGEP(Ctx, CtxP, TableField));
    Value *Parts =
        B.CreateLoad(Ptr, B.CreateStructGEP(Ctx, CtxP, TableField + 1));
    Value *Base =
        B.CreateLoad(Ptr, B.CreateStructGEP(Ctx, CtxP, TableField + 2));
    Value *RowStep = B.CreateLoad(I64, W->getArg(2));
    Value *K0 =
        B.CreateSub(B.CreatePtrToInt(RowPtr, I64), B.CreatePtrToInt(Base, I64));
    Value *Chunk = B.CreateLoad(I64, field(B, Tbl, 2));
    Value *Trip = B.CreateLoad(I64, field(B, Tbl, 3));
    B.CreateCondBr(B.CreateICmpEQ(Rows, B.getInt64(0)), WDone, WLoop);
    B.SetInsertPoint(WLoop);
    PHINode *R = B.CreatePHI(I64, 2);
    R->addIncoming(B.getInt64(0), WEntry);
    Value *K = B.CreateExactUDiv(B.CreateAdd(K0, B.CreateMul(R, RowStep)),
                                 B.getInt64(8));
    Value *C0 = B.CreateMul(K, Chunk);
    Value *C1 =
        B.CreateBinaryIntrinsic(Intrinsic::umin, B.CreateAdd(C0, Chunk), Trip);
    SmallVector<Value *, 16> Args;
    for (unsigned I = 0; I < How.size(); ++I) {
      Value *Shared = B.CreateLoad(Fields[I], B.CreateStructGEP(Ctx, CtxP, I));
      Type *T = Priv[I] ? Priv[I]->getAllocatedType() : nullptr;
      switch (How[I]) {
      case Pass::Shared:
        Args.push_back(Shared);
        continue;
      case Pass::Begin:
        Args.push_back(C0);
        continue;
      case Pass::Top:
        B.CreateStore(
            B.CreateLoad(
                I64, field(B, Tbl, B.CreateAdd(K, B.getInt64(TableHead + 1)))),
            Priv[I]);
        break;
      case Pass::Countdown:
        B.CreateStore(B.CreateSub(C1, B.getInt64(1)), Priv[I]);
        break;
      case Pass::Zeroed:
        B.CreateStore(Constant::getNullValue(T), Priv[I]);
        break;
      case Pass::Copied:
        B.CreateStore(B.CreateLoad(T, Shared), Priv[I]);
        break;
      }
      Args.push_back(Priv[I]);
    }
    B.CreateCall(F, Args);
    Value *MyPart = B.CreateGEP(B.getInt8Ty(), Parts,
                                B.CreateMul(K, B.getInt64(PartBytes)));
    for (unsigned J = 0; J < Outer.size(); ++J)
      B.CreateStore(B.CreateLoad(PartTypes[J], Priv[Outer[J]]),
                    B.CreateStructGEP(Part, MyPart, J));
    Value *RNext = B.CreateAdd(R, B.getInt64(1));
    R->addIncoming(RNext, WLoop);
    B.CreateCondBr(B.CreateICmpULT(RNext, Rows), WLoop, WDone);
    B.SetInsertPoint(WDone);
    B.CreateRetVoid();
  }

  // At the call: pop this execution's table; more than one chunk runs on
  // the threads (when the partial sums' memory is there), else the call
  // stays as it is.
  IRBuilder<> B(CI);
  Value *Tbl = B.CreateLoad(Ptr, Pl.Tables, "enzpy.par.table");
  B.CreateStore(B.CreateLoad(Ptr, field(B, Tbl, uint64_t(0))), Pl.Tables);
  Value *K = B.CreateLoad(I64, field(B, Tbl, 1), "enzpy.par.chunks");
  Value *Block = B.CreateCall(
      libcMalloc(M),
      {B.CreateMul(B.CreateAdd(K, B.getInt64(1)), B.getInt64(PartBytes))});
  Value *Par =
      B.CreateAnd(B.CreateICmpUGT(K, B.getInt64(1)), B.CreateIsNotNull(Block));
  Instruction *ThenT, *ElseT;
  SplitBlockAndInsertIfThenElse(Par, CI->getIterator(), &ThenT, &ElseT);
  CI->moveBefore(ElseT->getIterator());
  {
    IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
    AllocaInst *CtxA = EB.CreateAlloca(Ctx, nullptr, "enzpy.par.ctx");
    AllocaInst *ArgsA = EB.CreateAlloca(ArrayType::get(Ptr, 2));
    AllocaInst *DimsA = EB.CreateAlloca(I64);
    AllocaInst *StepsA = EB.CreateAlloca(ArrayType::get(I64, 2));
    IRBuilder<> TB(ThenT);
    for (unsigned I = 0; I < CI->arg_size(); ++I)
      TB.CreateStore(CI->getArgOperand(I), TB.CreateStructGEP(Ctx, CtxA, I));
    TB.CreateStore(Tbl, TB.CreateStructGEP(Ctx, CtxA, TableField));
    TB.CreateStore(Block, TB.CreateStructGEP(Ctx, CtxA, TableField + 1));
    TB.CreateStore(Block, TB.CreateStructGEP(Ctx, CtxA, TableField + 2));
    TB.CreateStore(
        CtxA, TB.CreateConstGEP2_32(ArgsA->getAllocatedType(), ArgsA, 0, 1));
    // Chunk k is the schedule's row at Block + 8 k; a wave's rows are every
    // other chunk (16 bytes apart).
    TB.CreateStore(
        TB.getInt64(16),
        TB.CreateConstGEP2_32(StepsA->getAllocatedType(), StepsA, 0, 0));
    TB.CreateStore(
        TB.getInt64(0),
        TB.CreateConstGEP2_32(StepsA->getAllocatedType(), StepsA, 0, 1));
    FunctionCallee Threads =
        M.getOrInsertFunction("get_num_threads", FunctionType::get(I64, false));
    FunctionCallee ParallelFor = M.getOrInsertFunction(
        "numba_parallel_for",
        FunctionType::get(Type::getVoidTy(C),
                          {Ptr, Ptr, Ptr, Ptr, Ptr, I64, I64, I64}, false));
    for (unsigned Wave = 0; Wave < 2; ++Wave) {
      TB.CreateStore(
          TB.CreateConstGEP1_64(TB.getInt8Ty(), Block, 8 * Wave),
          TB.CreateConstGEP2_32(ArgsA->getAllocatedType(), ArgsA, 0, 0));
      // (K + 1 - Wave) / 2 chunks; K >= 2 here.
      TB.CreateStore(TB.CreateLShr(TB.CreateAdd(K, TB.getInt64(1 - Wave)), 1),
                     DimsA);
      TB.CreateCall(ParallelFor,
                    {W, ArgsA, DimsA, StepsA, ConstantPointerNull::get(Ptr),
                     TB.getInt64(0), TB.getInt64(2), TB.CreateCall(Threads)});
    }
    // The Zeroed slots get the chunks' sums, in chunk order.
    if (!Outer.empty()) {
      BasicBlock *Pre = TB.GetInsertBlock();
      BasicBlock *Sum = SplitBlock(Pre, ThenT->getIterator(),
                                   static_cast<DominatorTree *>(nullptr));
      BasicBlock *After = SplitBlock(Sum, ThenT->getIterator(),
                                     static_cast<DominatorTree *>(nullptr));
      Sum->getTerminator()->eraseFromParent();
      IRBuilder<> SB(Sum);
      PHINode *Kc = SB.CreatePHI(I64, 2);
      Kc->addIncoming(SB.getInt64(0), Pre);
      Value *Mine = SB.CreateGEP(SB.getInt8Ty(), Block,
                                 SB.CreateMul(Kc, SB.getInt64(PartBytes)));
      for (unsigned J = 0; J < Outer.size(); ++J) {
        Value *Slot = CI->getArgOperand(Outer[J]);
        Value *Old = SB.CreateLoad(PartTypes[J], Slot);
        Value *Add =
            SB.CreateLoad(PartTypes[J], SB.CreateStructGEP(Part, Mine, J));
        SB.CreateStore(PartTypes[J]->isFPOrFPVectorTy()
                           ? SB.CreateFAdd(Old, Add)
                           : SB.CreateAdd(Old, Add),
                       Slot);
      }
      Value *KNext = SB.CreateAdd(Kc, SB.getInt64(1));
      Kc->addIncoming(KNext, Sum);
      SB.CreateCondBr(SB.CreateICmpULT(KNext, K), Sum, After);
      TB.SetInsertPoint(ThenT);
    }
    // Every frame of the loop is popped.
    TB.CreateStore(TB.CreateLoad(I64, field(TB, Tbl, TableHead)),
                   VR.tape().topSlot());
  }
  // After either way: the table and the partial sums go.
  IRBuilder<> AB(
      &*CI->getParent()->getSingleSuccessor()->getFirstInsertionPt());
  FunctionCallee Free = libcFree(M);
  AB.CreateCall(Free, {Block});
  AB.CreateCall(Free, {Tbl});
  // The sums' last values had their adjoints taken, as the serial reverse
  // leaves them.
  for (Value *V : CI->args())
    if (auto *A = dyn_cast<AllocaInst>(V); A && SumLasts.count(Adj.valueOf(A)))
      AB.CreateStore(Constant::getNullValue(A->getAllocatedType()), A);
  Pl.Outcome = "parallel";
}

void ParallelReverse::record(DecisionLog &Log) const {
  for (const auto &[H, Why] : Refused)
    Log.record("parallel", H, nullptr,
               Sk.Canon.ParallelLoops.lookup(H) + ": serial: " + Why);
  for (const Plan &Pl : Plans)
    Log.record(
        "parallel", Pl.L->getHeader(), nullptr,
        Sk.Canon.ParallelLoops.lookup(Pl.L->getHeader()) + ": " +
            (Pl.Outcome.empty() ? std::string("not outlined") : Pl.Outcome));
}

} // namespace enzpy
