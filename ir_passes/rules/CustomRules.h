//===- CustomRules.h - rules given as forward and reverse functions -*- C++
//-*-===//
//
// A rule author gives a function f of scalars, arrays and raw pointers
// (an njit function, or a C function numba declares by name, such as the
// LAPACK helpers of numba's helper library) three numba functions
// (enzpy/_custom_rules.py builds them around the author's own):
//
//   forward(active, overwritten, lanes, x..., s...)  -> y, or (y, dy)
//   augmented(active, overwritten, lanes, x...)      -> (y, tape), or tape
//   reverse(active, overwritten, lanes, tape..., x..., s..., [ybar])
//                                               -> cotangents of float x
//
// Each replaces the call of f: forward and augmented run f's primal (with
// its side effects on memory); forward also writes the tangents of the
// memory f writes into the shadows and returns the tangent of a float
// result; reverse, in the reverse sweep, turns the cotangents in the
// shadows of the memory f wrote into those of what it read and returns the
// cotangents of its float arguments. `x...` are the call's own operands;
// `s...` one operand per argument of f: a memory argument's shadow (null
// when the memory carries no derivative), a float argument's tangent
// (forward) or 0 (reverse), 0 for other arguments. `active` has bit i set
// when argument i carries a derivative here, `overwritten` when the memory
// of argument i may change between the call and its reverse (reverse mode;
// the rule then keeps what it needs on its tape). In forward batch mode the
// forward function runs once per lane; for lanes after the first,
// `overwritten` carries LaneCallBit and the arguments the wrapper must copy
// (ForwardSynthesis's laneMemory). The tape is whatever
// numba value augmented returned, passed back flattened into its scalar
// leaves; the MemInfos among them are released when the derivative
// returns.
//
// One rule serves every activity pattern: the author writes it as if every
// float argument were differentiable and reads `active` to skip work.
// A failing rule function (a raised exception) makes the derivative raise
// it once the derivative has run.
//
// The function carries the attributes below (set by applyUserRules);
// matchCustomCall describes one call of it. A rule may come pending (its
// functions not built: building them compiles the author's code, wasted
// where every call is constant): the activity analysis then reports the
// callees whose calls carry derivatives as a "rules_needed" error, and
// enzpy asks again with those built.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_RULES_CUSTOMRULES_H
#define ENZPY_RULES_CUSTOMRULES_H

#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/ADT/SmallVector.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/Support/Error.h"
#include <optional>
#include <string>

namespace llvm {
class CallBase;
class Function;
class Module;
class Type;
class Value;
} // namespace llvm

namespace enzpy {

struct RuleSpec;

/// One call of a function with a custom rule.
struct CustomCall {
  enum class ArgKind { Memory, Float, Other };
  struct Arg {
    ArgKind Kind;
    unsigned Operand; // the call operand that carries it (a memory
                      // argument's data pointer)
    /// The float type a memory argument holds, where numba's type says
    /// ('d' double, 'f' float; 0 when not known or not floats).
    char Elem = 0;
    /// A memory argument passed as a raw pointer (not an array whose
    /// wrapper knows its shape).
    bool Raw = false;
    /// The rule's author says the function only reads this memory
    /// (enzpy.register_rule's reads_only; 'r' in the argument list).
    bool ReadOnly = false;
  };
  const llvm::CallBase *Call = nullptr;
  const llvm::Function *Callee = nullptr;
  /// Leading operands that are not f's arguments: numba's return slot and
  /// exception pointer for an njit function, none for a C function.
  unsigned Hidden = 0;
  llvm::SmallVector<Arg, 8> Args;
  llvm::Function *Forward = nullptr, *Augmented = nullptr, *Reverse = nullptr;
  /// What each returns (null for None).
  llvm::Type *ForwardResult = nullptr, *AugmentedResult = nullptr,
             *ReverseResult = nullptr;
  /// The tape leaves that are MemInfos (owned references).
  llvm::SmallVector<unsigned, 4> TapeOwners;
  std::string Name;
  /// The rule's functions are not built yet (RuleSpec::Pending).
  bool Pending = false;
  /// Every call carries derivatives (RuleSpec::AlwaysActive).
  bool AlwaysActive = false;
  /// The augmented function gets the shadows of the arguments after them
  /// (RuleSpec::AugmentedShadows).
  bool AugmentedShadows = false;
  /// The function must write none of its arguments (RuleSpec::WritesNothing).
  bool WritesNothing = false;
  /// The float type ('d', 'f') of the array f returns; 0 when f returns
  /// no array.
  char ResultElem = 0;

  /// What f returns: the stored type of an njit function (null for None),
  /// the return type of a C function (null for void).
  llvm::Type *result() const;
  bool returnsFloat() const;
  /// Whether f returns a new array (RuleResult).
  bool returnsArray() const { return ResultElem != 0; }
  /// Whether the call may write through its operand \p Operand.
  bool mayWrite(unsigned Operand) const;
  /// Whether the body of an njit function stores through its operand
  /// \p Operand itself (not only through calls it passes it to).
  bool storesThrough(unsigned Operand) const;
};

/// The description of \p CB when its callee has a custom rule.
std::optional<CustomCall> matchCustomCall(const llvm::CallBase &CB);

/// Whether \p F has a custom rule (its calls stay calls).
bool hasCustomRule(const llvm::Function *F);

/// A function with a custom rule may return a new array: numba's call
/// writes the array structure into its return slot. Canonical form
/// (canonicalizeRuleResults) reads the structure's MemInfo and data pointer
/// right after the call, once: the data pointer is the root of the new
/// memory (TypeAnalysis::allocationOf names the call), the MemInfo owns it.
struct RuleResult {
  llvm::LoadInst *MemInfo = nullptr;
  llvm::LoadInst *Data = nullptr;
};
/// The canonical reads of \p CB's array result (nulls for other calls).
RuleResult ruleResult(const llvm::CallBase &CB);
/// The call whose array result's data pointer \p V is (RuleResult::Data),
/// or null.
const llvm::CallBase *ruleResultCall(const llvm::Value *V);
/// The call whose array result's MemInfo \p V is (RuleResult::MemInfo), or
/// null.
const llvm::CallBase *ruleResultOwner(const llvm::Value *V);
/// Whether \p V is one of the canonical reads of a call's array result
/// (not a pointer spilled to the stack, though it is read from one).
bool isRuleResultRead(const llvm::Value *V);
/// Puts the canonical reads after every call in \p F of a function whose
/// custom rule returns an array, and makes the reads of the same fields
/// that the call dominates use them, when nothing but the call (and the
/// zeroing numba does just before it) writes the return slot. Reads that
/// stay are of unknown memory to the analyses (refused where they matter).
void canonicalizeRuleResults(llvm::Function &F);

/// Marks the function of rule \p R in \p M (and its rule functions as
/// helpers to keep); an error names the rule when its functions are
/// missing.
llvm::Error markCustomRule(llvm::Module &M, const RuleSpec &R);

/// What a call of a rule function tells the rule (its RuleConfig): the
/// arguments that carry a derivative and those whose memory may change
/// before the reverse (a bit per argument), the batch width and the lane
/// of this call, and whether the function's result carries a derivative.
struct RuleCallInfo {
  uint64_t Active = 0, Overwritten = 0;
  unsigned Width = 1, Lane = 0;
  bool ResultActive = false;
  /// The `lanes` word the wrappers take: width, lane << 8, result << 16.
  uint64_t lanes() const {
    return Width | uint64_t(Lane) << 8 | uint64_t(ResultActive) << 16;
  }
};

/// Set in the `overwritten` mask of a forward function call for a lane of
/// batch mode other than the first: the call must leave the primal's memory
/// as it is, and gets copies of the arrays whose bits are set (the
/// wrapper's RuleConfig then says nothing is overwritten).
constexpr uint64_t LaneCallBit = uint64_t(1) << 62;

/// Emits `status = W(slot, exc, active, overwritten, operands...)` at \p B,
/// with the result slot (of type \p RT) an alloca in \p EntryB; returns the
/// status and sets \p Result to what W returned (null when \p RT is). W is
/// not called once a rule function of the derivative failed: \p StatusSlot
/// (an i32, 0 until then) keeps the first failure's status, and the result
/// is zero when W failed or was skipped.
llvm::Value *emitRuleCall(llvm::IRBuilder<> &B, llvm::IRBuilder<> &EntryB,
                          llvm::Function *W, llvm::Type *RT,
                          llvm::Value *StatusSlot, llvm::Value *Exc,
                          const RuleCallInfo &Info,
                          llvm::ArrayRef<llvm::Value *> Operands,
                          llvm::Value *&Result);

/// Appends what a rule function takes after f's arguments, one value per
/// argument: the shadow of memory whose bit is set in \p Active
/// (\p ShadowOf; else a null pointer), a float's tangent or cotangent slot
/// (\p FloatOf), 0 for anything else.
void appendRuleShadows(
    llvm::IRBuilder<> &B, const CustomCall &CC, uint64_t Active,
    llvm::function_ref<llvm::Value *(const llvm::Value *)> ShadowOf,
    llvm::function_ref<llvm::Value *(const llvm::Value *)> FloatOf,
    llvm::SmallVectorImpl<llvm::Value *> &Operands);

/// The scalar leaves of the aggregate \p V, in numba's argument order.
void flattenLeaves(llvm::IRBuilder<> &B, llvm::Value *V,
                   llvm::SmallVectorImpl<llvm::Value *> &Leaves);

} // namespace enzpy

#endif
