//===- Engine.cpp - pipeline driver ---------------------------------------===//
//
// parse -> preprocess -> type analysis -> activity analysis -> the same
// for the recursive functions it calls (RecursiveCalls.h) -> synthesis
// (forward or reverse, as the request asks) -> verify -> post-opt ->
// bitcode. Every failure becomes a structured result; each request gets its
// own LLVMContext.
//
//===----------------------------------------------------------------------===//
#include "driver/Engine.h"
#include "analysis/ActivityAnalysis.h"
#include "analysis/ControlActivity.h"
#include "analysis/TypeAnalysis.h"
#include "driver/DecisionLog.h"
#include "driver/Diagnostics.h"
#include "driver/RecursiveCalls.h"
#include "driver/Request.h"
#include "rules/UserRules.h"
#include "synthesis/ParallelLoops.h"
#include "synthesis/ShadowAddresses.h"
#include "synthesis/Synthesize.h"
#include "transforms/PostOpt.h"
#include "transforms/Preprocess.h"
#include "llvm/AsmParser/Parser.h"
#include "llvm/Bitcode/BitcodeReader.h"
#include "llvm/Bitcode/BitcodeWriter.h"
#include "llvm/IR/DebugInfo.h"
#include "llvm/IR/LLVMContext.h"
#include "llvm/IR/Module.h"
#include "llvm/IR/Verifier.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/raw_ostream.h"

using namespace llvm;

namespace enzpy {

static Expected<std::unique_ptr<Module>> parseModule(StringRef Bytes,
                                                     LLVMContext &Ctx) {
  if (Bytes.starts_with("BC")) {
    auto M = parseBitcodeFile(MemoryBufferRef(Bytes, "enzpy.input"), Ctx);
    if (!M)
      return makeError("request", "cannot read the module's bitcode: " +
                                      toString(M.takeError()));
    return std::move(*M);
  }
  SMDiagnostic Diag;
  std::unique_ptr<Module> M = parseAssemblyString(Bytes, Diag, Ctx);
  if (!M) {
    std::string Msg;
    raw_string_ostream OS(Msg);
    Diag.print("enzpy.input", OS, /*ShowColors=*/false);
    return makeError("request", "cannot parse the module's IR: " + Msg);
  }
  return std::move(M);
}

/// \p X as LLVM prints it.
template <typename T> static std::string printed(const T &X) {
  std::string S;
  raw_string_ostream OS(S);
  OS << X;
  return S;
}

static Expected<std::string> run(StringRef Bytes, const Request &Req,
                                 DecisionLog &Log) {
  LLVMContext Ctx;
  Expected<std::unique_ptr<Module>> MOr = parseModule(Bytes, Ctx);
  if (!MOr)
    return MOr.takeError();
  Module &M = **MOr;
  Expected<CanonicalFunction> C = preprocess(M, Req);
  if (!C)
    return C.takeError();

  markParallelLoops(*C, Req);
  if (Req.DumpIR)
    Log.dump("canonical primal", printed(*C->F));
  TypeAnalysis TA(*C->F, Req);
  ActivityAnalysis AA(*C, Req, TA);
  if (Error E = AA.run())
    return std::move(E);
  if (Error E = checkShadowable(*C, AA))
    return std::move(E);
  RecursiveCalls Recursion(M, Req);
  if (Error E = Recursion.plan(*C, Req, AA))
    return std::move(E);
  if (Req.Log) {
    TA.record(Log);
    AA.record(Log);
  }
  if (Req.Log || Req.StrictControl) {
    ControlActivity CA(*C, Req, AA);
    CA.run();
    if (Req.Log)
      CA.record(Log);
    if (Req.StrictControl)
      if (Error E = CA.strictError())
        return std::move(E);
  }
  // Locations have served the diagnostics; the derivative carries none.
  StripDebugInfo(M);

  DecisionLog *SynthLog = Req.Log ? &Log : nullptr;
  Expected<Function *> D = synthesize(*C, Req, TA, AA, SynthLog);
  if (!D)
    return D.takeError();
  if (Error E = Recursion.synthesizeAll())
    return std::move(E);
  C->F->eraseFromParent();
  Recursion.eraseCopies();

  std::string VerifyMsg;
  raw_string_ostream VOS(VerifyMsg);
  if (verifyModule(M, &VOS)) {
    if (Req.Log)
      Log.dump("invalid derivative", printed(M));
    return makeError("internal", "the derivative failed LLVM's verifier: " +
                                     StringRef(VerifyMsg).take_front(2000));
  }
  if (Req.DumpIR)
    Log.dump("derivative before optimization", printed(**D));
  if (Req.Optimize)
    optimizeDerivative(M, Req.TargetCPU, Req.TargetFeatures, Req.VectorLibrary);
  // Rule functions that came as declarations and that the derivative does
  // not call: the loader compiles each one declared.
  for (Function &G : make_early_inc_range(M))
    if (G.isDeclaration() && G.use_empty() && isRuleHelper(G))
      G.eraseFromParent();
  std::string Out;
  raw_string_ostream OS(Out);
  WriteBitcodeToFile(M, OS);
  return Out;
}

EngineResult differentiate(StringRef Module, StringRef RequestJson) {
  EngineResult R;
  DecisionLog Log;
  Expected<Request> Req = parseRequest(RequestJson);
  Expected<std::string> Bitcode =
      Req ? run(Module, *Req, Log) : Expected<std::string>(Req.takeError());
  if (Req) {
    raw_string_ostream OS(R.Log);
    if (Req->LogJson)
      Log.renderJson(OS);
    else
      Log.renderText(OS);
  }
  if (Bitcode) {
    R.Ok = true;
    R.Bitcode = std::move(*Bitcode);
    return R;
  }
  handleAllErrors(
      Bitcode.takeError(),
      [&](const EnzpyDiag &D) {
        R.ErrorKind = D.Kind;
        R.ErrorMessage = D.Message;
        R.ErrorFile = D.File;
        R.ErrorLine = D.Line;
      },
      [&](const ErrorInfoBase &E) {
        R.ErrorKind = "internal";
        R.ErrorMessage = E.message();
      });
  return R;
}

} // namespace enzpy
