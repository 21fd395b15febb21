//===- Diagnostics.h - structured errors of the engine ----------*- C++ -*-===//
//
// Every failure the engine reports is an EnzpyDiag: a kind the Python side
// maps to an exception class ("unsupported", "activity", "request",
// "internal"), a message, and the source file and line of the construct,
// taken from the instruction's debug location when numba emitted one.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_DIAGNOSTICS_H
#define ENZPY_DIAGNOSTICS_H

#include "llvm/ADT/Twine.h"
#include "llvm/Support/Error.h"
#include <string>

namespace llvm {
class Instruction;
class Value;
class Function;
class DILocation;
} // namespace llvm

namespace enzpy {

class EnzpyDiag : public llvm::ErrorInfo<EnzpyDiag> {
public:
  static char ID;
  std::string Kind;
  std::string Message;
  std::string File;
  unsigned Line = 0;

  EnzpyDiag(std::string Kind, std::string Message, std::string File,
            unsigned Line)
      : Kind(std::move(Kind)), Message(std::move(Message)),
        File(std::move(File)), Line(Line) {}
  void log(llvm::raw_ostream &OS) const override;
  std::error_code convertToErrorCode() const override;
};

/// The metadata kind that marks instructions inlined from numba's
/// implementation of a library function: one string, its Python name
/// ("numba.np.arraymath.np_diff_impl"), set by transforms/Preprocess.
constexpr const char *OriginMetadata = "enzpy.origin";

/// An error of \p Kind whose location is that of \p At (or of the nearest
/// earlier instruction in its block that has one). When \p At comes from
/// numba's implementation of a library function, the message says which.
llvm::Error makeError(llvm::StringRef Kind, const llvm::Twine &Message,
                      const llvm::Instruction *At = nullptr);

/// The source line of \p I (or of the nearest instruction in its block
/// that has one), 0 when unknown.
unsigned sourceLine(const llvm::Instruction *I);

/// The path of the source file of \p L (its directory joined to a
/// relative file name).
std::string sourcePath(const llvm::DILocation *L);

/// A short, readable name for a value in logs and messages: "%name" for named
/// values, the printed instruction otherwise.
std::string describe(const llvm::Value *V);

/// The user-facing name of a function symbol (numba's mangled names are
/// demangled, their ABI tags dropped).
std::string displayName(llvm::StringRef Symbol);

} // namespace enzpy

#endif
