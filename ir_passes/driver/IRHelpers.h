//===- IRHelpers.h - C library and helper functions in a module -*- C++ -*-===//
//
// The derivative's own code calls the C library (malloc, realloc, free) and
// small internal helper functions the engine writes once per module (the
// release list's append, the adjoint of a copy). Their declarations live
// here, so that every part of the engine declares them the same way.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_DRIVER_IRHELPERS_H
#define ENZPY_DRIVER_IRHELPERS_H

#include "llvm/IR/Module.h"

namespace enzpy {

llvm::FunctionCallee libcMalloc(llvm::Module &M);
llvm::FunctionCallee libcCalloc(llvm::Module &M);
llvm::FunctionCallee libcRealloc(llvm::Module &M);
llvm::FunctionCallee libcFree(llvm::Module &M);

/// The module's internal helper \p Name of type \p FT. \p Fresh says whether
/// it was just created, with no body yet: the caller writes it then.
llvm::Function *internalHelper(llvm::Module &M, llvm::StringRef Name,
                               llvm::FunctionType *FT, bool &Fresh);

/// Adds \p Scopes to \p I's `!alias.scope` list and \p NotScopes to its
/// `!noalias` list (scoped-noalias metadata; either may be empty).
void addAliasScopes(llvm::Instruction &I,
                    llvm::ArrayRef<llvm::Metadata *> Scopes,
                    llvm::ArrayRef<llvm::Metadata *> NotScopes);

} // namespace enzpy

#endif
