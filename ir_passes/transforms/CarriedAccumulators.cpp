//===- CarriedAccumulators.cpp - neighbour accumulations in registers -----===//
#include "transforms/CarriedAccumulators.h"
#include "driver/IRHelpers.h"
#include "llvm/ADT/STLExtras.h"
#include "llvm/Analysis/AliasAnalysis.h"
#include "llvm/Analysis/AssumptionCache.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/ScalarEvolution.h"
#include "llvm/Analysis/ScalarEvolutionExpressions.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/MDBuilder.h"
#include "llvm/IR/Module.h"
#include "llvm/Transforms/Utils/BasicBlockUtils.h"
#include "llvm/Transforms/Utils/Cloning.h"
#include "llvm/Transforms/Utils/LoopSimplify.h"
#include "llvm/Transforms/Utils/LoopUtils.h"
#include "llvm/Transforms/Utils/ScalarEvolutionExpander.h"
#include "llvm/Transforms/Utils/ValueMapper.h"
#include <optional>

using namespace llvm;

namespace enzpy {
namespace {

/// `x = load p; y = fadd x, c (or fsub x, c); store y, p` with p affine in
/// the loop.
struct Update {
  LoadInst *Ld;
  Instruction *Add;
  StoreInst *St;
  const SCEVAddRecExpr *Addr;
  int64_t Off = 0; // in iterations, relative to the group's first update
};

/// Updates whose addresses differ by whole iterations of one step.
struct Group {
  SmallVector<Update, 4> Updates;
  int64_t Step; // bytes per iteration
};

/// Addresses [Lo, Hi) an access touches over the whole loop.
struct Range {
  const SCEV *Lo, *Hi;
};

class Rewriter {
public:
  Rewriter(Loop &L, ScalarEvolution &SE, AAResults &AA, const DataLayout &DL)
      : L(L), SE(SE), AA(AA), DL(DL), Body(L.getHeader()) {}

  /// Rewrites every group of the loop that qualifies (one per shadow array
  /// and batch lane); false when none does. \p Copy is the loop's unchanged
  /// copy, when it made one.
  bool rewriteAll(BasicBlock *&Copy);

private:
  Loop &L;
  ScalarEvolution &SE;
  AAResults &AA;
  const DataLayout &DL;
  BasicBlock *Body;

  std::optional<Update> match(StoreInst &St) const;
  SmallVector<Group, 2> groups() const;
  bool consecutive(Group &G) const;
  std::optional<Range> rangeOf(const SCEV *Start, int64_t Step, int64_t From,
                               int64_t To, uint64_t Size) const;
  std::optional<Range> rangeOf(const Group &G) const;
  bool apart(const Group &G, const std::optional<Range> &Mine,
             const Instruction &I,
             SmallVectorImpl<std::pair<Range, Range>> &Checks) const;
  BasicBlock *version(ArrayRef<std::pair<Range, Range>> Checks, BasicBlock *Pre,
                      BasicBlock *Exit);
  BasicBlock *rewrite(Group &G, BasicBlock *Pre, BasicBlock *Exit);
  void separate(const Group &G);
};

std::optional<Update> Rewriter::match(StoreInst &St) const {
  if (!St.isSimple() || !St.getValueOperand()->getType()->isFloatingPointTy())
    return std::nullopt;
  // acc + x, x + acc or acc - x, acc loaded from where the sum goes.
  auto *Add = dyn_cast<Instruction>(St.getValueOperand());
  if (!Add ||
      (Add->getOpcode() != Instruction::FAdd &&
       Add->getOpcode() != Instruction::FSub) ||
      !Add->hasOneUse() || Add->getParent() != Body ||
      Add->getOperand(0) == Add->getOperand(1))
    return std::nullopt;
  LoadInst *Ld = nullptr;
  for (Value *Op : Add->operands()) {
    if (auto *X = dyn_cast<LoadInst>(Op);
        X && X->getPointerOperand() == St.getPointerOperand())
      Ld = X;
    if (Add->getOpcode() == Instruction::FSub)
      break;
  }
  if (!Ld || !Ld->isSimple() || !Ld->hasOneUse() || Ld->getParent() != Body)
    return std::nullopt;
  auto *AR = dyn_cast<SCEVAddRecExpr>(SE.getSCEV(St.getPointerOperand()));
  if (!AR || AR->getLoop() != &L || !AR->isAffine())
    return std::nullopt;
  auto *Step = dyn_cast<SCEVConstant>(AR->getStepRecurrence(SE));
  int64_t Size = DL.getTypeStoreSize(Ld->getType());
  if (!Step || std::abs(Step->getAPInt().getSExtValue()) != Size)
    return std::nullopt;
  return Update{Ld, Add, &St, AR};
}

SmallVector<Group, 2> Rewriter::groups() const {
  SmallVector<Group, 2> Out;
  for (Instruction &I : *Body) {
    auto *St = dyn_cast<StoreInst>(&I);
    std::optional<Update> U = St ? match(*St) : std::nullopt;
    if (!U)
      continue;
    int64_t Step = cast<SCEVConstant>(U->Addr->getStepRecurrence(SE))
                       ->getAPInt()
                       .getSExtValue();
    Group *Into = nullptr;
    for (Group &G : Out) {
      const Update &First = G.Updates.front();
      if (G.Step != Step || First.Ld->getType() != U->Ld->getType())
        continue;
      auto *D = dyn_cast<SCEVConstant>(
          SE.getMinusSCEV(U->Addr->getStart(), First.Addr->getStart()));
      if (!D || D->getAPInt().getSExtValue() % Step != 0)
        continue;
      U->Off = D->getAPInt().getSExtValue() / Step;
      Into = &G;
      break;
    }
    if (!Into)
      Into = &Out.emplace_back(Group{{}, Step});
    Into->Updates.push_back(*U);
  }
  return Out;
}

/// Orders the group's updates by the iteration in which each adds into a
/// given element (the largest offset first) and checks that the offsets are
/// distinct and consecutive.
bool Rewriter::consecutive(Group &G) const {
  if (G.Updates.size() < 2)
    return false;
  sort(G.Updates,
       [](const Update &A, const Update &B) { return A.Off > B.Off; });
  for (unsigned J = 1; J < G.Updates.size(); ++J)
    if (G.Updates[J].Off != G.Updates[J - 1].Off - 1)
      return false;
  return true;
}

/// The addresses Start + u * Step (u in [From, BTC + To]), each accessed
/// for \p Size bytes.
std::optional<Range> Rewriter::rangeOf(const SCEV *Start, int64_t Step,
                                       int64_t From, int64_t To,
                                       uint64_t Size) const {
  const SCEV *BTC = SE.getBackedgeTakenCount(&L);
  Type *IdxTy = DL.getIndexType(Start->getType());
  if (isa<SCEVCouldNotCompute>(BTC) || BTC->getType() != IdxTy)
    return std::nullopt;
  auto At = [&](const SCEV *U) {
    return SE.getAddExpr(Start,
                         SE.getMulExpr(U, SE.getConstant(IdxTy, Step, true)));
  };
  const SCEV *First = At(SE.getConstant(IdxTy, From, true));
  const SCEV *Last = At(SE.getAddExpr(BTC, SE.getConstant(IdxTy, To, true)));
  const SCEV *End = SE.getConstant(IdxTy, Size);
  if (Step < 0)
    std::swap(First, Last);
  return Range{First, SE.getAddExpr(Last, End)};
}

/// The addresses the group's updates touch over the whole loop.
std::optional<Range> Rewriter::rangeOf(const Group &G) const {
  const Update &First = G.Updates.front();
  return rangeOf(First.Addr->getStart(), G.Step, G.Updates.back().Off,
                 First.Off, DL.getTypeStoreSize(First.Ld->getType()));
}

/// Whether \p I's access is apart from every element the group touches
/// (\p Mine): proven, or (added to \p Checks) when two address ranges that
/// ScalarEvolution cannot order are apart at run time.
bool Rewriter::apart(const Group &G, const std::optional<Range> &Mine,
                     const Instruction &I,
                     SmallVectorImpl<std::pair<Range, Range>> &Checks) const {
  const Value *Ptr = getLoadStorePointerOperand(&I);
  if (!Ptr)
    return false; // a call or fence that touches memory
  const Value *GroupPtr = G.Updates.front().St->getPointerOperand();
  if (AA.isNoAlias(MemoryLocation::getBeforeOrAfter(Ptr),
                   MemoryLocation::getBeforeOrAfter(GroupPtr)))
    return true;
  uint64_t Size = DL.getTypeStoreSize(getLoadStoreType(&I));
  const SCEV *S = SE.getSCEV(const_cast<Value *>(Ptr));
  std::optional<Range> Theirs;
  if (SE.isLoopInvariant(S, &L))
    Theirs = Range{
        S,
        SE.getAddExpr(S, SE.getConstant(DL.getIndexType(S->getType()), Size))};
  else if (auto *AR = dyn_cast<SCEVAddRecExpr>(S);
           AR && AR->getLoop() == &L && AR->isAffine())
    if (auto *C = dyn_cast<SCEVConstant>(AR->getStepRecurrence(SE)))
      Theirs =
          rangeOf(AR->getStart(), C->getAPInt().getSExtValue(), 0, 0, Size);
  if (!Mine || !Theirs)
    return false;
  auto Below = [&](const Range &A, const Range &B) {
    const SCEV *Gap = SE.getMinusSCEV(B.Lo, A.Hi);
    return !isa<SCEVCouldNotCompute>(Gap) && SE.isKnownNonNegative(Gap);
  };
  if (Below(*Mine, *Theirs) || Below(*Theirs, *Mine))
    return true;
  Checks.emplace_back(*Mine, *Theirs);
  return true;
}

/// Runs the loop as it was unless the \p Checks hold: a copy of the loop,
/// entered from the preheader when some pair of ranges overlaps.
BasicBlock *Rewriter::version(ArrayRef<std::pair<Range, Range>> Checks,
                              BasicBlock *Pre, BasicBlock *Exit) {
  Function &F = *Body->getParent();
  SCEVExpander Expander(SE, "carried.check");
  Instruction *At = Pre->getTerminator();
  IRBuilder<> B(At);
  Value *Apart = B.getTrue();
  auto Expand = [&](const SCEV *S) {
    return Expander.expandCodeFor(S, S->getType(), At);
  };
  for (auto &[A, C] : Checks) {
    Value *Below = B.CreateICmpULE(Expand(A.Hi), Expand(C.Lo));
    Value *Above = B.CreateICmpULE(Expand(C.Hi), Expand(A.Lo));
    Apart = B.CreateAnd(Apart, B.CreateOr(Below, Above), "carried.apart");
  }
  ValueToValueMapTy VMap;
  BasicBlock *Copy = CloneBasicBlock(Body, VMap, ".orig", &F);
  BasicBlock *CopyPre =
      BasicBlock::Create(F.getContext(), "carried.orig.ph", &F, Copy);
  BranchInst::Create(Copy, CopyPre);
  VMap[Body] = Copy;
  VMap[Pre] = CopyPre;
  for (Instruction &I : *Copy)
    RemapInstruction(&I, VMap,
                     RF_NoModuleLevelChanges | RF_IgnoreMissingLocals);
  for (PHINode &Phi : Exit->phis()) {
    Value *In = Phi.getIncomingValueForBlock(Body);
    if (Value *Mapped = VMap.lookup(In))
      In = Mapped;
    Phi.addIncoming(In, Copy);
  }
  B.CreateCondBr(Apart, Body, CopyPre);
  At->eraseFromParent();
  return Copy;
}

/// Update J adds into element E_J(k) = P(k) + (Off_0 - J) * Step, which
/// update J + 1 adds into in the next iteration. Its partial sum V_J goes
/// there in a register (a phi); only the last update stores, and the
/// partial sums of the last iteration are stored after the loop.
BasicBlock *Rewriter::rewrite(Group &G, BasicBlock *Pre, BasicBlock *LoopExit) {
  // Only this loop's way out stores (not a copy's, see version).
  BasicBlock *Exit = SplitEdge(Body, LoopExit);
  unsigned D = G.Updates.size() - 1;
  SCEVExpander Expander(SE, "carried");
  IRBuilder<> B(Pre->getTerminator());
  SmallVector<PHINode *, 4> Carried;
  for (unsigned J = 0; J < D; ++J) {
    // Before the first iteration, V_J holds what update J + 1 would load
    // in it: memory as it is (the loop runs at least once from here).
    const Update &Next = G.Updates[J + 1];
    Value *Ptr = Expander.expandCodeFor(Next.Addr->getStart(),
                                        Next.St->getPointerOperand()->getType(),
                                        Pre->getTerminator());
    LoadInst *Init = B.CreateAlignedLoad(Next.Ld->getType(), Ptr,
                                         Next.Ld->getAlign(), "carried.init");
    PHINode *Phi = PHINode::Create(Init->getType(), 2, "carried");
    Phi->insertBefore(Body->getFirstNonPHIIt());
    Phi->addIncoming(Init, Pre);
    Phi->addIncoming(G.Updates[J].Add, Body);
    Carried.push_back(Phi);
  }
  // Update J's load becomes the partial sum the previous iteration left;
  // each addition follows the one it continues, so the recurrence reads
  // forward in the block.
  for (unsigned J = 1; J <= D; ++J) {
    Update &U = G.Updates[J];
    U.Ld->replaceAllUsesWith(Carried[J - 1]);
    U.Ld->eraseFromParent();
    Instruction *Prev = G.Updates[J - 1].Add;
    if (U.Add->comesBefore(Prev))
      U.Add->moveAfter(Prev);
  }
  StoreInst *Last = G.Updates[D].St;
  if (Last->comesBefore(G.Updates[D].Add))
    Last->moveAfter(G.Updates[D].Add);
  // The partial sums of the last iteration are its elements' final values.
  IRBuilder<> E(Exit, Exit->getFirstInsertionPt());
  for (unsigned J = 0; J < D; ++J) {
    StoreInst *St = G.Updates[J].St;
    PHINode *V =
        PHINode::Create(St->getValueOperand()->getType(), 1, "carried.final");
    V->insertBefore(Exit->begin());
    V->addIncoming(St->getValueOperand(), Body);
    PHINode *P =
        PHINode::Create(St->getPointerOperand()->getType(), 1, "carried.addr");
    P->insertBefore(Exit->begin());
    P->addIncoming(St->getPointerOperand(), Body);
    E.SetInsertPoint(Exit, Exit->getFirstInsertionPt());
    E.CreateAlignedStore(V, P, St->getAlign());
    St->eraseFromParent();
  }
  SE.forgetLoop(&L);
  return Exit;
}

/// Tells later passes what rewriteAll proved: the group's remaining load
/// and store touch none of the memory the loop's other accesses touch. Two
/// alias scopes of a fresh domain, one for the group and one for the rest.
/// Without them the loop vectorizer, which cannot order some other access
/// against the group (another row of the same array, at a distance only
/// known at run time), falls back to run-time overlap checks for every pair
/// of accesses to that array, the group's own load and store among them;
/// those overlap by design (they are two elements apart), so the vector loop
/// would never run.
void Rewriter::separate(const Group &G) {
  MDBuilder MDB(Body->getContext());
  MDNode *Domain = MDB.createAnonymousAliasScopeDomain("enzpy.carried");
  MDNode *Mine = MDB.createAnonymousAliasScope(Domain, "group");
  MDNode *Rest = MDB.createAnonymousAliasScope(Domain, "rest");
  Instruction *Own[] = {G.Updates.front().Ld, G.Updates.back().St};
  for (Instruction &I : *Body)
    if (isa<LoadInst, StoreInst>(I))
      addAliasScopes(I, {is_contained(Own, &I) ? Mine : Rest},
                     {is_contained(Own, &I) ? Rest : Mine});
}

bool Rewriter::rewriteAll(BasicBlock *&Copy) {
  SmallVector<Group, 2> Chosen;
  SmallVector<std::pair<Range, Range>, 2> Checks;
  for (Group &G : groups()) {
    if (!consecutive(G))
      continue;
    SmallVector<std::pair<Range, Range>, 2> Mine;
    SmallPtrSet<const Instruction *, 8> Own;
    for (const Update &U : G.Updates) {
      Own.insert(U.Ld);
      Own.insert(U.St);
    }
    std::optional<Range> Elements = rangeOf(G);
    bool Alone = all_of(*Body, [&](const Instruction &I) {
      return Own.contains(&I) || !I.mayReadOrWriteMemory() ||
             apart(G, Elements, I, Mine);
    });
    if (!Alone)
      continue;
    // Each group is proven apart from every other access of the loop as it
    // is now, the other groups' included, so the proofs hold together.
    append_range(Checks, Mine);
    Chosen.push_back(std::move(G));
  }
  if (Chosen.empty())
    return false;
  BasicBlock *Pre = L.getLoopPreheader();
  BasicBlock *Exit = L.getExitBlock();
  if (!Checks.empty())
    Copy = version(Checks, Pre, Exit);
  for (Group &G : Chosen) {
    Exit = rewrite(G, Pre, Exit);
    separate(G);
  }
  return true;
}

} // namespace

PreservedAnalyses CarriedAccumulatorsPass::run(Function &F,
                                               FunctionAnalysisManager &FAM) {
  auto &LI = FAM.getResult<LoopAnalysis>(F);
  auto &SE = FAM.getResult<ScalarEvolutionAnalysis>(F);
  auto &AA = FAM.getResult<AAManager>(F);
  auto &DT = FAM.getResult<DominatorTreeAnalysis>(F);
  auto &AC = FAM.getResult<AssumptionAnalysis>(F);
  const DataLayout &DL = F.getParent()->getDataLayout();
  bool Changed = false;
  // A rewrite splits an edge and may copy the loop without updating the
  // dominator tree and loop info: they are recomputed, and the loops walked
  // again, skipping those seen (by header) and the copies.
  SmallPtrSet<const BasicBlock *, 8> Seen;
  for (bool Again = true; Again;) {
    Again = false;
    for (Loop *L : LI.getLoopsInPreorder()) {
      if (!L->isInnermost() || L->getNumBlocks() != 1 || !L->getExitBlock() ||
          !Seen.insert(L->getHeader()).second)
        continue;
      // A preheader and an exit of its own (LoopSimplify form); values used
      // after the loop pass through its exit's phis (LCSSA), which a copy of
      // the loop (version) then feeds too.
      Changed |= simplifyLoop(L, &DT, &LI, &SE, &AC, nullptr, false);
      BasicBlock *Exit = L->getExitBlock();
      if (!L->getLoopPreheader() || !Exit ||
          Exit->getSinglePredecessor() != L->getHeader())
        continue;
      Changed |= formLCSSA(*L, DT, &LI, &SE);
      // Every group of the loop at once: it may have been copied for them
      // (version), and is not visited again.
      BasicBlock *Copy = nullptr;
      if (!Rewriter(*L, SE, AA, DL).rewriteAll(Copy))
        continue;
      Changed = Again = true;
      if (Copy)
        Seen.insert(Copy);
      DT.recalculate(F);
      LI.releaseMemory();
      LI.analyze(DT);
      SE.forgetAllLoops();
      break;
    }
  }
  return Changed ? PreservedAnalyses::none() : PreservedAnalyses::all();
}

} // namespace enzpy
