//===- PostOpt.h - optimize the finished derivative -------------*- C++ -*-===//
//
// Runs LLVM's default O3 pipeline on the derivative module: it promotes the
// adjoint accumulators and tape state to registers and cleans up what the
// synthesis emitted block by block.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_POSTOPT_H
#define ENZPY_POSTOPT_H

namespace llvm {
class Module;
}

namespace enzpy {
void optimizeDerivative(llvm::Module &M);
}

#endif
