//===- Preprocess.cpp - bring the primal into canonical form --------------===//
#include "transforms/Preprocess.h"
#include "driver/Diagnostics.h"
#include "numba/NumbaABI.h"
#include "rules/CustomRules.h"
#include "rules/DerivativeRules.h"
#include "rules/UserRules.h"
#include "transforms/PostOpt.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/SCCIterator.h"
#include "llvm/Analysis/CGSCCPassManager.h"
#include "llvm/Analysis/CallGraph.h"
#include "llvm/Analysis/LazyValueInfo.h"
#include "llvm/Analysis/LoopAnalysisManager.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/CFG.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/Module.h"
#include "llvm/IR/PassManager.h"
#include "llvm/Passes/PassBuilder.h"
#include "llvm/Transforms/IPO/AlwaysInliner.h"
#include "llvm/Transforms/Scalar/EarlyCSE.h"
#include "llvm/Transforms/Scalar/SROA.h"
#include "llvm/Transforms/Scalar/Scalarizer.h"
#include "llvm/Transforms/Scalar/SimplifyCFG.h"
#include "llvm/Transforms/Utils/BasicBlockUtils.h"
#include "llvm/Transforms/Utils/Cloning.h"
#include "llvm/Transforms/Utils/Local.h"
#include "llvm/Transforms/Utils/LoopSimplify.h"
#include "llvm/Transforms/Utils/Mem2Reg.h"
#include <map>

using namespace llvm;

namespace enzpy {

/// A function defined in the module that stays a call, differentiated by
/// its row: a library function's scalar form (replaceLibraryFunctions), made
/// here or, for a derivative differentiated again (hvp), by an earlier run.
static bool isLibraryFunction(const Function &G) {
  return !G.isDeclaration() && findCallRule(&G);
}

/// Whether a call of a library function's implementation cannot raise:
/// its integer operands are constants >= 0 (x ** n with n < 0 divides, and
/// raises ZeroDivisionError at x == 0; a call the replacement below would
/// drop the status of). Float operands never make them raise.
static bool cannotRaise(const CallBase &CB) {
  return all_of(
      drop_begin(CB.args(), numba::NumHiddenParams), [](const Use &A) {
        auto *C = dyn_cast<ConstantInt>(A.get());
        return A->getType()->isFloatingPointTy() || (C && !C->isNegative());
      });
}

/// Replace each call of a numba implementation of a library function
/// (rules/DerivativeRules' LibraryFunctions) in numba's calling convention,
/// `i32 impl(ptr retptr, ptr excinfo, T x...)` storing a T into retptr and
/// returning 0, with `T row(T x...)`, a function defined here with the
/// implementation's body: the value is numba's, the derivative the row's.
/// Done before inlining, while the implementation is still a call.
static void replaceLibraryFunctions(Module &M) {
  SmallVector<std::pair<Function *, const LibraryFunction *>, 2> Found;
  for (Function &G : M)
    if (const LibraryFunction *L = findLibraryFunction(G))
      Found.push_back({&G, L});
  for (auto [Impl, L] : Found) {
    FunctionType *FT = Impl->getFunctionType();
    if (!numba::hasNativeSignature(*FT) ||
        FT->getNumParams() == numba::NumHiddenParams)
      continue;
    Type *T = FT->getParamType(numba::NumHiddenParams);
    SmallVector<Type *, 3> Params(FT->param_begin() + numba::NumHiddenParams,
                                  FT->param_end());
    if (!T->isFloatingPointTy() ||
        any_of(Params, [&](Type *P) { return P != T && !P->isIntegerTy(); }))
      continue;
    std::string Name = L->Row;
    if (T->isFloatTy())
      Name += "f"; // as libm's float variants (findCallRule)
    Function *Scalar = M.getFunction(Name);
    if (!Scalar) {
      Scalar = Function::Create(FunctionType::get(T, Params, false),
                                GlobalValue::InternalLinkage, Name, M);
      IRBuilder<> B(BasicBlock::Create(M.getContext(), "entry", Scalar));
      Value *Ret = B.CreateAlloca(T);
      Value *Exc = B.CreateAlloca(B.getPtrTy());
      SmallVector<Value *, 5> Args = {Ret, Exc};
      for (Argument &A : Scalar->args())
        Args.push_back(&A);
      B.CreateCall(Impl, Args);
      B.CreateRet(B.CreateLoad(T, Ret));
    }
    for (User *U : make_early_inc_range(Impl->users())) {
      auto *CB = dyn_cast<CallInst>(U);
      if (!CB || CB->getCalledFunction() != Impl ||
          CB->getFunction() == Scalar || !cannotRaise(*CB))
        continue;
      IRBuilder<> B(CB);
      SmallVector<Value *, 3> Args(CB->arg_begin() + numba::NumHiddenParams,
                                   CB->arg_end());
      CallInst *R = B.CreateCall(Scalar, Args);
      R->setDebugLoc(CB->getDebugLoc());
      B.CreateStore(R, CB->getArgOperand(numba::RetPtrParam));
      CB->replaceAllUsesWith(ConstantInt::get(CB->getType(), 0));
      CB->eraseFromParent();
    }
  }
}

/// Marks every instruction of numba's own implementations (np.diff,
/// np.linalg.norm, ...) with the Python name of the one the kernel called
/// (rules of the metadata kind in driver/Diagnostics), before inlining
/// erases the boundary: an error inside one then names it. A helper shared
/// by several is marked with the first that reaches it.
static void markOrigins(Module &M) {
  LLVMContext &Ctx = M.getContext();
  auto isNumbas = [](const std::string &Q) {
    return StringRef(Q).starts_with("numba.");
  };
  DenseSet<const Function *> Seen;
  for (Function &U : M) {
    if (U.isDeclaration() || isNumbas(numba::pythonQualifiedName(U.getName())))
      continue;
    for (Instruction &I : instructions(U)) {
      auto *CB = dyn_cast<CallBase>(&I);
      Function *G = CB ? CB->getCalledFunction() : nullptr;
      if (!G || G->isDeclaration() || Seen.contains(G))
        continue;
      std::string Q = numba::pythonQualifiedName(G->getName());
      if (!isNumbas(Q))
        continue;
      // The overload's name, without its local implementation functions.
      MDNode *Tag = MDNode::get(
          Ctx, MDString::get(Ctx, StringRef(Q).split(".<locals>").first));
      SmallVector<Function *, 8> Work = {G};
      while (!Work.empty()) {
        Function *H = Work.pop_back_val();
        if (H->isDeclaration() || !Seen.insert(H).second)
          continue;
        for (Instruction &J : instructions(*H)) {
          J.setMetadata(OriginMetadata, Tag);
          if (auto *Call = dyn_cast<CallBase>(&J))
            if (Function *K = Call->getCalledFunction())
              Work.push_back(K);
        }
      }
    }
  }
}

/// The functions that take part in recursion: members of a strongly
/// connected component of the call graph with a cycle (a function calling
/// itself, or a group calling each other).
static StringSet<> findRecursive(Module &M) {
  StringSet<> Recursive;
  CallGraph CG(M);
  for (scc_iterator<CallGraph *> I = scc_begin(&CG); !I.isAtEnd(); ++I) {
    if (!I.hasCycle())
      continue;
    for (const CallGraphNode *N : *I)
      if (const Function *G = N->getFunction(); G && !G->isDeclaration())
        Recursive.insert(G->getName());
  }
  return Recursive;
}

/// Drop every function body that the primal cannot reach through the bodies
/// kept (its own and those of recursive functions), and every unused
/// declaration or global: the derivative module carries only what the
/// primal refers to.
static void isolate(Module &M, Function &F, StringSet<> &Recursive,
                    StringRef Prefix) {
  SmallPtrSet<const Function *, 8> Kept = {&F};
  SmallVector<const Function *, 8> Work = {&F};
  while (!Work.empty())
    for (const Instruction &I : instructions(*Work.pop_back_val()))
      if (auto *CB = dyn_cast<CallBase>(&I))
        if (const Function *G = CB->getCalledFunction())
          if (Recursive.contains(G->getName()) && Kept.insert(G).second)
            Work.push_back(G);
  StringSet<> Renamed;
  for (Function &G : M) {
    if (G.isDeclaration() || &G == &F || isLibraryFunction(G) ||
        isRuleHelper(G) || staysCall(&G))
      continue;
    if (!Kept.contains(&G)) {
      G.deleteBody();
      continue;
    }
    // The recursive functions kept are the derivative's own copies: they
    // must not stand in for numba's functions of the same name once the
    // derivative is loaded into the process (the JIT would resolve numba's
    // later calls to them).
    G.setName(Prefix + "." + G.getName());
    G.addFnAttr(RecursiveCopyAttr);
    G.setLinkage(GlobalValue::InternalLinkage);
    G.setVisibility(GlobalValue::DefaultVisibility);
    Renamed.insert(G.getName());
  }
  Recursive = std::move(Renamed);
  bool Changed = true;
  while (Changed) {
    Changed = false;
    for (Function &G : make_early_inc_range(M))
      if (&G != &F && G.use_empty() && !isRuleHelper(G)) {
        G.eraseFromParent();
        Changed = true;
      }
    for (GlobalVariable &GV : make_early_inc_range(M.globals()))
      if (GV.use_empty()) {
        GV.eraseFromParent();
        Changed = true;
      }
  }
}

/// Inline every call to a function whose body came with the module (numba's
/// own implementations such as integer powers and min/max, and other njit
/// functions), so that their bodies are differentiated in place. Recursive
/// functions stay calls (each gets derivatives of its own, see
/// driver/RecursiveCalls.h); the functions they call are inlined into them.
static void inlineCallees(Module &M, Function &F,
                          const StringSet<> &Recursive) {
  for (Function &G : M) {
    if (&G == &F || G.isDeclaration() || isLibraryFunction(G))
      continue;
    G.removeFnAttr(Attribute::OptimizeNone);
    if (Recursive.contains(G.getName()) || staysCall(&G)) {
      G.removeFnAttr(Attribute::AlwaysInline);
      G.addFnAttr(Attribute::NoInline);
      continue;
    }
    G.removeFnAttr(Attribute::NoInline);
    G.addFnAttr(Attribute::AlwaysInline);
  }
  // The partials functions of user rules are inlined where they are called
  // (in a derivative differentiated again) and kept for the derivative to
  // call: not discardable while the inliner runs.
  SmallVector<Function *, 2> Helpers;
  for (Function &G : M)
    if (isRuleHelper(G) && G.hasLocalLinkage()) {
      G.setLinkage(GlobalValue::ExternalLinkage);
      Helpers.push_back(&G);
    }
  PassContext P;
  ModulePassManager MPM;
  MPM.addPass(AlwaysInlinerPass(/*InsertLifetimeIntrinsics=*/false));
  MPM.run(M, P.MAM);
  for (Function *G : Helpers)
    G->setLinkage(GlobalValue::InternalLinkage);
}

static void runCanonicalPasses(Function &F) {
  PassContext P;
  FunctionPassManager FPM;
  // Callees that numba had already compiled arrive optimized, sometimes
  // vectorized: split vector operations back into scalar ones.
  ScalarizerPassOptions SO;
  SO.ScalarizeLoadStore = true;
  SO.ScalarizeVariableInsertExtract = true;
  FPM.addPass(ScalarizerPass(SO));
  FPM.addPass(SROAPass(SROAOptions::ModifyCFG));
  FPM.addPass(PromotePass());
  FPM.addPass(EarlyCSEPass());
  FPM.addPass(SimplifyCFGPass());
  FPM.addPass(LoopSimplifyPass());
  FPM.run(F, P.FAM);
}

/// numba's broadcasting loops keep each operand's index in a recurrence
/// `p = phi [init, preheader], [s, latch]; s = select c, i, p` with `c`
/// loop-invariant (the operand's extent is not 1): `s` is `i` when `c`
/// holds and stays `init` when it does not, so `s = select c, i, init`.
/// Without the recurrence the index is a function of the induction
/// variable that the reverse sweep recomputes; with it, every such index
/// was taped per element (four integers per element of `u[1:-1] + a *
/// (u[:-2] - 2 * u[1:-1] + u[2:])`, against one double of values).
static void foldInvariantSelectRecurrences(Function &F) {
  DominatorTree DT(F);
  LoopInfo LI(DT);
  for (Loop *L : LI.getLoopsInPreorder()) {
    BasicBlock *Pre = L->getLoopPreheader(), *Latch = L->getLoopLatch();
    if (!Pre || !Latch)
      continue;
    for (PHINode &P : make_early_inc_range(L->getHeader()->phis())) {
      if (P.getNumIncomingValues() != 2)
        continue;
      auto *S = dyn_cast<SelectInst>(P.getIncomingValueForBlock(Latch));
      Value *Init = P.getIncomingValueForBlock(Pre);
      if (!S || !L->contains(S) || !L->isLoopInvariant(S->getCondition()))
        continue;
      unsigned Self = S->getTrueValue() == &P    ? 1
                      : S->getFalseValue() == &P ? 2
                                                 : 0;
      Value *Other = Self == 1 ? S->getFalseValue() : S->getTrueValue();
      if (!Self || Other == &P)
        continue;
      S->setOperand(Self, Init);
      if (P.use_empty())
        P.eraseFromParent();
    }
  }
}

/// The member \p Idx of the aggregate \p Agg as a value available before
/// \p Before: the inserted value itself when \p Agg is built by insertvalue
/// (the usual case), else a new extractvalue.
static Value *memberOf(Value *Agg, ArrayRef<unsigned> Idx, Instruction *Before,
                       const DebugLoc &DL) {
  if (Value *V = FindInsertedValue(Agg, Idx, Before->getIterator()))
    return V;
  auto *E = ExtractValueInst::Create(Agg, Idx, "member", Before->getIterator());
  E->setDebugLoc(DL);
  return E;
}

/// Whether \p V is an argument, a defined constant, or a phi or select of
/// such values only.
static bool mergedFromArguments(const Value *V,
                                SmallPtrSetImpl<const Value *> &Seen) {
  if (!Seen.insert(V).second || isa<Argument>(V))
    return true;
  if (auto *C = dyn_cast<Constant>(V))
    return !isa<UndefValue>(C) && !isa<ConstantExpr>(C);
  if (auto *Phi = dyn_cast<PHINode>(V))
    return all_of(Phi->incoming_values(), [&](const Value *In) {
      return mergedFromArguments(In, Seen);
    });
  if (auto *Sel = dyn_cast<SelectInst>(V))
    return mergedFromArguments(Sel->getTrueValue(), Seen) &&
           mergedFromArguments(Sel->getFalseValue(), Seen);
  return false;
}

/// Reads of aggregates numba builds and takes apart again become the values
/// inserted. numba also picks the member of a tuple by a run-time index
/// (`for x in arrs`, `arrs[k]`) with a switch whose arms meet in a phi of
/// whole array structs (sometimes frozen by its loop unswitching); the
/// members are then extracted from that phi. Split such merges into one phi
/// (or select) per member extracted, so that array data pointers stay
/// visible as pointers that phis and selects merge, which the analyses
/// follow; an extract from an aggregate merge hides them.
static void splitAggregateMerges(Function &F) {
  using Key = std::pair<Value *, SmallVector<unsigned, 2>>;
  std::map<Key, Value *> Split;
  bool Changed = true;
  while (Changed) {
    Changed = false;
    for (Instruction &I : make_early_inc_range(instructions(F))) {
      auto *EV = dyn_cast<ExtractValueInst>(&I);
      if (!EV)
        continue;
      Value *Agg = EV->getAggregateOperand();
      ArrayRef<unsigned> Idx = EV->getIndices();
      // A read of an aggregate numba built (the tuple of arrays
      // np.linalg.lstsq returns) is the value inserted.
      if (Value *V = FindInsertedValue(Agg, Idx);
          V && V != EV && V->getType() == EV->getType()) {
        EV->replaceAllUsesWith(V);
        EV->eraseFromParent();
        Changed = true;
        continue;
      }
      if (auto *Fr = dyn_cast<FreezeInst>(Agg)) {
        // numba's loop unswitching freezes a whole array struct: freeze
        // the member instead (dropped below where it is defined anyway).
        Value *M = memberOf(Fr->getOperand(0), Idx, EV, EV->getDebugLoc());
        M = new FreezeInst(M, Fr->getName() + ".member", EV->getIterator());
        EV->replaceAllUsesWith(M);
        EV->eraseFromParent();
        Changed = true;
        continue;
      }
      auto *Phi = dyn_cast<PHINode>(Agg);
      auto *Sel = dyn_cast<SelectInst>(Agg);
      if (!Phi && !Sel)
        continue;
      Key K{Agg, SmallVector<unsigned, 2>(Idx)};
      Value *&New = Split[K];
      if (!New) {
        const DebugLoc &DL = EV->getDebugLoc();
        if (Phi) {
          PHINode *P =
              PHINode::Create(EV->getType(), Phi->getNumIncomingValues(),
                              Phi->getName() + ".member", Phi->getIterator());
          for (unsigned J = 0; J < Phi->getNumIncomingValues(); ++J) {
            BasicBlock *In = Phi->getIncomingBlock(J);
            P->addIncoming(memberOf(Phi->getIncomingValue(J), Idx,
                                    In->getTerminator(), DL),
                           In);
          }
          New = P;
        } else {
          Value *T = memberOf(Sel->getTrueValue(), Idx, Sel, DL);
          Value *E = memberOf(Sel->getFalseValue(), Idx, Sel, DL);
          auto *S = SelectInst::Create(Sel->getCondition(), T, E,
                                       Sel->getName() + ".member",
                                       Sel->getIterator());
          S->setDebugLoc(Sel->getDebugLoc());
          New = S;
        }
      }
      EV->replaceAllUsesWith(New);
      EV->eraseFromParent();
      Changed = true;
    }
  }
  // numba passes defined values (never undef or poison), so a member merged
  // from arguments and constants is its own freeze.
  for (Instruction &I : make_early_inc_range(instructions(F)))
    if (auto *Fr = dyn_cast<FreezeInst>(&I)) {
      SmallPtrSet<const Value *, 8> Seen;
      if (mergedFromArguments(Fr->getOperand(0), Seen)) {
        Fr->replaceAllUsesWith(Fr->getOperand(0));
        Fr->eraseFromParent();
      }
    }
  // The aggregate merges (and what built their inputs) are dead now.
  for (BasicBlock &BB : F)
    for (PHINode &P : make_early_inc_range(BB.phis()))
      if (P.getType()->isAggregateType())
        RecursivelyDeleteDeadPHINode(&P);
  for (Instruction &I : make_early_inc_range(instructions(F)))
    if (I.getType()->isAggregateType())
      RecursivelyDeleteTriviallyDeadInstructions(&I);
}

static bool isNormalStatus(Value *V) {
  if (auto *C = dyn_cast<ConstantInt>(V))
    return numba::isReturnStatus(C->getSExtValue());
  return false;
}

/// Route every return to one normal exit (`ret i32 0`) or one raise exit
/// (`ret i32 %status`).
static void splitExits(Function &F, CanonicalFunction &C) {
  LLVMContext &Ctx = F.getContext();
  Type *I32 = Type::getInt32Ty(Ctx);
  SmallVector<ReturnInst *, 4> Returns;
  for (BasicBlock &BB : F)
    if (auto *R = dyn_cast<ReturnInst>(BB.getTerminator()))
      Returns.push_back(R);
  PHINode *Status = nullptr;
  auto normalExit = [&]() {
    if (!C.NormalExit) {
      C.NormalExit = BasicBlock::Create(Ctx, "enzpy.exit", &F);
      ReturnInst::Create(Ctx, ConstantInt::get(I32, 0), C.NormalExit);
    }
    return C.NormalExit;
  };
  auto raiseExit = [&]() {
    if (!C.RaiseExit) {
      C.RaiseExit = BasicBlock::Create(Ctx, "enzpy.raise", &F);
      Status = PHINode::Create(I32, 2, "enzpy.status", C.RaiseExit);
      ReturnInst::Create(Ctx, Status, C.RaiseExit);
    }
    return C.RaiseExit;
  };
  // The status each merged return takes on its edge: a constant, or a
  // value whose range on that edge leaves out the normal statuses (an
  // inlined callee's status, passed on only where its caller's check found
  // an error). Decided on the unchanged function, then applied.
  PassContext P;
  LazyValueInfo &LVI = P.FAM.getResult<LazyValueAnalysis>(F);
  auto knownRaise = [&](Value *V, BasicBlock *Pred, BasicBlock *BB) {
    if (isa<Constant>(V) || !V->getType()->isIntegerTy())
      return false;
    return !numba::mayBeReturnStatus(LVI.getConstantRangeOnEdge(V, Pred, BB));
  };
  DenseMap<std::pair<BasicBlock *, BasicBlock *>, bool> Raises;
  for (ReturnInst *R : Returns)
    if (auto *Phi = dyn_cast<PHINode>(R->getReturnValue()))
      if (Phi->getParent() == R->getParent())
        for (unsigned I = 0; I < Phi->getNumIncomingValues(); ++I)
          if (knownRaise(Phi->getIncomingValue(I), Phi->getIncomingBlock(I),
                         R->getParent()))
            Raises[{Phi->getIncomingBlock(I), R->getParent()}] = true;
  for (ReturnInst *R : Returns) {
    BasicBlock *BB = R->getParent();
    // numba merges its returns into one block returning a phi of status
    // codes; send each known status straight to its own exit, so that
    // code on the way to raising does not appear to reach the normal exit.
    if (auto *Phi = dyn_cast<PHINode>(R->getReturnValue()))
      if (Phi->getParent() == BB && &BB->front() == Phi &&
          Phi->getNextNode() == R) {
        for (unsigned I = Phi->getNumIncomingValues(); I-- > 0;) {
          Value *St = Phi->getIncomingValue(I);
          BasicBlock *Pred = Phi->getIncomingBlock(I);
          bool Raise = Raises.lookup({Pred, BB});
          if ((!isa<ConstantInt>(St) && !Raise) ||
              Pred->getTerminator()->getNumSuccessors() != 1)
            continue;
          BasicBlock *Target = isNormalStatus(St) ? normalExit() : raiseExit();
          if (Target == C.RaiseExit)
            Status->addIncoming(St, Pred);
          Pred->getTerminator()->replaceSuccessorWith(BB, Target);
          Phi->removeIncomingValue(I, /*DeletePHIIfEmpty=*/false);
        }
        if (Phi->getNumIncomingValues() == 0) {
          DeleteDeadBlock(BB);
          continue;
        }
      }
    Value *S = R->getReturnValue();
    DebugLoc DL = R->getDebugLoc();
    if (isNormalStatus(S)) {
      BranchInst::Create(normalExit(), BB)->setDebugLoc(DL);
    } else if (isa<ConstantInt>(S)) {
      BranchInst::Create(raiseExit(), BB)->setDebugLoc(DL);
      Status->addIncoming(S, BB);
    } else {
      IRBuilder<> B(BB);
      Value *Ok = numba::emitIsReturnStatus(B, S);
      BasicBlock *Raise = raiseExit();
      B.CreateCondBr(Ok, normalExit(), Raise)->setDebugLoc(DL);
      Status->addIncoming(S, BB);
    }
    R->eraseFromParent();
  }
}

/// Turn each conditional branch whose integer comparison LazyValueInfo
/// proves constant into an unconditional one. numba checks the status of
/// every inlined call; a callee that always raises (a broadcast's shape error,
/// which formats its message first) leaves a branch to the normal path that
/// is never taken, through which the message's code seemed to reach the
/// normal exit and got a derivative of its own (thousands of blocks of
/// string code, taped branches, minutes of O3).
static void foldKnownBranches(Function &F) {
  PassContext P;
  LazyValueInfo &LVI = P.FAM.getResult<LazyValueAnalysis>(F);
  SmallVector<std::pair<BranchInst *, bool>, 16> Known;
  for (BasicBlock &BB : F) {
    auto *BI = dyn_cast<BranchInst>(BB.getTerminator());
    if (!BI || !BI->isConditional() ||
        BI->getSuccessor(0) == BI->getSuccessor(1))
      continue;
    auto *Cmp = dyn_cast<ICmpInst>(BI->getCondition());
    auto *RHS = Cmp ? dyn_cast<ConstantInt>(Cmp->getOperand(1)) : nullptr;
    if (!RHS)
      continue;
    auto *Value = dyn_cast_or_null<ConstantInt>(
        LVI.getPredicateAt(Cmp->getPredicate(), Cmp->getOperand(0), RHS, BI,
                           /*UseBlockValue=*/true));
    if (Value)
      Known.push_back({BI, Value->isOne()});
  }
  for (auto [BI, Taken] : Known) {
    BasicBlock *Live = BI->getSuccessor(Taken ? 0 : 1);
    BI->getSuccessor(Taken ? 1 : 0)->removePredecessor(BI->getParent());
    BranchInst::Create(Live, BI->getIterator())->setDebugLoc(BI->getDebugLoc());
    BI->eraseFromParent();
  }
  if (!Known.empty())
    removeUnreachableBlocks(F);
}

bool CanonicalFunction::isRecursiveCall(const CallBase &CB) const {
  const Function *Callee = CB.getCalledFunction();
  return Callee && Recursive.contains(Callee->getName());
}

/// Canonical form of \p F, whose callees are already inlined.
static CanonicalFunction canonicalize(Function &F,
                                      const StringSet<> &Recursive) {
  F.removeFnAttr(Attribute::OptimizeNone);
  F.removeFnAttr(Attribute::NoInline);
  // What numba's optimizer inferred about a function it had compiled (the
  // memory it touches, arguments it only reads) does not hold for
  // derivatives cloned from it, which also use shadows.
  F.removeFnAttr(Attribute::Memory);
  for (Argument &A : F.args())
    for (Attribute::AttrKind K :
         {Attribute::ReadOnly, Attribute::ReadNone, Attribute::WriteOnly,
          Attribute::Initializes, Attribute::NoAlias})
      A.removeAttr(K);
  runCanonicalPasses(F);
  foldInvariantSelectRecurrences(F);
  splitAggregateMerges(F);
  canonicalizeRuleResults(F);
  foldKnownBranches(F);
  CanonicalFunction C;
  C.F = &F;
  C.Recursive = Recursive;
  splitExits(F, C);
  if (C.NormalExit) {
    SmallVector<const BasicBlock *, 32> Work = {C.NormalExit};
    C.Returning.insert(C.NormalExit);
    while (!Work.empty())
      for (const BasicBlock *Pred : predecessors(Work.pop_back_val()))
        if (C.Returning.insert(Pred).second)
          Work.push_back(Pred);
  }
  return C;
}

/// Arrays' extents (ParamSpec::Extent) are never negative, and far below
/// 2^56 (no machine addresses that many bytes): the range attribute tells
/// ScalarEvolution and the optimizer, so that an extent times an element
/// size is known not to wrap.
static void markExtents(Function &F, const Request &Req) {
  for (unsigned I = 0; I < Req.Params.size(); ++I) {
    Argument *A = numba::userParam(F, I);
    auto *T = dyn_cast<IntegerType>(A->getType());
    if (!Req.Params[I].Extent || !T || A->getRange())
      continue;
    unsigned Bits = T->getBitWidth();
    APInt Limit = Bits == 64 ? APInt::getOneBitSet(Bits, 56)
                             : APInt::getSignedMinValue(Bits);
    A->addAttr(Attribute::get(F.getContext(), Attribute::Range,
                              ConstantRange(APInt::getZero(Bits), Limit)));
  }
}

Expected<CanonicalFunction> preprocess(Module &M, const Request &Req) {
  Function *F = M.getFunction(Req.Function);
  if (!F || F->isDeclaration())
    return makeError("request", "function '" + Req.Function +
                                    "' is not defined in the module");
  FunctionType *FT = F->getFunctionType();
  if (!numba::hasNativeSignature(*FT))
    return makeError("request", "function '" + Req.Function +
                                    "' does not follow numba's native calling "
                                    "convention i32 (ptr, ptr, ...)");
  unsigned NumUser = FT->getNumParams() - numba::NumHiddenParams;
  if (NumUser != Req.Params.size())
    return makeError("request",
                     "the request describes " + Twine(Req.Params.size()) +
                         " parameters but the function has " + Twine(NumUser));
  for (unsigned I = 0; I < Req.Params.size(); ++I) {
    const ParamSpec &S = Req.Params[I];
    Type *T = numba::userParam(*F, I)->getType();
    if (S.Act == Activity::Active && !T->isFloatingPointTy())
      return makeError("request", "parameter " + Twine(I) +
                                      " is marked active but is not a float");
    if (S.isDuplicated() && !T->isPointerTy())
      return makeError("request", "parameter " + Twine(I) +
                                      " is marked duplicated but is not a "
                                      "pointer");
  }
  numba::resolveRecursiveCalls(M);
  if (Error E = applyUserRules(M, Req))
    return std::move(E);
  replaceLibraryFunctions(M);
  markOrigins(M);
  StringSet<> Recursive = findRecursive(M);
  for (const auto &Name : Recursive.keys())
    if (M.getFunction(Name)->hasFnAttribute(RecursiveCopyAttr))
      return makeError("unsupported",
                       "a derivative through a recursive function ('" +
                           displayName(Name) +
                           "') cannot be differentiated again yet (hessian, "
                           "hvp and other higher derivatives)");
  if (Recursive.contains(F->getName())) {
    // The primal calling itself: its recursive calls go to a copy, which is
    // a recursive function like any other, and F keeps only the entry.
    ValueToValueMapTy VMap;
    Function *Copy = CloneFunction(F, VMap);
    Copy->setName(F->getName() + ".enzpy.recursive");
    Copy->setLinkage(GlobalValue::InternalLinkage);
    F->replaceUsesWithIf(Copy, [&](Use &U) {
      auto *CB = dyn_cast<CallBase>(U.getUser());
      return CB && CB->isCallee(&U);
    });
    Recursive.insert(Copy->getName());
  }
  inlineCallees(M, *F, Recursive);
  // Inactive functions stay calls: in canonical form, what they write
  // through their parameters can be read off their bodies (the activity
  // analysis refuses writes into memory that carries derivatives).
  for (Function &G : M)
    if (staysCall(&G) && !G.isDeclaration())
      runCanonicalPasses(G);
  isolate(M, *F, Recursive, Req.Name);
  CanonicalFunction C = canonicalize(*F, Recursive);
  // After the canonical passes, which keep the shape numba left.
  markExtents(*F, Req);
  return C;
}

CanonicalFunction canonicalCopy(Function &G, const Twine &Name,
                                const StringSet<> &Recursive) {
  ValueToValueMapTy VMap;
  Function *Copy = CloneFunction(&G, VMap);
  Copy->setName(Name);
  Copy->setLinkage(GlobalValue::InternalLinkage);
  return canonicalize(*Copy, Recursive);
}

Type *storedReturnType(const Function &G) {
  const Argument *RetPtr = G.getArg(numba::RetPtrParam);
  for (const Instruction &I : instructions(G))
    if (auto *SI = dyn_cast<StoreInst>(&I))
      if (getUnderlyingObject(SI->getPointerOperand()) == RetPtr)
        return SI->getValueOperand()->getType();
  return nullptr;
}

} // namespace enzpy
