//===- CachePolicy.h - which reads the reverse sweep may repeat -*- C++ -*-===//
//
// The reverse sweep needs some values that the forward sweep read from
// memory. A value is re-read in the reverse sweep, instead of being taped,
// when no write of the function can have changed the memory since: no store,
// memory intrinsic or call writes any root the load may read. Distinct
// parameters are taken to be disjoint only when the caller checked it at
// call time (Request::NoAlias); otherwise any write to parameter memory makes
// every parameter read taped. Loads from local allocations are always taped.
// Writes on paths that end in raising an exception do not count: when they
// run, the reverse sweep does not.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_CACHEPOLICY_H
#define ENZPY_CACHEPOLICY_H

#include "Preprocess.h"
#include "Request.h"
#include "TypeAnalysis.h"
#include "llvm/ADT/DenseSet.h"

namespace llvm {
class Function;
class LoadInst;
} // namespace llvm

namespace enzpy {

class CachePolicy {
public:
  CachePolicy(const CanonicalFunction &C, const Request &Req,
              const TypeAnalysis &TA);

  /// The memory L reads is never written during the call.
  bool canReread(const llvm::LoadInst *L) const {
    return Rereadable.contains(L);
  }
  /// The memory \p Ptr points into is never written during the call.
  bool canRereadMemory(const llvm::Value *Ptr) const;

private:
  const TypeAnalysis &TA;
  bool NoAlias;
  bool AnyUnknownWrite = false;
  bool AnyParameterWritten = false;
  llvm::DenseSet<const llvm::Value *> Written;
  llvm::DenseSet<const llvm::LoadInst *> Rereadable;
};

} // namespace enzpy

#endif
