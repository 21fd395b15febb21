//===- NumbaABI.h - what the engine knows about numba -----------*- C++ -*-===//
//
// Everything numba-specific the engine relies on lives here, so that a second
// frontend (plain C through clang, say) replaces this unit and nothing else:
//
//  - the native calling convention: i32 f(ptr retptr, ptr excinfo, args...),
//    where the i32 is a status (0 or -2: returned; anything else: raised,
//    with the exception in *excinfo) and retptr receives the return value;
//  - the names numba gives parameters ("arg.<python name>.<n>");
//  - the runtime (NRT): reference-counted MemInfo owners of arrays, their
//    allocation functions and the offset of the data pointer in a MemInfo;
//  - numba's C helpers: which runtime calls carry no derivative, and which
//    numpy operation each BLAS/LAPACK helper implements (for errors).
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_NUMBA_NUMBAABI_H
#define ENZPY_NUMBA_NUMBAABI_H

#include "llvm/ADT/StringRef.h"
#include "llvm/IR/ConstantRange.h"
#include "llvm/IR/Function.h"
#include "llvm/IR/IRBuilder.h"
#include <cstdint>
#include <string>

namespace llvm {
class Argument;
class CallBase;
class Instruction;
class Module;
class Value;
} // namespace llvm

namespace enzpy::numba {

//===-- Calling convention -----------------------------------------------===//

/// LLVM parameter positions of the return slot and the exception state; the
/// Python arguments' parameters follow them.
constexpr unsigned RetPtrParam = 0;
constexpr unsigned ExcInfoParam = 1;
constexpr unsigned NumHiddenParams = 2;

/// The LLVM parameter of the \p I-th Python-level parameter.
inline llvm::Argument *userParam(llvm::Function &F, unsigned I) {
  return F.getArg(I + NumHiddenParams);
}
/// Whether \p A is one of the Python-level parameters (not retptr/excinfo).
inline bool isUserParam(const llvm::Argument &A) {
  return A.getArgNo() >= NumHiddenParams;
}
/// The Python-level index of a user parameter.
inline unsigned userParamIndex(const llvm::Argument &A) {
  return A.getArgNo() - NumHiddenParams;
}

/// Statuses of the derivative's own failures, beside numba's (0 returned,
/// -1 a Python exception is set, -2 None, -3 StopIteration, 1 and above
/// the exception in *excinfo): the wrapper (enzpy/_signature.py) raises
/// them as MemoryError and enzpy.TapeBudgetError.
constexpr int32_t NoMemoryStatus = -0x100;
constexpr int32_t TapeBudgetStatus = -0x101;

/// Whether the function's type is the native calling convention.
bool hasNativeSignature(const llvm::FunctionType &FT);

/// Status values that mean "the function returned" (0, and -2 for a None
/// return); every other status means an exception was raised.
bool isReturnStatus(int64_t Status);
/// A status in \p Range may be a return status.
bool mayBeReturnStatus(const llvm::ConstantRange &Range);
/// i1: \p Status is a return status.
llvm::Value *emitIsReturnStatus(llvm::IRBuilder<> &B, llvm::Value *Status);

/// The Python name of a numba parameter ("arg.x.4" -> "x").
std::string pythonArgName(const llvm::Argument &A);

/// The Python qualified name of a function numba compiled, read from its
/// Itanium-mangled symbol without the ABI tags and argument types
/// ("_ZN5numba2np9arraymath12impl_np_sinc12_3clocals_3e4implB2v8...Ed" ->
/// "numba.np.arraymath.impl_np_sinc.<locals>.impl"); empty when \p Symbol
/// is not such a name.
std::string pythonQualifiedName(llvm::StringRef Symbol);
/// numba compiles a recursive call to an overload that was not compiled yet
/// as a call through the global ".numba.unresolved$<symbol>", which it fills
/// in when linking. Where the module defines <symbol>, such calls become
/// direct calls of it.
void resolveRecursiveCalls(llvm::Module &M);

//===-- Runtime (NRT) ----------------------------------------------------===//

/// Offset of the data pointer in numba's NRT_MemInfo.
constexpr int64_t MemInfoDataOffset = 24;
/// Offsets of the MemInfo and of the data pointer in numba's array
/// structure {meminfo, parent, nitems, itemsize, data, shape, strides}.
constexpr int64_t ArrayMemInfoOffset = 0;
constexpr int64_t ArrayDataOffset = 32;

/// A call that allocates a new array (NRT_MemInfo_alloc*): it returns the
/// MemInfo, and its first argument is the size in bytes.
bool isAllocationCall(const llvm::Value *V);
/// A call that allocates a raw buffer with no MemInfo (NRT_Allocate): numba
/// copies the source of a slice assignment that may overlap its target into
/// one, and LAPACK's right-hand sides; numba releases it with NRT_Free
/// (isRawFree). Its first argument is the size in bytes, and the call's
/// result is the buffer itself.
bool isRawAllocation(const llvm::Value *V);
/// NRT_Free of a raw buffer.
bool isRawFree(const llvm::Instruction &I);
/// Declaration of NRT_Free in \p M.
llvm::FunctionCallee rawFreeFunction(llvm::Module &M);
/// A call that allocates the payload of a container numba manages itself
/// (typed lists, the partition stack of np.sort; NRT_MemInfo_new_varsize*):
/// never an array with a shadow.
bool isContainerAllocation(const llvm::Value *V);
/// numba's accessor of a MemInfo's data pointer (NRT_MemInfo_data_fast).
bool isDataPointerCall(const llvm::CallBase &CB);
/// NRT_incref / NRT_decref on one MemInfo.
bool isRefcountCall(const llvm::Instruction &I);
/// Declarations of NRT_incref / NRT_decref in \p M.
llvm::FunctionCallee increfFunction(llvm::Module &M);
llvm::FunctionCallee decrefFunction(llvm::Module &M);
/// Declaration of NRT_MemInfo_alloc_safe_aligned(i64 bytes, i32 align) in
/// \p M: a new MemInfo (null when out of memory).
llvm::FunctionCallee allocationFunction(llvm::Module &M);
/// The data pointer of the array owned by \p MemInfo.
llvm::Value *emitDataPointer(llvm::IRBuilder<> &B, llvm::Value *MemInfo,
                             const llvm::Twine &Name = "");

/// Runtime functions that carry no derivative and may stay as calls
/// (reference counting, allocation, the stride helper of reshapes).
bool isInactiveRuntimeCall(llvm::StringRef Name);

//===-- Helper library ---------------------------------------------------===//

/// numba's BLAS helpers whose derivatives rules/BlasRules provides.
constexpr llvm::StringLiteral BlasDot = "numba_xxdot";
constexpr llvm::StringLiteral BlasGemv = "numba_xxgemv";
constexpr llvm::StringLiteral BlasGemm = "numba_xxgemm";
constexpr llvm::StringLiteral BlasNrm2 = "numba_xxnrm2";

/// Whether \p Name is the outlined body of a parallel loop (numba's parfor
/// gufunc: a prange loop or an array expression of a parallel=True
/// function), which numba's threading layer runs.
bool isParallelLoopBody(llvm::StringRef Name);

/// What numpy operation a helper of numba's runtime implements ("np.linalg.
/// solve (LAPACK gesv)"), or empty when \p Name is not one of them.
llvm::StringRef describeHelper(llvm::StringRef Name);

} // namespace enzpy::numba

#endif
