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
  if (!C.returns(&BB) || !conditionOf(BB))
    return false;
  SmallPtrSet<const BasicBlock *, 4> Returning;
  for (const BasicBlock *S : successors(&BB))
    if (C.returns(S))
      Returning.insert(S);
  return Returning.size() > 1;
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
  for (const BasicBlock *S : successors(&A)) {
    if (!C.returns(S))
      continue;
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
    if (!C.returns(&BB))
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
      for (const Value *Op : I.operands())
        if (const Instruction *Why = taintOf(Op)) {
          taint(&I, Why);
          break;
        }
      if (auto *LI = dyn_cast<LoadInst>(&I))
        for (const Value *R : TA.roots(LI->getPointerOperand()))
          taint(&I, Memory.lookup(R));
      if (auto *Phi = dyn_cast<PHINode>(&I))
        for (const BasicBlock *P : Phi->blocks()) {
          if (decides(*P))
            taint(&I, taintOf(conditionOf(*P)));
          taint(&I, Controlled.lookup(P));
        }
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

void ControlActivity::findLoopExits() {
  DominatorTree DT(F);
  LoopInfo LI(DT);
  for (const Loop *L : LI.getLoopsInPreorder()) {
    if (!C.returns(L->getHeader()))
      continue;
    bool CarriesFloat = any_of(L->getHeader()->phis(), [](const PHINode &P) {
      return P.getType()->isFloatingPointTy();
    });
    bool FloatLivesOut = false;
    for (const BasicBlock *BB : L->blocks())
      for (const Instruction &I : *BB)
        if (I.getType()->isFloatingPointTy())
          FloatLivesOut |= any_of(I.users(), [&](const User *U) {
            auto *UI = cast<Instruction>(U);
            return !L->contains(UI) && C.returns(UI->getParent());
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
      if (!C.returns(I.getParent()) || Data)
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
    if (!C.returns(I.getParent()) || taintOf(&I) != &I || Reported.contains(&I))
      continue;
    // A comparison that only guards a raise (numba's division by zero
    // check) decides nothing differentiable.
    bool Decides = any_of(I.users(), [&](const User *U) {
      auto *UI = cast<Instruction>(U);
      return C.returns(UI->getParent()) &&
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

void ControlActivity::run() {
  if (!C.NormalExit)
    return;
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
    if (C.returns(&BB)) {
      BasicBlock *Copy = BasicBlock::Create(Ctx, BB.getName(), G);
      Skeleton[&BB] = Copy;
      Original[Copy] = &BB;
    }
  for (auto &[BB, Copy] : Skeleton) {
    SmallSetVector<BasicBlock *, 4> Succs;
    for (const BasicBlock *S : successors(BB))
      if (C.returns(S))
        Succs.insert(Skeleton.lookup(S));
    if (Succs.empty()) {
      ReturnInst::Create(Ctx, Copy);
      continue;
    }
    auto *Sw = SwitchInst::Create(ConstantInt::get(Type::getInt32Ty(Ctx), 0),
                                  Succs[0], Succs.size() - 1, Copy);
    for (unsigned K = 1; K < Succs.size(); ++K)
      Sw->addCase(ConstantInt::get(Type::getInt32Ty(Ctx), K), Succs[K]);
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
