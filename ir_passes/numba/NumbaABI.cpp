//===- NumbaABI.cpp - what the engine knows about numba -------------------===//
#include "numba/NumbaABI.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/IR/Constants.h"
#include "llvm/IR/Instructions.h"
#include "llvm/IR/Module.h"

using namespace llvm;

namespace enzpy::numba {

bool hasNativeSignature(const FunctionType &FT) {
  return FT.getReturnType()->isIntegerTy(32) &&
         FT.getNumParams() >= NumHiddenParams &&
         FT.getParamType(RetPtrParam)->isPointerTy() &&
         FT.getParamType(ExcInfoParam)->isPointerTy();
}

bool isReturnStatus(int64_t Status) { return Status == 0 || Status == -2; }

bool mayBeReturnStatus(const ConstantRange &Range) {
  unsigned W = Range.getBitWidth();
  return Range.contains(APInt(W, 0)) ||
         Range.contains(APInt(W, static_cast<uint64_t>(-2), /*isSigned=*/true));
}

Value *emitIsReturnStatus(IRBuilder<> &B, Value *Status) {
  Type *T = Status->getType();
  return B.CreateOr(B.CreateICmpEQ(Status, ConstantInt::get(T, 0)),
                    B.CreateICmpEQ(Status, ConstantInt::get(T, -2)),
                    "enzpy.ok");
}

std::string pythonArgName(const Argument &A) {
  StringRef N = A.getName();
  if (N.consume_front("arg.")) {
    size_t Dot = N.find('.');
    return N.substr(0, Dot).str();
  }
  return N.empty() ? ("#" + Twine(A.getArgNo())).str() : N.str();
}

std::string pythonQualifiedName(StringRef Symbol) {
  // numba mangles module.qualname as _ZN <len><identifier>... then ABI tags
  // (B<len><tag>) and E, escaping characters other than [A-Za-z0-9_] as
  // _<hex> ("<locals>" -> "_3clocals_3e").
  if (!Symbol.consume_front("_ZN"))
    return {};
  std::string Out;
  while (!Symbol.empty() && isDigit(Symbol.front())) {
    unsigned Len = 0;
    if (Symbol.consumeInteger(10, Len) || Len > Symbol.size())
      return {};
    StringRef Part = Symbol.take_front(Len);
    Symbol = Symbol.drop_front(Len);
    if (!Out.empty())
      Out += '.';
    for (size_t I = 0; I < Part.size(); ++I) {
      unsigned Hex = 0;
      if (Part[I] == '_' && I + 2 < Part.size() &&
          !Part.substr(I + 1, 2).getAsInteger(16, Hex) && Hex >= 0x20 &&
          Hex < 0x7f && !isAlnum(Hex) && Hex != '_') {
        Out += char(Hex);
        I += 2;
        continue;
      }
      Out += Part[I];
    }
  }
  return Symbol.starts_with("B") || Symbol.starts_with("E") ? Out
                                                            : std::string();
}

static StringRef calleeName(const Value *V) {
  auto *CB = dyn_cast<CallBase>(V);
  const Function *F = CB ? CB->getCalledFunction() : nullptr;
  return F ? F->getName() : StringRef();
}

bool isAllocationCall(const Value *V) {
  StringRef N = calleeName(V);
  return N == "NRT_MemInfo_alloc" || N == "NRT_MemInfo_alloc_aligned" ||
         N == "NRT_MemInfo_alloc_safe" || N == "NRT_MemInfo_alloc_safe_aligned";
}

bool isRawAllocation(const Value *V) {
  auto *CB = dyn_cast<CallBase>(V);
  return CB && calleeName(CB) == "NRT_Allocate" && CB->arg_size() == 1;
}

bool isRawFree(const Instruction &I) {
  return calleeName(&I) == "NRT_Free" && cast<CallBase>(I).arg_size() == 1;
}

bool isContainerAllocation(const Value *V) {
  return calleeName(V).starts_with("NRT_MemInfo_new_varsize");
}

bool isDataPointerCall(const CallBase &CB) {
  return calleeName(&CB) == "NRT_MemInfo_data_fast" && CB.arg_size() == 1;
}

bool isRefcountCall(const Instruction &I) {
  StringRef N = calleeName(&I);
  return (N == "NRT_incref" || N == "NRT_decref") &&
         cast<CallBase>(I).arg_size() == 1;
}

/// void Name(ptr): the runtime's reference counting and NRT_Free.
static FunctionCallee runtimeVoidFunction(Module &M, StringRef Name) {
  LLVMContext &C = M.getContext();
  return M.getOrInsertFunction(
      Name, FunctionType::get(Type::getVoidTy(C), {PointerType::getUnqual(C)},
                              false));
}

FunctionCallee rawFreeFunction(Module &M) {
  return runtimeVoidFunction(M, "NRT_Free");
}

FunctionCallee increfFunction(Module &M) {
  return runtimeVoidFunction(M, "NRT_incref");
}

FunctionCallee decrefFunction(Module &M) {
  return runtimeVoidFunction(M, "NRT_decref");
}

FunctionCallee allocationFunction(Module &M) {
  LLVMContext &C = M.getContext();
  return M.getOrInsertFunction(
      "NRT_MemInfo_alloc_safe_aligned",
      FunctionType::get(PointerType::getUnqual(C),
                        {Type::getInt64Ty(C), Type::getInt32Ty(C)}, false));
}

Value *emitDataPointer(IRBuilder<> &B, Value *MemInfo, const Twine &Name) {
  return B.CreateLoad(
      B.getPtrTy(),
      B.CreateConstGEP1_64(B.getInt8Ty(), MemInfo, MemInfoDataOffset), Name);
}

bool isInactiveRuntimeCall(StringRef Name) {
  return Name == "NRT_incref" || Name == "NRT_decref" ||
         Name.starts_with("NRT_MemInfo_alloc") ||
         Name == "NRT_MemInfo_data_fast" ||
         Name == "numba_attempt_nocopy_reshape" ||
         Name.starts_with("NRT_MemInfo_new_varsize") ||
         Name.starts_with("NRT_MemInfo_varsize") || Name == "NRT_Allocate" ||
         Name == "NRT_Free";
}

bool isParallelLoopBody(StringRef Name) {
  return Name.contains("__numba_parfor_gufunc");
}

StringRef describeHelper(StringRef Name) {
  static const std::pair<StringRef, StringRef> Table[] = {
      {BlasDot, "np.dot / @ of two vectors (BLAS dot)"},
      {BlasGemv, "np.dot / @ of a matrix and a vector (BLAS gemv)"},
      {BlasGemm, "np.dot / @ of two matrices (BLAS gemm)"},
      {BlasNrm2, "np.linalg.norm (BLAS nrm2)"},
      {"numba_xgesv", "np.linalg.solve (LAPACK gesv)"},
      {"numba_xxgetrf",
       "an LU factorization (np.linalg.inv, det, slogdet, solve; LAPACK "
       "getrf)"},
      {"numba_xxgetri", "np.linalg.inv (LAPACK getri)"},
      {"numba_ez_xxgetri", "np.linalg.inv (LAPACK getri)"},
      {"numba_xxpotrf", "np.linalg.cholesky (LAPACK potrf)"},
      {"numba_ez_gesdd",
       "an SVD (np.linalg.svd, pinv, matrix_rank, cond, norm of a matrix "
       "with ord=2, -2 or 'nuc'; LAPACK gesdd)"},
      {"numba_ez_rgeev", "np.linalg.eig / eigvals (LAPACK geev)"},
      {"numba_ez_cgeev", "np.linalg.eig / eigvals (LAPACK geev)"},
      {"numba_ez_xxxevd", "np.linalg.eigh / eigvalsh (LAPACK syevd)"},
      {"numba_ez_gelsd", "np.linalg.lstsq (LAPACK gelsd)"},
      {"numba_ez_geqrf", "np.linalg.qr (LAPACK geqrf)"},
      {"numba_ez_xxgqr", "np.linalg.qr (LAPACK orgqr)"},
      {"numba_gamma", "math.gamma"},
      {"numba_lgamma", "math.lgamma"},
  };
  for (auto &[Sym, What] : Table)
    if (Name == Sym)
      return What;
  // numba's typed containers keep their items in C structures of their own.
  if (Name.starts_with("numba_dict_"))
    return "a typed dict (a {} literal or numba.typed.Dict) holding values";
  if (Name.starts_with("numba_list_"))
    return "a typed list (numba.typed.List) holding values";
  return {};
}

void resolveRecursiveCalls(Module &M) {
  constexpr StringLiteral Prefix = ".numba.unresolved$";
  for (GlobalVariable &GV : M.globals()) {
    if (!GV.getName().starts_with(Prefix))
      continue;
    Function *Target = M.getFunction(GV.getName().drop_front(Prefix.size()));
    if (!Target || Target->isDeclaration())
      continue;
    for (User *U : make_early_inc_range(GV.users()))
      if (auto *L = dyn_cast<LoadInst>(U); L && L->getType()->isPointerTy()) {
        L->replaceAllUsesWith(Target);
        L->eraseFromParent();
      }
  }
}

} // namespace enzpy::numba
