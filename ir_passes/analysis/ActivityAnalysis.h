//===- ActivityAnalysis.h - which values carry derivatives ------*- C++ -*-===//
//
// A value is active when it is varied (it depends on an active input: an
// Active parameter, or a float loaded from active memory) and useful (it can
// reach an active output: a store into active memory, including the seeded
// return slot). Only float values are ever active; integers, pointers and
// booleans never carry derivatives. Active memory is the memory of
// Duplicated parameters, the return slot when the return is seeded, and
// allocas into which varied floats are stored.
//
// The analysis also enforces the error contract: varied data stored into a
// Const parameter's memory is an "activity" error naming the parameter, and
// calls or constructs the engine cannot differentiate are "unsupported"
// errors naming them and their source line. A recursive call (one that
// preprocessing kept) is treated like a store of its float arguments into
// the memory it may write: its return slot becomes active memory when it
// takes anything differentiable, and so do the local float arrays it is
// passed; driver/RecursiveCalls.h gives it a derivative. Code that only runs on
// the way to raising an exception is not checked: it has no derivative.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_ACTIVITYANALYSIS_H
#define ENZPY_ACTIVITYANALYSIS_H

#include "analysis/TypeAnalysis.h"
#include "driver/Request.h"
#include "transforms/Preprocess.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/Support/Error.h"
#include <string>

namespace llvm {
class Argument;
class CallBase;
class Function;
class Instruction;
class StoreInst;
} // namespace llvm

namespace enzpy {

struct CustomCall;

class ActivityAnalysis {
public:
  ActivityAnalysis(const CanonicalFunction &C, const Request &Req,
                   const TypeAnalysis &TA)
      : C(C), F(*C.F), Req(Req), TA(TA) {}

  llvm::Error run();

  /// V needs an adjoint.
  bool isActive(const llvm::Value *V) const { return Active.contains(V); }
  bool isVaried(const llvm::Value *V) const { return Varied.contains(V); }
  /// Ptr may point into active memory.
  bool pointsToActive(const llvm::Value *Ptr) const;
  /// What memory \p Ptr points into, in words for an error message
  /// ("argument 'x'", "an array allocated in the function", ...).
  std::string describeMemory(const llvm::Value *Ptr) const;
  bool isActiveRoot(const llvm::Value *Root) const {
    return ActiveRoots.contains(Root);
  }

  /// \p CB is a recursive call (CanonicalFunction::Recursive) that takes or
  /// returns something differentiable: it needs a derivative of the callee.
  bool needsCallDerivative(const llvm::CallBase &CB) const;
  /// Whether anything the custom-rule call \p CC takes carries a
  /// derivative, or its rule is always active (then the synthesizers call
  /// its rule functions).
  bool customCallActive(const CustomCall &CC) const;
  /// Whether the float or array the custom-rule call \p CC returns carries
  /// a derivative that is used (RuleConfig.result_active).
  bool customResultActive(const CustomCall &CC) const;
  /// The float type of the active memory \p Ptr points into (null when its
  /// roots do not agree on one).
  llvm::Type *shadowElementType(const llvm::Value *Ptr) const;

  /// Records the activity of parameters, allocas and float values.
  void record(DecisionLog &Log) const;
  const TypeAnalysis &types() const { return TA; }

private:
  llvm::Error checkCall(const llvm::CallBase &CB) const;
  bool touchesOnlyInactiveData(const llvm::CallBase &CB) const;
  bool hasDifferentiableInput(const llvm::CallBase &CB) const;
  llvm::Error checkRecursiveCall(const llvm::CallBase &CB) const;
  llvm::Error checkCustomCall(const CustomCall &CC) const;
  /// Whether the function loads floats from memory of root \p Root.
  bool readsFloatsFrom(const llvm::Value *Root) const;
  llvm::Error requestPendingRules() const;
  llvm::Error checkStore(const llvm::StoreInst &SI);
  /// Varied data written through \p Ptr by \p I must land in active memory.
  llvm::Error checkVariedInto(const llvm::Value *Ptr,
                              const llvm::Instruction &I) const;
  llvm::Error checkTraceable(const llvm::Instruction *I,
                             const llvm::Value *Ptr) const;
  llvm::Error checkInstruction(const llvm::Instruction &I) const;
  bool activateLocalRoots(const llvm::Value *Ptr);
  bool computeVaried(llvm::Error &Err);
  void computeUseful();

  const CanonicalFunction &C;
  llvm::Function &F;
  const Request &Req;
  const TypeAnalysis &TA;
  llvm::DenseSet<const llvm::Value *> ActiveRoots;
  llvm::DenseSet<const llvm::Value *> Varied;
  llvm::DenseSet<const llvm::Value *> Useful;
  llvm::DenseSet<const llvm::Value *> Active;
};

} // namespace enzpy

#endif
