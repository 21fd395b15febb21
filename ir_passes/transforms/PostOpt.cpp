//===- PostOpt.cpp - optimize the finished derivative ---------------------===//
#include "transforms/PostOpt.h"
#include "llvm/IR/Module.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/Target/TargetOptions.h"

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

void optimizeDerivative(Module &M, StringRef CPU, StringRef Features) {
  std::unique_ptr<TargetMachine> TM = targetMachine(M, CPU, Features);
  PassContext P(TM.get());
  ModulePassManager MPM =
      P.PB.buildPerModuleDefaultPipeline(OptimizationLevel::O3);
  MPM.run(M, P.MAM);
}

} // namespace enzpy
