//===- DecisionLog.cpp - the engine's decisions, recorded once ------------===//
#include "driver/DecisionLog.h"
#include "driver/Diagnostics.h"
#include "llvm/IR/BasicBlock.h"
#include "llvm/Support/JSON.h"

using namespace llvm;

namespace enzpy {

void DecisionLog::begin(StringRef S) {
  Stage = S.str();
  Entries.push_back({Stage, "", "", "", "", false});
}

void DecisionLog::record(StringRef Kind, const Value *V, const BasicBlock *B,
                         StringRef Detail) {
  Entries.push_back({Stage, Kind.str(), describe(V),
                     B ? B->getName().str() : std::string(), Detail.str(),
                     false});
}

void DecisionLog::dump(StringRef Title, StringRef Text) {
  Entries.push_back({Title.str(), "", "", "", Text.str(), true});
}

void DecisionLog::renderText(raw_ostream &OS) const {
  for (const Entry &E : Entries) {
    if (E.Dump) {
      OS << E.Stage << ":\n" << E.Detail << "\n";
      continue;
    }
    if (E.Kind.empty()) {
      OS << E.Stage << ":\n";
      continue;
    }
    OS << "  " << E.Kind << " " << E.Value;
    if (!E.Detail.empty())
      OS << " " << E.Detail;
    if (!E.Block.empty())
      OS << " in block %" << E.Block;
    OS << "\n";
  }
}

void DecisionLog::renderJson(raw_ostream &OS) const {
  json::Array Out;
  for (const Entry &E : Entries) {
    if (!E.Dump && E.Kind.empty())
      continue;
    json::Object O{{"stage", E.Dump ? "dump" : E.Stage}};
    if (E.Dump) {
      O["title"] = E.Stage;
      O["text"] = E.Detail;
    } else {
      O["kind"] = E.Kind;
      O["value"] = E.Value;
      if (!E.Block.empty())
        O["block"] = E.Block;
      if (!E.Detail.empty())
        O["detail"] = E.Detail;
    }
    Out.push_back(std::move(O));
  }
  OS << json::Value(std::move(Out));
}

} // namespace enzpy
