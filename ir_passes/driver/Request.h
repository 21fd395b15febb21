//===- Request.h - what the caller asks the engine to produce ---*- C++ -*-===//
//
// The request arrives as JSON (see native/enzpy_native.h). It names the
// primal, the derivative's symbol, the mode and the batch width, and for every
// LLVM parameter of the primal after (retptr, excinfo) its activity and, for
// active and duplicated ones, the float type of the value or of the pointed-to
// elements. These come from numba's types: the engine never guesses them.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_REQUEST_H
#define ENZPY_REQUEST_H

#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"
#include <string>

namespace llvm {
class Module;
class Type;
} // namespace llvm

namespace enzpy {

enum class Activity { Const, Active, Dup, DupNoNeed };

struct ParamSpec {
  Activity Act = Activity::Const;
  std::string Elem; // "double" or "float" for Active/Dup/DupNoNeed
  /// An array's extent (a shape entry or element count): never negative.
  bool Extent = false;
  bool isDuplicated() const {
    return Act == Activity::Dup || Act == Activity::DupNoNeed;
  }
};

/// A derivative rule given by partial derivatives (rules/UserRules.h).
struct RuleSpec {
  /// The function it is for: a symbol (an njit function's, or a declared C
  /// function's), or, when Address is set, the address of a C function
  /// called through a constant pointer (a custom rule by address names
  /// both: Callee is then the function made for the calls).
  std::string Callee;
  uint64_t Address = 0;
  /// The numba function giving the partial derivatives.
  std::string Partials;
  /// The name to use in messages (the Python or C name).
  std::string Display;
  /// The float types ("double", "float") of what the partials function
  /// returns, one per float argument of the function, in order: a float, or
  /// a tuple laid out as a structure of them.
  llvm::SmallVector<std::string, 3> Outputs;
  /// The partials function takes the function's result after its
  /// arguments (a solver's solution, which it need not compute again).
  bool WithResult = false;
  /// A custom rule (rules/CustomRules.h) instead of partials: its forward,
  /// augmented and reverse functions (empty when not given), the kind and
  /// operand of each argument ("a4,f7,o8"), and which tape leaves are
  /// MemInfos.
  bool Custom = false;
  std::string Forward, Augmented, Reverse, Args;
  /// The LLVM types of what the three return (numba's value types; empty
  /// for None).
  std::string ForwardResult, AugmentedResult, ReverseResult;
  llvm::SmallVector<unsigned, 4> TapeOwners;
  /// The float type ("d", "f") of the new array the function returns
  /// (CustomRules.h, RuleResult); empty when it returns none.
  std::string Result;
  /// A custom rule whose functions are not built yet (building them
  /// compiles the author's functions): the engine reports the callee in a
  /// "rules_needed" error when a call of it carries derivatives, and enzpy
  /// asks again with the functions built.
  bool Pending = false;
  /// The rule runs at every call, and what the call writes carries
  /// derivatives, whether or not its inputs do: the function brings values
  /// from outside the kernel (a receive from another process).
  bool AlwaysActive = false;
  /// The augmented function also receives the shadows of the arguments
  /// (those of the batch's first lane), as the forward function does: a
  /// rule whose reverse is split across calls (a non-blocking receive and
  /// its wait) records where the cotangents will be.
  bool AugmentedShadows = false;
  /// The function must write none of its arguments (enzpy.register_jvp's
  /// contract): the engine refuses a call whose callee's body stores
  /// through one.
  bool WritesNothing = false;
};

enum class Mode { Reverse, Forward };

/// The largest batch width a request may ask for.
constexpr unsigned MaxWidth = 64;

struct Request {
  std::string Function;
  std::string Name;
  Mode DiffMode = Mode::Reverse;
  /// The number of tangents (forward mode) or cotangents (reverse mode)
  /// propagated in one sweep: batch mode when above 1. The primal runs once
  /// (and in reverse mode fills one tape) for all of them.
  unsigned Width = 1;
  std::string RetType = "void";
  bool RetActive = false;
  bool ReturnPrimal = false;
  bool Log = false;
  /// The log as JSON records (DecisionLog.h) instead of text.
  bool LogJson = false;
  /// The caller has checked that no two parameters' memory overlaps (numba
  /// arrays passed as distinct arguments may otherwise be views of one
  /// buffer).
  bool NoAlias = false;
  /// Debugging: put the canonical primal and the derivative into the log.
  bool DumpIR = false;
  /// Run the O3 pipeline on the derivative (off when the derivative will be
  /// differentiated again: the engine reads unvectorized code).
  bool Optimize = true;
  /// The CPU (LLVM name) and its feature string that the derivative is
  /// optimized for: numba's JIT target, so that O3 vectorizes for the
  /// machine the code runs on. Empty: LLVM's target-independent defaults.
  std::string TargetCPU;
  std::string TargetFeatures;
  /// A vector math library the process has loaded ("libmvec": glibc's),
  /// whose functions the derivative's own math calls may use in vectorized
  /// loops (transforms/PostOpt.h). Empty: none.
  std::string VectorLibrary;
  /// Results that depend on active inputs only through control (a solver's
  /// loop exit, a comparison; analysis/ControlActivity.h) are an error of
  /// kind "piecewise" instead of a log entry.
  bool StrictControl = false;
  llvm::SmallVector<ParamSpec, 16> Params;
  /// User rules (rules/UserRules.h): rules by partial derivatives, and the
  /// symbols of functions whose calls carry no derivative.
  llvm::SmallVector<RuleSpec, 2> Rules;
  llvm::SmallVector<std::string, 2> Inactive;
  /// Source lines (file, line) of numba.prange loops: the loops of the
  /// serial compile there may run their reverse on numba's threads
  /// (synthesis/ParallelLoops.h).
  llvm::SmallVector<std::pair<std::string, unsigned>, 2> ParallelLoops;
};

llvm::Expected<Request> parseRequest(llvm::StringRef Json);

/// The LLVM type of what the primal stores through retptr (null for None),
/// checked to be a float when the return is active.
llvm::Expected<llvm::Type *> returnType(const Request &Req, llvm::Module &M);

llvm::StringRef activityName(Activity A);

} // namespace enzpy

#endif
