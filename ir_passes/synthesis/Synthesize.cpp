//===- Synthesize.cpp - the derivative a request asks for -----------------===//
#include "synthesis/Synthesize.h"
#include "driver/Diagnostics.h"
#include "llvm/IR/Module.h"

using namespace llvm;

namespace enzpy {

namespace {
using SynthesizerFn = Expected<Function *> (*)(DerivativeSkeleton &,
                                               DecisionLog *);
struct ModeRow {
  Mode M;
  SynthesizerFn Synthesize;
};
const ModeRow Modes[] = {
    {Mode::Forward, synthesizeForward},
    {Mode::Reverse, synthesizeReverse},
};
} // namespace

Expected<Function *> synthesize(const CanonicalFunction &C, const Request &Req,
                                const TypeAnalysis &TA,
                                const ActivityAnalysis &AA, DecisionLog *Log) {
  Expected<Type *> RetType = returnType(Req, *C.F->getParent());
  if (!RetType)
    return RetType.takeError();
  DerivativeSkeleton Sk(C, Req, *RetType, TA, AA);
  for (const ModeRow &Row : Modes)
    if (Row.M == Req.DiffMode)
      return Row.Synthesize(Sk, Log);
  return makeError("request", "the engine has no synthesizer for this mode");
}

} // namespace enzpy
