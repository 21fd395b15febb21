//===- Skeleton.h - what every derivative function is built on --*- C++ -*-===//
//
// Both synthesizers start from the same skeleton, built here once:
//
//  - The derivative's signature (native/enzpy_native.h): the primal's
//    parameters, then Width shadow pointers per duplicated parameter, then
//    the mode's own trailing parameters (forward: tangents of Active
//    scalars; reverse: the return value's cotangents). It returns the
//    primal's status; its retptr receives the result struct. When the
//    caller checked that arrays are disjoint (Request::NoAlias), the
//    differentiated arrays and their shadows are noalias parameters.
//  - A clone of the primal, the map between primal and cloned values, and a
//    local slot that takes the primal's return value.
//  - Shadow addresses: every address into active memory is mirrored onto its
//    shadow in each lane: a parameter's shadow parameter, an alloca's zeroed
//    shadow alloca (as many elements as the alloca, placed where it is),
//    an array allocated by numba's runtime (or a raw buffer) gets a zeroed
//    shadow allocation (raw buffer) right after it, and GEPs, phis, selects
//    and casts are rebuilt over the
//    shadows. A pointer spilled to a stack slot has its shadow spilled to the
//    slot's shadow (checkShadowable() in ShadowAddresses.h vouches, before
//    synthesis, that every address needed can be mirrored).
//  - Failure of a shadow allocation: the checks are inserted at the end, all
//    branching to one block the synthesizer chooses (it returns
//    numba::NoMemoryStatus).
//
// Assumes preprocess() ran and the activity analysis accepted the function.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SYNTHESIS_SKELETON_H
#define ENZPY_SYNTHESIS_SKELETON_H

#include "analysis/ActivityAnalysis.h"
#include "analysis/TypeAnalysis.h"
#include "driver/Request.h"
#include "transforms/Preprocess.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/Transforms/Utils/ValueMapper.h"
#include <functional>

namespace enzpy {

/// One value per lane of the batch (Request::Width of them).
using Lanes = llvm::SmallVector<llvm::Value *, 4>;

class DerivativeSkeleton {
public:
  DerivativeSkeleton(const CanonicalFunction &C, const Request &Req,
                     llvm::Type *RetType, const TypeAnalysis &TA,
                     const ActivityAnalysis &AA);

  /// A trailing parameter of the derivative, after the shadows.
  struct Trailing {
    llvm::Type *Ty;
    std::string Name;
  };
  /// Creates the derivative function and clones the primal into it: the
  /// entry block holds the return slot and the primal's static allocas, and
  /// branches to the clone of the primal's entry.
  void create(llvm::ArrayRef<Trailing> Extra);

  unsigned width() const { return Width; }
  /// \p Base, with the lane's number when the width is above 1.
  std::string laneName(const llvm::Twine &Base, unsigned K) const;

  /// The clone of primal value \p PV (constants are themselves).
  llvm::Value *mapped(const llvm::Value *PV) const;
  llvm::BasicBlock *mapped(const llvm::BasicBlock *PB) const;
  /// Whether every lane's shadow of \p PPtr is a value of its own, none of
  /// them the primal pointer (a pointer to nowhere mirrors to itself): then
  /// the lanes' accesses through them can be tagged apart (MemoryScopes).
  bool lanesApart(const llvm::Value *PPtr);
  /// The primal value or block a cloned one copies (null for code the
  /// synthesis added).
  const llvm::Value *primalOf(const llvm::Value *DV) const {
    return Primal.lookup(DV);
  }
  const llvm::BasicBlock *primalOf(const llvm::BasicBlock *DB) const {
    return PrimalBlock.lookup(DB);
  }
  llvm::Argument *trailing(unsigned I) const;
  /// Erases \p I, a clone of a primal instruction, and forgets it.
  void eraseClone(llvm::Instruction *I);

  /// Slots for the seeded return value's shadow, one per lane, holding
  /// \p Init(K) on entry.
  void createReturnShadows(llvm::function_ref<llvm::Value *(unsigned)> Init);
  const Lanes &returnShadows() const { return RetShadow; }

  /// The address that mirrors \p PPtr on the shadow of lane \p K.
  llvm::Value *shadow(const llvm::Value *PPtr, unsigned K);
  /// The mirror of the pointer phi or select \p V in lane \p K: the same
  /// merge beside V's clone, over \p Of(each incoming value) (its shadow, or
  /// the MemInfo of its shadow), recorded in \p Memo before the incoming
  /// values are mirrored (phis may be cyclic). Null for other values.
  llvm::Value *
  mirrorMerge(const llvm::Value *V, unsigned K,
              llvm::DenseMap<const llvm::Value *, Lanes> &Memo,
              llvm::function_ref<llvm::Value *(const llvm::Value *)> Of,
              const llvm::Twine &Name);
  /// The MemInfos of the shadows of an array allocated in the function (the
  /// shadow buffers themselves for a raw buffer), allocated on first use.
  const Lanes &shadowAllocation(const llvm::CallBase *Alloc);
  bool hasShadowAllocation(const llvm::CallBase *Alloc) const {
    return ShadowAllocs.count(Alloc);
  }
  bool anyShadowAllocation() const { return !ShadowAllocs.empty(); }
  /// The shadows of the new array a call with a custom rule returned
  /// (rules/CustomRules.h, RuleResult), lane by lane: their MemInfos (what
  /// shadowAllocation answers for the call) and the shadow of the result's
  /// data pointer. The synthesis sets them where it replaces the call,
  /// before any address into the result is mirrored.
  void setRuleResultShadows(const llvm::CallBase *Call, Lanes MemInfos,
                            Lanes Data);
  /// Forward mode: the shadows of \p Call's array result as placeholders
  /// (right after the result's reads), so that what mirrors them before the
  /// call is replaced (a loop-carried phi) uses what fillRuleResultShadows
  /// gives later.
  void reserveRuleResultShadows(const llvm::CallBase &Call);
  void fillRuleResultShadows(const llvm::CallBase &Call,
                             llvm::ArrayRef<llvm::Value *> MemInfos,
                             llvm::ArrayRef<llvm::Value *> Data);
  /// Zeroed shadows for the array result of a call that was not replaced.
  void zeroRuleResultShadows(const llvm::CallBase &Call);
  /// Called with each new shadow MemInfo (or raw shadow buffer: an
  /// NRT_Allocate call), the builder placed after its set-up (reverse mode
  /// takes ownership of it there).
  std::function<void(llvm::IRBuilder<> &, llvm::Value *)> OnShadowAllocation;

  /// A pointer stored to a stack slot: its shadow goes to the slot's shadow,
  /// so that the pointer loaded back has one. That is the shadow address
  /// for pointers into active memory, \p MemInfoShadow's answer (when given)
  /// for other pointers, and null otherwise (so that a slot reused for
  /// another array never keeps a stale shadow).
  void
  mirrorSpill(const llvm::StoreInst &St,
              llvm::function_ref<llvm::Value *(const llvm::Value *, unsigned)>
                  MemInfoShadow = nullptr);

  /// Fail (branch to the block given to emitNullChecks) when \p V is null,
  /// checked right after \p V.
  void failIfNull(llvm::Instruction *V) { NullChecks.push_back(V); }
  /// Inserts the checks; call once the derivative's code is complete.
  void emitNullChecks(llvm::BasicBlock *Fail);

  /// The slot of the first failing rule function's status
  /// (rules/CustomRules.h), 0 until then; finishRuleStatus makes it the
  /// derivative's status at \p Ret, so that the exception it set is raised.
  llvm::Value *ruleStatusSlot();
  void finishRuleStatus(llvm::ReturnInst *Ret);

  /// Stores \p Values as the fields of the result struct through retptr.
  void storeResult(llvm::IRBuilder<> &B, llvm::ArrayRef<llvm::Value *> Values);

  const CanonicalFunction &Canon;
  const Request &Req;
  /// What the primal stores through retptr; null for None.
  llvm::Type *RetType;
  const TypeAnalysis &TA;
  const ActivityAnalysis &AA;
  llvm::Function &P;
  llvm::LLVMContext &Ctx;

  llvm::Function *D = nullptr;
  llvm::BasicBlock *Entry = nullptr;
  llvm::AllocaInst *RetSlot = nullptr;

private:
  unsigned Width;
  llvm::ValueToValueMapTy VMap;
  llvm::DenseMap<const llvm::Value *, const llvm::Value *> Primal;
  llvm::DenseMap<const llvm::BasicBlock *, const llvm::BasicBlock *>
      PrimalBlock;
  llvm::SmallVector<Lanes, 8> ShadowArgs; // per primal parameter
  llvm::SmallVector<llvm::Argument *, 8> TrailingArgs;
  Lanes RetShadow;
  llvm::DenseMap<const llvm::Value *, Lanes> Shadows;
  llvm::DenseMap<const llvm::CallBase *, Lanes> ShadowAllocs;
  llvm::DenseMap<const llvm::CallBase *, Lanes> RuleResultData;
  llvm::SmallVector<llvm::Instruction *, 4> NullChecks;
  llvm::AllocaInst *RuleStatus = nullptr;
};

} // namespace enzpy

#endif
