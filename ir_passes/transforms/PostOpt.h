//===- PostOpt.h - optimize the finished derivative -------------*- C++ -*-===//
//
// Runs LLVM's default O3 pipeline on the derivative module: it promotes the
// adjoint accumulators and tape state to registers and cleans up what the
// synthesis emitted block by block. Given the CPU numba's JIT targets, the
// pipeline runs with that target machine, so its cost models (vectorizer,
// unroller, inliner) are the ones numba's own O3 would use, and the loaded
// derivative needs no second O3. PassContext is the new pass manager's
// analysis set-up, shared with preprocessing.
//
// Vector variants are attached per call (the "vector-function-abi-variant"
// attribute the loop vectorizer reads), not through the TargetLibraryInfo,
// which would give them to the primal's calls too: those keep numba's
// scalar libm, so that the primal values a derivative computes (its forward
// sweep, a returned primal) are bit-for-bit f's.
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
class TargetMachine;
} // namespace llvm

namespace enzpy {

/// A PassBuilder with every analysis registered and cross-wired.
struct PassContext {
  llvm::PassBuilder PB;
  llvm::LoopAnalysisManager LAM;
  llvm::FunctionAnalysisManager FAM;
  llvm::CGSCCAnalysisManager CGAM;
  llvm::ModuleAnalysisManager MAM;
  explicit PassContext(llvm::TargetMachine *TM = nullptr);
};

/// O3 (with ordered floating-point reductions allowed to vectorize) on \p M,
/// for the CPU \p CPU with \p Features when \p CPU is given
/// and LLVM knows the module's target (else target-independent). With
/// \p VectorLibrary ("libmvec", loaded by the process), the derivative's
/// own math calls (rules/DerivativeRules.h: markDerivativeCall) get the
/// library's vector variants for the CPU's vector ISA, so that a vectorized
/// reverse loop calls _ZGVdN4v_cos instead of four scalar cos.
void optimizeDerivative(llvm::Module &M, llvm::StringRef CPU,
                        llvm::StringRef Features,
                        llvm::StringRef VectorLibrary = "");

} // namespace enzpy

#endif
