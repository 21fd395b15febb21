//===- ControlActivity.cpp - active inputs that act only through control --===//
#include "analysis/ControlActivity.h"
#include "driver/Diagnostics.h"
#include "numba/NumbaABI.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/ADT/Twine.h"
#include "llvm/Analysis/AssumptionCache.h"
#include "llvm/Analysis/ConstantFolding.h"
#include "llvm/Analysis/LazyValueInfo.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/PostDominators.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/Function.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/PatternMatch.h"

using namespace llvm;
using namespace llvm::PatternMatch;

namespace enzpy {

/// A comparison of varied floats, or a conversion of one to an integer.
/// Tests for NaN (isnan: `fcmp uno`, `fcmp ord`) decide nothing on any
/// interval: np.max's early return on a NaN is not a piecewise dependence.
static bool isSource(const Instruction &I, const ActivityAnalysis &AA) {
  if (auto *Cmp = dyn_cast<FCmpInst>(&I)) {
    if (Cmp->getPredicate() == FCmpInst::FCMP_UNO ||
        Cmp->getPredicate() == FCmpInst::FCMP_ORD)
      return false;
  } else if (!isa<FPToSIInst>(I) && !isa<FPToUIInst>(I)) {
    return false;
  }
  return any_of(I.operands(), [&](const Value *Op) { return AA.isVaried(Op); });
}

static std::string atLine(const Instruction *I) {
  unsigned Line = sourceLine(I);
  return Line ? (" at line " + Twine(Line)).str() : std::string();
}

const Value *ControlActivity::conditionOf(const BasicBlock &BB) const {
  const Instruction *T = BB.getTerminator();
  if (auto *Br = dyn_cast<BranchInst>(T))
    return Br->isConditional() ? Br->getCondition() : nullptr;
  if (auto *Sw = dyn_cast<SwitchInst>(T))
    return Sw->getCondition();
  return nullptr;
}

/// The terminator of \p BB chooses between code that returns normally
/// (a branch into code that only raises decides nothing differentiable).
bool ControlActivity::decides(const BasicBlock &BB) const {
  return returns(&BB) && conditionOf(BB) && Successors.lookup(&BB).size() > 1;
}

const Instruction *ControlActivity::taintOf(const Value *V) const {
  return Taint.lookup(V);
}

/// Marks the blocks control dependent on the terminator of \p A: those on
/// the post-dominator tree path from each successor up to, excluding, the
/// immediate post-dominator of \p A.
void ControlActivity::markControlled(const BasicBlock &A,
                                     const Instruction *Why,
                                     const PostDominatorTree &PDT,
                                     bool &Changed) {
  const DomTreeNode *Node = PDT.getNode(Skeleton.lookup(&A));
  const DomTreeNode *Stop = Node ? Node->getIDom() : nullptr;
  for (const BasicBlock *S : Successors.lookup(&A)) {
    for (const DomTreeNode *N = PDT.getNode(Skeleton.lookup(S)); N && N != Stop;
         N = N->getIDom())
      if (const BasicBlock *B = N->getBlock())
        Changed |= Controlled.try_emplace(Original.lookup(B), Why).second;
  }
}

bool ControlActivity::propagate(const PostDominatorTree &PDT) {
  bool Changed = false;
  auto taint = [&](const Value *V, const Instruction *Why) {
    if (Why)
      Changed |= Taint.try_emplace(V, Why).second;
  };
  const TypeAnalysis &TA = AA.types();
  for (const BasicBlock &BB : F) {
    if (!returns(&BB) && !PassedThrough.contains(&BB))
      continue;
    const Instruction *BlockWhy = Controlled.lookup(&BB);
    for (const Instruction &I : BB) {
      if (auto *SI = dyn_cast<StoreInst>(&I)) {
        const Instruction *Why = taintOf(SI->getValueOperand());
        if (!Why)
          Why = BlockWhy;
        if (Why)
          for (const Value *R : TA.roots(SI->getPointerOperand()))
            Changed |= Memory.try_emplace(R, Why).second;
        continue;
      }
      if (Taint.contains(&I))
        continue;
      if (isSource(I, AA)) {
        taint(&I, &I);
        continue;
      }
      if (auto *Phi = dyn_cast<PHINode>(&I)) {
        // Values that arrive only on the way to raising do not count.
        for (unsigned K = 0; K < Phi->getNumIncomingValues(); ++K) {
          const BasicBlock *P = Phi->getIncomingBlock(K);
          if (!returns(P) || !returns(threaded(*P, BB)))
            continue;
          taint(&I, taintOf(Phi->getIncomingValue(K)));
          if (decides(*P))
            taint(&I, taintOf(conditionOf(*P)));
          taint(&I, Controlled.lookup(P));
        }
        continue;
      }
      for (const Value *Op : I.operands())
        if (const Instruction *Why = taintOf(Op)) {
          taint(&I, Why);
          break;
        }
      if (auto *LI = dyn_cast<LoadInst>(&I))
        for (const Value *R : TA.roots(LI->getPointerOperand()))
          taint(&I, Memory.lookup(R));
    }
    if (!decides(BB))
      continue;
    if (const Instruction *Why = taintOf(conditionOf(BB)))
      markControlled(BB, Why, PDT, Changed);
    else if (BlockWhy)
      markControlled(BB, BlockWhy, PDT, Changed);
  }
  return Changed;
}

/// The float \p P at the head of \p L is computed afresh by each iteration:
/// a value arriving from the loop comes (through phis and selects) from
/// arithmetic in the loop. Floats a loop only moves around (a sort's loads
/// and stores) do not make it a solver.
static bool iterates(const PHINode &P, const Loop &L) {
  SmallVector<const Value *, 8> Work;
  SmallPtrSet<const Value *, 8> Seen;
  for (unsigned K = 0; K < P.getNumIncomingValues(); ++K)
    if (L.contains(P.getIncomingBlock(K)))
      Work.push_back(P.getIncomingValue(K));
  while (!Work.empty()) {
    auto *I = dyn_cast<Instruction>(Work.pop_back_val());
    if (!I || !L.contains(I) || !Seen.insert(I).second || isa<LoadInst>(I))
      continue;
    if (auto *Phi = dyn_cast<PHINode>(I))
      Work.append(Phi->value_op_begin(), Phi->value_op_end());
    else if (auto *Sel = dyn_cast<SelectInst>(I))
      Work.append({Sel->getTrueValue(), Sel->getFalseValue()});
    else
      return true;
  }
  return false;
}

void ControlActivity::findLoopExits() {
  DominatorTree DT(F);
  LoopInfo LI(DT);
  for (const Loop *L : LI.getLoopsInPreorder()) {
    if (!returns(L->getHeader()))
      continue;
    bool CarriesFloat = any_of(L->getHeader()->phis(), [&](const PHINode &P) {
      return P.getType()->isFloatingPointTy() && iterates(P, *L);
    });
    bool FloatLivesOut = false;
    for (const BasicBlock *BB : L->blocks())
      for (const Instruction &I : *BB)
        if (I.getType()->isFloatingPointTy())
          FloatLivesOut |= any_of(I.users(), [&](const User *U) {
            auto *UI = cast<Instruction>(U);
            return !L->contains(UI) && returns(UI->getParent());
          });
    if (!CarriesFloat || !FloatLivesOut)
      continue;
    SmallVector<BasicBlock *, 4> Exiting;
    L->getExitingBlocks(Exiting);
    for (const BasicBlock *E : Exiting) {
      const Value *Cond = conditionOf(*E);
      const Instruction *Why = decides(*E) ? taintOf(Cond) : nullptr;
      if (!Why)
        continue;
      const Instruction *At =
          isa<Instruction>(Cond) ? cast<Instruction>(Cond) : E->getTerminator();
      std::string Through;
      if (Why != At && sourceLine(Why) && sourceLine(Why) != sourceLine(At))
        Through = ", which depends on them through the condition at line " +
                  std::to_string(sourceLine(Why));
      Findings.push_back(
          {"loop-exit", At,
           "the number of iterations of this loop depends on the active "
           "inputs through its exit condition" +
               atLine(At) + Through +
               ": enzpy differentiates the iterations the loop runs, not the "
               "solution it converges to (a loop that starts at its solution "
               "runs none and gets derivative 0); for a solver, give its "
               "derivative by the implicit function theorem (custom "
               "derivative rules, issue #8)"});
      break;
    }
  }
}

void ControlActivity::findControlOnlyOutputs() {
  const TypeAnalysis &TA = AA.types();
  for (const Argument &A : F.args()) {
    bool IsReturn = TA.isRetPtr(&A);
    if (!AA.isActiveRoot(&A))
      continue; // outputs: the seeded return slot, Duplicated arrays
    bool Data = false;
    const Instruction *Why = nullptr;
    for (const Instruction &I : instructions(F)) {
      if (!returns(I.getParent()) || Data)
        continue;
      auto *SI = dyn_cast<StoreInst>(&I);
      if (!SI) {
        // Arrays read as well as written keep their own data's derivative;
        // calls and copies writing the output may bring data too.
        for (const Value *Op : I.operands())
          if (Op->getType()->isPointerTy() && TA.roots(Op).contains(&A) &&
              (isa<CallBase>(I) || (isa<LoadInst>(I) && !IsReturn)))
            Data = true;
        continue;
      }
      if (!TA.roots(SI->getPointerOperand()).contains(&A))
        continue;
      if (AA.isVaried(SI->getValueOperand())) {
        Data = true;
        continue;
      }
      if (!Why)
        Why = taintOf(SI->getValueOperand());
      if (!Why)
        Why = Controlled.lookup(SI->getParent());
    }
    if (Data || !Why)
      continue;
    std::string What = IsReturn ? "the return value"
                                : "argument '" + numba::pythonArgName(A) + "'";
    Findings.push_back(
        {"control-only", Why,
         What + " depends on the active inputs only through the " +
             (isa<FCmpInst>(Why) ? "comparison" : "conversion to an integer") +
             atLine(Why) +
             ", which has no derivative: enzpy's derivative of it is 0 (the "
             "function is piecewise constant in them)"});
  }
}

void ControlActivity::findPiecewise() {
  SmallPtrSet<const Instruction *, 8> Reported;
  for (const Finding &Fd : Findings)
    Reported.insert(Fd.At);
  for (const Instruction &I : instructions(F)) {
    if (!returns(I.getParent()) || taintOf(&I) != &I || Reported.contains(&I))
      continue;
    // A comparison that only guards a raise (numba's division by zero
    // check) decides nothing differentiable.
    bool Decides = any_of(I.users(), [&](const User *U) {
      auto *UI = cast<Instruction>(U);
      return returns(UI->getParent()) &&
             (!UI->isTerminator() || decides(*UI->getParent()));
    });
    if (!Decides)
      continue;
    Findings.push_back({"piecewise", &I,
                        isa<FCmpInst>(I)
                            ? "a comparison of active values" + atLine(&I) +
                                  ": the derivative is that of the branch taken"
                            : "an active float converted to an integer" +
                                  atLine(&I) +
                                  ": the integer is treated as a constant"});
  }
}

/// \p BB sets the exception state (stores into the function's exception
/// info): it raises, whatever the status flags that lead from it to the
/// function's exits say.
static bool setsException(const BasicBlock &BB) {
  const Argument *ExcInfo = BB.getParent()->getArg(numba::ExcInfoParam);
  return any_of(BB, [&](const Instruction &I) {
    auto *SI = dyn_cast<StoreInst>(&I);
    return SI && getUnderlyingObject(SI->getPointerOperand()) == ExcInfo;
  });
}

namespace {
/// Follows an edge P -> M through the blocks whose branch the edge decides:
/// M's phis take their incoming values, comparisons and logical and/or of
/// those fold, and LazyValueInfo gives what the branches leading to the
/// edge imply about values computed before M. When M's branch is decided,
/// the walk goes on into the successor it takes, with the values it knows.
class EdgeWalk {
public:
  EdgeWalk(LazyValueInfo &LVI, BasicBlock &P, BasicBlock &M)
      : LVI(LVI), P(P), M(M) {}

  /// The block the edge leads to: the first one on the walk whose branch
  /// it does not decide. \p Through gets the blocks run on the way.
  BasicBlock *target(SmallVectorImpl<const BasicBlock *> &Through) {
    BasicBlock *Prev = &P, *Cur = &M;
    for (unsigned Step = 0; Step < 8 && OnPath.insert(Cur).second; ++Step) {
      // Phis read their incoming values all at once.
      SmallVector<std::pair<Value *, Value *>, 8> In;
      for (PHINode &Phi : Cur->phis())
        In.push_back({&Phi, translate(Phi.getIncomingValueForBlock(Prev))});
      for (auto &[Phi, V] : In)
        Known[Phi] = V;
      BasicBlock *Next = nullptr;
      Instruction *T = Cur->getTerminator();
      if (auto *Br = dyn_cast<BranchInst>(T); Br && Br->isConditional()) {
        if (auto *K =
                dyn_cast_or_null<ConstantInt>(translate(Br->getCondition())))
          Next = Br->getSuccessor(K->isOne() ? 0 : 1);
      } else if (auto *Sw = dyn_cast<SwitchInst>(T)) {
        if (auto *K =
                dyn_cast_or_null<ConstantInt>(translate(Sw->getCondition())))
          Next = Sw->findCaseValue(K)->getCaseSuccessor();
      }
      if (!Next)
        break;
      if (Cur != &M)
        Through.push_back(Cur);
      Prev = Cur;
      Cur = Next;
    }
    return Cur;
  }

private:
  /// \p V on the walk: a constant, a value computed before the walk, or
  /// null when it is neither.
  Value *translate(Value *V, unsigned Depth = 0) {
    if (isa<Constant>(V))
      return V;
    auto *I = dyn_cast<Instruction>(V);
    if (!I || !OnPath.contains(I->getParent())) {
      if (auto *K = V->getType()->isIntegerTy()
                        ? LVI.getConstantOnEdge(V, &P, &M, P.getTerminator())
                        : nullptr)
        return K;
      return V;
    }
    if (auto It = Known.find(I); It != Known.end())
      return It->second;
    if (Depth > 6)
      return nullptr;
    Value *A, *B;
    if (match(I, m_LogicalOr(m_Value(A), m_Value(B))) ||
        match(I, m_LogicalAnd(m_Value(A), m_Value(B)))) {
      bool IsOr = match(I, m_LogicalOr(m_Value(), m_Value()));
      auto *KA = dyn_cast_or_null<Constant>(translate(A, Depth + 1));
      auto *KB = dyn_cast_or_null<Constant>(translate(B, Depth + 1));
      // true || x, false && x: decided by one side.
      for (Constant *K : {KA, KB})
        if (K && K->isOneValue() == IsOr)
          return K;
      return KA && KB ? KA : nullptr;
    }
    auto *Cmp = dyn_cast<ICmpInst>(I);
    if (!Cmp)
      return nullptr;
    Value *L = translate(Cmp->getOperand(0), Depth + 1);
    Value *R = translate(Cmp->getOperand(1), Depth + 1);
    if (!L || !R)
      return nullptr;
    CmpInst::Predicate Pred = Cmp->getPredicate();
    if (isa<Constant>(L) && !isa<Constant>(R)) {
      std::swap(L, R);
      Pred = CmpInst::getSwappedPredicate(Pred);
    }
    auto *KR = dyn_cast<Constant>(R);
    if (!KR)
      return nullptr;
    if (auto *KL = dyn_cast<Constant>(L))
      return ConstantFoldCompareInstOperands(Pred, KL, KR, M.getDataLayout());
    return LVI.getPredicateOnEdge(Pred, L, KR, &P, &M, P.getTerminator());
  }

  LazyValueInfo &LVI;
  BasicBlock &P;
  BasicBlock &M;
  SmallPtrSet<const BasicBlock *, 8> OnPath;
  DenseMap<const Value *, Value *> Known;
};
} // namespace

/// Where each edge P -> M leads: M, or the block its walk through the
/// branches it decides reaches (EdgeWalk). Raise paths of inlined library
/// helpers return a nonzero status to a block that tests it and re-raises,
/// often through its own caller's test of the status it forwards;
/// following the edges finds them as code that only raises, as LLVM's jump
/// threading would after optimization, whether the helpers arrived
/// optimized or not.
void ControlActivity::threadEdges() {
  AssumptionCache AC(F);
  LazyValueInfo LVI(&AC, &F.getDataLayout());
  for (BasicBlock &P : F)
    for (BasicBlock *M : successors(&P)) {
      SmallVector<const BasicBlock *, 4> Through;
      const BasicBlock *To = EdgeWalk(LVI, P, *M).target(Through);
      Threads[{&P, M}] = To;
      if (To != M)
        Via[{&P, M}] = std::move(Through);
    }
}

void ControlActivity::run() {
  if (!C.NormalExit)
    return;
  // Code that returns normally: blocks from which the normal exit is
  // reached along threaded edges without setting the exception state.
  threadEdges();
  DenseMap<const BasicBlock *, SmallVector<const BasicBlock *, 2>> Preds;
  for (const BasicBlock &BB : F)
    for (const BasicBlock *S : successors(&BB))
      Preds[threaded(BB, *S)].push_back(&BB);
  SmallVector<const BasicBlock *, 32> Work{C.NormalExit};
  Returning.insert(C.NormalExit);
  while (!Work.empty())
    for (const BasicBlock *P : Preds.lookup(Work.pop_back_val()))
      if (!setsException(*P) && Returning.insert(P).second)
        Work.push_back(P);
  for (const BasicBlock *BB : Returning)
    for (const BasicBlock *S : successors(BB))
      if (const BasicBlock *T = threaded(*BB, *S); returns(T)) {
        if (T != S) { // their code runs on the way to T
          PassedThrough.insert(S);
          for (const BasicBlock *V : Via.lookup({BB, S}))
            PassedThrough.insert(V);
        }
        if (!is_contained(Successors[BB], T))
          Successors[BB].push_back(T);
      }
  // Post-dominance among the code that returns: LLVM's post-dominator tree
  // of a skeleton of the CFG that has only the returning blocks and the
  // edges between them (code that only raises decides nothing
  // differentiable, and must not keep the code after an `if` from
  // post-dominating it).
  LLVMContext &Ctx = F.getContext();
  Function *G = Function::Create(FunctionType::get(Type::getVoidTy(Ctx), false),
                                 GlobalValue::InternalLinkage,
                                 "enzpy.returning.cfg", F.getParent());
  for (BasicBlock &BB : F)
    if (returns(&BB)) {
      BasicBlock *Copy = BasicBlock::Create(Ctx, BB.getName(), G);
      Skeleton[&BB] = Copy;
      Original[Copy] = &BB;
    }
  for (auto &[BB, Copy] : Skeleton) {
    const SmallVector<const BasicBlock *, 2> &Succs = Successors.lookup(BB);
    if (Succs.empty()) {
      ReturnInst::Create(Ctx, Copy);
      continue;
    }
    auto *Sw =
        SwitchInst::Create(ConstantInt::get(Type::getInt32Ty(Ctx), 0),
                           Skeleton.lookup(Succs[0]), Succs.size() - 1, Copy);
    for (unsigned K = 1; K < Succs.size(); ++K)
      Sw->addCase(ConstantInt::get(Type::getInt32Ty(Ctx), K),
                  Skeleton.lookup(Succs[K]));
  }
  {
    PostDominatorTree PDT(*G);
    while (propagate(PDT)) {
    }
  }
  G->eraseFromParent();
  Skeleton.clear();
  Original.clear();
  findLoopExits();
  findControlOnlyOutputs();
  findPiecewise();
}

Error ControlActivity::strictError() const {
  for (const Instruction &I : instructions(F))
    for (const Finding &Fd : Findings)
      if (Fd.At == &I && Fd.Kind != "piecewise")
        return makeError("piecewise", Fd.Message, Fd.At);
  return Error::success();
}

void ControlActivity::record(DecisionLog &Log) const {
  Log.begin("piecewise-constant");
  for (const Finding &Fd : Findings)
    Log.record(Fd.Kind, Fd.At, nullptr, Fd.Message);
}

} // namespace enzpy
