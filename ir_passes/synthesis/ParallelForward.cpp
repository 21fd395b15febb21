//===- ParallelForward.cpp - forward mode of prange loops on threads ------===//
//
// See ParallelForward.h for what runs in chunks and why it is safe.
//
//===----------------------------------------------------------------------===//
#include "synthesis/ParallelForward.h"
#include "driver/Diagnostics.h"
#include "driver/IRHelpers.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/Module.h"
#include "llvm/Transforms/Utils/BasicBlockUtils.h"
#include "llvm/Transforms/Utils/CodeExtractor.h"
#include "llvm/Transforms/Utils/ScalarEvolutionExpander.h"

using namespace llvm;

namespace enzpy {

PrimalLoops::PrimalLoops(Function &P)
    : DT(P), LI(DT), TLII(P.getParent()->getTargetTriple()), TLI(TLII), AC(P),
      SE(P, TLI, AC, DT, LI) {}

ParallelForward::ParallelForward(DerivativeSkeleton &Sk)
    : PrimalLoops(Sk.P), ChunkPlanner(Sk, PrimalLoops::SE, PrimalLoops::LI) {}

void ParallelForward::outline() {
  for (Plan &Pl : Plans)
    Pl.Outcome = outlineOne(Pl);
}

std::string ParallelForward::outlineOne(const Plan &Pl) {
  Function &D = *Sk.D;
  Module &M = *D.getParent();
  LLVMContext &C = Sk.Ctx;
  Type *I64 = Type::getInt64Ty(C);
  PointerType *Ptr = PointerType::getUnqual(C);
  const Loop &PL = *Pl.L;
  auto *H = cast<BasicBlock>(Sk.mapped(PL.getHeader()));
  auto *Latch = cast<BasicBlock>(Sk.mapped(PL.getLoopLatch()));
  auto *Pre = cast<BasicBlock>(Sk.mapped(PL.getLoopPreheader()));
  auto *Exit = cast<BasicBlock>(Sk.mapped(normalExit(PL, Sk.Canon)));
  Value *Trip = Sk.mapped(Pl.Trip), *Safe = Sk.mapped(Pl.Safe);

  // --- what the loop is in the derivative, before anything changes.
  DominatorTree DT(D);
  LoopInfo DLI(DT);
  TargetLibraryInfoImpl DTLII(M.getTargetTriple());
  TargetLibraryInfo DTLI(DTLII);
  AssumptionCache DAC(D);
  ScalarEvolution DSE(D, DTLI, DAC, DT, DLI);
  Loop *L = DLI.getLoopFor(H);
  auto *BI = dyn_cast<BranchInst>(Latch->getTerminator());
  if (!L || L->getHeader() != H || L->getLoopPreheader() != Pre || !BI ||
      !BI->isConditional() || !is_contained(successors(Latch), Exit) ||
      Exit->getSinglePredecessor() != Latch)
    return "serial: the loop was not found (internal)";
  // Header phis: affine recurrences (the index, pointers moving with it)
  // and sums; nothing else carries a value from one iteration to the next.
  SmallVector<std::pair<PHINode *, const SCEV *>, 4> Affine; // phi, step
  SmallVector<PHINode *, 4> Sums;
  SmallPtrSet<const Value *, 8> Members, Lasts;
  for (PHINode &Ph : H->phis()) {
    if (DSE.isSCEVable(Ph.getType()))
      if (auto *AR = dyn_cast<SCEVAddRecExpr>(DSE.getSCEV(&Ph));
          AR && AR->getLoop() == L && AR->isAffine()) {
        Affine.push_back({&Ph, AR->getStepRecurrence(DSE)});
        continue;
      }
    if (Ph.getType()->isFloatingPointTy() && notASum(*L, Ph, Members).empty()) {
      Sums.push_back(&Ph);
      Lasts.insert(Ph.getIncomingValueForBlock(Latch));
      continue;
    }
    return "serial: it carries a value from one iteration to the next other "
           "than its index and sums (" +
           describe(&Ph) + ")";
  }
  // Values of the loop used after it: the sums' last values, after it ends
  // normally.
  for (BasicBlock *B : L->blocks())
    for (Instruction &I : *B)
      for (Use &U : I.uses()) {
        auto *UI = cast<Instruction>(U.getUser());
        if (L->contains(UI))
          continue;
        auto *PN = dyn_cast<PHINode>(UI);
        BasicBlock *At = PN ? PN->getIncomingBlock(U) : UI->getParent();
        if (!Lasts.count(&I) || !DT.dominates(Exit, At))
          return "serial: a value it computes is used after it (" +
                 describe(&I) + ")";
      }
  // Stack slots the loop writes would be shared by the chunks.
  {
    CodeExtractorAnalysisCache CEAC(D);
    SmallVector<BasicBlock *, 16> Blocks(L->blocks());
    CodeExtractor CE(Blocks, &DT);
    if (!CE.isEligible())
      return "serial: the loop cannot be outlined";
    SetVector<Value *> In, Out, Sinks;
    CE.findInputsOutputs(In, Out, Sinks);
    for (Value *V : In)
      if (auto *A = dyn_cast<AllocaInst>(V))
        for (User *U : A->users())
          if (auto *UI = dyn_cast<Instruction>(U);
              UI && L->contains(UI) && UI->mayWriteToMemory())
            return "serial: it writes a stack slot (" + describe(A) + ")";
  }
  Instruction *PreEnd = Pre->getTerminator();
  SCEVExpander Exp(DSE, "enzpy.chunk");
  SmallVector<Value *, 4> Steps;
  for (auto &[Ph, Step] : Affine) {
    if (!Exp.isSafeToExpandAt(Step, PreEnd))
      return "serial: the step of " + describe(Ph) +
             " cannot be computed before it starts";
    Steps.push_back(Exp.expandCodeFor(Step, nullptr, PreEnd));
  }

  // --- a chunk [C0, C1): its entry block, its counter, its sums.
  Instruction *EntryEnd = Sk.Entry->getTerminator();
  auto *C0 = new FreezeInst(PoisonValue::get(I64), "enzpy.chunk.begin",
                            EntryEnd->getIterator());
  auto *C1 = new FreezeInst(PoisonValue::get(I64), "enzpy.chunk.end",
                            EntryEnd->getIterator());
  BasicBlock *Start = SplitEdge(Pre, H);
  Start->setName("enzpy.chunk.start");
  IRBuilder<> SB(Start->getTerminator());
  for (auto [J, AS] : enumerate(Affine)) {
    PHINode *Ph = AS.first;
    Value *V0 = Ph->getIncomingValueForBlock(Start);
    Value *Step = Steps[J];
    Value *Moves =
        SB.CreateMul(SB.CreateSExtOrTrunc(C0, Step->getType()), Step);
    Ph->setIncomingValueForBlock(
        Start,
        Ph->getType()->isPointerTy()
            ? SB.CreateGEP(SB.getInt8Ty(), V0, Moves)
            : SB.CreateAdd(V0, SB.CreateSExtOrTrunc(Moves, Ph->getType())));
  }
  SmallVector<Value *, 4> SumStart;
  SmallVector<AllocaInst *, 4> SumSlot;
  IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
  for (PHINode *Ph : Sums) {
    SumStart.push_back(Ph->getIncomingValueForBlock(Start));
    Ph->setIncomingValueForBlock(Start, ConstantFP::get(Ph->getType(), 0.0));
    SumSlot.push_back(EB.CreateAlloca(Ph->getType(), nullptr, "enzpy.part"));
  }
  PHINode *Count = PHINode::Create(I64, 2, "enzpy.chunk.i", H->begin());
  auto *Next = BinaryOperator::CreateAdd(Count, ConstantInt::get(I64, 1), "",
                                         BI->getIterator());
  Count->addIncoming(C0, Start);
  Count->addIncoming(Next, Latch);
  BI->setCondition(new ICmpInst(BI->getIterator(),
                                BI->getSuccessor(0) == Exit ? ICmpInst::ICMP_EQ
                                                            : ICmpInst::ICMP_NE,
                                Next, C1));
  // The sums' last values leave through their slots: the chunk's part, added
  // to the start value after the loop.
  BasicBlock *After = nullptr;
  {
    IRBuilder<> LB(BI);
    for (auto [J, Ph] : enumerate(Sums))
      LB.CreateStore(Ph->getIncomingValueForBlock(Latch), SumSlot[J]);
    After = SplitEdge(Latch, Exit);
    IRBuilder<> AB(&*After->getFirstInsertionPt());
    for (auto [J, Ph] : enumerate(Sums)) {
      Value *Last = Ph->getIncomingValueForBlock(Latch);
      Value *Final =
          AB.CreateFAdd(SumStart[J], AB.CreateLoad(Ph->getType(), SumSlot[J]));
      Last->replaceUsesWithIf(Final, [&](Use &U) {
        auto *UI = cast<Instruction>(U.getUser());
        return !L->contains(UI) && UI != Final;
      });
    }
  }

  // --- the chunk function.
  SmallVector<BasicBlock *, 16> Blocks{Start};
  append_range(Blocks, L->blocks());
  DominatorTree DT2(D);
  CodeExtractorAnalysisCache CEAC(D);
  CodeExtractor CE(Blocks, &DT2, false, nullptr, nullptr, nullptr, false, false,
                   nullptr, "enzpy.fchunk");
  SetVector<Value *> In, Out, Sinks;
  CE.findInputsOutputs(In, Out, Sinks);
  if (!Out.empty())
    report_fatal_error("enzpy: a forward chunk has outputs (internal)");
  Function *F = CE.extractCodeRegion(CEAC);
  if (!F || !F->hasOneUse())
    report_fatal_error("enzpy: a forward chunk was not outlined (internal)");
  CallInst *CI = adoptChunk(D, *F);
  // The sums' slots as registers inside, put back at the end.
  {
    BasicBlock &Root = F->getEntryBlock();
    IRBuilder<> FB(&Root, Root.getFirstInsertionPt());
    for (unsigned I = 0; I < CI->arg_size(); ++I) {
      auto *A = dyn_cast<AllocaInst>(CI->getArgOperand(I));
      if (!A || !is_contained(SumSlot, A))
        continue;
      Argument *Arg = F->getArg(I);
      AllocaInst *Local =
          FB.CreateAlloca(A->getAllocatedType(), nullptr, "enzpy.part.own");
      Arg->replaceAllUsesWith(Local);
      for (BasicBlock &BB : *F)
        if (auto *Ret = dyn_cast<ReturnInst>(BB.getTerminator())) {
          IRBuilder<> RB(Ret);
          RB.CreateStore(RB.CreateLoad(A->getAllocatedType(), Local), Arg);
        }
    }
  }
  Type *CodeT = F->getReturnType();
  bool Codes = !CodeT->isVoidTy();

  // The context: the inputs, then the parts' and the exit codes' memory
  // and the chunk's length.
  SmallVector<Type *, 16> Fields;
  for (Value *V : CI->args())
    Fields.push_back(V->getType());
  unsigned Own = Fields.size();
  Fields.append({Ptr, Ptr, I64, I64});
  StructType *Ctx = StructType::get(C, Fields);
  SmallVector<Type *, 4> PartTypes;
  for (AllocaInst *S : SumSlot)
    PartTypes.push_back(S->getAllocatedType());
  StructType *Part = StructType::get(C, PartTypes);
  const DataLayout &DL = M.getDataLayout();
  uint64_t PartBytes =
      alignTo(std::max<uint64_t>(DL.getTypeAllocSize(Part), 8), 8);

  Function *W = emitChunkWrapper(
      D, F->getName() + ".threads",
      [&](IRBuilder<> &EB, IRBuilder<> &B, Value *CtxP, Value *K) {
        SmallVector<AllocaInst *, 4> Priv;
        for (AllocaInst *S : SumSlot)
          Priv.push_back(EB.CreateAlloca(S->getAllocatedType()));
        auto ctx = [&](unsigned Field) {
          return B.CreateLoad(Fields[Field],
                              B.CreateStructGEP(Ctx, CtxP, Field));
        };
        Value *Parts = ctx(Own), *CodesP = ctx(Own + 1), *Chunk = ctx(Own + 2),
              *TripW = ctx(Own + 3);
        Value *Lo = B.CreateMul(K, Chunk);
        Value *Hi = B.CreateBinaryIntrinsic(Intrinsic::umin,
                                            B.CreateAdd(Lo, Chunk), TripW);
        SmallVector<Value *, 16> Args;
        for (unsigned I = 0; I < CI->arg_size(); ++I) {
          Value *V = CI->getArgOperand(I);
          auto Slot = find(SumSlot, V);
          Value *Arg = V == C0 ? Lo : V == C1 ? Hi : nullptr;
          if (!Arg)
            Arg = Slot != SumSlot.end()
                      ? static_cast<Value *>(Priv[Slot - SumSlot.begin()])
                      : ctx(I);
          Args.push_back(Arg);
        }
        CallInst *Call = B.CreateCall(F, Args);
        Value *Mine = B.CreateGEP(B.getInt8Ty(), Parts,
                                  B.CreateMul(K, B.getInt64(PartBytes)));
        for (unsigned J = 0; J < Priv.size(); ++J)
          B.CreateStore(B.CreateLoad(PartTypes[J], Priv[J]),
                        B.CreateStructGEP(Part, Mine, J));
        if (Codes)
          B.CreateStore(B.CreateZExt(Call, I64), B.CreateGEP(I64, CodesP, K));
      });

  // --- at the call: how many chunks; run them on the threads, or the whole
  // loop here.
  // The code the chunk function returns when it ends normally (it has other
  // ways out when the loop may raise).
  Value *Normal = nullptr;
  if (Codes) {
    Instruction *Term = CI->getParent()->getTerminator();
    if (auto *Br = dyn_cast<BranchInst>(Term);
        Br && Br->isConditional() && Br->getCondition() == CI)
      Normal = ConstantInt::get(CodeT, Br->getSuccessor(0) == After ? 1 : 0);
    else if (auto *Sw = dyn_cast<SwitchInst>(Term);
             Sw && Sw->getCondition() == CI)
      for (auto Case : Sw->cases())
        if (Case.getCaseSuccessor() == After)
          Normal = Case.getCaseValue();
    if (!Normal)
      report_fatal_error("enzpy: a forward chunk's normal exit (internal)");
  }
  IRBuilder<> B(CI);
  GlobalVariable *Cost = nullptr;
  auto [K, Chunk] = splitLoop(B, Safe, Trip, Cost);
  Value *SchedAt = B.CreateMul(K, B.getInt64(PartBytes));
  Value *CodesAt = B.CreateAdd(SchedAt, B.CreateMul(K, B.getInt64(8)));
  Value *Block = B.CreateCall(
      libcMalloc(M), {B.CreateAdd(CodesAt, B.CreateMul(K, B.getInt64(8)))});
  Value *Par =
      B.CreateAnd(B.CreateICmpUGT(K, B.getInt64(1)), B.CreateIsNotNull(Block));
  // Run here, the chunk is the whole loop.
  for (unsigned I = 0; I < CI->arg_size(); ++I)
    if (CI->getArgOperand(I) == C0)
      CI->setArgOperand(I, B.getInt64(0));
    else if (CI->getArgOperand(I) == C1)
      CI->setArgOperand(I, Trip);
  C0->eraseFromParent();
  C1->eraseFromParent();
  Value *Clock = startClock(B);
  Instruction *ThenT, *ElseT;
  SplitBlockAndInsertIfThenElse(Par, CI->getIterator(), &ThenT, &ElseT);
  BasicBlock *Join = CI->getParent();
  CI->moveBefore(ElseT->getIterator());
  {
    AllocaInst *CtxA = EB.CreateAlloca(Ctx, nullptr, "enzpy.fchunk.ctx");
    IRBuilder<> TB(ThenT);
    for (unsigned I = 0; I < CI->arg_size(); ++I)
      TB.CreateStore(CI->getArgOperand(I), TB.CreateStructGEP(Ctx, CtxA, I));
    TB.CreateStore(Block, TB.CreateStructGEP(Ctx, CtxA, Own));
    Value *CodesP = TB.CreateGEP(TB.getInt8Ty(), Block, CodesAt);
    TB.CreateStore(CodesP, TB.CreateStructGEP(Ctx, CtxA, Own + 1));
    TB.CreateStore(Chunk, TB.CreateStructGEP(Ctx, CtxA, Own + 2));
    TB.CreateStore(Trip, TB.CreateStructGEP(Ctx, CtxA, Own + 3));
    // The schedule: each thread gets consecutive rows; pairing the first
    // chunk with the last gives a triangular loop's threads equal work.
    Value *Sched = TB.CreateGEP(TB.getInt8Ty(), Block, SchedAt);
    emitSchedule(TB, ThenT, Sched, K, /*Waves=*/false);
    emitChunkLaunch(TB, *Sk.Entry, W, CtxA, Sched, TB.getInt64(0), K);
    // The parts, in chunk order; the first way out other than the normal
    // one that a chunk took.
    AllocaInst *CodeSlot =
        Codes ? EB.CreateAlloca(I64, nullptr, "enzpy.fchunk.code") : nullptr;
    Value *NormalI64 =
        Codes ? TB.getInt64(cast<ConstantInt>(Normal)->getZExtValue())
              : nullptr;
    if (Codes)
      TB.CreateStore(NormalI64, CodeSlot);
    emitLoop(TB, ThenT, K, [&](IRBuilder<> &PB, Value *Kc) {
      Value *Mine = PB.CreateGEP(PB.getInt8Ty(), Block,
                                 PB.CreateMul(Kc, PB.getInt64(PartBytes)));
      for (auto [J, S] : enumerate(SumSlot)) {
        Value *Add =
            PB.CreateLoad(PartTypes[J], PB.CreateStructGEP(Part, Mine, J));
        Value *Old = PB.CreateLoad(PartTypes[J], S);
        PB.CreateStore(PB.CreateSelect(PB.CreateICmpEQ(Kc, PB.getInt64(0)), Add,
                                       PB.CreateFAdd(Old, Add)),
                       S);
      }
      if (Codes) {
        Value *Code = PB.CreateLoad(I64, CodeSlot);
        Value *Its = PB.CreateLoad(I64, PB.CreateGEP(I64, CodesP, Kc));
        PB.CreateStore(
            PB.CreateSelect(PB.CreateICmpEQ(Code, NormalI64), Its, Code),
            CodeSlot);
      }
    });
    if (Codes) {
      IRBuilder<> JB(&*Join->getFirstInsertionPt());
      PHINode *Out = JB.CreatePHI(CodeT, 2);
      Out->addIncoming(TB.CreateTrunc(TB.CreateLoad(I64, CodeSlot), CodeT),
                       ThenT->getParent());
      Out->addIncoming(CI, ElseT->getParent());
      CI->replaceUsesWithIf(Out, [&](Use &U) { return U.getUser() != Out; });
    }
  }
  IRBuilder<> FreeB(&*Join->getFirstInsertionPt());
  recordCost(FreeB, Cost, Clock, Trip, K);
  FreeB.CreateCall(libcFree(M), {Block});
  return "parallel";
}

} // namespace enzpy
