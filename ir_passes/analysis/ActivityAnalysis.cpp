//===- ActivityAnalysis.cpp - which values carry derivatives --------------===//
#include "analysis/ActivityAnalysis.h"
#include "driver/Diagnostics.h"
#include "numba/NumbaABI.h"
#include "rules/BlasRules.h"
#include "rules/CustomRules.h"
#include "rules/DerivativeRules.h"
#include "rules/UserRules.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Analysis/ValueTracking.h"
#include "llvm/IR/Function.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/IntrinsicInst.h"
#include "llvm/IR/Intrinsics.h"

using namespace llvm;

namespace enzpy {

static bool isFloatLike(const Type *T) { return T->isFloatingPointTy(); }

bool ActivityAnalysis::pointsToActive(const Value *Ptr) const {
  for (const Value *R : TA.roots(Ptr))
    if (ActiveRoots.contains(R))
      return true;
  return false;
}

std::string ActivityAnalysis::describeMemory(const Value *Ptr) const {
  SmallVector<std::string, 3> Parts;
  auto add = [&](std::string W) {
    if (!is_contained(Parts, W))
      Parts.push_back(std::move(W));
  };
  for (const Value *R : TA.roots(Ptr)) {
    if (R == UnknownRoot)
      add("a pointer the function loaded from memory or got from a call");
    else if (TA.isRetPtr(R))
      add("the return value");
    else if (auto *A = dyn_cast<Argument>(R))
      add(numba::isUserParam(*A) ? "argument '" + numba::pythonArgName(*A) + "'"
                                 : std::string("numba's exception state"));
    else if (isa<AllocaInst>(R))
      add("a local variable");
    else if (TA.allocationOf(R))
      add("an array allocated in the function");
    else if (numba::isRawAllocation(R))
      add("a temporary buffer of numba's runtime");
    else if (isa<GlobalValue>(R))
      add("a global");
  }
  if (Parts.empty())
    return "memory the engine does not know";
  std::string Out = Parts.front();
  for (const std::string &P : drop_begin(Parts))
    Out += " or " + P;
  return Out;
}

/// Words for a value of type \p T that is not a float.
static std::string describeNonFloat(const Type *T) {
  if (T->isIntegerTy(1))
    return "a boolean";
  if (T->isIntegerTy())
    return "an integer";
  if (T->isPointerTy())
    return "a pointer";
  return "a non-float value";
}

/// A function of the Python C API (numba calls it to print arrays and to
/// box other values for the interpreter).
static bool isPythonAPI(const CallBase &CB) {
  const Function *Callee = CB.getCalledFunction();
  return Callee && (Callee->getName().starts_with("Py") ||
                    Callee->getName().starts_with("_Py"));
}

bool ActivityAnalysis::touchesOnlyInactiveData(const CallBase &CB) const {
  bool AnyVaried = false, AnyPointer = false;
  for (const Value *A : CB.args()) {
    AnyVaried |= isVaried(A);
    if (!A->getType()->isPointerTy())
      continue;
    AnyPointer = true;
    // Also through pointers kept in local memory the call gets (a parallel
    // loop's body receives its arrays so).
    if (any_of(TA.reachableRoots(A),
               [&](const Value *R) { return ActiveRoots.contains(R); }))
      return false;
    // Memory of unknown origin might be differentiable, unless the pointer
    // is a handle a runtime call returned (numba's random state, say).
    SmallVector<const Value *, 4> Bases;
    getUnderlyingObjects(A, Bases);
    bool Handle = all_of(Bases, [](const Value *B) {
      return isa<ConstantPointerNull>(B) ||
             (isa<CallBase>(B) && !numba::isAllocationCall(B) &&
              !numba::isRawAllocation(B));
    });
    if (!ActiveRoots.empty() && TA.roots(A).contains(UnknownRoot) && !Handle)
      return false;
  }
  // Varied values may go in only where nothing carries them on: no float
  // comes back and no memory of the kernel's is handed over (print(x)
  // boxes a float this way; floats read back through what it returns come
  // from untraceable memory, which is refused).
  return !AnyVaried || (!AnyPointer && !isFloatLike(CB.getType()));
}

/// Why a call into numba's helper library implementing \p What is refused.
static std::string helperRefusal(StringRef What) {
  return (What +
          " cannot be differentiated yet: it reads or writes values that "
          "carry derivatives (it is let through where everything it reads "
          "and writes is constant: pass those arrays as Const)")
      .str();
}

bool ActivityAnalysis::needsCallDerivative(const CallBase &CB) const {
  return C.isRecursiveCall(CB) && C.returns(CB.getParent()) &&
         !touchesOnlyInactiveData(CB);
}

/// The float type of the memory \p Ptr points into, when it is one for all
/// of its (known) roots.
static Type *floatElementType(const TypeAnalysis &TA, const Value *Ptr) {
  Type *T = nullptr;
  for (const Value *R : TA.roots(Ptr)) {
    Type *E = R == UnknownRoot ? nullptr : TA.elementType(R);
    if (!E || (T && T != E))
      return nullptr;
    T = E;
  }
  return T;
}

Type *ActivityAnalysis::shadowElementType(const Value *Ptr) const {
  return floatElementType(TA, Ptr);
}

bool ActivityAnalysis::readsFloatsFrom(const Value *Root) const {
  for (const Instruction &I : instructions(F))
    if (auto *L = dyn_cast<LoadInst>(&I);
        L && L->getType()->isFloatingPointTy() &&
        TA.roots(L->getPointerOperand()).contains(Root))
      return true;
  return false;
}

bool ActivityAnalysis::customCallActive(const CustomCall &CC) const {
  if (CC.AlwaysActive)
    return true;
  for (const CustomCall::Arg &A : CC.Args) {
    const Value *V = CC.Call->getArgOperand(A.Operand);
    if (A.Kind == CustomCall::ArgKind::Memory ? pointsToActive(V) : isVaried(V))
      return true;
  }
  return false;
}

bool ActivityAnalysis::customResultActive(const CustomCall &CC) const {
  if (CC.returnsArray()) {
    RuleResult RR = ruleResult(*CC.Call);
    return RR.Data && pointsToActive(RR.Data);
  }
  if (!CC.returnsFloat())
    return false;
  if (!CC.Hidden)
    return isActive(CC.Call);
  // numba's return slot: used when a read of it carries a derivative.
  const Value *Slot = CC.Call->getArgOperand(numba::RetPtrParam);
  if (!pointsToActive(Slot))
    return false;
  if (!isa<AllocaInst>(Slot))
    return true;
  for (const User *U : Slot->users()) {
    if (auto *L = dyn_cast<LoadInst>(U); L && isActive(L))
      return true;
    if (!isa<LoadInst>(U) && !isa<StoreInst>(U) && U != CC.Call &&
        !isa<LifetimeIntrinsic>(U))
      return true; // read some other way
  }
  return false;
}

/// The callees of pending custom rules (rules/CustomRules.h) whose calls
/// carry derivatives here, one per line of a "rules_needed" error, for
/// enzpy to build their functions and ask again.
Error ActivityAnalysis::requestPendingRules() const {
  SetVector<StringRef> Needed;
  for (Instruction &I : instructions(F))
    if (auto *CB = dyn_cast<CallBase>(&I); CB && C.returns(I.getParent()))
      if (std::optional<CustomCall> CC = matchCustomCall(*CB);
          CC && CC->Pending && customCallActive(*CC))
        Needed.insert(CC->Callee->getName());
  if (Needed.empty())
    return Error::success();
  return makeError("rules_needed", join(Needed, "\n"));
}

/// A call of a function with a custom rule (rules/CustomRules.h): the rule
/// function the mode needs must exist, every array it is passed must be
/// traceable, and differentiable results must land in memory that can hold
/// their derivatives.
Error ActivityAnalysis::checkCustomCall(const CustomCall &CC) const {
  if (!customCallActive(CC))
    return Error::success();
  const CallBase &CB = *CC.Call;
  auto missing = [&](StringRef What) {
    return makeError(
        "unsupported",
        "the rule for '" + Twine(CC.Name) + "' has no " + What +
            " function (enzpy.register_rule: " + What + "=...), which " +
            (Req.DiffMode == Mode::Forward ? "forward" : "reverse") +
            " mode needs",
        &CB);
  };
  if (Req.DiffMode == Mode::Forward && !CC.Forward)
    return missing("forward");
  if (Req.DiffMode == Mode::Reverse && (!CC.Augmented || !CC.Reverse))
    return missing(CC.Augmented ? "reverse" : "augmented");
  for (const CustomCall::Arg &A : CC.Args) {
    if (A.Kind != CustomCall::ArgKind::Memory)
      continue;
    const Value *V = CB.getArgOperand(A.Operand);
    if (CC.WritesNothing && CC.storesThrough(A.Operand))
      return makeError(
          "unsupported",
          "the rule for '" + Twine(CC.Name) +
              "' (enzpy.register_jvp) is for a function that writes none of "
              "its arguments, but it writes " +
              describeMemory(V) +
              ": its derivative would miss what it writes; give it a rule "
              "with enzpy.register_rule (forward, augmented and reverse) "
              "instead",
          &CB);
    if (TA.roots(V).contains(UnknownRoot))
      return makeError("unsupported",
                       "the rule for '" + Twine(CC.Name) +
                           "' is passed memory the engine cannot trace (" +
                           describeMemory(V) + ")",
                       &CB);
    // Floats by what the kernel does with the memory, or by numba's type of
    // the argument where the njit function's own body stores through it (a
    // Const argument has no element type of its own). Writes the analysis
    // cannot see (a C function, a call it passes the pointer to) are
    // trusted not to touch a Const argument: most such pointers are inputs.
    bool Floats =
        floatElementType(TA, V) || (A.Elem && CC.storesThrough(A.Operand));
    // An always-active call brings derivatives from outside the kernel:
    // what it writes into a Const argument the kernel reads floats from
    // would lose them (a receive into a Const array).
    if (CC.AlwaysActive && CC.mayWrite(A.Operand))
      for (const Value *R : TA.roots(V))
        if (auto *Arg = dyn_cast<Argument>(R);
            Arg && numba::isUserParam(*Arg) && !ActiveRoots.contains(R) &&
            readsFloatsFrom(R))
          return makeError("activity",
                           "the rule for '" + Twine(CC.Name) +
                               "' writes values that carry derivatives into "
                               "argument '" +
                               numba::pythonArgName(*Arg) +
                               "', which is Const; pass it as Duplicated "
                               "(with a shadow array)",
                           &CB);
    if (!CC.mayWrite(A.Operand) || !Floats)
      continue;
    // Every memory the pointer may reach must hold derivatives, not just
    // one of them (numba-mpi receives into the argument itself or into a
    // buffer of its own, by the argument's layout).
    if (Error E = checkVariedInto(V, CB))
      return E;
    if (pointsToActive(V))
      continue;
    return makeError("activity",
                     "the rule for '" + Twine(CC.Name) +
                         "' writes a differentiable result into memory "
                         "that cannot hold its derivative (" +
                         describeMemory(V) +
                         "); pass it as Duplicated (with a shadow array)",
                     &CB);
  }
  return Error::success();
}

bool ActivityAnalysis::hasDifferentiableInput(const CallBase &CB) const {
  for (const Value *A : drop_begin(CB.args(), numba::NumHiddenParams))
    if (isVaried(A) || (A->getType()->isPointerTy() && pointsToActive(A)))
      return true;
  return false;
}

/// A recursive call is differentiated by a derivative of the callee (see
/// driver/RecursiveCalls.h): the values it takes and returns must be ones
/// that such a derivative can carry.
Error ActivityAnalysis::checkRecursiveCall(const CallBase &CB) const {
  const Function &Callee = *CB.getCalledFunction();
  Type *Ret = storedReturnType(Callee);
  if (Ret && !Ret->isFloatingPointTy() && !Ret->isIntegerTy() &&
      !Ret->isPointerTy())
    return makeError("unsupported",
                     "the recursive function '" +
                         displayName(Callee.getName()) +
                         "' returns a tuple or structure; recursive functions "
                         "are differentiated when they return one float (or "
                         "an integer, or None)",
                     &CB);
  for (const Value *A : drop_begin(CB.args(), numba::NumHiddenParams))
    if (A->getType()->isPointerTy() && pointsToActive(A) &&
        !floatElementType(TA, A))
      return makeError("unsupported",
                       "the recursive function '" +
                           displayName(Callee.getName()) +
                           "' is passed differentiable memory that is not an "
                           "array of one float type (" +
                           describeMemory(A) + ")",
                       &CB);
  return Error::success();
}

Error ActivityAnalysis::checkCall(const CallBase &CB) const {
  const Function *Callee = CB.getCalledFunction();
  if (!Callee) {
    if (touchesOnlyInactiveData(CB))
      return Error::success();
    return makeError("unsupported",
                     "a call of a function through its address (a ctypes "
                     "function, a cfunc, a function pointer) cannot be "
                     "differentiated: its body is not available; give it a "
                     "derivative with enzpy.register_partials or "
                     "enzpy.register_rule, or declare it enzpy.inactive (a "
                     "numba cfunc called directly is looked up at run time, "
                     "where no rule can match it: call it through its "
                     "ctypes function, e.g. `f_c = my_cfunc.ctypes` at "
                     "module level)",
                     &CB);
  }
  if (std::optional<CustomCall> CC = matchCustomCall(CB))
    return checkCustomCall(*CC);
  if (findCallRule(Callee))
    return Error::success();
  if (std::optional<BlasCall> Blas = matchBlasCall(CB)) {
    // Arrays the analysis cannot trace might be differentiable.
    SmallVector<unsigned, 3> Arrays(Blas->inputs());
    Arrays.push_back(Blas->output());
    for (unsigned I : Arrays)
      if (!ActiveRoots.empty() &&
          TA.roots(CB.getArgOperand(I)).contains(UnknownRoot))
        return makeError("unsupported",
                         Twine(numba::describeHelper(Callee->getName())) +
                             ": an array it uses cannot be traced",
                         &CB);
    bool AnyInput = false;
    for (unsigned I : Blas->inputs())
      AnyInput |= pointsToActive(CB.getArgOperand(I));
    if (AnyInput && !pointsToActive(CB.getArgOperand(Blas->output())))
      return makeError("unsupported",
                       Twine(numba::describeHelper(Callee->getName())) +
                           " writes a differentiable result into memory "
                           "that cannot hold its derivative",
                       &CB);
    return Error::success();
  }
  if (auto *MI = dyn_cast<AnyMemIntrinsic>(&CB)) {
    // Fills of differentiable memory and copies (memcpy, and memmove whose
    // operands may overlap) between differentiable arrays of one float type
    // have derivatives; other copies do not.
    auto *MT = dyn_cast<AnyMemTransferInst>(MI);
    bool DestActive = pointsToActive(MI->getRawDest());
    bool SrcActive = MT && pointsToActive(MT->getRawSource());
    if (!MT || (!DestActive && !SrcActive))
      return Error::success();
    auto floatType = [&](const Value *Ptr) {
      return floatElementType(TA, Ptr);
    };
    if (SrcActive)
      if (Error E = checkVariedInto(MI->getRawDest(), CB))
        return E;
    if (!SrcActive && TA.roots(MT->getRawSource()).contains(UnknownRoot))
      return makeError("unsupported",
                       "an array copy fills differentiable memory with data "
                       "the engine cannot trace; it might be a "
                       "differentiable array, so this is not supported yet",
                       &CB);
    if (SrcActive &&
        (!floatType(MT->getRawDest()) ||
         floatType(MT->getRawDest()) != floatType(MT->getRawSource())))
      return makeError("unsupported",
                       "an array copy between memory of different element "
                       "types carries differentiable data, which is not "
                       "supported yet",
                       &CB);
    return Error::success();
  }
  if (Callee->isIntrinsic()) {
    for (const Value *A : CB.args())
      if (isVaried(A))
        return makeError(
            "unsupported",
            "no derivative rule for the operation '" +
                Intrinsic::getBaseName(Callee->getIntrinsicID()).drop_front(5) +
                "' on differentiable values",
            &CB);
    return Error::success();
  }
  if (numba::isInactiveRuntimeCall(Callee->getName())) {
    // Freeing a raw buffer (a temporary of numba's) frees its shadow too.
    // The pointer may also point elsewhere on paths where numba frees
    // nothing (the source itself, when no temporary was needed): whenever
    // the primal frees it, it is the buffer, and its shadow the buffer's.
    const RootSet &Freed = TA.roots(CB.getArgOperand(0));
    if (numba::isRawFree(CB) && !Freed.contains(UnknownRoot) &&
        any_of(Freed, [&](const Value *R) { return TA.isRawBuffer(R); }))
      return Error::success();
    for (const Value *A : CB.args())
      if (A->getType()->isPointerTy() && pointsToActive(A))
        return makeError("unsupported",
                         "an array that carries derivatives is passed to "
                         "numba's runtime in a way enzpy cannot follow",
                         &CB);
    return Error::success();
  }
  // A function declared inactive (enzpy.inactive) carries no derivative:
  // its result and what it writes are constants, which is only right when
  // it writes nothing that carries derivatives.
  if (isInactiveFunction(Callee)) {
    for (unsigned K = 0; K < CB.arg_size(); ++K) {
      const Value *A = CB.getArgOperand(K);
      if (A->getType()->isPointerTy() && pointsToActive(A) &&
          mayWriteThrough(*Callee, K))
        return makeError("unsupported",
                         "'" + ruleFunctionName(*Callee) +
                             "' is declared inactive (enzpy.inactive) but "
                             "writes into memory that carries derivatives (" +
                             describeMemory(A) +
                             "); an inactive function may only read it",
                         &CB);
    }
    return Error::success();
  }
  // A call that neither reads nor writes anything differentiable needs no
  // derivative, whatever it calls (LAPACK on constant matrices, print,
  // random numbers): its result and the memory it writes are inactive.
  if (touchesOnlyInactiveData(CB))
    return Error::success();
  if (C.isRecursiveCall(CB))
    return checkRecursiveCall(CB);
  if (numba::isParallelLoopBody(Callee->getName()))
    return makeError(
        "unsupported",
        "a parallel loop (numba.prange, or an array expression of a "
        "parallel=True function) that numba runs on its thread pool reads "
        "or writes data that carries derivatives: its body is compiled "
        "apart from the function and cannot be differentiated in place",
        &CB);
  if (StringRef What = numba::describeHelper(Callee->getName()); !What.empty())
    return makeError("unsupported", helperRefusal(What), &CB);
  // A derivative enzpy compiled earlier (enzpy.derivative called from the
  // kernel, the partials of enzpy.solvers' rules) is machine code here.
  if (Callee->getName().starts_with("enzpy_fwd_") ||
      Callee->getName().starts_with("enzpy_rev_"))
    return makeError(
        "unsupported",
        "a derivative compiled by enzpy (enzpy.derivative, or the "
        "partial derivatives of an enzpy.solvers solver) is called "
        "on values that carry derivatives: differentiating it "
        "again (a second derivative through it) is not "
        "supported yet",
        &CB);
  // numba's runtime and C helpers are named for what they are, not by symbol.
  StringRef Sym = Callee->getName();
  if (isPythonAPI(CB) || Sym.contains("adapt_ndarray_to_python"))
    return makeError(
        "unsupported",
        "print() of an array (or another value numba hands to the Python "
        "interpreter) inside a kernel that has data carrying derivatives: "
        "enzpy cannot follow what the interpreter does with it; print "
        "scalars, or print arrays outside the differentiated kernel",
        &CB);
  std::string Q = numba::pythonQualifiedName(Sym);
  std::string What =
      Sym.starts_with("numba_") || Sym.starts_with("NRT_")
          ? std::string("a call into numba's runtime or C helper library")
          : "the call to '" + (Q.empty() ? displayName(Sym) : Q) + "'";
  return makeError("unsupported",
                   What + " cannot be differentiated: its body is not "
                          "available (an external or runtime function), no "
                          "derivative rule is registered for it, and it reads "
                          "or writes data that carries derivatives; a "
                          "function of scalars gets a rule with "
                          "enzpy.register_partials",
                   &CB);
}

Error ActivityAnalysis::checkInstruction(const Instruction &I) const {
  bool AnyVariedOperand = false;
  for (const Value *Op : I.operands())
    AnyVariedOperand |= isVaried(Op);
  if (!AnyVariedOperand)
    return Error::success();
  // Arithmetic needs a row in the rule table; memory, phis and calls are
  // checked elsewhere; comparisons and conversions to integers carry no
  // derivative.
  if (findScalarRule(I) || isa<PHINode>(I) || isa<FCmpInst>(I) ||
      isa<FPToSIInst>(I) || isa<FPToUIInst>(I) || isa<StoreInst>(I) ||
      isa<CallBase>(I))
    return Error::success();
  if (isa<BitCastInst>(I) && !isFloatLike(I.getType()))
    return makeError("unsupported",
                     "a float value reinterpreted as an integer (bitcast) "
                     "cannot be differentiated",
                     &I);
  return makeError("unsupported",
                   "the operation '" + Twine(I.getOpcodeName()) +
                       "' on differentiable values is not supported yet",
                   &I);
}

/// A float read or written through a pointer the analysis cannot trace
/// might be differentiable memory: with differentiable memory about, that is
/// an error, never a silently missing derivative.
Error ActivityAnalysis::checkTraceable(const Instruction *I,
                                       const Value *Ptr) const {
  Type *T = isa<LoadInst>(I) ? I->getType()
                             : cast<StoreInst>(I)->getValueOperand()->getType();
  if (!isFloatLike(T) || ActiveRoots.empty() ||
      !TA.roots(Ptr).contains(UnknownRoot))
    return Error::success();
  // Such memory usually comes out of a library call the engine has no rule
  // for (LAPACK): name that call rather than an anonymous pointer.
  for (const Instruction &J : instructions(F))
    if (auto *CB = dyn_cast<CallBase>(&J))
      if (const Function *Callee = CB->getCalledFunction())
        if (StringRef What = numba::describeHelper(Callee->getName());
            !What.empty())
          return makeError("unsupported", helperRefusal(What), CB);
  return makeError(
      "unsupported",
      "a float is " + Twine(isa<LoadInst>(I) ? "read from" : "written to") +
          " memory the engine cannot trace (" + describeMemory(Ptr) +
          "); it might be a differentiable array, so this is "
          "not supported yet",
      I);
}

Error ActivityAnalysis::checkStore(const StoreInst &SI) {
  const Value *V = SI.getValueOperand();
  bool ToActive = pointsToActive(SI.getPointerOperand());
  if (ToActive && !isFloatLike(V->getType()))
    return makeError("unsupported",
                     describeNonFloat(V->getType()) +
                         " is stored into differentiable float memory (" +
                         describeMemory(SI.getPointerOperand()) + ")",
                     &SI);
  if (!isVaried(V))
    return Error::success();
  return checkVariedInto(SI.getPointerOperand(), SI);
}

Error ActivityAnalysis::checkVariedInto(const Value *Ptr,
                                        const Instruction &I) const {
  for (const Value *R : TA.roots(Ptr)) {
    if (ActiveRoots.contains(R))
      continue;
    if (R == UnknownRoot)
      return makeError("unsupported",
                       "a differentiable value is stored into memory of "
                       "unknown origin (" +
                           describeMemory(Ptr) + ")",
                       &I);
    if (TA.isRetPtr(R))
      continue; // the return value, not seeded (ret=Const)
    if (auto *A = dyn_cast<Argument>(R)) {
      if (A->getArgNo() == numba::ExcInfoParam)
        return makeError("unsupported",
                         "a differentiable value is stored into the "
                         "exception state",
                         &I);
      return makeError("activity",
                       "a value that depends on active inputs is stored into "
                       "argument '" +
                           numba::pythonArgName(*A) +
                           "', which is Const; pass it as Duplicated (with a "
                           "shadow array) to get its derivative",
                       &I);
    }
    if (isa<GlobalValue>(R))
      return makeError("unsupported",
                       "a differentiable value is stored into global memory",
                       &I);
  }
  return Error::success();
}

/// Local memory (allocas and arrays allocated in the function) that \p Ptr
/// may point into becomes active memory; true when any of it was not yet.
bool ActivityAnalysis::activateLocalRoots(const Value *Ptr) {
  bool Changed = false;
  for (const Value *R : TA.roots(Ptr))
    if (R != UnknownRoot && (isa<AllocaInst>(R) || TA.allocationOf(R)))
      Changed |= ActiveRoots.insert(R).second;
  return Changed;
}

bool ActivityAnalysis::computeVaried(Error &Err) {
  bool Changed = false;
  auto mark = [&](const Value *V) {
    if (Varied.insert(V).second)
      Changed = true;
  };
  for (Instruction &I : instructions(F)) {
    if (auto *LI = dyn_cast<LoadInst>(&I)) {
      if (isFloatLike(LI->getType()) && pointsToActive(LI->getPointerOperand()))
        mark(LI);
      continue;
    }
    // Local memory that one pointer may reach as well as active memory is
    // active too (e.g. a result that is either a product or a fresh zero
    // array): it only costs a shadow.
    if ((isa<PHINode>(I) || isa<SelectInst>(I)) && I.getType()->isPointerTy() &&
        C.returns(I.getParent()) && pointsToActive(&I))
      Changed |= activateLocalRoots(&I);
    if (auto *CB = dyn_cast<CallBase>(&I);
        CB && C.isRecursiveCall(*CB) && C.returns(CB->getParent())) {
      // The callee may return a varied float through its retptr and write
      // varied floats into the arrays it is passed.
      if (!hasDifferentiableInput(*CB))
        continue;
      const Value *RetPtr = CB->getArgOperand(numba::RetPtrParam);
      if (Type *Ret = storedReturnType(*CB->getCalledFunction());
          Ret && Ret->isFloatingPointTy())
        Changed |= activateLocalRoots(RetPtr);
      for (const Value *A : drop_begin(CB->args(), numba::NumHiddenParams))
        if (A->getType()->isPointerTy() && floatElementType(TA, A))
          Changed |= activateLocalRoots(A);
      continue;
    }
    if (auto *CB = dyn_cast<CallBase>(&I))
      if (std::optional<CustomCall> CC = matchCustomCall(*CB)) {
        // A call with a custom rule makes what it may write active, and
        // its float result varied, when anything it takes is.
        if (!C.returns(CB->getParent()) || !customCallActive(*CC))
          continue;
        for (const CustomCall::Arg &A : CC->Args)
          if (A.Kind == CustomCall::ArgKind::Memory &&
              CC->mayWrite(A.Operand) &&
              floatElementType(TA, CB->getArgOperand(A.Operand)))
            Changed |= activateLocalRoots(CB->getArgOperand(A.Operand));
        // A new array it returns holds derivatives.
        if (RuleResult R = ruleResult(*CB); R.Data)
          Changed |= activateLocalRoots(R.Data);
        if (CC->returnsFloat()) {
          if (CC->Hidden)
            Changed |=
                activateLocalRoots(CB->getArgOperand(numba::RetPtrParam));
          else
            mark(CB);
        }
        continue;
      }
    if (auto *CB = dyn_cast<CallBase>(&I))
      if (std::optional<BlasCall> Blas = matchBlasCall(*CB)) {
        // A product of differentiable arrays makes its output active.
        bool AnyInput = false;
        for (unsigned K : Blas->inputs())
          AnyInput |= pointsToActive(CB->getArgOperand(K));
        if (AnyInput && C.returns(CB->getParent()))
          Changed |= activateLocalRoots(CB->getArgOperand(Blas->output()));
        continue;
      }
    if (auto *MT = dyn_cast<AnyMemTransferInst>(&I)) {
      // Copying differentiable data into a local allocation makes it active.
      if (C.returns(MT->getParent()) && pointsToActive(MT->getRawSource()))
        Changed |= activateLocalRoots(MT->getRawDest());
      continue;
    }
    if (auto *SI = dyn_cast<StoreInst>(&I)) {
      // A varied float stored into a local allocation makes it active.
      if (C.returns(SI->getParent()) && isVaried(SI->getValueOperand()))
        Changed |= activateLocalRoots(SI->getPointerOperand());
      continue;
    }
    if (!isFloatLike(I.getType()))
      continue;
    if (auto *CB = dyn_cast<CallBase>(&I))
      if (!findCallRule(CB->getCalledFunction()))
        continue; // checked separately
    for (const Value *Op : I.operands())
      if (isVaried(Op)) {
        mark(&I);
        break;
      }
  }
  return Changed;
}

void ActivityAnalysis::computeUseful() {
  SmallVector<const Value *, 32> Work;
  auto mark = [&](const Value *V) {
    if (isFloatLike(V->getType()) && !isa<Constant>(V) &&
        Useful.insert(V).second)
      Work.push_back(V);
  };
  for (Instruction &I : instructions(F)) {
    if (auto *SI = dyn_cast<StoreInst>(&I))
      if (C.returns(SI->getParent()) && pointsToActive(SI->getPointerOperand()))
        mark(SI->getValueOperand());
    // A recursive call that writes active memory (its return slot, arrays,
    // a new array it returns) carries its float arguments there.
    if (auto *CB = dyn_cast<CallBase>(&I);
        CB &&
        (C.isRecursiveCall(*CB) || hasCustomRule(CB->getCalledFunction())) &&
        C.returns(CB->getParent()) &&
        (any_of(CB->args(),
                [&](const Value *A) {
                  return A->getType()->isPointerTy() && pointsToActive(A);
                }) ||
         (ruleResult(*CB).Data && pointsToActive(ruleResult(*CB).Data))))
      for (const Value *A : CB->args())
        mark(A);
  }
  while (!Work.empty()) {
    const Value *V = Work.pop_back_val();
    auto *I = dyn_cast<Instruction>(V);
    if (!I || isa<LoadInst>(I))
      continue;
    if (auto *Sel = dyn_cast<SelectInst>(I)) {
      mark(Sel->getTrueValue());
      mark(Sel->getFalseValue());
      continue;
    }
    for (const Value *Op : I->operands())
      mark(Op);
  }
}

Error ActivityAnalysis::run() {
  for (Argument &A : F.args()) {
    if (A.getArgNo() == numba::RetPtrParam && Req.RetActive)
      ActiveRoots.insert(&A);
    if (!numba::isUserParam(A))
      continue;
    const ParamSpec &S = Req.Params[numba::userParamIndex(A)];
    if (S.isDuplicated())
      ActiveRoots.insert(&A);
    if (S.Act == Activity::Active)
      Varied.insert(&A);
  }
  Error Err = Error::success();
  while (computeVaried(Err)) {
  }
  consumeError(std::move(Err));
  if (Error E = requestPendingRules())
    return E;
  // Addresses compared as integers (numba's overlap checks) are harmless
  // as long as no integer is turned back into a pointer.
  bool MakesPointersFromIntegers = false;
  for (Instruction &I : instructions(F))
    MakesPointersFromIntegers |= isa<IntToPtrInst>(I);
  // Checks run in program order so that the first offending construct is
  // the one reported.
  for (Instruction &I : instructions(F)) {
    if (!C.returns(I.getParent()))
      continue;
    if (auto *CB = dyn_cast<CallBase>(&I)) {
      if (Error E = checkCall(*CB))
        return E;
    } else if (auto *SI = dyn_cast<StoreInst>(&I)) {
      if (Error E = checkStore(*SI))
        return E;
      if (Error E = checkTraceable(SI, SI->getPointerOperand()))
        return E;
    } else if (auto *LI = dyn_cast<LoadInst>(&I)) {
      if (pointsToActive(LI->getPointerOperand()) &&
          !isFloatLike(LI->getType()))
        return makeError("unsupported",
                         "differentiable float memory (" +
                             describeMemory(LI->getPointerOperand()) +
                             ") is read as " + describeNonFloat(LI->getType()),
                         LI);
      if (Error E = checkTraceable(LI, LI->getPointerOperand()))
        return E;
    } else if (isa<PtrToIntInst>(I) && pointsToActive(I.getOperand(0)) &&
               MakesPointersFromIntegers) {
      return makeError("unsupported",
                       "the address of differentiable memory is converted to "
                       "an integer",
                       &I);
    } else if (Error E = checkInstruction(I)) {
      return E;
    }
  }
  computeUseful();
  for (const Value *V : Varied)
    if (Useful.contains(V) && isFloatLike(V->getType()))
      Active.insert(V);
  return Error::success();
}

void ActivityAnalysis::record(DecisionLog &Log) const {
  Log.begin("activity");
  for (Argument &A : F.args()) {
    if (!numba::isUserParam(A))
      continue;
    if (isActive(&A))
      Log.record("active", &A);
    if (ActiveRoots.contains(&A))
      Log.record("active-memory", &A);
  }
  for (const Instruction &I : instructions(F)) {
    if (isa<AllocaInst>(I) && ActiveRoots.contains(&I))
      Log.record("active-memory", &I);
    if (isFloatLike(I.getType()))
      Log.record(isActive(&I) ? "active" : "inactive", &I);
  }
}

} // namespace enzpy
