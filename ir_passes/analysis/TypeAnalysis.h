//===- TypeAnalysis.h - which memory holds which floats ---------*- C++ -*-===//
//
// For every pointer in the primal, the set of memory roots it may point
// into: a parameter, an alloca, an array allocated by numba's runtime (the
// data pointer read from a NRT_MemInfo_alloc* result), a raw buffer of the
// runtime (an NRT_Allocate result: numba's temporary copies), a new array
// a function with a custom rule returned (the data pointer of its result,
// rules/CustomRules.h RuleResult), a global, or
// "unknown" (another pointer loaded from memory, returned by a call, or made
// from an integer). For the roots that
// can hold derivatives, the float type of their elements. The element types
// are seeded from numba's types through the request (the data pointer of a
// float64 array holds doubles) and from allocas' allocated types. Arrays
// allocated inside the function carry no type in the IR: theirs is the one
// float type numba's lowering reads and writes them with (mixed accesses
// leave them untyped, and the activity analysis rejects them).
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_TYPEANALYSIS_H
#define ENZPY_TYPEANALYSIS_H

#include "driver/DecisionLog.h"
#include "driver/Request.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/Support/raw_ostream.h"

namespace llvm {
class CallBase;
class Function;
class Value;
class Type;
} // namespace llvm

namespace enzpy {

/// A memory root is the Value that owns the memory (Argument, AllocaInst,
/// GlobalVariable, or the load of an allocated array's data pointer);
/// UnknownRoot stands for memory of unknown origin.
using RootSet = llvm::SmallSetVector<const llvm::Value *, 2>;
extern const llvm::Value *const UnknownRoot;

class TypeAnalysis {
public:
  TypeAnalysis(llvm::Function &F, const Request &Req);

  /// Roots a pointer may point into (empty for null).
  const RootSet &roots(const llvm::Value *Ptr) const;
  /// Roots a pointer may reach: its roots and, through the pointers stored
  /// in the local allocations among them, theirs (numba hands a parallel
  /// loop's body its arrays as an alloca of pointers). UnknownRoot when an
  /// alloca's contents are not tracked.
  RootSet reachableRoots(const llvm::Value *Ptr) const;
  /// Float type of the elements of a root, or null when it holds no floats
  /// that enzpy knows of.
  llvm::Type *elementType(const llvm::Value *Root) const;
  /// The request's spec for a parameter root (null for other roots).
  const ParamSpec *paramSpec(const llvm::Value *Root) const;
  bool isRetPtr(const llvm::Value *Root) const;
  /// For the root of an array allocated in the function, the allocating
  /// call (NRT_MemInfo_alloc*, the NRT_Allocate that is the root of a raw
  /// buffer, or the call of a function with a custom rule that returned
  /// the array), else null.
  const llvm::CallBase *allocationOf(const llvm::Value *Root) const;
  /// The MemInfo that owns the array \p Alloc (an allocationOf result)
  /// allocated: the NRT_MemInfo_alloc* call itself, or the MemInfo read of
  /// a custom rule's array result (RuleResult); null for a raw buffer.
  const llvm::Value *allocationMemInfo(const llvm::CallBase *Alloc) const;
  /// Whether \p Root is a raw buffer (NRT_Allocate): freed explicitly with
  /// NRT_Free, never reference counted.
  bool isRawBuffer(const llvm::Value *Root) const;

  /// Records the element type of every typed root.
  void record(DecisionLog &Log) const;

private:
  llvm::Function &F;
  const Request &Req;
  llvm::DenseMap<const llvm::Value *, RootSet> Roots;
  llvm::DenseMap<const llvm::Value *, llvm::Type *> Elem;
  llvm::DenseMap<const llvm::Value *, const llvm::CallBase *> Allocations;
  /// For each alloca that pointers are stored into: their roots.
  llvm::DenseMap<const llvm::Value *, RootSet> Contents;
  RootSet Empty;
};

} // namespace enzpy

#endif
