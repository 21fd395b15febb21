//===- PostOpt.cpp - optimize the finished derivative ---------------------===//
#include "transforms/PostOpt.h"
#include "llvm/IR/Module.h"

using namespace llvm;

namespace enzpy {

PassContext::PassContext() {
  PB.registerModuleAnalyses(MAM);
  PB.registerCGSCCAnalyses(CGAM);
  PB.registerFunctionAnalyses(FAM);
  PB.registerLoopAnalyses(LAM);
  PB.crossRegisterProxies(LAM, FAM, CGAM, MAM);
}

void optimizeDerivative(Module &M) {
  PassContext P;
  ModulePassManager MPM =
      P.PB.buildPerModuleDefaultPipeline(OptimizationLevel::O3);
  MPM.run(M, P.MAM);
}

} // namespace enzpy
