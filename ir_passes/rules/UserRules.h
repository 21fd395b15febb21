//===- UserRules.h - derivative rules registered from Python -----*- C++
//-*-===//
//
// Rule authors give a function its derivative from Python (enzpy/_rules.py):
//
//  * partial derivatives: a function g of scalars returning one float gets a
//    numba function dg of the same arguments returning d g / d x_i for each
//    float argument x_i (a float, or a tuple of floats in argument order).
//    g may be an njit function (numba's calling convention), a C function
//    the module declares by name, or a C function called through a constant
//    address (ctypes, cfunc). Each call of g becomes a call of a small
//    function marked with PartialsAttr, and the rule table's user row
//    (userRule) differentiates it like a libm call: its partial i calls dg
//    with the primal arguments and takes element i. Forward, reverse, batch
//    and second derivatives follow from the row; dg itself is ordinary numba
//    code, inlined by the optimizer (and differentiated when the derivative
//    is differentiated again).
//  * inactive functions: calls of them carry no derivative (logging,
//    counters, random draws taken as constant, stop_gradient). They stay
//    calls; the activity analysis refuses one that writes into memory that
//    carries derivatives.
//
// The request lists both (driver/Request.h: Rules, Inactive); Preprocess
// applies them before inlining, while the functions are still calls.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_RULES_USERRULES_H
#define ENZPY_RULES_USERRULES_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"

namespace llvm {
class Function;
class Module;
} // namespace llvm

namespace enzpy {

struct Request;
struct ScalarRule;

/// On a function whose calls a user rule differentiates: the name of the
/// numba function giving the partial derivatives.
constexpr llvm::StringLiteral PartialsAttr = "enzpy-partials";
/// On the same function: how many leading parameters are not the rule's
/// arguments (the exception and status slots of a wrapped njit function).
constexpr llvm::StringLiteral HiddenParamsAttr = "enzpy-rule-hidden";
/// On a function whose calls carry no derivative.
constexpr llvm::StringLiteral InactiveAttr = "enzpy-inactive";

/// Turn the calls of the request's rule-carrying functions into calls the
/// rule table's user row differentiates, and mark its inactive functions.
/// Fails when a partials function is missing or has the wrong shape.
llvm::Error applyUserRules(llvm::Module &M, const Request &Req);

/// The rule table's row for a function marked with PartialsAttr.
const ScalarRule *userRule();

/// Whether calls of \p F carry no derivative (InactiveAttr).
bool isInactiveFunction(const llvm::Function *F);

/// Whether the body of \p F may write through its parameter \p ArgNo
/// (stores, memory intrinsics, or calls other than numba's reference
/// counting that are passed the pointer); true for a declaration. With
/// \p OnlyStores, whether it has a store or memory intrinsic that writes
/// through it (calls and escapes it cannot follow do not count; false for a
/// declaration).
bool mayWriteThrough(const llvm::Function &F, unsigned ArgNo,
                     bool OnlyStores = false);

/// Functions the derivative calls that preprocessing must keep although
/// nothing calls them yet: the partials functions of user rules.
bool isRuleHelper(const llvm::Function &F);
void markRuleHelper(llvm::Function &F);

/// The calls in \p M of a C function through its constant \p Address (a
/// ctypes function or cfunc) made calls of one internal function \p Name
/// that calls the address, with the same C signature; null when nothing
/// calls the address.
llvm::Function *addressFunction(llvm::Module &M, uint64_t Address,
                                const llvm::Twine &Name);
/// Whether \p F is such a function (a C function, though it has a body).
bool isAddressFunction(const llvm::Function &F);

/// Whether calls of \p F stay calls through preprocessing: inactive
/// functions and functions with a custom rule (rules/CustomRules.h).
bool staysCall(const llvm::Function *F);

/// The name a rule error uses for \p F: the Python function or C symbol
/// the rule was registered for.
std::string ruleFunctionName(const llvm::Function &F);

} // namespace enzpy

#endif
