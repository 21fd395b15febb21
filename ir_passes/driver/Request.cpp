//===- Request.cpp - parse the JSON request -------------------------------===//
#include "driver/Request.h"
#include "driver/Diagnostics.h"
#include "llvm/AsmParser/Parser.h"
#include "llvm/IR/Module.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/SourceMgr.h"

using namespace llvm;

namespace enzpy {

StringRef activityName(Activity A) {
  switch (A) {
  case Activity::Const:
    return "const";
  case Activity::Active:
    return "active";
  case Activity::Dup:
    return "dup";
  case Activity::DupNoNeed:
    return "dupnoneed";
  }
  return "?";
}

static Error bad(const Twine &Msg) {
  return makeError("request", "malformed request: " + Msg);
}

Expected<Request> parseRequest(StringRef Json) {
  Expected<json::Value> Parsed = json::parse(Json);
  if (!Parsed)
    return bad(toString(Parsed.takeError()));
  const json::Object *Obj = Parsed->getAsObject();
  if (!Obj)
    return bad("not a JSON object");
  Request R;
  auto Str = [&](StringRef Key, std::string &Out, bool Required) -> Error {
    if (auto S = Obj->getString(Key)) {
      Out = S->str();
      return Error::success();
    }
    return Required ? bad("missing string field '" + Key + "'")
                    : Error::success();
  };
  if (Error E = Str("function", R.Function, true))
    return std::move(E);
  if (Error E = Str("name", R.Name, true))
    return std::move(E);
  if (Error E = Str("ret_type", R.RetType, false))
    return std::move(E);
  std::string ModeStr = "reverse";
  if (Error E = Str("mode", ModeStr, false))
    return std::move(E);
  if (ModeStr == "reverse")
    R.DiffMode = Mode::Reverse;
  else if (ModeStr == "forward")
    R.DiffMode = Mode::Forward;
  else
    return makeError("unsupported", "mode '" + ModeStr + "' is not supported");
  if (const json::Value *WV = Obj->get("width")) {
    std::optional<int64_t> Width = WV->getAsInteger();
    if (!Width || *Width < 1 || *Width > MaxWidth)
      return bad("width must be an integer from 1 to " + Twine(MaxWidth));
    R.Width = static_cast<unsigned>(*Width);
  }
  // A string field that takes one of two words: true for the first.
  auto Either = [&](StringRef Key, StringRef First, StringRef Second,
                    StringRef Default, bool &Out) -> Error {
    std::string V = Default.str();
    if (Error E = Str(Key, V, false))
      return E;
    if (V != First && V != Second)
      return bad(Key + " must be '" + First + "' or '" + Second + "'");
    Out = V == First;
    return Error::success();
  };
  if (Error E = Either("ret_activity", "active", "const", "const", R.RetActive))
    return std::move(E);
  R.ReturnPrimal = Obj->getBoolean("return_primal").value_or(false);
  R.Log = Obj->getBoolean("log").value_or(false);
  if (Error E = Either("log_format", "json", "text", "text", R.LogJson))
    return std::move(E);
  R.NoAlias = Obj->getBoolean("noalias").value_or(false);
  R.DumpIR = Obj->getBoolean("dump_ir").value_or(false);
  R.Optimize = Obj->getBoolean("optimize").value_or(true);
  R.TargetCPU = Obj->getString("target_cpu").value_or("").str();
  R.TargetFeatures = Obj->getString("target_features").value_or("").str();
  R.VectorLibrary = Obj->getString("vector_library").value_or("").str();
  if (!R.VectorLibrary.empty() && R.VectorLibrary != "libmvec")
    return bad("unknown vector_library '" + R.VectorLibrary +
               "' (known: libmvec)");
  R.StrictControl = Obj->getBoolean("strict_control").value_or(false);
  const json::Array *Params = Obj->getArray("params");
  if (!Params)
    return bad("missing array field 'params'");
  for (const json::Value &PV : *Params) {
    const json::Object *P = PV.getAsObject();
    if (!P)
      return bad("a 'params' entry is not an object");
    ParamSpec S;
    StringRef A = P->getString("activity").value_or("const");
    if (A == "const")
      S.Act = Activity::Const;
    else if (A == "active")
      S.Act = Activity::Active;
    else if (A == "dup")
      S.Act = Activity::Dup;
    else if (A == "dupnoneed")
      S.Act = Activity::DupNoNeed;
    else
      return bad("unknown activity '" + A + "'");
    S.Elem = P->getString("elem").value_or("").str();
    S.Extent = P->getBoolean("extent").value_or(false);
    if (S.Act != Activity::Const && S.Elem != "double" && S.Elem != "float")
      return bad("an active or duplicated parameter needs \"elem\": "
                 "\"double\" or \"float\"");
    R.Params.push_back(S);
  }
  if (const json::Array *Rules = Obj->getArray("rules"))
    for (const json::Value &RV : *Rules) {
      const json::Object *RO = RV.getAsObject();
      if (!RO || (!RO->getString("partials") && !RO->getString("args")))
        return bad("a 'rules' entry needs a string field 'partials' (or, "
                   "for a custom rule, 'args')");
      RuleSpec S;
      S.Callee = RO->getString("callee").value_or("").str();
      S.Address = static_cast<uint64_t>(RO->getInteger("address").value_or(0));
      S.Partials = RO->getString("partials").value_or("").str();
      if (std::optional<StringRef> Args = RO->getString("args")) {
        S.Custom = true;
        S.Args = Args->str();
        S.Forward = RO->getString("forward").value_or("").str();
        S.Augmented = RO->getString("augmented").value_or("").str();
        S.Reverse = RO->getString("reverse").value_or("").str();
        S.ForwardResult = RO->getString("forward_result").value_or("").str();
        S.AugmentedResult =
            RO->getString("augmented_result").value_or("").str();
        S.ReverseResult = RO->getString("reverse_result").value_or("").str();
        S.Pending = RO->getBoolean("pending").value_or(false);
        S.AlwaysActive = RO->getBoolean("always_active").value_or(false);
        S.AugmentedShadows =
            RO->getBoolean("augmented_shadows").value_or(false);
        S.WritesNothing = RO->getBoolean("writes_nothing").value_or(false);
        S.Result = RO->getString("result").value_or("").str();
        if (const json::Array *Owners = RO->getArray("tape_owners"))
          for (const json::Value &OV : *Owners) {
            std::optional<int64_t> I = OV.getAsInteger();
            if (!I || *I < 0)
              return bad("a rule's 'tape_owners' are leaf indices");
            S.TapeOwners.push_back(static_cast<unsigned>(*I));
          }
        if (S.Callee.empty())
          return bad("a custom rule names a 'callee'");
      }
      S.Display = RO->getString("display").value_or(S.Callee).str();
      S.WithResult = RO->getBoolean("with_result").value_or(false);
      if (const json::Array *Outs = RO->getArray("outputs"))
        for (const json::Value &OV : *Outs) {
          std::optional<StringRef> T = OV.getAsString();
          if (!T || (*T != "double" && *T != "float"))
            return bad("a rule's 'outputs' are \"double\" or \"float\"");
          S.Outputs.push_back(T->str());
        }
      // A custom rule by address also names the function the engine makes
      // for the calls through it (addressFunction).
      if (!S.Custom && S.Callee.empty() == (S.Address == 0))
        return bad("a 'rules' entry names either a 'callee' or an 'address'");
      R.Rules.push_back(std::move(S));
    }
  if (const json::Array *Inactive = Obj->getArray("inactive"))
    for (const json::Value &IV : *Inactive) {
      std::optional<StringRef> Name = IV.getAsString();
      if (!Name)
        return bad("'inactive' must list symbols");
      R.Inactive.push_back(Name->str());
    }
  if (const json::Array *Loops = Obj->getArray("parallel_loops"))
    for (const json::Value &LV : *Loops) {
      const json::Object *LO = LV.getAsObject();
      std::optional<StringRef> File = LO ? LO->getString("file") : std::nullopt;
      std::optional<int64_t> Line = LO ? LO->getInteger("line") : std::nullopt;
      if (!File || !Line || *Line <= 0)
        return bad("'parallel_loops' lists {'file': ..., 'line': ...}");
      R.ParallelLoops.push_back({File->str(), static_cast<unsigned>(*Line)});
    }
  return R;
}

Expected<Type *> returnType(const Request &Req, Module &M) {
  if (Req.RetType == "void") {
    if (Req.RetActive)
      return makeError("request",
                       "ret_activity is active but nothing is returned");
    return nullptr;
  }
  SMDiagnostic Err;
  Type *T = parseType(Req.RetType, Err, M);
  if (!T || T->isVoidTy())
    return makeError("request", "cannot parse ret_type '" + Req.RetType + "'");
  if (Req.RetActive && !T->isFloatingPointTy())
    return makeError("request", "ret_activity is active but ret_type '" +
                                    Req.RetType + "' is not a float");
  return T;
}

} // namespace enzpy
