//===- Preprocess.cpp - bring the primal into canonical form --------------===//
#include "transforms/Preprocess.h"
#include "driver/Diagnostics.h"
#include "numba/NumbaABI.h"
#include "transforms/PostOpt.h"
#include "llvm/ADT/SCCIterator.h"
#include "llvm/Analysis/CGSCCPassManager.h"
#include "llvm/Analysis/CallGraph.h"
#include "llvm/Analysis/LoopAnalysisManager.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/CFG.h"
#include "llvm/IR/Constants.h"
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
#include "llvm/Transforms/Utils/LoopSimplify.h"
#include "llvm/Transforms/Utils/Mem2Reg.h"

using namespace llvm;

namespace enzpy {

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
    if (G.isDeclaration() || &G == &F)
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
      if (&G != &F && G.use_empty()) {
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
    if (&G == &F || G.isDeclaration())
      continue;
    G.removeFnAttr(Attribute::OptimizeNone);
    if (Recursive.contains(G.getName())) {
      G.removeFnAttr(Attribute::AlwaysInline);
      G.addFnAttr(Attribute::NoInline);
      continue;
    }
    G.removeFnAttr(Attribute::NoInline);
    G.addFnAttr(Attribute::AlwaysInline);
  }
  PassContext P;
  ModulePassManager MPM;
  MPM.addPass(AlwaysInlinerPass(/*InsertLifetimeIntrinsics=*/false));
  MPM.run(M, P.MAM);
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
  for (ReturnInst *R : Returns) {
    BasicBlock *BB = R->getParent();
    // numba merges its returns into one block returning a phi of status
    // codes; send each constant status straight to its own exit, so that
    // code on the way to raising does not appear to reach the normal exit.
    if (auto *Phi = dyn_cast<PHINode>(R->getReturnValue()))
      if (Phi->getParent() == BB && &BB->front() == Phi &&
          Phi->getNextNode() == R) {
        for (unsigned I = Phi->getNumIncomingValues(); I-- > 0;) {
          auto *St = dyn_cast<ConstantInt>(Phi->getIncomingValue(I));
          BasicBlock *Pred = Phi->getIncomingBlock(I);
          if (!St || Pred->getTerminator()->getNumSuccessors() != 1)
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
  isolate(M, *F, Recursive, Req.Name);
  return canonicalize(*F, Recursive);
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
