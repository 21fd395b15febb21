//===- enzpy_native.cpp - C ABI over the enzpy engine ---------------------===//
//
// Implements native/enzpy_native.h by forwarding to enzpy::differentiate and
// holding its result behind an opaque handle. Nothing here throws.
//
//===----------------------------------------------------------------------===//
#include "enzpy_native.h"
#include "driver/Engine.h"
#include "llvm/Config/llvm-config.h"

struct enzpy_result {
  enzpy::EngineResult R;
};

extern "C" {

int enzpy_abi_version(void) { return ENZPY_ABI_VERSION; }

int enzpy_llvm_version_major(void) { return LLVM_VERSION_MAJOR; }

enzpy_result *enzpy_differentiate(const char *Module, size_t ModuleLen,
                                  const char *Request, size_t RequestLen) {
  auto *Res = new enzpy_result();
  Res->R = enzpy::differentiate(llvm::StringRef(Module, ModuleLen),
                                llvm::StringRef(Request, RequestLen));
  return Res;
}

int enzpy_result_ok(const enzpy_result *R) { return R->R.Ok ? 1 : 0; }

const char *enzpy_result_bitcode(const enzpy_result *R, size_t *Len) {
  if (!R->R.Ok) {
    *Len = 0;
    return nullptr;
  }
  *Len = R->R.Bitcode.size();
  return R->R.Bitcode.data();
}

const char *enzpy_result_error_kind(const enzpy_result *R) {
  return R->R.ErrorKind.c_str();
}

const char *enzpy_result_error_message(const enzpy_result *R) {
  return R->R.ErrorMessage.c_str();
}

const char *enzpy_result_error_file(const enzpy_result *R) {
  return R->R.ErrorFile.c_str();
}

unsigned enzpy_result_error_line(const enzpy_result *R) {
  return R->R.ErrorLine;
}

const char *enzpy_result_log(const enzpy_result *R) { return R->R.Log.c_str(); }

void enzpy_result_free(enzpy_result *R) { delete R; }

} // extern "C"
