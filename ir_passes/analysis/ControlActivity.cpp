//===- ControlActivity.cpp - active inputs that act only through control --===//
#include "analysis/ControlActivity.h"
#include "driver/Diagnostics.h"
#include "numba/NumbaABI.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/ADT/Twine.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/PostDominators.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/Function.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"

using namespace llvm;

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

/// \p BB sets the exception state: it raises, whatever the status flags
/// that lead from it to the function's exits say (an inlined callee's
/// raise returns a status to its caller, which re-raises).
static bool setsException(const BasicBlock &BB) {
  const Argument *ExcInfo = BB.getParent()->getArg(numba::ExcInfoParam);
  return any_of(BB, [&](const Instruction &I) {
    auto *SI = dyn_cast<StoreInst>(&I);
    return SI && SI->getPointerOperand() == ExcInfo;
  });
}

/// Where the edge \p P -> \p M leads: \p M, or the successor of \p M its
/// branch takes on that edge when it tests a phi of \p M that is constant
/// on the edge (an inlined callee's status: its raise paths return a
/// nonzero status to a block that branches on it; LLVM's jump threading
/// would give them their own edge).
const BasicBlock *ControlActivity::threaded(const BasicBlock &P,
                                            const BasicBlock &M) const {
  auto *Br = dyn_cast<BranchInst>(M.getTerminator());
  auto *Cmp = Br && Br->isConditional() ? dyn_cast<ICmpInst>(Br->getCondition())
                                        : nullptr;
  auto *Phi = Cmp ? dyn_cast<PHINode>(Cmp->getOperand(0)) : nullptr;
  auto *Rhs = Cmp ? dyn_cast<ConstantInt>(Cmp->getOperand(1)) : nullptr;
  if (!Phi || !Rhs || Phi->getParent() != &M || Cmp->getParent() != &M ||
      !Cmp->isEquality())
    return &M;
  auto *In = dyn_cast<ConstantInt>(Phi->getIncomingValueForBlock(&P));
  if (!In)
    return &M;
  bool Equal = In->getValue() == Rhs->getValue();
  return Br->getSuccessor(
      Equal == (Cmp->getPredicate() == ICmpInst::ICMP_EQ) ? 0 : 1);
}

void ControlActivity::run() {
  if (!C.NormalExit)
    return;
  // Code that returns normally: blocks from which the normal exit is
  // reached along threaded edges without setting the exception state.
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
        if (T != S)
          PassedThrough.insert(S); // its code runs on the way to T
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
