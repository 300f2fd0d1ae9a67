#include "knowledge/bundle.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"

namespace knowd::knowledge {
namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<Backend>> MakeBackendByName(std::string_view name, int threads) {
  if (name == "cpu") return MakeCpuBackend(threads);
  if (name == "cuda") return MakeCudaBackend(0);
  return absl::InvalidArgumentError(
      absl::StrCat("the backend must be cpu or cuda, not \"", std::string(name), "\""));
}

namespace {

absl::StatusOr<Calibration> ParseCalibration(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a JSON object"));
  Calibration c;
  auto number = [&](const nlohmann::json& object, const char* key, double low, double high,
                    const char* where) -> absl::StatusOr<std::optional<double>> {
    if (!object.contains(key)) return std::nullopt;
    const nlohmann::json& v = object[key];
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < low ||
        v.get<double>() > high) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", where, key, " must be a number in [", low, ", ", high, "]"));
    }
    return v.get<double>();
  };
  KNOWD_ASSIGN_OR_RETURN(std::optional<double> abstain, number(j, "abstain_below", 0, 1, ""));
  c.abstain_below = abstain.value_or(0);
  if (!j.contains("retrieval")) return c;
  const nlohmann::json& r = j["retrieval"];
  if (!r.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": retrieval must be an object"));
  }
  auto retrieval = [&](const nlohmann::json& v,
                       const std::string& where) -> absl::StatusOr<Retrieval> {
    std::optional<Retrieval> parsed;
    if (v.is_string()) parsed = ParseRetrievalName(v.get<std::string>());
    if (!parsed.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", where, " must be lexical, dense or hybrid"));
    }
    return *parsed;
  };
  if (r.contains("default")) {
    KNOWD_ASSIGN_OR_RETURN(c.retrieval.all, retrieval(r["default"], "retrieval.default"));
  }
  if (r.contains("modes")) {
    if (!r["modes"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": retrieval.modes must be an object"));
    }
    for (const auto& [name, value] : r["modes"].items()) {
      std::optional<AskMode> mode;
      for (AskMode m : {AskMode::kRag, AskMode::kMac, AskMode::kMacRag}) {
        if (name == AskModeName(m)) mode = m;
      }
      if (!mode.has_value()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": retrieval.modes has \"", name,
                                                       "\"; the modes are rag, mac and mac+rag"));
      }
      KNOWD_ASSIGN_OR_RETURN(c.retrieval.by_mode[*mode],
                             retrieval(value, absl::StrCat("retrieval.modes.", name)));
    }
  }
  KNOWD_ASSIGN_OR_RETURN(std::optional<double> rrf_k, number(r, "rrf_k", 0, 1e6, "retrieval."));
  KNOWD_ASSIGN_OR_RETURN(std::optional<double> dense,
                         number(r, "dense_weight", 0, 1e6, "retrieval."));
  KNOWD_ASSIGN_OR_RETURN(std::optional<double> lexical,
                         number(r, "lexical_weight", 0, 1e6, "retrieval."));
  c.fusion.rrf_k = static_cast<int>(rrf_k.value_or(c.fusion.rrf_k));
  c.fusion.dense_weight = static_cast<float>(dense.value_or(c.fusion.dense_weight));
  c.fusion.lexical_weight = static_cast<float>(lexical.value_or(c.fusion.lexical_weight));
  if (c.fusion.dense_weight == 0 && c.fusion.lexical_weight == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": retrieval.dense_weight and lexical_weight are both 0"));
  }
  return c;
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in && !in.eof()) return absl::NotFoundError(absl::StrCat("cannot read ", path.string()));
  return nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
}

}  // namespace

absl::StatusOr<Calibration> ReadCalibration(const std::string& model) {
  std::error_code ec;
  const fs::path path = fs::path(model) / "knowledge.json";
  if (!fs::is_regular_file(path, ec)) return Calibration();
  KNOWD_ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonFile(path));
  return ParseCalibration(j, path.string());
}

absl::Status UpdateCalibration(const std::string& model, const std::string& update_json) {
  const nlohmann::json update =
      nlohmann::json::parse(update_json, nullptr, /*allow_exceptions=*/false);
  if (!update.is_object())
    return absl::InvalidArgumentError("a calibration update is not an object");
  const fs::path path = fs::path(model) / "knowledge.json";
  std::error_code ec;
  nlohmann::json j = nlohmann::json::object();
  if (fs::is_regular_file(path, ec)) {
    KNOWD_ASSIGN_OR_RETURN(j, ReadJsonFile(path));
    if (!j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(path.string(), " is not a JSON object"));
    }
  }
  for (const auto& [key, value] : update.items()) j[key] = value;
  KNOWD_RETURN_IF_ERROR(ParseCalibration(j, path.string()).status());
  const fs::path temp = path.string() + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", temp.string()));
  }
  fs::rename(temp, path, ec);
  if (ec)
    return absl::InternalError(absl::StrCat("cannot write ", path.string(), ": ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<Bundle> LoadBundle(const BundleOptions& options) {
  Bundle b;
  b.model_path = options.model;
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      MakeBackendByName(options.backend, options.threads);
  if (!backend.ok()) return backend.status();
  b.backend = *std::move(backend);
  absl::StatusOr<std::unique_ptr<Transformer>> model =
      Transformer::Load(b.model_path, b.backend.get());
  if (!model.ok()) return model.status();
  b.model = *std::move(model);
  KNOWD_ASSIGN_OR_RETURN(b.tokenizer, LoadTokenizer(b.model_path));

  std::error_code ec;
  if (options.adapter.empty()) {
    const fs::path dir = fs::path(b.model_path) / "adapter";
    if (fs::is_regular_file(dir / "adapter.json", ec)) b.adapter_path = dir.string();
  } else if (options.adapter != "none") {
    b.adapter_path = options.adapter;
  }
  if (!b.adapter_path.empty()) {
    KNOWD_ASSIGN_OR_RETURN(b.modulator, LoadModulator(b.adapter_path, b.model.get(), &b.adapter));
  } else if (options.require_adapter) {
    return absl::FailedPreconditionError(
        absl::StrCat(b.model_path, " has no adapter (adapter/adapter.json); give one"));
  }
  if (fs::is_directory(b.model_path, ec)) {
    KNOWD_ASSIGN_OR_RETURN(b.calibration, ReadCalibration(b.model_path));
  }
  return b;
}

absl::StatusOr<std::unique_ptr<Modulator>> LoadModulator(const std::string& dir, Transformer* model,
                                                         Adapter** adapter) {
  absl::StatusOr<std::unique_ptr<Adapter>> loaded = Adapter::Load(dir, model);
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrCat("adapter ", dir, ": ", loaded.status().message()));
  }
  if (adapter != nullptr) *adapter = loaded->get();
  return MakeAdapterModulator(*std::move(loaded));
}

}  // namespace knowd::knowledge
