#include "knowledge/bundle.h"

#include <filesystem>
#include <fstream>
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

absl::StatusOr<Calibration> ReadCalibration(const std::string& model) {
  Calibration c;
  std::error_code ec;
  const fs::path path = fs::path(model) / "knowledge.json";
  if (!fs::is_regular_file(path, ec)) return c;
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), " is not a JSON object"));
  }
  if (j.contains("abstain_below")) {
    const nlohmann::json& v = j["abstain_below"];
    if (!v.is_number() || v.get<double>() < 0 || v.get<double>() > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(path.string(), ": abstain_below must be a number in [0, 1]"));
    }
    c.abstain_below = v.get<double>();
  }
  return c;
}

absl::Status WriteCalibration(const std::string& model, const Calibration& calibration,
                              const std::string& extra_json) {
  nlohmann::json j = nlohmann::json::object();
  if (!extra_json.empty()) {
    j = nlohmann::json::parse(extra_json, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return absl::InvalidArgumentError("calibration extras are not an object");
  }
  j["abstain_below"] = calibration.abstain_below;
  const fs::path path = fs::path(model) / "knowledge.json";
  const fs::path temp = path.string() + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", temp.string()));
  }
  std::error_code ec;
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
