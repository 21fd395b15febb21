//===- Engine.cpp - pipeline driver ---------------------------------------===//
#include "Engine.h"

using namespace llvm;

namespace enzpy {
EngineResult differentiate(StringRef Module, StringRef Request) {
  EngineResult R;
  R.ErrorKind = "internal";
  R.ErrorMessage = "engine under construction";
  return R;
}
} // namespace enzpy
