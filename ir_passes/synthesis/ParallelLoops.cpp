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
    if (SE.isKnownPredicate(Cmp->getInversePredicate(), A, B) ||
        (Cmp->getPredicate() == ICmpInst::ICMP_SLT && B->isZero() &&
         countsUpFromNonNegative(A)))
      return visit(SE.getSCEV(Sel->getFalseValue()));
    return U;
  }

private:
  /// Whether \p A is an index that never wraps (unsigned), counts up and
  /// ends at a non-negative value (the guard of its loop says so): then it
  /// is never negative (a triangular loop's `j in range(i + 1, n)`).
  bool countsUpFromNonNegative(const SCEV *A) {
    auto *AR = dyn_cast<SCEVAddRecExpr>(A);
    if (!AR || !AR->isAffine() || !AR->hasNoUnsignedWrap() ||
        !SE.isKnownNonNegative(AR->getStepRecurrence(SE)))
      return false;
    const Loop *In = AR->getLoop();
    const SCEV *Trips = completedTrips(SE, *In);
    if (isa<SCEVCouldNotCompute>(Trips))
      return false;
    const SCEV *End = AR->evaluateAtIteration(Trips, SE);
    const SCEV *Zero = SE.getZero(End->getType());
    return SE.isKnownNonNegative(End) ||
           SE.isLoopEntryGuardedByCond(In, ICmpInst::ICMP_SGE, End, Zero);
  }
};

/// One access of a loop: where it starts, per iteration, and its size.
struct Access {
  Instruction *I;
  Span Where;
  uint64_t Size;
  bool Store;
  const SCEV *Addr; // the byte address, over the loops
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
std::string notASum(const Loop &L, const PHINode &Phi,
                    SmallPtrSetImpl<const Value *> &Sums) {
  SmallPtrSet<const Value *, 8> Members;
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
  Sums.insert(Members.begin(), Members.end());
  return "";
}

/// The most bytes of a shadow a chunk copies.
static constexpr uint64_t CopyLimit = uint64_t(64) << 20;

std::string ChunkPlanner::eligible(const Loop &L, Plan &Pl, bool Reverse) {
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
      Pl.Sums.push_back(&Phi);
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
      const SCEV *Addr =
          SE.getPtrToIntExpr(FixupFolder(SE).visit(SE.getSCEV(Ptr)), I64);
      std::optional<Span> S = spanIn(SE, Addr, L);
      if (!S)
        return "the engine cannot bound the elements an iteration touches "
               "(" +
               describe(&I) + ")";
      Accesses.push_back(
          {&I, *S, DL.getTypeStoreSize(getLoadStoreType(&I)).getFixedValue(),
           isa<StoreInst>(I), Addr});
    }
  SmallVector<Check, 8> Checks;
  auto Size = [&](uint64_t N) { return SE.getConstant(I64, N); };
  // The first and last byte an access may touch over the whole loop.
  // The least and the greatest value of X over the loop.
  auto extreme = [&](const SCEV *X, bool Least) -> const SCEV * {
    if (SE.isLoopInvariant(X, &L))
      return X;
    const SCEVAddRecExpr *R = affineIn(X, L);
    if (!R)
      return nullptr;
    const SCEV *Step = R->getStepRecurrence(SE);
    bool Up = SE.isKnownNonNegative(Step);
    if (!Up && !SE.isKnownNonPositive(Step))
      return nullptr;
    return Up == Least ? R->getStart() : R->evaluateAtIteration(BTC, SE);
  };
  auto Total = [&](const Access &A) -> std::optional<Span> {
    const SCEV *Lo = extreme(A.Where.Lo, true);
    const SCEV *Hi = extreme(A.Where.Hi, false);
    if (!Lo || !Hi)
      return std::nullopt;
    return Span{Lo, SE.getAddExpr(Hi, Size(A.Size - 1))};
  };
  for (const Access &S : Accesses) {
    if (!S.Store)
      continue;
    const SCEVAddRecExpr *Lo = affineIn(S.Where.Lo, L),
                         *Hi = affineIn(S.Where.Hi, L);
    if (!Lo || !Hi || Lo->getStepRecurrence(SE) != Hi->getStepRecurrence(SE))
      return "a store does not move with the loop's index";
    const SCEV *Step = Lo->getStepRecurrence(SE);
    // A step of known sign that may be zero (a row's length) is checked
    // at run time: zero means one chunk.
    const SCEV *AbsStep = SE.isKnownNonNegative(Step) ? Step
                          : SE.isKnownNonPositive(Step)
                              ? SE.getNegativeSCEV(Step)
                              : nullptr;
    if (!AbsStep)
      return "a store's step may be zero";
    if (!SE.isKnownPositive(AbsStep))
      Checks.push_back({ICmpInst::ICMP_SGT, AbsStep, SE.getZero(I64)});
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
  // Those that move with the loop's index by one step add in place: chunks
  // run in two waves (even, then odd), so that chunks that run together are
  // a chunk apart; each pair of such reads must then stay within a chunk of
  // each other (checked once the chunk's length is known) or touch apart
  // memory. The others (a triangular loop reading the rows after its own)
  // add into a copy of the array's shadow per chunk, summed into the shadow
  // after the threads finish.
  // (Forward mode reads tangents and adds into no shadow.)
  MapVector<const Value *, SmallVector<const Access *, 4>> ReadsOf;
  for (const Access &A : Accesses)
    if (Reverse && !A.Store && AA.isActive(A.I))
      ReadsOf[getUnderlyingObject(getLoadStorePointerOperand(A.I))].push_back(
          &A);
  auto moves = [&](const Access *A) {
    const SCEVAddRecExpr *Lo = affineIn(A->Where.Lo, L),
                         *Hi = affineIn(A->Where.Hi, L);
    return Lo && Hi && Lo->getStepRecurrence(SE) == Hi->getStepRecurrence(SE);
  };
  SmallPtrSet<const Value *, 4> Copied;
  for (const auto &[Obj, As] : ReadsOf)
    if (!all_of(As, moves))
      Copied.insert(Obj);
  struct Pair {
    const SCEV *Reach;
    Check Apart;
  };
  SmallVector<Pair, 8> Pairs;
  const SCEV *ReadAbs = nullptr;
  auto inWaves = [&]() {
    SmallVector<const Access *, 8> Reads;
    for (const auto &[Obj, As] : ReadsOf)
      if (!Copied.count(Obj))
        append_range(Reads, As);
    const SCEV *ReadStep = nullptr;
    for (const Access *A : Reads) {
      const SCEV *Step = affineIn(A->Where.Lo, L)->getStepRecurrence(SE);
      if (ReadStep && ReadStep != Step)
        return false;
      ReadStep = Step;
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
  if (!inWaves()) {
    Pairs.clear();
    ReadAbs = nullptr;
    for (const auto &[Obj, As] : ReadsOf)
      Copied.insert(Obj);
  }
  Pl.InPlaceReads = Copied.size() < ReadsOf.size();
  // A copied shadow: a duplicated array argument's, that the loop does not
  // write (its reverse would take adjoints the copies do not hold yet), read
  // as floats of one type at element boundaries from its lowest byte.
  struct CopySpan {
    const Argument *Obj;
    Type *Elt;
    const SCEV *Lo, *Bytes;
  };
  SmallVector<CopySpan, 2> Copies;
  for (const auto &[Obj, As] : ReadsOf) {
    if (!Copied.count(Obj))
      continue;
    std::string Shared = "chunks may read the same elements at once (" +
                         describe(As.front()->I) + ")";
    auto *Arg = dyn_cast<Argument>(Obj);
    if (!Arg || Arg->getArgNo() == numba::RetPtrParam ||
        !Sk.Req.Params[numba::userParamIndex(*Arg)].isDuplicated())
      return Shared + " in memory that is not an argument's";
    for (const Access &A : Accesses)
      if (A.Store &&
          getUnderlyingObject(getLoadStorePointerOperand(A.I)) == Obj)
        return Shared + " of an array it also writes";
    // Every access starts a whole number of elements from the array's
    // start (so does the lowest one, where the copy starts).
    const SCEV *Start =
        SE.getPtrToIntExpr(SE.getSCEV(const_cast<Argument *>(Arg)), I64);
    Type *Elt = getLoadStoreType(As.front()->I);
    const SCEV *Lo = nullptr, *Hi = nullptr;
    for (const Access *A : As) {
      std::optional<Span> T = Total(*A);
      if (!T || getLoadStoreType(A->I) != Elt || !Elt->isFloatingPointTy())
        return Shared;
      Lo = Lo ? SE.getUMinExpr(Lo, T->Lo) : T->Lo;
      Hi = Hi ? SE.getUMaxExpr(Hi, T->Hi) : T->Hi;
      if (SE.getMinTrailingZeros(SE.getMinusSCEV(A->Addr, Start)) <
          Log2_64(A->Size))
        return Shared + " at positions the engine cannot align";
    }
    const SCEV *Bytes = SE.getAddExpr(SE.getMinusSCEV(Hi, Lo), SE.getOne(I64));
    // The copies stay small, else the loop runs as one chunk.
    Checks.push_back({ICmpInst::ICMP_ULE, Bytes, Size(CopyLimit)});
    Copies.push_back({Arg, Elt, Lo, Bytes});
  }
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
  for (const CopySpan &C : Copies)
    if (!expandable(C.Lo) || !expandable(C.Bytes))
      return "the bytes its chunks read of a shared array cannot be "
             "computed before it starts";
  Pl.Trip = Exp.expandCodeFor(Trip, I64, At);
  for (const CopySpan &C : Copies)
    Pl.Copies.push_back({C.Obj,
                         C.Elt,
                         Exp.expandCodeFor(C.Lo, I64, At),
                         Exp.expandCodeFor(C.Bytes, I64, At),
                         {}});
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
  Pl.Safe = Safe;
  // Per pair of reads: reach, step, apart; the forward sweep asks
  // reach < step * (chunk + 1), or apart.
  for (const Pair &P : Pairs) {
    Pl.Reads.push_back(Exp.expandCodeFor(P.Reach, I64, At));
    Pl.Reads.push_back(Exp.expandCodeFor(ReadAbs, I64, At));
    Pl.Reads.push_back(emit(P.Apart));
  }
  return "";
}

void ChunkPlanner::planAll(bool Reverse) {
  for (const auto &[H, Where] : Sk.Canon.ParallelLoops) {
    const Loop *L = LI.getLoopFor(H);
    Plan Pl;
    Pl.L = L;
    std::string Why = L && L->getHeader() == H
                          ? eligible(*L, Pl, Reverse)
                          : "it is not a loop after canonicalization";
    if (!Why.empty()) {
      Refused.push_back({H, Why});
      continue;
    }
    for (const BasicBlock *B : L->blocks())
      PlanOfBlock[B] = Plans.size();
    Plans.push_back(Pl);
  }
}

Value *ParallelReverse::copyOffset(IRBuilder<> &B, const LoadInst &PrimalLoad,
                                   unsigned K, unsigned Width) {
  auto It = PlanOfBlock.find(PrimalLoad.getParent());
  if (It == PlanOfBlock.end())
    return nullptr;
  Plan &Pl = Plans[It->second];
  const Value *Obj = getUnderlyingObject(PrimalLoad.getPointerOperand());
  for (Plan::ShadowCopy &C : Pl.Copies) {
    if (C.Obj != Obj)
      continue;
    Type *I64 = B.getInt64Ty();
    if (C.Offset.empty()) {
      IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
      for (unsigned L = 0; L < Width; ++L) {
        C.Offset.push_back(EB.CreateAlloca(I64, nullptr, "enzpy.par.offset"));
        EB.CreateStore(EB.getInt64(0), C.Offset.back());
      }
    }
    return B.CreateLoad(I64, C.Offset[K]);
  }
  return nullptr;
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

ChunkSplit splitLoop(IRBuilder<> &B, Value *Safe, Value *Trip,
                     GlobalVariable *&Cost) {
  Module &M = *B.GetInsertBlock()->getModule();
  Type *I64 = B.getInt64Ty();
  if (!Cost)
    Cost = new GlobalVariable(M, I64, false, GlobalValue::PrivateLinkage,
                              B.getInt64(0), "enzpy.par.cost");
  auto *Floor = cast<GlobalVariable>(
      M.getOrInsertGlobal("enzpy_parallel_min_cycles", I64));
  // Worth a launch: the loop's serial cost, at the cycles per iteration
  // its last serial run took, reaches the floor; unknown (0) runs serially
  // once to learn it. A floor of 0 always launches.
  LoadInst *PerIter = B.CreateAlignedLoad(I64, Cost, Align(8));
  PerIter->setAtomic(AtomicOrdering::Monotonic);
  Value *Least = B.CreateLoad(I64, Floor);
  Value *Estimate = B.CreateLShr(B.CreateMul(PerIter, Trip), CostShift);
  Value *Worth = B.CreateOr(B.CreateICmpEQ(Least, B.getInt64(0)),
                            B.CreateAnd(B.CreateICmpNE(PerIter, B.getInt64(0)),
                                        B.CreateICmpUGE(Estimate, Least)));
  FunctionCallee Threads =
      M.getOrInsertFunction("get_num_threads", FunctionType::get(I64, false));
  Value *T = B.CreateCall(Threads);
  Value *Many =
      B.CreateAnd(B.CreateAnd(Safe, Worth), B.CreateICmpUGT(T, B.getInt64(1)));
  Value *K = B.CreateSelect(
      Many, B.CreateBinaryIntrinsic(Intrinsic::umin, B.CreateShl(T, 1), Trip),
      B.getInt64(1));
  K = B.CreateBinaryIntrinsic(Intrinsic::umax, K, B.getInt64(1));
  auto ceilDiv = [&](Value *A, Value *N) {
    return B.CreateUDiv(B.CreateAdd(A, B.CreateSub(N, B.getInt64(1))), N);
  };
  Value *Chunk =
      B.CreateBinaryIntrinsic(Intrinsic::umax, ceilDiv(Trip, K), B.getInt64(1));
  return {ceilDiv(Trip, Chunk), Chunk}; // no empty chunk
}

Value *startClock(IRBuilder<> &B) {
  return B.CreateIntrinsic(Intrinsic::readcyclecounter, {});
}

void recordCost(IRBuilder<> &B, GlobalVariable *Cost, Value *Start, Value *Trip,
                Value *K) {
  Value *Cycles = B.CreateSub(startClock(B), Start);
  Value *PerIter = B.CreateUDiv(
      B.CreateShl(Cycles, CostShift),
      B.CreateBinaryIntrinsic(Intrinsic::umax, Trip, B.getInt64(1)));
  // Only a serial run measures the loop's own cost; at least 1 (known).
  Value *Old = B.CreateAlignedLoad(B.getInt64Ty(), Cost, Align(8));
  cast<LoadInst>(Old)->setAtomic(AtomicOrdering::Monotonic);
  Value *New = B.CreateSelect(
      B.CreateICmpEQ(K, B.getInt64(1)),
      B.CreateBinaryIntrinsic(Intrinsic::umax, PerIter, B.getInt64(1)), Old);
  B.CreateAlignedStore(New, Cost, Align(8))
      ->setAtomic(AtomicOrdering::Monotonic);
}

void emitLoop(IRBuilder<> &B, Instruction *Before, Value *N,
              function_ref<void(IRBuilder<> &, Value *)> Body) {
  BasicBlock *Pre = B.GetInsertBlock();
  BasicBlock *Step = SplitBlock(Pre, Before->getIterator(),
                                static_cast<DominatorTree *>(nullptr));
  BasicBlock *After = SplitBlock(Step, Before->getIterator(),
                                 static_cast<DominatorTree *>(nullptr));
  Pre->getTerminator()->eraseFromParent();
  IRBuilder<> PB(Pre);
  PB.CreateCondBr(PB.CreateICmpEQ(N, PB.getInt64(0)), After, Step);
  Step->getTerminator()->eraseFromParent();
  IRBuilder<> SB(Step);
  PHINode *Ix = SB.CreatePHI(B.getInt64Ty(), 2);
  Ix->addIncoming(SB.getInt64(0), Pre);
  Body(SB, Ix);
  Value *Next = SB.CreateAdd(Ix, SB.getInt64(1));
  Ix->addIncoming(Next, SB.GetInsertBlock());
  SB.CreateCondBr(SB.CreateICmpULT(Next, N), Step, After);
  B.SetInsertPoint(Before);
}

void emitSchedule(IRBuilder<> &B, Instruction *Before, Value *Sched, Value *K,
                  bool Waves) {
  Value *Half = B.CreateLShr(B.CreateAdd(K, B.getInt64(1)), 1);
  emitLoop(B, Before, K, [&](IRBuilder<> &SB, Value *Row) {
    Value *Id;
    if (Waves) { // even chunks, then odd ones
      Value *Second = SB.CreateICmpUGE(Row, Half);
      Id =
          SB.CreateSelect(Second,
                          SB.CreateAdd(SB.CreateShl(SB.CreateSub(Row, Half), 1),
                                       SB.getInt64(1)),
                          SB.CreateShl(Row, 1));
    } else { // 0, K-1, 1, K-2, ...
      Value *Pair = SB.CreateLShr(Row, 1);
      Id = SB.CreateSelect(SB.CreateTrunc(Row, SB.getInt1Ty()),
                           SB.CreateSub(SB.CreateSub(K, SB.getInt64(1)), Pair),
                           Pair);
    }
    SB.CreateStore(Id, SB.CreateGEP(SB.getInt64Ty(), Sched, Row));
  });
}

void emitChunkLaunch(IRBuilder<> &B, BasicBlock &Entry, Function *W, Value *Ctx,
                     Value *Sched, Value *First, Value *Count) {
  IRBuilder<> EB(&Entry, Entry.getFirstInsertionPt());
  Type *ArgsT = ArrayType::get(EB.getPtrTy(), 2);
  Type *StepsT = ArrayType::get(EB.getInt64Ty(), 2);
  AllocaInst *Args = EB.CreateAlloca(ArgsT);
  AllocaInst *Dims = EB.CreateAlloca(EB.getInt64Ty());
  AllocaInst *Steps = EB.CreateAlloca(StepsT);
  Module &M = *W->getParent();
  LLVMContext &C = M.getContext();
  Type *I64 = B.getInt64Ty();
  PointerType *Ptr = PointerType::getUnqual(C);
  B.CreateStore(B.CreateGEP(I64, Sched, First),
                B.CreateConstGEP2_32(ArgsT, Args, 0, 0));
  B.CreateStore(Ctx, B.CreateConstGEP2_32(ArgsT, Args, 0, 1));
  B.CreateStore(B.getInt64(8), B.CreateConstGEP2_32(StepsT, Steps, 0, 0));
  B.CreateStore(B.getInt64(0), B.CreateConstGEP2_32(StepsT, Steps, 0, 1));
  B.CreateStore(Count, Dims);
  FunctionCallee Threads =
      M.getOrInsertFunction("get_num_threads", FunctionType::get(I64, false));
  FunctionCallee ParallelFor = M.getOrInsertFunction(
      "numba_parallel_for",
      FunctionType::get(Type::getVoidTy(C),
                        {Ptr, Ptr, Ptr, Ptr, Ptr, I64, I64, I64}, false));
  B.CreateCall(ParallelFor,
               {W, Args, Dims, Steps, ConstantPointerNull::get(Ptr),
                B.getInt64(0), B.getInt64(2), B.CreateCall(Threads)});
}

CallInst *adoptChunk(Function &D, Function &F) {
  auto *CI = cast<CallInst>(F.user_back());
  // The derivative's target and math attributes (what O3 vectorizes for).
  for (const Attribute &A : D.getAttributes().getFnAttrs())
    if (A.isStringAttribute())
      F.addFnAttr(A);
  F.addFnAttr(Attribute::NoUnwind);
  // What the derivative knows of its arrays holds in the chunk too.
  for (unsigned I = 0; I < CI->arg_size(); ++I)
    if (auto *DA = dyn_cast<Argument>(CI->getArgOperand(I));
        DA && DA->hasNoAliasAttr())
      F.getArg(I)->addAttr(Attribute::NoAlias);
  return CI;
}

Function *emitChunkWrapper(
    Function &D, const Twine &Name,
    function_ref<void(IRBuilder<> &, IRBuilder<> &, Value *, Value *)> Chunk) {
  LLVMContext &C = D.getContext();
  Type *I64 = Type::getInt64Ty(C);
  PointerType *Ptr = PointerType::getUnqual(C);
  Function *W = Function::Create(
      FunctionType::get(Type::getVoidTy(C), {Ptr, Ptr, Ptr, Ptr}, false),
      GlobalValue::InternalLinkage, Name, D.getParent());
  // The derivative's target and math attributes (what O3 vectorizes for).
  for (const Attribute &A : D.getAttributes().getFnAttrs())
    if (A.isStringAttribute())
      W->addFnAttr(A);
  W->addFnAttr(Attribute::NoUnwind);
  BasicBlock *WEntry = BasicBlock::Create(C, "entry", W);
  BasicBlock *WLoop = BasicBlock::Create(C, "chunk", W);
  BasicBlock *WDone = BasicBlock::Create(C, "done", W);
  IRBuilder<> B(WEntry);
  // args[0]: the first row of the schedule; args[1]: the context.
  Value *RowPtr = B.CreateLoad(Ptr, W->getArg(0));
  Value *CtxP = B.CreateLoad(Ptr, B.CreateConstGEP1_64(Ptr, W->getArg(0), 1));
  Value *Rows = B.CreateLoad(I64, W->getArg(1));
  Value *RowStep = B.CreateLoad(I64, W->getArg(2));
  BranchInst *Enter =
      B.CreateCondBr(B.CreateICmpEQ(Rows, B.getInt64(0)), WDone, WLoop);
  B.SetInsertPoint(WLoop);
  PHINode *R = B.CreatePHI(I64, 2);
  R->addIncoming(B.getInt64(0), WEntry);
  Value *K = B.CreateLoad(
      I64, B.CreateGEP(B.getInt8Ty(), RowPtr, B.CreateMul(R, RowStep)));
  IRBuilder<> EB(Enter);
  Chunk(EB, B, CtxP, K);
  Value *RNext = B.CreateAdd(R, B.getInt64(1));
  R->addIncoming(RNext, B.GetInsertBlock());
  B.CreateCondBr(B.CreateICmpULT(RNext, Rows), WLoop, WDone);
  B.SetInsertPoint(WDone);
  B.CreateRetVoid();
  return W;
}

// --- the forward sweep's chunk tables ---------------------------------------
// A table: [0] the next table of the list, [1] the number of chunks K, [2] the
// chunk's length, [3] the trip count, [4 + 2p, 5 + 2p] the primal bytes
// (Lo, Bytes) the loop reads of shadow copy p, [head() + k] the tape's top
// where chunk k starts (k = 0..K; [head() + K] where the loop ends).

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
    auto [K, Chunk] = splitLoop(B, Safe, Trip, Pl.Cost);
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
    Chunk = B.CreateSelect(
        Near, Chunk,
        B.CreateBinaryIntrinsic(Intrinsic::umax, Trip, B.getInt64(1)),
        "enzpy.par.chunk");
    Value *Bytes =
        B.CreateMul(B.CreateAdd(K, B.getInt64(Pl.head() + 1)), B.getInt64(8));
    CallInst *Tbl = B.CreateCall(libcMalloc(M), {Bytes}, "enzpy.par.table");
    Sk.failIfNull(Tbl);
    B.CreateStore(Chunk, field(B, Tbl, 2));
    B.CreateStore(Trip, field(B, Tbl, 3));
    for (auto [P, Copy] : enumerate(Pl.Copies)) {
      B.CreateStore(Sk.mapped(Copy.Lo), field(B, Tbl, 4 + 2 * P));
      B.CreateStore(Sk.mapped(Copy.Bytes), field(B, Tbl, 5 + 2 * P));
    }
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
                   field(TB, Tb, TB.CreateAdd(Idx, TB.getInt64(Pl.head()))));
    TB.CreateStore(TB.CreateAdd(Idx, TB.getInt64(1)), Pl.Index);
    TB.CreateStore(TB.CreateAdd(Next, TB.CreateLoad(I64, field(TB, Tb, 2))),
                   Pl.Next);
    // Exit: where the loop's frames end.
    IRBuilder<> XB(&*FE->getFirstNonPHIIt());
    Value *Tx = XB.CreateLoad(Ptr, TableSlot);
    Value *Chunks = XB.CreateLoad(I64, Pl.Index);
    XB.CreateStore(XB.CreateLoad(I64, VR.tape().topSlot()),
                   field(XB, Tx, XB.CreateAdd(Chunks, XB.getInt64(Pl.head()))));
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
enum class Pass { Shared, Begin, Top, Countdown, Zeroed, Copied, Offset };
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
  CallInst *CI = adoptChunk(D, *F);
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
  // The context every chunk reads: the inputs, then the table, the partial
  // sums of the Zeroed slots, the bytes of a chunk's shadow copies and per
  // copy and lane what turns a shadow address into one in chunk 0's copy.
  unsigned Lanes = 0;
  for (const Plan::ShadowCopy &Cp : Pl.Copies)
    Lanes += Cp.Offset.size();
  SmallVector<Type *, 16> Fields;
  for (Value *V : CI->args())
    Fields.push_back(V->getType());
  unsigned TableField = Fields.size();
  Fields.append({Ptr, Ptr, I64});
  Fields.append(Lanes, I64);
  StructType *Ctx = StructType::get(C, Fields);
  SmallVector<Type *, 4> PartTypes;
  for (unsigned I : Outer)
    PartTypes.push_back(
        cast<AllocaInst>(CI->getArgOperand(I))->getAllocatedType());
  StructType *Part = StructType::get(C, PartTypes);
  const DataLayout &DL = M.getDataLayout();
  uint64_t PartBytes =
      alignTo(std::max<uint64_t>(DL.getTypeAllocSize(Part), 8), 8);
  // Which copy and lane an offset slot is.
  DenseMap<const Value *, unsigned> LaneOf;
  {
    unsigned N = 0;
    for (const Plan::ShadowCopy &Cp : Pl.Copies)
      for (AllocaInst *Slot : Cp.Offset)
        LaneOf[Slot] = N++;
  }
  for (unsigned I = 0; I < How.size(); ++I)
    if (LaneOf.count(CI->getArgOperand(I)))
      How[I] = Pass::Offset;

  // The chunks numba's threading layer runs.
  Function *W = emitChunkWrapper(
      D, F->getName() + ".threads",
      [&](IRBuilder<> &EB, IRBuilder<> &B, Value *CtxP, Value *K) {
        SmallVector<AllocaInst *, 16> Priv(How.size(), nullptr);
        for (unsigned I = 0; I < How.size(); ++I)
          if (How[I] != Pass::Shared && How[I] != Pass::Begin)
            Priv[I] = EB.CreateAlloca(
                cast<AllocaInst>(CI->getArgOperand(I))->getAllocatedType());
        auto ctx = [&](unsigned Field, Type *T) {
          return B.CreateLoad(T, B.CreateStructGEP(Ctx, CtxP, Field));
        };
        Value *Tbl = ctx(TableField, Ptr);
        Value *Parts = ctx(TableField + 1, Ptr);
        Value *CopyBytes = ctx(TableField + 2, I64);
        Value *Chunk = B.CreateLoad(I64, field(B, Tbl, 2));
        Value *Trip = B.CreateLoad(I64, field(B, Tbl, 3));
        Value *C0 = B.CreateMul(K, Chunk);
        Value *C1 = B.CreateBinaryIntrinsic(Intrinsic::umin,
                                            B.CreateAdd(C0, Chunk), Trip);
        SmallVector<Value *, 16> Args;
        for (unsigned I = 0; I < How.size(); ++I) {
          Value *Shared = ctx(I, Fields[I]);
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
                    I64,
                    field(B, Tbl, B.CreateAdd(K, B.getInt64(Pl.head() + 1)))),
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
          case Pass::Offset:
            B.CreateStore(
                B.CreateAdd(
                    ctx(TableField + 3 + LaneOf[CI->getArgOperand(I)], I64),
                    B.CreateMul(K, CopyBytes)),
                Priv[I]);
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
      });

  // At the call: pop this execution's table; more than one chunk runs on
  // the threads (when the memory for the partial sums, the schedule and
  // the shadow copies is there), else the call stays as it is.
  IRBuilder<> B(CI);
  Value *Tbl = B.CreateLoad(Ptr, Pl.Tables, "enzpy.par.table");
  B.CreateStore(B.CreateLoad(Ptr, field(B, Tbl, uint64_t(0))), Pl.Tables);
  Value *K = B.CreateLoad(I64, field(B, Tbl, 1), "enzpy.par.chunks");
  Value *TripR = B.CreateLoad(I64, field(B, Tbl, 3));
  Value *SchedAt =
      B.CreateMul(B.CreateAdd(K, B.getInt64(1)), B.getInt64(PartBytes));
  Value *Block = B.CreateCall(
      libcMalloc(M), {B.CreateAdd(SchedAt, B.CreateMul(K, B.getInt64(8)))});
  // A chunk's copies, each on cache lines of its own.
  SmallVector<Value *, 4> CopyAt, CopyLen, CopyShadow;
  Value *CopyBytes = B.getInt64(0);
  for (auto [P, Cp] : enumerate(Pl.Copies))
    for (unsigned L = 0; L < Cp.Offset.size(); ++L) {
      Value *Lo = B.CreateLoad(I64, field(B, Tbl, 4 + 2 * P));
      Value *Len = B.CreateLoad(I64, field(B, Tbl, 5 + 2 * P));
      Value *Delta = B.CreateSub(B.CreatePtrToInt(Sk.shadow(Cp.Obj, L), I64),
                                 B.CreatePtrToInt(Sk.mapped(Cp.Obj), I64));
      CopyShadow.push_back(B.CreateAdd(Lo, Delta));
      CopyAt.push_back(CopyBytes);
      CopyLen.push_back(Len);
      Value *Lines = B.CreateAnd(B.CreateAdd(Len, B.getInt64(63)),
                                 B.getInt64(~uint64_t(63)));
      CopyBytes = B.CreateAdd(CopyBytes, Lines);
    }
  Value *Copies = ConstantPointerNull::get(Ptr);
  if (Lanes)
    Copies = B.CreateCall(libcCalloc(M), {K, CopyBytes}, "enzpy.par.copies");
  Value *Par = B.CreateAnd(
      B.CreateAnd(B.CreateICmpUGT(K, B.getInt64(1)), B.CreateIsNotNull(Block)),
      Lanes ? B.CreateIsNotNull(Copies) : B.getTrue());
  Value *Start = startClock(B);
  Instruction *ThenT, *ElseT;
  SplitBlockAndInsertIfThenElse(Par, CI->getIterator(), &ThenT, &ElseT);
  CI->moveBefore(ElseT->getIterator());
  {
    IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
    AllocaInst *CtxA = EB.CreateAlloca(Ctx, nullptr, "enzpy.par.ctx");
    IRBuilder<> TB(ThenT);
    for (unsigned I = 0; I < CI->arg_size(); ++I)
      TB.CreateStore(CI->getArgOperand(I), TB.CreateStructGEP(Ctx, CtxA, I));
    TB.CreateStore(Tbl, TB.CreateStructGEP(Ctx, CtxA, TableField));
    TB.CreateStore(Block, TB.CreateStructGEP(Ctx, CtxA, TableField + 1));
    TB.CreateStore(CopyBytes, TB.CreateStructGEP(Ctx, CtxA, TableField + 2));
    for (unsigned J = 0; J < Lanes; ++J)
      TB.CreateStore(
          TB.CreateSub(TB.CreateAdd(TB.CreatePtrToInt(Copies, I64), CopyAt[J]),
                       CopyShadow[J]),
          TB.CreateStructGEP(Ctx, CtxA, TableField + 3 + J));
    // The schedule: with reads that add in place, even chunks then odd ones
    // (two waves: chunks that run together are a chunk apart); else one
    // wave, the chunks paired first with last (numba gives each thread
    // consecutive rows: a triangular loop's long and short chunks).
    Value *Sched = TB.CreateGEP(TB.getInt8Ty(), Block, SchedAt);
    bool Waves = !Pl.Reads.empty() || Pl.InPlaceReads;
    emitSchedule(TB, ThenT, Sched, K, Waves);
    if (Waves) {
      Value *Half = TB.CreateLShr(TB.CreateAdd(K, TB.getInt64(1)), 1);
      emitChunkLaunch(TB, *Sk.Entry, W, CtxA, Sched, TB.getInt64(0), Half);
      emitChunkLaunch(TB, *Sk.Entry, W, CtxA, Sched, Half,
                      TB.CreateSub(K, Half));
    } else {
      emitChunkLaunch(TB, *Sk.Entry, W, CtxA, Sched, TB.getInt64(0), K);
    }
    auto loopAt = [&](Value *N,
                      function_ref<void(IRBuilder<> &, Value *)> Body) {
      emitLoop(TB, ThenT, N, Body);
    };
    // The Zeroed slots get the chunks' sums, in chunk order.
    if (!Outer.empty())
      loopAt(K, [&](IRBuilder<> &SB, Value *Kc) {
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
      });
    // The shadows get the chunks' copies, in chunk order.
    unsigned J = 0;
    for (const Plan::ShadowCopy &Cp : Pl.Copies)
      for (unsigned L = 0; L < Cp.Offset.size(); ++L, ++J) {
        uint64_t Size = DL.getTypeStoreSize(Cp.Elt).getFixedValue();
        Value *N = TB.CreateUDiv(CopyLen[J], TB.getInt64(Size));
        Value *Shadow = TB.CreateIntToPtr(CopyShadow[J], Ptr);
        Value *First = TB.CreateGEP(TB.getInt8Ty(), Copies, CopyAt[J]);
        loopAt(K, [&](IRBuilder<> &SB, Value *Kc) {
          Value *Mine =
              SB.CreateGEP(SB.getInt8Ty(), First, SB.CreateMul(Kc, CopyBytes));
          // One chunk's copy into the shadow, element by element (an inner
          // loop split off the outer one's block).
          BasicBlock *Outer = SB.GetInsertBlock();
          BasicBlock *Inner =
              BasicBlock::Create(C, "enzpy.par.copy", Outer->getParent());
          BasicBlock *Done =
              BasicBlock::Create(C, "enzpy.par.copied", Outer->getParent());
          SB.CreateCondBr(SB.CreateICmpEQ(N, SB.getInt64(0)), Done, Inner);
          IRBuilder<> IB(Inner);
          PHINode *E = IB.CreatePHI(I64, 2);
          E->addIncoming(IB.getInt64(0), Outer);
          Value *To = IB.CreateGEP(Cp.Elt, Shadow, E);
          IB.CreateStore(
              IB.CreateFAdd(
                  IB.CreateLoad(Cp.Elt, To),
                  IB.CreateLoad(Cp.Elt, IB.CreateGEP(Cp.Elt, Mine, E))),
              To);
          Value *ENext = IB.CreateAdd(E, IB.getInt64(1));
          E->addIncoming(ENext, Inner);
          IB.CreateCondBr(IB.CreateICmpULT(ENext, N), Inner, Done);
          SB.SetInsertPoint(Done);
        });
      }
    // Every frame of the loop is popped.
    TB.CreateStore(TB.CreateLoad(I64, field(TB, Tbl, Pl.head())),
                   VR.tape().topSlot());
  }
  // After either way: the table, the partial sums and the copies go.
  IRBuilder<> AB(
      &*CI->getParent()->getSingleSuccessor()->getFirstInsertionPt());
  recordCost(AB, Pl.Cost, Start, TripR, K);
  FunctionCallee Free = libcFree(M);
  AB.CreateCall(Free, {Block});
  AB.CreateCall(Free, {Tbl});
  if (Lanes)
    AB.CreateCall(Free, {Copies});
  // The sums' last values had their adjoints taken, as the serial reverse
  // leaves them.
  for (Value *V : CI->args())
    if (auto *A = dyn_cast<AllocaInst>(V); A && SumLasts.count(Adj.valueOf(A)))
      AB.CreateStore(Constant::getNullValue(A->getAllocatedType()), A);
  Pl.Outcome = "parallel";
}

void ChunkPlanner::record(DecisionLog &Log) const {
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
