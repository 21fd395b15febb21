//===- PostOpt.h - optimize the finished derivative -------------*- C++ -*-===//
//
// Runs LLVM's default O3 pipeline on the derivative module: it promotes the
// adjoint accumulators and tape state to registers and cleans up what the
// synthesis emitted block by block. PassContext is the new pass manager's
// analysis set-up, shared with preprocessing.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_POSTOPT_H
#define ENZPY_POSTOPT_H

#include "llvm/Analysis/CGSCCPassManager.h"
#include "llvm/Analysis/LoopAnalysisManager.h"
#include "llvm/IR/PassManager.h"
#include "llvm/Passes/PassBuilder.h"

namespace llvm {
class Module;
}

namespace enzpy {

/// A PassBuilder with every analysis registered and cross-wired.
struct PassContext {
  llvm::PassBuilder PB;
  llvm::LoopAnalysisManager LAM;
  llvm::FunctionAnalysisManager FAM;
  llvm::CGSCCAnalysisManager CGAM;
  llvm::ModuleAnalysisManager MAM;
  PassContext();
};

void optimizeDerivative(llvm::Module &M);

} // namespace enzpy

#endif
