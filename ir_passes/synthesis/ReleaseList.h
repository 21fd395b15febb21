//===- ReleaseList.h - references a reverse derivative must drop -*- C++
//-*-===//
//
// A reverse-mode derivative takes references that outlive the primal's own:
// the MemInfos of shadow allocations (the reverse sweep needs the shadows),
// and an extra reference to arrays the reverse sweep re-reads; and the
// shadows of raw buffers (a second list, whose items are NRT_Free'd). Each is
// appended to this list in the forward sweep when it is taken, and every
// way out of the derivative (the normal return after the reverse sweep, an
// exception raised by the primal, a failed allocation of the derivative's
// own) drops them all. Holding them to the end costs no peak memory: they
// are all alive when the reverse sweep starts.
//
// The list is a growable array of MemInfo pointers in a stack struct
// {base, size, capacity}; two internal helper functions of the module
// append (growing with realloc; null on failure) and release (NRT_decref
// each, then free).
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SYNTHESIS_RELEASELIST_H
#define ENZPY_SYNTHESIS_RELEASELIST_H

#include "llvm/IR/IRBuilder.h"

namespace enzpy {

class ReleaseList {
public:
  /// What the items are: MemInfos (dropped with NRT_decref) or raw buffers
  /// (NRT_Free).
  enum class Kind { MemInfos, RawBuffers };
  /// Creates the empty list in \p Entry.
  ReleaseList(llvm::Function &D, llvm::BasicBlock &Entry, Kind K);
  /// Appends \p Item; returns a pointer that is null when the list could
  /// not grow (the caller fails the derivative then).
  llvm::Instruction *emitAppend(llvm::IRBuilder<> &B, llvm::Value *Item);
  /// Drops every reference in the list (before \p Before).
  void emitReleaseAll(llvm::Instruction *Before);

private:
  llvm::Function &D;
  Kind K;
  llvm::AllocaInst *State;
};

} // namespace enzpy

#endif
