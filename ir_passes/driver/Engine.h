//===- Engine.h - enzpy's AD engine entry point -----------------*- C++ -*-===//
//
// differentiate() parses a module and a request, runs the pipeline
// (preprocess -> types -> activity -> synthesis -> post-opt) and returns the
// derivative module as bitcode, or a diagnostic naming what could not be
// differentiated. It knows LLVM and nothing of Python.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_ENGINE_H
#define ENZPY_ENGINE_H

#include "llvm/ADT/StringRef.h"
#include <string>

namespace enzpy {

struct EngineResult {
  bool Ok = false;
  std::string Bitcode;
  std::string ErrorKind; // "unsupported", "activity", "request", "internal"
  std::string ErrorMessage;
  std::string ErrorFile;
  unsigned ErrorLine = 0;
  std::string Log;
};

/// Differentiate the function named in \p Request (JSON) found in \p Module
/// (bitcode, or textual IR). Never throws, never aborts on bad input.
EngineResult differentiate(llvm::StringRef Module, llvm::StringRef Request);

} // namespace enzpy

#endif
