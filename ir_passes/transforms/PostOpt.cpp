//===- PostOpt.cpp - optimize the finished derivative ---------------------===//
#include "transforms/PostOpt.h"
#include "rules/DerivativeRules.h"
#include "transforms/CarriedAccumulators.h"
#include "llvm/Analysis/TargetLibraryInfo.h"
#include "llvm/IR/InstIterator.h"
#include "llvm/IR/Module.h"
#include "llvm/IR/VFABIDemangler.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/Target/TargetOptions.h"
#include "llvm/Transforms/Utils/ModuleUtils.h"

using namespace llvm;

namespace enzpy {

PassContext::PassContext(TargetMachine *TM) : PB(TM) {
  PB.registerModuleAnalyses(MAM);
  PB.registerCGSCCAnalyses(CGAM);
  PB.registerFunctionAnalyses(FAM);
  PB.registerLoopAnalyses(LAM);
  PB.crossRegisterProxies(LAM, FAM, CGAM, MAM);
}

/// The target machine for \p CPU on \p M's triple, or null when LLVM has
/// no such target (then O3 runs target-independent).
static std::unique_ptr<TargetMachine>
targetMachine(const Module &M, StringRef CPU, StringRef Features) {
  if (CPU.empty())
    return nullptr;
  static const bool Ready = [] {
    InitializeNativeTarget();
    return true;
  }();
  (void)Ready;
  std::string Err;
  const Target *T = TargetRegistry::lookupTarget(M.getTargetTriple(), Err);
  if (!T)
    return nullptr;
  return std::unique_ptr<TargetMachine>(T->createTargetMachine(
      M.getTargetTriple(), CPU, Features, TargetOptions(), std::nullopt,
      std::nullopt, CodeGenOptLevel::Aggressive, /*JIT=*/true));
}

/// Whether the CPU's \p Features can run a libmvec function: its name's ISA
/// letter (_ZGV<isa>N...) is b (SSE2, every x86-64) or d (AVX2).
static bool runsOn(StringRef VectorFn, StringRef Features) {
  if (!VectorFn.starts_with("_ZGV") || VectorFn.size() < 5)
    return false;
  char ISA = VectorFn[4];
  return ISA == 'b' || (ISA == 'd' && Features.contains("+avx2"));
}

/// Gives every derivative math call of \p M the vector variants of
/// \p Lib that run on the CPU (declared in \p M); returns the
/// declarations, which O3 must keep until the vectorizer has run. A
/// function that may call them is marked for the CPU: a variant's vector
/// arguments are passed in the registers of its ISA (ymm for d), which
/// only code compiled for that ISA does.
static SmallVector<GlobalValue *, 8> addVectorVariants(Module &M,
                                                       VectorLibrary Lib,
                                                       StringRef CPU,
                                                       StringRef Features) {
  TargetLibraryInfoImpl TLII(M.getTargetTriple());
  TLII.addVectorizableFunctionsFromVecLib(Lib, M.getTargetTriple());
  SmallVector<GlobalValue *, 8> Declared;
  for (Function &F : M)
    for (Instruction &I : instructions(F)) {
      auto *CI = dyn_cast<CallInst>(&I);
      if (!CI || !CI->getCalledFunction() || !isDerivativeCall(*CI))
        continue;
      StringRef Scalar = CI->getCalledFunction()->getName();
      SmallVector<std::string, 2> Variants;
      for (unsigned VF = 2; VF <= 16; VF *= 2) {
        const VecDesc *VD = TLII.getVectorMappingInfo(
            Scalar, ElementCount::getFixed(VF), /*Masked=*/false);
        if (!VD || !runsOn(VD->getVectorFnName(), Features))
          continue;
        std::string Mangled = VD->getVectorFunctionABIVariantString();
        std::optional<VFInfo> Info =
            VFABI::tryDemangleForVFABI(Mangled, CI->getFunctionType());
        if (!Info)
          continue;
        if (!M.getFunction(VD->getVectorFnName()))
          Declared.push_back(Function::Create(
              VFABI::createFunctionType(*Info, CI->getFunctionType()),
              GlobalValue::ExternalLinkage, VD->getVectorFnName(), M));
        Variants.push_back(std::move(Mangled));
      }
      if (Variants.empty())
        continue;
      VFABI::setVectorVariantNames(CI, Variants);
      F.addFnAttr("target-cpu", CPU);
      F.addFnAttr("target-features", Features);
    }
  return Declared;
}

/// Lets the loop vectorizer vectorize loops with in-order floating-point
/// reductions (LLVM's option, off by default on x86): the sum is still
/// added element by element in the primal's order (llvm.vector.reduce.fadd
/// without reassociation), so its value is unchanged, while the rest of the
/// loop runs in vectors: the primal and tangent sums of a forward-mode loop,
/// a returned primal sum in the forward sweep. The option is global to the
/// engine's LLVM, which only the engine uses (numba's llvmlite links its
/// own).
static void allowOrderedReductions() {
  static const bool Done = [] {
    auto &Opts = cl::getRegisteredOptions();
    auto It = Opts.find("force-ordered-reductions");
    if (It != Opts.end())
      It->second->addOccurrence(0, It->first, "true");
    return true;
  }();
  (void)Done;
}

void optimizeDerivative(Module &M, StringRef CPU, StringRef Features,
                        StringRef VecLib) {
  allowOrderedReductions();
  std::unique_ptr<TargetMachine> TM = targetMachine(M, CPU, Features);
  SmallVector<GlobalValue *, 8> Variants;
  // libmvec's functions are x86-64 ones; its ISA letters need the CPU's
  // features, so only with a named CPU.
  if (VecLib == "libmvec" && TM && M.getTargetTriple().isX86() &&
      M.getTargetTriple().isArch64Bit())
    Variants = addVectorVariants(M, VectorLibrary::LIBMVEC, CPU, Features);
  if (!Variants.empty())
    appendToCompilerUsed(M, Variants);
  PassContext P(TM.get());
  P.PB.registerVectorizerStartEPCallback(
      [](FunctionPassManager &FPM, OptimizationLevel) {
        FPM.addPass(CarriedAccumulatorsPass());
      });
  ModulePassManager MPM =
      P.PB.buildPerModuleDefaultPipeline(OptimizationLevel::O3);
  MPM.run(M, P.MAM);
  if (Variants.empty())
    return;
  // The vectorizer has run: the variants it did not call go.
  SmallPtrSet<Constant *, 8> Ours(Variants.begin(), Variants.end());
  removeFromUsedLists(M, [&](Constant *C) { return Ours.contains(C); });
  for (GlobalValue *V : Variants)
    if (V->use_empty())
      V->eraseFromParent();
}

} // namespace enzpy
