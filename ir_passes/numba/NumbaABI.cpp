//===- NumbaABI.cpp - what the engine knows about numba -------------------===//
#include "numba/NumbaABI.h"
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

static FunctionCallee refcountFunction(Module &M, StringRef Name) {
  LLVMContext &C = M.getContext();
  return M.getOrInsertFunction(
      Name, FunctionType::get(Type::getVoidTy(C), {PointerType::getUnqual(C)},
                              false));
}

FunctionCallee increfFunction(Module &M) {
  return refcountFunction(M, "NRT_incref");
}

FunctionCallee decrefFunction(Module &M) {
  return refcountFunction(M, "NRT_decref");
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

StringRef describeHelper(StringRef Name) {
  static const std::pair<StringRef, StringRef> Table[] = {
      {BlasDot, "np.dot / @ of two vectors (BLAS dot)"},
      {BlasGemv, "np.dot / @ of a matrix and a vector (BLAS gemv)"},
      {BlasGemm, "np.dot / @ of two matrices (BLAS gemm)"},
      {"numba_xxnrm2", "np.linalg.norm (BLAS nrm2)"},
      {"numba_xgesv", "np.linalg.solve (LAPACK gesv)"},
      {"numba_xxgetrf", "an LU factorization (np.linalg.inv, det, ...)"},
      {"numba_ez_xxgetri", "np.linalg.inv (LAPACK getri)"},
      {"numba_xxpotrf", "np.linalg.cholesky (LAPACK potrf)"},
      {"numba_ez_gesdd", "np.linalg.svd (LAPACK gesdd)"},
      {"numba_ez_rgeev", "np.linalg.eig (LAPACK geev)"},
      {"numba_ez_xxxevd", "np.linalg.eigh (LAPACK syevd)"},
      {"numba_ez_gelsd", "np.linalg.lstsq (LAPACK gelsd)"},
      {"numba_gamma", "math.gamma"},
      {"numba_lgamma", "math.lgamma"},
  };
  for (auto &[Sym, What] : Table)
    if (Name == Sym)
      return What;
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
