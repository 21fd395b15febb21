//===- Diagnostics.cpp - structured errors of the engine ------------------===//
#include "driver/Diagnostics.h"
#include "llvm/Demangle/Demangle.h"
#include "llvm/IR/DebugInfoMetadata.h"
#include "llvm/IR/Instruction.h"
#include "llvm/Support/raw_ostream.h"
#include <regex>

using namespace llvm;

namespace enzpy {

char EnzpyDiag::ID = 0;

void EnzpyDiag::log(raw_ostream &OS) const {
  OS << Kind << ": " << Message;
  if (!File.empty())
    OS << " (" << File << ":" << Line << ")";
}

std::error_code EnzpyDiag::convertToErrorCode() const {
  return inconvertibleErrorCode();
}

static const DILocation *locationNear(const Instruction *I) {
  for (const Instruction *Cur = I; Cur; Cur = Cur->getPrevNode())
    if (const DILocation *L = Cur->getDebugLoc().get())
      if (L->getLine())
        return L;
  // Fall back to the first located instruction after it.
  for (const Instruction *Cur = I; Cur; Cur = Cur->getNextNode())
    if (const DILocation *L = Cur->getDebugLoc().get())
      if (L->getLine())
        return L;
  return nullptr;
}

unsigned sourceLine(const Instruction *I) {
  const DILocation *L = locationNear(I);
  return L ? L->getLine() : 0;
}

std::string sourcePath(const DILocation *L) {
  std::string File = L->getFilename().str();
  StringRef Dir = L->getDirectory();
  if (!Dir.empty() && !StringRef(File).starts_with("/"))
    File = (Dir + "/" + File).str();
  return File;
}

Error makeError(StringRef Kind, const Twine &Message, const Instruction *At) {
  std::string File;
  unsigned Line = 0;
  if (At)
    if (const DILocation *L = locationNear(At)) {
      File = sourcePath(L);
      Line = L->getLine();
    }
  std::string Text = Message.str();
  // Inside an inlined call (a library's njit function): the line of the
  // kernel that called it, too.
  if (At)
    if (const DILocation *L = locationNear(At)) {
      const DILocation *Outer = L;
      while (const DILocation *Up = Outer->getInlinedAt())
        Outer = Up;
      if (Outer != L && Outer->getLine() &&
          (Outer->getFilename() != L->getFilename() ||
           Outer->getLine() != L->getLine()))
        Text += " (called from " + sourcePath(Outer) + ":" +
                std::to_string(Outer->getLine()) + ")";
    }
  if (At)
    if (auto *Tag = At->getMetadata(OriginMetadata))
      if (auto *Name = dyn_cast<MDString>(Tag->getOperand(0)))
        Text += " (inside numba's implementation " + Name->getString().str() +
                ", which this line calls)";
  return make_error<EnzpyDiag>(Kind.str(), Text, File, Line);
}

std::string describe(const Value *V) {
  std::string S;
  raw_string_ostream OS(S);
  if (V->hasName())
    V->printAsOperand(OS, /*PrintType=*/false);
  else
    V->print(OS);
  return StringRef(S).trim().str();
}

std::string displayName(StringRef Symbol) {
  // The derivative's own copy of a numba function is named
  // "<derivative>.<numba's symbol>".
  if (size_t Mangled = Symbol.find("._ZN"); Mangled != StringRef::npos)
    Symbol = Symbol.drop_front(Mangled + 1);
  std::string D = demangle(Symbol.str());
  // numba's ABI tags ("[abi:v1][abi:c8tJTI...]") are noise to a user.
  static const std::regex AbiTag("\\[abi:[^\\]]*\\]");
  return std::regex_replace(D, AbiTag, "");
}

} // namespace enzpy
