//===- ForwardSynthesis.cpp - forward-mode (tangent) derivative -----------===//
#include "ForwardSynthesis.h"
#include "DerivativeRules.h"
#include "Diagnostics.h"
#include "llvm/ADT/PostOrderIterator.h"
#include "llvm/AsmParser/Parser.h"
#include "llvm/IR/CFG.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/Module.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Transforms/Utils/Cloning.h"
#include "llvm/Transforms/Utils/ValueMapper.h"

using namespace llvm;

namespace enzpy {

namespace {

/// One value per lane of the batch; a null entry is a zero tangent.
using Lanes = SmallVector<Value *, 4>;

/// A + C where either may be null (zero); null when both are.
Value *addTangents(IRBuilder<> &B, Value *A, Value *C) {
  if (!A)
    return C;
  if (!C)
    return A;
  return B.CreateFAdd(A, C);
}

class ForwardSynthesizer {
public:
  ForwardSynthesizer(const CanonicalFunction &C, const Request &Req,
                     Type *RetType, const ActivityAnalysis &AA,
                     raw_ostream *Log)
      : Canon(C), Req(Req), RetType(RetType), AA(AA), Log(Log),
        P(*C.F), Ctx(P.getContext()), Width(Req.Width) {}

  Expected<Function *> run();

private:
  void createFunction();
  Error visitInstruction(const Instruction &PI);
  void createTangentPhis(const BasicBlock &PB);
  void fillTangentPhis();
  void createResult();

  Value *mapped(const Value *PV) const;
  /// The tangent of \p PV in lane \p K, or null when it is zero.
  Value *tangent(const Value *PV, unsigned K) const;
  Value *tangentOrZero(const Value *PV, unsigned K) const;
  /// The address that mirrors \p PPtr on the shadow of lane \p K.
  Value *shadow(const Value *PPtr, unsigned K);
  void note(const char *What, const Value *PV);

  const CanonicalFunction &Canon;
  const Request &Req;
  Type *RetType; // what the primal stores through retptr; null for None
  const ActivityAnalysis &AA;
  raw_ostream *Log;
  Function &P;
  LLVMContext &Ctx;
  unsigned Width;

  Function *D = nullptr;
  BasicBlock *DEntry = nullptr;
  ValueToValueMapTy VMap;
  AllocaInst *RetSlot = nullptr;
  Lanes RetShadow;                          // per lane, when RetActive
  SmallVector<Lanes, 8> ShadowArgs;         // per primal param
  DenseMap<const Value *, Lanes> Tangents;  // primal value -> its tangents
  DenseMap<const Value *, Lanes> Shadows;   // primal address -> mirrored
  SmallVector<const PHINode *, 16> TangentPhis; // to fill in at the end
  std::string Decisions;
};

Value *ForwardSynthesizer::mapped(const Value *PV) const {
  if (isa<Constant>(PV))
    return const_cast<Value *>(PV);
  auto It = VMap.find(PV);
  assert(It != VMap.end() && "primal value without a copy");
  return It->second;
}

Value *ForwardSynthesizer::tangent(const Value *PV, unsigned K) const {
  if (isa<Constant>(PV) || !AA.isActive(PV))
    return nullptr;
  auto It = Tangents.find(PV);
  assert(It != Tangents.end() && "active value used before its tangent");
  return It->second[K];
}

Value *ForwardSynthesizer::tangentOrZero(const Value *PV, unsigned K) const {
  if (Value *T = tangent(PV, K))
    return T;
  return Constant::getNullValue(PV->getType());
}

void ForwardSynthesizer::note(const char *What, const Value *PV) {
  if (!Log)
    return;
  raw_string_ostream OS(Decisions);
  OS << "  " << What << " " << describe(PV) << "\n";
}

Value *ForwardSynthesizer::shadow(const Value *PPtr, unsigned K) {
  auto Found = Shadows.find(PPtr);
  if (Found != Shadows.end() && Found->second[K])
    return Found->second[K];
  Value *S = nullptr;
  if (auto *A = dyn_cast<Argument>(PPtr)) {
    S = A->getArgNo() == 0 ? RetShadow[K] : ShadowArgs[A->getArgNo() - 2][K];
    assert(S && "shadow of a parameter that is not duplicated");
  } else if (auto *AI = dyn_cast<AllocaInst>(PPtr)) {
    const DataLayout &DL = P.getParent()->getDataLayout();
    Value *Count = mapped(AI->getArraySize());
    IRBuilder<> B(Ctx);
    if (isa<Constant>(Count))
      B.SetInsertPoint(DEntry, DEntry->getFirstInsertionPt());
    else
      B.SetInsertPoint(cast<Instruction>(mapped(AI))->getNextNode());
    AllocaInst *SA = B.CreateAlloca(AI->getAllocatedType(), Count,
                                    AI->getName() + "'shadow");
    SA->setAlignment(AI->getAlign());
    if (isa<Constant>(Count))
      B.SetInsertPoint(DEntry->getTerminator());
    Value *Bytes = B.CreateMul(
        B.CreateZExtOrTrunc(Count, B.getInt64Ty()),
        B.getInt64(DL.getTypeAllocSize(AI->getAllocatedType())));
    B.CreateMemSet(SA, B.getInt8(0), Bytes, AI->getAlign());
    S = SA;
  } else if (auto *GEP = dyn_cast<GetElementPtrInst>(PPtr)) {
    auto *DG = cast<GetElementPtrInst>(mapped(GEP));
    Value *Base = shadow(GEP->getPointerOperand(), K);
    IRBuilder<> B(DG->getNextNode());
    SmallVector<Value *, 4> Idx(DG->indices());
    S = B.CreateGEP(DG->getSourceElementType(), Base, Idx,
                    GEP->getName() + "'shadow", DG->getNoWrapFlags());
  } else if (auto *Phi = dyn_cast<PHINode>(PPtr)) {
    auto *DP = cast<PHINode>(mapped(Phi));
    PHINode *SP = PHINode::Create(DP->getType(), DP->getNumIncomingValues(),
                                  Phi->getName() + "'shadow");
    SP->insertBefore(DP->getIterator());
    Lanes &L = Shadows[PPtr];
    L.resize(Width, nullptr);
    L[K] = SP; // before the incoming values: cycles
    for (unsigned I = 0; I < Phi->getNumIncomingValues(); ++I) {
      Value *In = shadow(Phi->getIncomingValue(I), K);
      SP->addIncoming(In, DP->getIncomingBlock(I));
    }
    return SP;
  } else if (auto *Sel = dyn_cast<SelectInst>(PPtr)) {
    auto *DS = cast<SelectInst>(mapped(Sel));
    Value *T = shadow(Sel->getTrueValue(), K);
    Value *F = shadow(Sel->getFalseValue(), K);
    IRBuilder<> B(DS->getNextNode());
    S = B.CreateSelect(DS->getCondition(), T, F, Sel->getName() + "'shadow");
  } else if (auto *Cast = dyn_cast<CastInst>(PPtr)) {
    S = shadow(Cast->getOperand(0), K);
  }
  assert(S && "checkShadowable let an unmirrorable address through");
  Lanes &L = Shadows[PPtr];
  L.resize(Width, nullptr);
  L[K] = S;
  return S;
}

void ForwardSynthesizer::createFunction() {
  FunctionType *PT = P.getFunctionType();
  SmallVector<Type *, 16> Params(PT->params());
  unsigned NumPrimal = Params.size();
  for (unsigned I = 0; I < Req.Params.size(); ++I)
    if (Req.Params[I].isDuplicated())
      Params.append(Width, PointerType::getUnqual(Ctx));
  for (unsigned I = 0; I < Req.Params.size(); ++I)
    if (Req.Params[I].Act == Activity::Active)
      Params.append(Width, PT->getParamType(I + 2));
  D = Function::Create(FunctionType::get(Type::getInt32Ty(Ctx), Params, false),
                       GlobalValue::ExternalLinkage, Req.Name, P.getParent());
  DEntry = BasicBlock::Create(Ctx, "enzpy.entry", D);
  IRBuilder<> B(DEntry);

  // The primal's return value goes to a local slot (a None return stores a
  // null pointer: give the slot room for it); D's retptr receives the
  // result struct.
  RetSlot = B.CreateAlloca(RetType ? RetType : PointerType::getUnqual(Ctx),
                           nullptr, "enzpy.ret");
  RetSlot->setAlignment(Align(8));
  if (Req.RetActive)
    for (unsigned K = 0; K < Width; ++K) {
      AllocaInst *S = B.CreateAlloca(RetType, nullptr, "enzpy.ret'shadow");
      S->setAlignment(Align(8));
      B.CreateStore(Constant::getNullValue(RetType), S);
      RetShadow.push_back(S);
    }

  D->getArg(0)->setName("retptr");
  D->getArg(1)->setName("excinfo");
  VMap[P.getArg(0)] = RetSlot;
  VMap[P.getArg(1)] = D->getArg(1);
  for (unsigned I = 0; I < Req.Params.size(); ++I) {
    Argument *A = D->getArg(I + 2);
    A->setName(P.getArg(I + 2)->getName());
    VMap[P.getArg(I + 2)] = A;
  }
  ShadowArgs.assign(Req.Params.size(), Lanes());
  unsigned Next = NumPrimal;
  for (unsigned I = 0; I < Req.Params.size(); ++I) {
    if (!Req.Params[I].isDuplicated())
      continue;
    for (unsigned K = 0; K < Width; ++K) {
      Argument *S = D->getArg(Next++);
      S->setName(P.getArg(I + 2)->getName() + "'shadow" +
                 (Width > 1 ? "." + Twine(K) : Twine()));
      ShadowArgs[I].push_back(S);
    }
  }
  for (unsigned I = 0; I < Req.Params.size(); ++I) {
    if (Req.Params[I].Act != Activity::Active)
      continue;
    Argument *PA = P.getArg(I + 2);
    Lanes T;
    for (unsigned K = 0; K < Width; ++K) {
      Argument *DT = D->getArg(Next++);
      DT->setName(PA->getName() + "'tangent" +
                  (Width > 1 ? "." + Twine(K) : Twine()));
      T.push_back(DT);
    }
    if (AA.isActive(PA))
      Tangents[PA] = std::move(T);
  }

  SmallVector<ReturnInst *, 4> Returns;
  CloneFunctionInto(D, &P, VMap, CloneFunctionChangeType::LocalChangesOnly,
                    Returns);
  auto *FwdEntry = cast<BasicBlock>(VMap[&P.getEntryBlock()]);
  // Static allocas of the primal stay static in the new entry block.
  for (Instruction &I : make_early_inc_range(*FwdEntry))
    if (auto *AI = dyn_cast<AllocaInst>(&I))
      if (isa<Constant>(AI->getArraySize()))
        AI->moveBefore(DEntry->end());
  B.SetInsertPoint(DEntry);
  B.CreateBr(FwdEntry);
}

void ForwardSynthesizer::createTangentPhis(const BasicBlock &PB) {
  auto *DB = cast<BasicBlock>(VMap[&PB]);
  for (const PHINode &Phi : PB.phis()) {
    if (!AA.isActive(&Phi))
      continue;
    Lanes T;
    for (unsigned K = 0; K < Width; ++K) {
      PHINode *TP = PHINode::Create(Phi.getType(), Phi.getNumIncomingValues(),
                                    Phi.getName() + "'tangent");
      TP->insertBefore(DB->getFirstNonPHIIt());
      T.push_back(TP);
    }
    Tangents[&Phi] = std::move(T);
    TangentPhis.push_back(&Phi);
    note("tangent", &Phi);
  }
}

void ForwardSynthesizer::fillTangentPhis() {
  for (const PHINode *Phi : TangentPhis) {
    const Lanes &T = Tangents[Phi];
    for (unsigned I = 0; I < Phi->getNumIncomingValues(); ++I) {
      auto *From = cast<BasicBlock>(VMap[Phi->getIncomingBlock(I)]);
      for (unsigned K = 0; K < Width; ++K)
        cast<PHINode>(T[K])->addIncoming(
            tangentOrZero(Phi->getIncomingValue(I), K), From);
    }
  }
}

Error ForwardSynthesizer::visitInstruction(const Instruction &PI) {
  if (isa<PHINode>(PI))
    return Error::success(); // see createTangentPhis
  auto *DI = cast<Instruction>(mapped(&PI));
  IRBuilder<> B(DI->getNextNode());

  if (auto *St = dyn_cast<StoreInst>(&PI)) {
    if (!AA.pointsToActive(St->getPointerOperand()))
      return Error::success();
    const Value *V = St->getValueOperand();
    for (unsigned K = 0; K < Width; ++K) {
      Value *S = shadow(St->getPointerOperand(), K);
      B.CreateAlignedStore(tangentOrZero(V, K), S, St->getAlign());
    }
    note("tangent-store", St);
    return Error::success();
  }
  if (!AA.isActive(&PI))
    return Error::success();

  Lanes T(Width, nullptr);
  Type *Ty = PI.getType();
  auto op = [&](unsigned I) { return mapped(PI.getOperand(I)); };
  auto t = [&](unsigned I, unsigned K) { return tangent(PI.getOperand(I), K); };
  switch (PI.getOpcode()) {
  case Instruction::Load: {
    auto *L = cast<LoadInst>(&PI);
    for (unsigned K = 0; K < Width; ++K)
      T[K] = B.CreateAlignedLoad(Ty, shadow(L->getPointerOperand(), K),
                                 L->getAlign(), PI.getName() + "'tangent");
    break;
  }
  case Instruction::FAdd:
    for (unsigned K = 0; K < Width; ++K)
      T[K] = addTangents(B, t(0, K), t(1, K));
    break;
  case Instruction::FSub:
    for (unsigned K = 0; K < Width; ++K) {
      Value *T1 = t(1, K);
      T[K] = addTangents(B, t(0, K), T1 ? B.CreateFNeg(T1) : nullptr);
    }
    break;
  case Instruction::FMul:
    // d(a*b) = da*b + a*db
    for (unsigned K = 0; K < Width; ++K) {
      Value *T0 = t(0, K), *T1 = t(1, K);
      T[K] = addTangents(B, T0 ? B.CreateFMul(T0, op(1)) : nullptr,
                         T1 ? B.CreateFMul(op(0), T1) : nullptr);
    }
    break;
  case Instruction::FDiv:
    // d(a/b) = (da - (a/b)*db) / b
    for (unsigned K = 0; K < Width; ++K) {
      Value *T0 = t(0, K), *T1 = t(1, K);
      Value *Num =
          addTangents(B, T0, T1 ? B.CreateFNeg(B.CreateFMul(DI, T1)) : nullptr);
      T[K] = Num ? B.CreateFDiv(Num, op(1)) : nullptr;
    }
    break;
  case Instruction::FRem: {
    // a - trunc(a/b)*b: d = da - trunc(a/b)*db
    Value *Q = nullptr;
    for (unsigned K = 0; K < Width; ++K) {
      Value *T1 = t(1, K);
      if (T1 && !Q)
        Q = emitMathCall(B, "trunc", {B.CreateFDiv(op(0), op(1))});
      T[K] = addTangents(B, t(0, K),
                         T1 ? B.CreateFNeg(B.CreateFMul(Q, T1)) : nullptr);
    }
    break;
  }
  case Instruction::FNeg:
    for (unsigned K = 0; K < Width; ++K)
      if (Value *T0 = t(0, K))
        T[K] = B.CreateFNeg(T0);
    break;
  case Instruction::FPExt:
  case Instruction::FPTrunc:
    for (unsigned K = 0; K < Width; ++K)
      if (Value *T0 = t(0, K))
        T[K] = B.CreateFPCast(T0, Ty);
    break;
  case Instruction::Freeze:
    for (unsigned K = 0; K < Width; ++K)
      T[K] = t(0, K);
    break;
  case Instruction::Select: {
    auto *Sel = cast<SelectInst>(&PI);
    Value *C = mapped(Sel->getCondition());
    for (unsigned K = 0; K < Width; ++K) {
      Value *TT = tangent(Sel->getTrueValue(), K);
      Value *TF = tangent(Sel->getFalseValue(), K);
      if (TT || TF)
        T[K] = B.CreateSelect(C, TT ? TT : Constant::getNullValue(Ty),
                              TF ? TF : Constant::getNullValue(Ty));
    }
    break;
  }
  case Instruction::Call: {
    auto *CB = cast<CallBase>(&PI);
    const CallRule *Rule = findCallRule(CB->getCalledFunction());
    if (!Rule)
      return makeError("internal", "no derivative rule for the active call " +
                                       describe(&PI));
    // function_ref does not own its callable: keep the lambdas alive.
    auto ArgFn = [&](unsigned I) { return mapped(CB->getArgOperand(I)); };
    auto ResultFn = [&]() -> Value * { return DI; };
    RuleInputs In{B, Ty, ArgFn, ResultFn};
    for (unsigned I = 0; I < CB->arg_size(); ++I) {
      if (!AA.isActive(CB->getArgOperand(I)))
        continue;
      Value *Partial = Rule->Partial(In, I);
      if (!Partial)
        continue;
      for (unsigned K = 0; K < Width; ++K)
        if (Value *TI = tangent(CB->getArgOperand(I), K))
          T[K] = addTangents(B, T[K], B.CreateFMul(Partial, TI));
    }
    break;
  }
  default:
    return makeError("internal", "forward mode has no tangent for " +
                                     describe(&PI));
  }
  for (Value *&V : T)
    if (!V)
      V = Constant::getNullValue(Ty);
  Tangents[&PI] = std::move(T);
  note("tangent", &PI);
  return Error::success();
}

void ForwardSynthesizer::createResult() {
  if (!Canon.NormalExit)
    return; // the primal never returns normally
  auto *DExit = cast<BasicBlock>(VMap[Canon.NormalExit]);
  IRBuilder<> B(DExit->getTerminator());
  SmallVector<Type *, 8> Fields;
  SmallVector<Value *, 8> Values;
  if (Req.ReturnPrimal && RetType) {
    Fields.push_back(RetType);
    Values.push_back(B.CreateLoad(RetType, RetSlot));
  }
  if (Req.RetActive)
    for (unsigned K = 0; K < Width; ++K) {
      Fields.push_back(RetType);
      Values.push_back(B.CreateLoad(RetType, RetShadow[K]));
    }
  StructType *ST = StructType::get(Ctx, Fields);
  for (unsigned I = 0; I < Values.size(); ++I)
    B.CreateStore(Values[I], B.CreateStructGEP(ST, D->getArg(0), I));
}

Expected<Function *> ForwardSynthesizer::run() {
  createFunction();
  ReversePostOrderTraversal<Function *> RPOT(&P);
  // Definitions come before their uses in reverse post-order, except for
  // phis' incoming values, which are filled in at the end.
  for (BasicBlock *PB : RPOT) {
    if (!Canon.returns(PB))
      continue; // only runs on the way to raising: no tangents
    createTangentPhis(*PB);
    for (const Instruction &PI : *PB)
      if (Error E = visitInstruction(PI))
        return std::move(E);
  }
  fillTangentPhis();
  createResult();
  if (Log)
    *Log << "forward:\n" << Decisions;
  return D;
}

} // namespace

Expected<Function *> synthesizeForward(const CanonicalFunction &C,
                                       const Request &Req,
                                       const TypeAnalysis &TA,
                                       const ActivityAnalysis &AA,
                                       raw_ostream *Log) {
  Type *RetType = nullptr;
  if (Req.RetType != "void") {
    SMDiagnostic Err;
    RetType = parseType(Req.RetType, Err, *C.F->getParent());
    if (!RetType || RetType->isVoidTy())
      return makeError("request",
                       "cannot parse ret_type '" + Req.RetType + "'");
  }
  if (Req.RetActive && (!RetType || !RetType->isFloatingPointTy()))
    return makeError("request", "ret_activity is active but ret_type '" +
                                    Req.RetType + "' is not a float");
  ForwardSynthesizer S(C, Req, RetType, AA, Log);
  return S.run();
}

} // namespace enzpy
