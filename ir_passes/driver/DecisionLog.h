//===- DecisionLog.h - the engine's decisions, recorded once ----*- C++ -*-===//
//
// Each stage records what it decided about a value: ("activity", "active",
// %x), ("tape", "reread", %v in block %loop), ("forward", "tangent", %r).
// The log renders the records two ways: as the text enzpy.explain() prints,
// and as JSON (request field "log_format": "json") for tools and the engine
// tests, which check decisions as data rather than as text:
//
//   [{"stage": "tape", "kind": "reread", "value": "%v", "block": "loop"},
//    {"stage": "types", "kind": "memory", "value": "%x",
//     "detail": "holds double"}, ...]
//
// Dumps of IR (request field "dump_ir") are text sections of their own.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_DRIVER_DECISIONLOG_H
#define ENZPY_DRIVER_DECISIONLOG_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/raw_ostream.h"
#include <string>
#include <vector>

namespace llvm {
class BasicBlock;
class Value;
} // namespace llvm

namespace enzpy {

class DecisionLog {
public:
  /// Starts the section of \p Stage (a heading in the text, even if empty).
  void begin(llvm::StringRef Stage);
  /// \p Kind of decision about \p V, made in the current stage; \p Block
  /// says where, for decisions made per block.
  void record(llvm::StringRef Kind, const llvm::Value *V,
              const llvm::BasicBlock *Block = nullptr,
              llvm::StringRef Detail = "");
  /// A text section (an IR dump, say).
  void dump(llvm::StringRef Title, llvm::StringRef Text);

  void renderText(llvm::raw_ostream &OS) const;
  void renderJson(llvm::raw_ostream &OS) const;

private:
  struct Entry {
    std::string Stage;
    std::string Kind; // empty: a section heading, or a dump with Detail
    std::string Value;
    std::string Block;
    std::string Detail;
    bool Dump = false;
  };
  std::vector<Entry> Entries;
  std::string Stage;
};

} // namespace enzpy

#endif
