//===- ForwardSynthesis.cpp - forward-mode (tangent) derivative -----------===//
//
// Builds the forward-mode derivative of native/enzpy_native.h's ABI: a copy
// of the primal in which every active value (varied and useful, see
// ActivityAnalysis) is followed by the computation of its tangent, in one
// sweep and without a tape. With a batch width W (Request::Width) each value
// carries W tangents, kept as W separate SSA values ("lanes"), so that one
// primal evaluation propagates W directions.
//
//  - SSA values: the tangent of an instruction is built right after its copy
//    from its operands' tangents; a constant or inactive operand has tangent
//    zero, and such terms are left out rather than multiplied by zero. Phis
//    get tangent phis, selects select tangents, calls with a row in the
//    DerivativeRules table get sum_i partial_i * tangent_i (the partials are
//    shared by the lanes).
//  - Memory: Duplicated parameters come with W shadow pointers, active
//    allocas get zeroed shadow allocas, and the return slot, when its
//    tangent is asked for, gets one shadow slot per lane. An address into
//    active memory is mirrored onto each shadow (the same GEPs, phis and
//    selects); a load of an active value loads its tangent from the mirrored
//    address, and a store into active memory stores the stored value's
//    tangent (zero when the value is inactive) there. In-place updates and
//    overwritten memory therefore need nothing special. A fill (memset) of
//    active memory zeroes the shadow; a copy (memcpy or memmove) copies the
//    shadows the same way.
//  - Arrays allocated by numba's runtime that carry tangents get a zeroed
//    shadow allocation beside them; every reference count operation on the
//    array's MemInfo is repeated on the shadow's, so the shadow lives as long
//    as the array (an operation on a MemInfo whose origin cannot be traced is
//    an "unsupported" error rather than a leak or a premature free; a
//    MemInfo read from memory is known not to be one when no shadowed
//    allocation's MemInfo is ever kept outside a stack slot). A raw
//    buffer (numba's temporary copy in a slice assignment) gets a zeroed
//    shadow buffer, freed where the primal frees the buffer.
//    Pointers numba spills to stack slots get their shadows (the shadow
//    address, or the shadow MemInfo) spilled to the slot's shadow.
//  - A recursive call (CanonicalFunction::CallDerivatives) becomes a call of
//    the callee's forward derivative, which returns the primal result and
//    its tangents (driver/RecursiveCalls.h).
//  - Control flow is the primal's own: branches, loops and early exits run
//    once, with the tangents beside the values.
//  - Blocks that only run on the way to raising an exception
//    (CanonicalFunction::returns) get no tangents. When the primal raises,
//    the derivative returns its status; shadows may then have been partly
//    written, as the primal's own arrays may have been.
//
// Assumes preprocess() ran (one normal exit, one raise exit), the activity
// analysis accepted the function, and checkShadowable() found every address
// into active memory mirrorable.
//
//===----------------------------------------------------------------------===//
#include "driver/Diagnostics.h"
#include "driver/IRHelpers.h"
#include "numba/NumbaABI.h"
#include "rules/BlasRules.h"
#include "rules/CustomRules.h"
#include "rules/DerivativeRules.h"
#include "rules/MemoryRules.h"
#include "rules/UserRules.h"
#include "synthesis/MemoryScopes.h"
#include "synthesis/ParallelForward.h"
#include "synthesis/ShadowAddresses.h"
#include "synthesis/Skeleton.h"
#include "synthesis/Synthesize.h"
#include "synthesis/UnneededStores.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/PostOrderIterator.h"
#include "llvm/Analysis/LoopInfo.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/AsmParser/Parser.h"
#include "llvm/IR/CFG.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/Dominators.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/IntrinsicInst.h"
#include "llvm/IR/MDBuilder.h"
#include "llvm/IR/Module.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Transforms/Utils/Cloning.h"
#include "llvm/Transforms/Utils/ValueMapper.h"
#include <functional>

using namespace llvm;

namespace enzpy {

namespace {

/// What a MemInfo pointer (numba's reference-counted array owner) is, as
/// far as the shadows of allocations go.
enum class MemInfoKind {
  None,       // never an allocation that has a shadow
  Shadowed,   // may be one: its shadow MemInfo can be mirrored
  Untraceable // may be one, and where it came from is not known
};

class ForwardSynthesizer {
public:
  ForwardSynthesizer(DerivativeSkeleton &Sk, DecisionLog *Log)
      : Sk(Sk), Canon(Sk.Canon), Req(Sk.Req), TA(Sk.TA), AA(Sk.AA), Log(Log),
        P(Sk.P), Ctx(Sk.Ctx), Width(Sk.width()) {}

  Expected<Function *> run();

private:
  void createFunction();
  Error visitInstruction(const Instruction &PI);
  void visitMemoryIntrinsic(const AnyMemIntrinsic &MI);
  void visitBlasCall(const BlasCall &Blas);
  void visitRecursiveCall(const CallBase &CB, const CallDerivative &CD);
  Error visitCustomCall(const CustomCall &CC);
  /// What forward batch mode gives lanes 2.. of a custom rule call instead
  /// of the memory the call may write (laneMemory).
  struct Snapshot {
    /// The allocation's start and size as an operand sees it (null and 0
    /// on a path where the operand is null), and its copy.
    Value *Base = nullptr, *Bytes = nullptr, *Buffer = nullptr;
  };
  struct LaneMemory {
    /// Each allocation copied (by its root), and its copy.
    MapVector<const Value *, Snapshot> Snapshots;
    /// Operands pointing into a copied allocation: (operand, the root, the
    /// allocation's start as that operand sees it).
    SmallVector<std::tuple<unsigned, const Value *, Value *>, 4> Redirected;
    /// Arguments the wrapper copies (a bit per argument).
    uint64_t WrapperCopies = 0;
  };
  Expected<LaneMemory> laneMemory(const CustomCall &CC);
  std::pair<Value *, Value *>
  allocationExtent(const Value *PA, const Value *Root, const CallBase *Alloc,
                   DenseMap<const Value *, std::pair<Value *, Value *>> &Memo);
  void mirrorSpill(const StoreInst &St);
  void dropReturnedShadows(const StoreInst &St);
  Error mirrorRefcounts();
  void createShadowAllocations();
  MemInfoKind classifyMemInfo(const Value *V,
                              SmallPtrSetImpl<const Value *> &Visiting) const;
  Value *memInfoShadow(const Value *V, unsigned K);
  void createTangentPhis(const BasicBlock &PB);
  void fillTangentPhis();
  void createResult();
  void emitNullChecks();

  Value *mapped(const Value *PV) const { return Sk.mapped(PV); }
  /// The tangent of \p PV in lane \p K, or null when it is zero.
  Value *tangent(const Value *PV, unsigned K) const;
  Value *tangentOrZero(const Value *PV, unsigned K) const;
  /// The address that mirrors \p PPtr on the shadow of lane \p K.
  Value *shadow(const Value *PPtr, unsigned K) { return Sk.shadow(PPtr, K); }
  void note(const char *What, const Value *PV);

  DerivativeSkeleton &Sk;
  std::optional<MemoryScopes> Scopes;
  const CanonicalFunction &Canon;
  const Request &Req;
  const TypeAnalysis &TA;
  const ActivityAnalysis &AA;
  DecisionLog *Log;
  Function &P;
  LLVMContext &Ctx;
  unsigned Width;
  /// The primal's dominator tree, built when batch mode first needs it.
  std::optional<DominatorTree> PDT;
  std::optional<LoopInfo> PLI;

  DenseMap<const Value *, Lanes> Tangents;      // primal value -> its tangents
  SmallVector<const PHINode *, 16> TangentPhis; // to fill in at the end
  /// Primal MemInfo pointers -> the MemInfos of their shadows.
  DenseMap<const Value *, Lanes> MemInfoShadows;
  /// Whether the MemInfo of an allocation with a shadow may be kept in
  /// memory other than a stack slot (a container, the return value): then
  /// a MemInfo loaded from such memory may be one.
  bool ShadowedMemInfoEscapes = false;
  bool shadowedMemInfoEscapes() const;
};

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
  if (Log)
    Log->record(What, PV);
}

void ForwardSynthesizer::createShadowAllocations() {
  for (const BasicBlock &PB : P) {
    if (!Canon.returns(&PB))
      continue;
    for (const Instruction &I : PB)
      if (const CallBase *Alloc = TA.allocationOf(&I);
          Alloc && ruleResult(*Alloc).Data) {
        // A rule's array result: its shadow comes from the forward
        // function (visitCustomCall), or is zeroed if the call carries
        // no derivative.
        if (AA.customCallActive(*matchCustomCall(*Alloc)))
          Sk.reserveRuleResultShadows(*Alloc);
      } else if (Alloc)
        if (AA.isActiveRoot(&I)) {
          Sk.shadowAllocation(Alloc);
          note("shadow-allocation", Alloc);
        }
  }
}

MemInfoKind ForwardSynthesizer::classifyMemInfo(
    const Value *V, SmallPtrSetImpl<const Value *> &Visiting) const {
  V = V->stripPointerCasts();
  if (isa<Constant>(V) || isa<Argument>(V) || !Visiting.insert(V).second)
    return MemInfoKind::None;
  if (auto *CB = dyn_cast<CallBase>(V)) {
    if (numba::isAllocationCall(CB))
      return Sk.hasShadowAllocation(CB) ? MemInfoKind::Shadowed
                                        : MemInfoKind::None;
    if (numba::isContainerAllocation(CB))
      return MemInfoKind::None;
    return MemInfoKind::Untraceable;
  }
  if (isSpilledPointer(V))
    return MemInfoKind::Shadowed; // the shadow slot says (null if none)
  if (const CallBase *RC = ruleResultOwner(V))
    return Sk.hasShadowAllocation(RC) ? MemInfoKind::Shadowed
                                      : MemInfoKind::None;
  SmallVector<const Value *, 2> Ins;
  if (auto *Phi = dyn_cast<PHINode>(V))
    Ins.append(Phi->value_op_begin(), Phi->value_op_end());
  else if (auto *Sel = dyn_cast<SelectInst>(V))
    Ins.append({Sel->getTrueValue(), Sel->getFalseValue()});
  else if (isa<LoadInst>(V) && !ShadowedMemInfoEscapes)
    return MemInfoKind::None; // read from memory no shadowed one reaches
  else
    return MemInfoKind::Untraceable;
  MemInfoKind Kind = MemInfoKind::None;
  for (const Value *In : Ins) {
    MemInfoKind InKind = classifyMemInfo(In, Visiting);
    if (InKind == MemInfoKind::Untraceable)
      return InKind;
    if (InKind == MemInfoKind::Shadowed)
      Kind = InKind;
  }
  return Kind;
}

/// Whether a memory copy may take the contents of \p Slot elsewhere.
static bool copiedOut(const AllocaInst *Slot) {
  for (const BasicBlock &BB : *Slot->getFunction())
    for (const Instruction &I : BB)
      if (auto *MT = dyn_cast<AnyMemTransferInst>(&I))
        if (getUnderlyingObject(MT->getRawSource(), 0) == Slot)
          return true;
  return false;
}

bool ForwardSynthesizer::shadowedMemInfoEscapes() const {
  SmallVector<const Value *, 16> Work;
  SmallPtrSet<const Value *, 16> Seen;
  for (const BasicBlock &PB : P)
    for (const Instruction &I : PB)
      if (auto *CB = dyn_cast<CallBase>(&I)) {
        if (numba::isAllocationCall(CB) && Sk.hasShadowAllocation(CB))
          Work.push_back(CB);
        // A rule's array result with a shadow (made where the call is
        // replaced, or zeroed where it is not).
        if (RuleResult R = ruleResult(*CB);
            R.MemInfo && (AA.isActiveRoot(R.Data) ||
                          AA.customCallActive(*matchCustomCall(*CB))))
          Work.push_back(R.MemInfo);
      }
  while (!Work.empty()) {
    const Value *V = Work.pop_back_val();
    if (!Seen.insert(V).second)
      continue;
    for (const User *U : V->users()) {
      if (isa<PHINode>(U) || isa<SelectInst>(U) || isa<CastInst>(U) ||
          isa<InsertValueInst>(U) || isa<ExtractValueInst>(U)) {
        Work.push_back(U);
      } else if (auto *St = dyn_cast<StoreInst>(U)) {
        // Kept in a stack slot: followed as a spilled pointer, unless the
        // slot is copied elsewhere.
        if (St->getValueOperand() != V)
          continue;
        auto *Slot = dyn_cast<AllocaInst>(
            getUnderlyingObject(St->getPointerOperand(), 0));
        if (!Slot || copiedOut(Slot))
          return true;
      } else if (auto *CB = dyn_cast<CallBase>(U)) {
        if (!numba::isRefcountCall(*CB) && !numba::isDataPointerCall(*CB) &&
            !CB->isLifetimeStartOrEnd())
          return true;
      } else if (!isa<GetElementPtrInst>(U) && !isa<LoadInst>(U) &&
                 !isa<ICmpInst>(U)) {
        return true;
      }
    }
  }
  return false;
}

/// The shadow MemInfo of a MemInfo classified Shadowed (null where it is
/// not an allocation with a shadow).
Value *ForwardSynthesizer::memInfoShadow(const Value *V, unsigned K) {
  Type *Ptr = PointerType::getUnqual(Ctx);
  V = V->stripPointerCasts();
  if (isa<Constant>(V) || isa<Argument>(V))
    return ConstantPointerNull::get(cast<PointerType>(Ptr));
  auto Found = MemInfoShadows.find(V);
  if (Found != MemInfoShadows.end() && Found->second[K])
    return Found->second[K];
  Value *S = nullptr;
  if (const CallBase *RC = ruleResultOwner(V)) {
    S = Sk.shadowAllocation(RC)[K];
  } else if (auto *CB = dyn_cast<CallBase>(V)) {
    S = Sk.hasShadowAllocation(CB)
            ? Sk.shadowAllocation(CB)[K]
            : ConstantPointerNull::get(cast<PointerType>(Ptr));
  } else if (isSpilledPointer(V)) {
    auto *L = cast<LoadInst>(V);
    Value *Slot = shadow(L->getPointerOperand(), K);
    IRBuilder<> B(cast<Instruction>(mapped(L))->getNextNode());
    S = B.CreateLoad(Ptr, Slot, L->getName() + "'shadow.mi");
  } else {
    S = Sk.mirrorMerge(
        V, K, MemInfoShadows,
        [&](const Value *In) { return memInfoShadow(In, K); },
        V->getName() + "'shadow.mi");
  }
  assert(S && "memInfoShadow of a MemInfo that classifyMemInfo rejects");
  Lanes &L = MemInfoShadows[V];
  L.resize(Width, nullptr);
  L[K] = S;
  return S;
}

/// A pointer spilled to a stack slot: its shadow (or, for the MemInfo of an
/// allocation with a shadow, the shadow's MemInfo) is spilled beside it.
void ForwardSynthesizer::mirrorSpill(const StoreInst &St) {
  auto MemInfo = [&](const Value *V, unsigned K) -> Value * {
    SmallPtrSet<const Value *, 8> Visiting;
    if (!Sk.anyShadowAllocation() ||
        classifyMemInfo(V, Visiting) != MemInfoKind::Shadowed)
      return nullptr;
    return memInfoShadow(V, K);
  };
  Sk.mirrorSpill(St, MemInfo);
}

/// The primal hands the arrays it returns to its caller with a reference
/// each, a reference their shadows got too (mirrorRefcounts) but that nobody
/// holds: drop it once the return value is stored.
void ForwardSynthesizer::dropReturnedShadows(const StoreInst &St) {
  if (!Sk.anyShadowAllocation())
    return;
  SmallVector<const Value *, 4> Leaves;
  std::function<void(const Value *)> walk = [&](const Value *V) {
    if (V->getType()->isPointerTy()) {
      Leaves.push_back(V);
      return;
    }
    if (auto *IV = dyn_cast<InsertValueInst>(V)) {
      walk(IV->getInsertedValueOperand());
      walk(IV->getAggregateOperand());
    }
  };
  walk(St.getValueOperand());
  auto *DS = cast<Instruction>(mapped(&St));
  IRBuilder<> B(DS->getNextNode());
  FunctionCallee Decref = numba::decrefFunction(*P.getParent());
  for (const Value *Leaf : Leaves) {
    SmallPtrSet<const Value *, 8> Visiting;
    if (classifyMemInfo(Leaf, Visiting) != MemInfoKind::Shadowed)
      continue;
    for (unsigned K = 0; K < Width; ++K)
      B.CreateCall(Decref, {memInfoShadow(Leaf, K)});
  }
}

/// Shadows of allocations live as long as their arrays: every reference
/// count operation on an allocation's MemInfo is repeated on its shadow's.
Error ForwardSynthesizer::mirrorRefcounts() {
  if (!Sk.anyShadowAllocation())
    return Error::success();
  for (const BasicBlock &PB : P)
    for (const Instruction &I : PB) {
      if (!numba::isRefcountCall(I))
        continue;
      const Value *MI = cast<CallBase>(I).getArgOperand(0);
      SmallPtrSet<const Value *, 8> Visiting;
      MemInfoKind Kind = classifyMemInfo(MI, Visiting);
      if (Kind == MemInfoKind::None)
        continue;
      if (Kind == MemInfoKind::Untraceable)
        return makeError("unsupported",
                         "forward mode cannot follow the lifetime of an array "
                         "allocated in the function: its reference count is "
                         "updated through a pointer enzpy cannot follow",
                         &I);
      auto *DC = cast<CallBase>(mapped(&I));
      for (unsigned K = 0; K < Width; ++K) {
        Value *S = memInfoShadow(MI, K);
        IRBuilder<> B(DC->getNextNode());
        B.CreateCall(DC->getFunctionType(), DC->getCalledOperand(), {S});
      }
    }
  return Error::success();
}

void ForwardSynthesizer::visitMemoryIntrinsic(const AnyMemIntrinsic &MI) {
  auto *DI = cast<Instruction>(mapped(&MI));
  IRBuilder<> B(DI->getNextNode());
  Value *Len = mapped(MI.getLength());
  if (!AA.pointsToActive(MI.getRawDest())) {
    // A stack slot overwritten wholesale: no pointer loaded from it
    // afterwards has a shadow (see mirrorSpill).
    if (isa<AllocaInst>(getUnderlyingObject(MI.getRawDest(), 0)))
      for (unsigned K = 0; K < Width; ++K)
        B.CreateMemSet(shadow(MI.getRawDest(), K), B.getInt8(0), Len,
                       MI.getDestAlign());
    return;
  }
  auto *MT = dyn_cast<AnyMemTransferInst>(&MI);
  bool Copy = MT && AA.pointsToActive(MT->getRawSource());
  for (unsigned K = 0; K < Width; ++K)
    emitMemoryTangent(B, shadow(MI.getRawDest(), K),
                      Copy ? shadow(MT->getRawSource(), K) : nullptr, Len,
                      isa<AnyMemMoveInst>(MI));
  note(Copy ? "tangent-copy" : "tangent-fill", &MI);
}

/// The tangent of a BLAS call, lane by lane, after the call.
void ForwardSynthesizer::visitBlasCall(const BlasCall &Blas) {
  const CallBase &CB = *Blas.Call;
  if (!AA.pointsToActive(CB.getArgOperand(Blas.output())))
    return;
  auto *DC = cast<CallBase>(mapped(&CB));
  IRBuilder<> B(DC->getNextNode());
  for (unsigned K = 0; K < Width; ++K) {
    auto Arg = [&](unsigned I) { return DC->getArgOperand(I); };
    auto Shadow = [&](unsigned I) -> Value * {
      const Value *Ptr = CB.getArgOperand(I);
      return AA.pointsToActive(Ptr) ? shadow(Ptr, K) : nullptr;
    };
    BlasTangentInputs In{Arg, Shadow};
    emitBlasTangent(B, Blas, In);
  }
  note("tangent-blas", &CB);
}

/// A recursive call becomes a call of the callee's forward derivative
/// (RecursiveCalls.h), which returns the primal result and its tangents:
/// the primal result goes where the call would have put it, the tangents
/// to that slot's shadows.
void ForwardSynthesizer::visitRecursiveCall(const CallBase &CB,
                                            const CallDerivative &CD) {
  auto *DC = cast<CallBase>(mapped(&CB));
  IRBuilder<> B(DC);
  SmallVector<Value *, 16> Args(DC->args());
  SmallVector<Type *, 8> Fields;
  if (CD.RetType)
    Fields.push_back(CD.RetType);
  if (CD.Req.RetActive)
    Fields.append(Width, CD.RetType);
  StructType *ResultTy = StructType::get(Ctx, Fields);
  Value *Result;
  {
    IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
    Result = EB.CreateAlloca(ResultTy, nullptr, "enzpy.recursive.result");
  }
  Args[numba::RetPtrParam] = Result;
  auto arg = [&](unsigned I) {
    return CB.getArgOperand(I + numba::NumHiddenParams);
  };
  for (unsigned I = 0; I < CD.Req.Params.size(); ++I)
    if (CD.Req.Params[I].isDuplicated())
      for (unsigned K = 0; K < Width; ++K)
        Args.push_back(shadow(arg(I), K));
  for (unsigned I = 0; I < CD.Req.Params.size(); ++I)
    if (CD.Req.Params[I].Act == Activity::Active)
      for (unsigned K = 0; K < Width; ++K)
        Args.push_back(tangentOrZero(arg(I), K));
  CallInst *Call = B.CreateCall(CD.Fn, Args, DC->getName());
  Call->setDebugLoc(DC->getDebugLoc());
  DC->replaceAllUsesWith(Call);
  DC->eraseFromParent();
  B.SetInsertPoint(Call->getNextNode());
  const Value *RetPtr = CB.getArgOperand(numba::RetPtrParam);
  unsigned Field = 0;
  if (CD.RetType)
    B.CreateStore(
        B.CreateLoad(CD.RetType, B.CreateStructGEP(ResultTy, Result, Field++)),
        mapped(RetPtr));
  if (CD.Req.RetActive)
    for (unsigned K = 0; K < Width; ++K)
      B.CreateStore(B.CreateLoad(CD.RetType,
                                 B.CreateStructGEP(ResultTy, Result, Field++)),
                    shadow(RetPtr, K));
  note("tangent-recursive-call", &CB);
}

/// A call with a custom rule becomes a call of its forward function, which
/// runs the primal, writes the tangents of what it writes into the shadows
/// it is passed and returns the tangent of a float result
/// (rules/CustomRules.h). In batch mode the forward function runs once per
/// lane: lanes 2.. first, each on the memory as it was before the call,
/// then lane 1 on the real memory (laneMemory).
Error ForwardSynthesizer::visitCustomCall(const CustomCall &CC) {
  const CallBase &CB = *CC.Call;
  auto *DC = cast<CallBase>(mapped(&CB));
  IRBuilder<> B(DC);
  IRBuilder<> EB(Sk.Entry, Sk.Entry->getFirstInsertionPt());
  SmallVector<Value *, 16> Primal(DC->arg_begin() + CC.Hidden, DC->arg_end());
  uint64_t Active = 0;
  for (unsigned I = 0; I < CC.Args.size(); ++I) {
    const Value *PA = CB.getArgOperand(CC.Args[I].Operand);
    if (CC.Args[I].Kind == CustomCall::ArgKind::Memory
            ? AA.pointsToActive(PA)
            : CC.Args[I].Kind == CustomCall::ArgKind::Float && AA.isActive(PA))
      Active |= uint64_t(1) << I;
  }
  LaneMemory LM;
  if (Width > 1) {
    Expected<LaneMemory> M = laneMemory(CC);
    if (!M)
      return M.takeError();
    LM = std::move(*M);
  }
  Value *Exc = CC.Hidden ? DC->getArgOperand(numba::ExcInfoParam)
                         : Sk.D->getArg(numba::ExcInfoParam);
  bool ResultActive = AA.customResultActive(CC);
  Lanes Y(Width, nullptr), DY(Width, nullptr), MIs(Width, nullptr),
      SDs(Width, nullptr);
  // Lanes 2.. first, while the memory still holds what the call reads.
  for (unsigned Step = 1; Step <= Width; ++Step) {
    unsigned K = Step % Width;
    SmallVector<Value *, 16> Operands(Primal);
    RuleCallInfo Info{Active, 0, Width, K, ResultActive};
    if (K != 0) {
      for (auto &[Root, Copy] : LM.Snapshots)
        B.CreateMemCpy(Copy.Buffer, MaybeAlign(), Copy.Base, MaybeAlign(),
                       Copy.Bytes);
      for (auto &[Operand, Root, Base] : LM.Redirected) {
        Value *&Op = Operands[Operand - CC.Hidden];
        Value *Offset = B.CreateSub(B.CreatePtrToInt(Op, B.getInt64Ty()),
                                    B.CreatePtrToInt(Base, B.getInt64Ty()));
        Value *Moved = B.CreateGEP(B.getInt8Ty(), LM.Snapshots[Root].Buffer,
                                   Offset, "enzpy.lane.arg");
        Op = B.CreateSelect(B.CreateIsNull(Op), Op, Moved);
      }
      Info.Overwritten = LM.WrapperCopies | LaneCallBit;
    }
    appendRuleShadows(
        B, CC, Active, [&](const Value *PA) { return shadow(PA, K); },
        [&](const Value *PA) { return tangentOrZero(PA, K); }, Operands);
    Value *Result = nullptr;
    Value *Status =
        emitRuleCall(B, EB, CC.Forward, CC.ForwardResult, Sk.ruleStatusSlot(),
                     Exc, Info, Operands, Result);
    if (K == 0)
      Y[0] = CC.returnsFloat() || CC.returnsArray() ? nullptr : Result;
    if (Result && CC.returnsFloat()) {
      Y[K] = B.CreateExtractValue(Result, 0);
      DY[K] = B.CreateExtractValue(Result, 1);
    } else if (Result && CC.returnsArray()) {
      // (y, the shadow's owner, the shadow of y's data pointer): the shadow
      // lives as long as lane 1's y (mirrorRefcounts); the other lanes'
      // results are dropped.
      Y[K] = B.CreateExtractValue(Result, 0);
      MIs[K] = B.CreateExtractValue(Result, {1, 0});
      SDs[K] = B.CreateExtractValue(Result, 2);
      if (K != 0)
        B.CreateCall(numba::decrefFunction(*Sk.D->getParent()),
                     {B.CreateExtractValue(Result, {0, 0})});
    }
    if (K == 0 && CC.Hidden) {
      const Value *RetPtr = CB.getArgOperand(numba::RetPtrParam);
      if (Y[0])
        B.CreateStore(Y[0], mapped(RetPtr));
      if (DY[0] && AA.pointsToActive(RetPtr))
        for (unsigned L = 0; L < Width; ++L)
          B.CreateStore(DY[L], shadow(RetPtr, L));
      DC->replaceAllUsesWith(Status);
    }
  }
  for (auto &[Root, Copy] : LM.Snapshots)
    B.CreateCall(libcFree(*Sk.D->getParent()), {Copy.Buffer});
  if (CC.returnsArray() && MIs[0])
    Sk.fillRuleResultShadows(CB, MIs, SDs);
  if (!CC.Hidden) {
    if (Y[0])
      DC->replaceAllUsesWith(Y[0]);
    if (DY[0] && AA.isActive(&CB))
      Tangents[&CB] = DY;
  }
  DC->eraseFromParent();
  note("tangent-custom-rule", &CB);
  return Error::success();
}

/// Lanes 2.. of a forward rule call must see the memory the call may write
/// as it was before the call, and must not change it. Memory in an array
/// the function allocated (a root whose allocation dominates the call, the
/// operand an address into it) is copied whole into a snapshot, refreshed
/// before each lane and released after them: pointers into one allocation
/// keep sharing memory. An array argument of another origin is copied by
/// the rule's wrapper (RuleConfig stays as in lane 1). Raw pointers of
/// another origin cannot be copied: the call is refused in batch mode, and
/// drivers that chose the width run one direction at a time.
Expected<ForwardSynthesizer::LaneMemory>
ForwardSynthesizer::laneMemory(const CustomCall &CC) {
  const CallBase &CB = *CC.Call;
  if (!PDT) {
    PDT.emplace(P);
    PLI.emplace(*PDT);
  }
  // An address into this very allocation (or null), not one carried over
  // from an earlier iteration of a loop, through what allocationExtent
  // follows.
  SmallPtrSet<const Value *, 8> Seen;
  std::function<bool(const Value *, const Value *)> follows =
      [&](const Value *V, const Value *Root) {
        if (V == Root || isa<ConstantPointerNull>(V) || !Seen.insert(V).second)
          return true;
        if (auto *G = dyn_cast<GEPOperator>(V))
          return follows(G->getPointerOperand(), Root);
        if (auto *Sel = dyn_cast<SelectInst>(V))
          return follows(Sel->getTrueValue(), Root) &&
                 follows(Sel->getFalseValue(), Root);
        if (auto *Phi = dyn_cast<PHINode>(V))
          return all_of(Phi->incoming_values(),
                        [&](const Value *In) { return follows(In, Root); });
        return false;
      };
  auto addressesInto = [&](const Value *PA, const Value *Root) {
    SmallVector<const Value *, 4> Objects;
    getUnderlyingObjects(PA, Objects, &*PLI);
    Seen.clear();
    return all_of(Objects,
                  [&](const Value *O) {
                    return O == Root || isa<ConstantPointerNull>(O);
                  }) &&
           follows(PA, Root);
  };
  LaneMemory LM;
  DenseMap<const Value *, std::pair<Value *, Value *>> Extents;
  IRBuilder<> B(cast<Instruction>(mapped(&CB)));
  // The allocation operand A points into, when it can be copied whole.
  auto allocationRoot = [&](const CustomCall::Arg &A) -> const Value * {
    const Value *PA = CB.getArgOperand(A.Operand);
    const RootSet &Roots = TA.roots(PA);
    const Value *Root = Roots.size() == 1 ? Roots[0] : nullptr;
    const CallBase *Alloc = Root ? TA.allocationOf(Root) : nullptr;
    return Alloc &&
                   (numba::isAllocationCall(Alloc) ||
                    numba::isRawAllocation(Alloc)) &&
                   addressesInto(PA, Root)
               ? Root
               : nullptr;
  };
  auto redirect = [&](const CustomCall::Arg &A, const Value *Root) {
    auto [Base, Bytes] = allocationExtent(CB.getArgOperand(A.Operand), Root,
                                          TA.allocationOf(Root), Extents);
    Snapshot &S = LM.Snapshots[Root];
    if (!S.Base) {
      S.Base = Base;
      S.Bytes = Bytes;
    } else if (S.Base != Base) {
      // Another way to the same allocation, null on other paths: the
      // larger extent is the allocation's.
      Value *More = B.CreateICmpUGT(Bytes, S.Bytes);
      S.Base = B.CreateSelect(More, Base, S.Base);
      S.Bytes = B.CreateSelect(More, Bytes, S.Bytes);
    }
    LM.Redirected.push_back({A.Operand, Root, Base});
  };
  for (unsigned I = 0; I < CC.Args.size(); ++I) {
    const CustomCall::Arg &A = CC.Args[I];
    if (A.Kind != CustomCall::ArgKind::Memory || !CC.mayWrite(A.Operand))
      continue;
    if (const Value *Root = allocationRoot(A)) {
      redirect(A, Root);
    } else if (!A.Raw) {
      LM.WrapperCopies |= uint64_t(1) << I;
    } else {
      return makeError(
          "unsupported-batch",
          "forward batch mode (width > 1) through the rule for '" +
              Twine(CC.Name) +
              "', which may write memory it is passed as a "
              "raw pointer (" +
              AA.describeMemory(CB.getArgOperand(A.Operand)) +
              ") that enzpy cannot copy for each direction, is not "
              "supported: run one direction at a time, or use reverse mode",
          &CB);
    }
  }
  // Operands the call only reads, into an allocation that is copied, read
  // the copy: what the call writes through one pointer it may read through
  // another.
  for (const CustomCall::Arg &A : CC.Args)
    if (A.Kind == CustomCall::ArgKind::Memory && !CC.mayWrite(A.Operand))
      if (const Value *Root = allocationRoot(A);
          Root && LM.Snapshots.count(Root))
        redirect(A, Root);
  for (auto &[Root, S] : LM.Snapshots) {
    // One byte more: a null operand has an extent of 0 bytes.
    S.Buffer = B.CreateCall(libcMalloc(*Sk.D->getParent()),
                            {B.CreateAdd(S.Bytes, B.getInt64(1))},
                            "enzpy.lane.snapshot");
    Sk.failIfNull(cast<Instruction>(S.Buffer));
  }
  return LM;
}

/// The start and size in bytes, in the derivative, of the allocation
/// \p Alloc (whose data pointer is \p Root) that the address \p PA points
/// into: through GEPs, and through phis of such addresses and nulls (null,
/// 0 for a null), mirrored by phis (laneMemory checked that no phi is a
/// loop's).
std::pair<Value *, Value *> ForwardSynthesizer::allocationExtent(
    const Value *PA, const Value *Root, const CallBase *Alloc,
    DenseMap<const Value *, std::pair<Value *, Value *>> &Memo) {
  if (PA == Root)
    return {mapped(Root), mapped(Alloc->getArgOperand(0))};
  Type *I64 = Type::getInt64Ty(Ctx);
  if (isa<ConstantPointerNull>(PA))
    return {PA->getType() == PointerType::getUnqual(Ctx)
                ? const_cast<Value *>(PA)
                : ConstantPointerNull::get(PointerType::getUnqual(Ctx)),
            ConstantInt::get(I64, 0)};
  if (auto *G = dyn_cast<GEPOperator>(PA))
    return allocationExtent(G->getPointerOperand(), Root, Alloc, Memo);
  if (auto It = Memo.find(PA); It != Memo.end())
    return It->second;
  if (const auto *Sel = dyn_cast<SelectInst>(PA)) {
    auto [TB, TS] = allocationExtent(Sel->getTrueValue(), Root, Alloc, Memo);
    auto [FB, FS] = allocationExtent(Sel->getFalseValue(), Root, Alloc, Memo);
    IRBuilder<> B(cast<Instruction>(mapped(Sel)));
    Value *C = mapped(Sel->getCondition());
    return Memo[PA] = {B.CreateSelect(C, TB, FB, "enzpy.lane.base"),
                       B.CreateSelect(C, TS, FS, "enzpy.lane.bytes")};
  }
  const auto *Phi = cast<PHINode>(PA);
  auto *DPhi = cast<PHINode>(mapped(Phi));
  IRBuilder<> B(DPhi->getParent(), DPhi->getParent()->getFirstNonPHIIt());
  PHINode *Base =
      B.CreatePHI(B.getPtrTy(), Phi->getNumIncomingValues(), "enzpy.lane.base");
  PHINode *Bytes =
      B.CreatePHI(I64, Phi->getNumIncomingValues(), "enzpy.lane.bytes");
  Memo[PA] = {Base, Bytes};
  for (unsigned I = 0; I < Phi->getNumIncomingValues(); ++I) {
    auto [IB, IS] =
        allocationExtent(Phi->getIncomingValue(I), Root, Alloc, Memo);
    auto *From = cast<BasicBlock>(mapped(Phi->getIncomingBlock(I)));
    Base->addIncoming(IB, From);
    Bytes->addIncoming(IS, From);
  }
  return {Base, Bytes};
}

/// The skeleton, with the tangents of Active scalars as trailing
/// parameters (Width per scalar), and the seeded return's tangent slots.
void ForwardSynthesizer::createFunction() {
  SmallVector<DerivativeSkeleton::Trailing, 8> Extra;
  SmallVector<unsigned, 8> ActiveParams;
  for (unsigned I = 0; I < Req.Params.size(); ++I) {
    if (Req.Params[I].Act != Activity::Active)
      continue;
    Argument *PA = numba::userParam(P, I);
    ActiveParams.push_back(I);
    for (unsigned K = 0; K < Width; ++K)
      Extra.push_back(
          {PA->getType(), Sk.laneName(PA->getName() + "'tangent", K)});
  }
  Sk.create(Extra);
  if (Req.RetActive)
    Sk.createReturnShadows(
        [&](unsigned) { return Constant::getNullValue(Sk.RetType); });
  unsigned Next = 0;
  for (unsigned I : ActiveParams) {
    Lanes T;
    for (unsigned K = 0; K < Width; ++K)
      T.push_back(Sk.trailing(Next++));
    Argument *PA = numba::userParam(P, I);
    if (AA.isActive(PA))
      Tangents[PA] = std::move(T);
  }
}

void ForwardSynthesizer::createTangentPhis(const BasicBlock &PB) {
  BasicBlock *DB = Sk.mapped(&PB);
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
      BasicBlock *From = Sk.mapped(Phi->getIncomingBlock(I));
      for (unsigned K = 0; K < Width; ++K)
        cast<PHINode>(T[K])->addIncoming(
            tangentOrZero(Phi->getIncomingValue(I), K), From);
    }
  }
}

Error ForwardSynthesizer::visitInstruction(const Instruction &PI) {
  if (isa<PHINode>(PI) || PI.isTerminator())
    return Error::success(); // phis: see createTangentPhis
  if (auto *MI = dyn_cast<AnyMemIntrinsic>(&PI)) {
    visitMemoryIntrinsic(*MI);
    return Error::success();
  }
  auto *DI = cast<Instruction>(mapped(&PI));
  IRBuilder<> B(DI->getNextNode());
  if (isa<LoadInst, StoreInst>(DI))
    Scopes->primal(*DI);

  if (auto *St = dyn_cast<StoreInst>(&PI)) {
    mirrorSpill(*St);
    if (St->getPointerOperand() == P.getArg(numba::RetPtrParam))
      dropReturnedShadows(*St);
    if (!AA.pointsToActive(St->getPointerOperand()))
      return Error::success();
    const Value *V = St->getValueOperand();
    bool Apart = Sk.lanesApart(St->getPointerOperand());
    for (unsigned K = 0; K < Width; ++K) {
      Value *S = shadow(St->getPointerOperand(), K);
      StoreInst *TS =
          B.CreateAlignedStore(tangentOrZero(V, K), S, St->getAlign());
      if (Apart)
        Scopes->lane(*TS, K);
    }
    note("tangent-store", St);
    return Error::success();
  }
  if (auto *CB = dyn_cast<CallBase>(&PI))
    if (std::optional<CustomCall> CC = matchCustomCall(*CB)) {
      if (AA.customCallActive(*CC))
        return visitCustomCall(*CC);
      return Error::success();
    }
  if (auto *CB = dyn_cast<CallBase>(&PI))
    if (std::optional<BlasCall> Blas = matchBlasCall(*CB)) {
      visitBlasCall(*Blas);
      return Error::success();
    }
  if (numba::isRawFree(PI)) {
    // The raw buffer's shadow goes with it (the activity analysis let only
    // frees of buffers allocated in the function through).
    const Value *Buf = PI.getOperand(0);
    if (AA.pointsToActive(Buf))
      for (unsigned K = 0; K < Width; ++K)
        B.CreateCall(numba::rawFreeFunction(*P.getParent()), {shadow(Buf, K)});
    return Error::success();
  }
  if (auto *CB = dyn_cast<CallBase>(&PI)) {
    auto Found = Canon.CallDerivatives.find(CB);
    if (Found != Canon.CallDerivatives.end()) {
      visitRecursiveCall(*CB, Found->second);
      return Error::success();
    }
  }
  // Any other call that may write differentiable memory has no tangent
  // here: an error, not a stale shadow. (Lifetime markers and intrinsics
  // that only read change no value.)
  if (auto *CB = dyn_cast<CallBase>(&PI))
    if (!findCallRule(CB->getCalledFunction()) &&
        !isInactiveFunction(CB->getCalledFunction()) &&
        !numba::isAllocationCall(CB) && !numba::isRefcountCall(PI) &&
        !CB->isLifetimeStartOrEnd() &&
        !(isa<IntrinsicInst>(CB) && !CB->mayWriteToMemory()))
      for (const Value *Arg : CB->args())
        if (Arg->getType()->isPointerTy() && AA.pointsToActive(Arg))
          return makeError(
              "unsupported",
              "forward mode cannot differentiate the call to '" +
                  displayName(CB->getCalledFunction()
                                  ? CB->getCalledFunction()->getName()
                                  : StringRef("an indirect callee")) +
                  "', which reads or writes differentiable memory (reverse "
                  "mode can)",
              &PI);
  if (!AA.isActive(&PI))
    return Error::success();

  Lanes T(Width, nullptr);
  Type *Ty = PI.getType();
  if (auto *L = dyn_cast<LoadInst>(&PI)) {
    bool Apart = Sk.lanesApart(L->getPointerOperand());
    for (unsigned K = 0; K < Width; ++K) {
      LoadInst *TL =
          B.CreateAlignedLoad(Ty, shadow(L->getPointerOperand(), K),
                              L->getAlign(), PI.getName() + "'tangent");
      if (Apart)
        Scopes->lane(*TL, K);
      T[K] = TL;
    }
  } else if (const ScalarRule *Rule = findScalarRule(PI)) {
    // tangent = sum_i partial_i * tangent_i; the partials serve every lane.
    // function_ref does not own its callable: keep the lambdas alive.
    auto Operand = [&](unsigned I) { return mapped(ruleOperand(PI, I)); };
    auto Result = [&]() -> Value * { return DI; };
    RuleExpr X(B, Ty, Operand, Result, ruleCallee(PI));
    SmallVector<std::pair<Partial, const Value *>, 3> Parts;
    for (unsigned I = 0, N = ruleOperandCount(PI); I < N; ++I) {
      const Value *Op = ruleOperand(PI, I);
      if (AA.isActive(Op))
        Parts.push_back({Rule->Partial(X, I), Op});
    }
    for (unsigned K = 0; K < Width; ++K) {
      SmallVector<std::pair<Partial, Value *>, 3> Terms;
      for (auto &[P, Op] : Parts)
        Terms.push_back({P, tangent(Op, K)});
      T[K] = sumTangents(B, Terms, Ty);
    }
  } else {
    return makeError(
        "internal",
        "forward mode has no tangent for an instruction of kind '" +
            Twine(PI.getOpcodeName()) + "'",
        &PI);
  }
  for (Value *&V : T)
    if (!V)
      V = Constant::getNullValue(Ty);
  Tangents[&PI] = std::move(T);
  note("tangent", &PI);
  return Error::success();
}

/// Result struct: the primal return value (when asked for), then the
/// return value's tangent in each lane (when it is seeded).
void ForwardSynthesizer::createResult() {
  if (!Canon.NormalExit)
    return; // the primal never returns normally
  IRBuilder<> B(Sk.mapped(Canon.NormalExit)->getTerminator());
  SmallVector<Value *, 8> Values;
  if (Req.ReturnPrimal && Sk.RetType)
    Values.push_back(B.CreateLoad(Sk.RetType, Sk.RetSlot));
  if (Req.RetActive)
    for (Value *S : Sk.returnShadows())
      Values.push_back(B.CreateLoad(Sk.RetType, S));
  Sk.storeResult(B, Values);
  Sk.finishRuleStatus(
      dyn_cast<ReturnInst>(Sk.mapped(Canon.NormalExit)->getTerminator()));
}

/// A failed shadow allocation returns NoMemoryStatus, as a failed tape
/// allocation does in reverse mode.
void ForwardSynthesizer::emitNullChecks() {
  BasicBlock *Fail = BasicBlock::Create(Ctx, "enzpy.shadow.oom", Sk.D);
  ReturnInst::Create(
      Ctx, ConstantInt::get(Type::getInt32Ty(Ctx), numba::NoMemoryStatus),
      Fail);
  Sk.emitNullChecks(Fail);
  if (pred_empty(Fail))
    Fail->eraseFromParent();
}

Expected<Function *> ForwardSynthesizer::run() {
  if (Log)
    Log->begin("forward");
  Scopes.emplace(Ctx, Width);
  // Before the primal is cloned: the plan's checks are cloned with it.
  ParallelForward Par(Sk);
  Par.plan();
  createFunction();
  createShadowAllocations();
  ShadowedMemInfoEscapes = shadowedMemInfoEscapes();
  ReversePostOrderTraversal<Function *> RPOT(&P);
  // Definitions come before their uses in reverse post-order, except for
  // phis' incoming values, which are filled in at the end.
  for (BasicBlock *PB : RPOT) {
    if (!Canon.returns(PB)) {
      // Only runs on the way to raising: no tangents, but pointers spilled
      // there must not leave stale shadows behind.
      for (const Instruction &PI : *PB)
        if (auto *St = dyn_cast<StoreInst>(&PI))
          mirrorSpill(*St);
      continue;
    }
    createTangentPhis(*PB);
    for (const Instruction &PI : *PB)
      if (Error E = visitInstruction(PI))
        return std::move(E);
  }
  fillTangentPhis();
  if (Error E = mirrorRefcounts())
    return std::move(E);
  createResult();
  emitNullChecks();
  UnneededStores NoNeed(Sk);
  NoNeed.drop();
  Par.outline();
  if (Log) {
    Par.record(*Log);
    NoNeed.record(*Log);
  }
  return Sk.D;
}

} // namespace

Expected<Function *> synthesizeForward(DerivativeSkeleton &Sk,
                                       DecisionLog *Log) {
  ForwardSynthesizer S(Sk, Log);
  return S.run();
}

} // namespace enzpy
