// Private to knowd eval (bench/eval*.cc): the modes' names and the report writer.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "bench/eval.h"
#include "nlohmann/json.hpp"

namespace knowd::bench::internal {

using Json = nlohmann::ordered_json;

enum Mode { kClosedBook = 0, kOracle, kRagTop1, kRagTop3, kRagSubject, kMac, kMacRag, kNumModes };
constexpr const char* kModeNames[kNumModes] = {"closed-book", "oracle", "rag-top1", "rag-top3",
                                               "rag-subject", "mac",    "mac+rag"};

std::string Fixed(double v, int digits = 3);

// Prints the markdown table (when o.print_table) and, when o.report_path is set, writes the JSON
// report there, the table beside it as .md and the EM-vs-stored plot as .png (adding their paths
// to `report`). `total`: the passages streamed.
absl::Status WriteReport(Json& report, const EvalOptions& o, int total);

// Writes `report` to json_path, `markdown` beside it as .md and `png` as .png (creating the
// directory), after adding the two paths to report["files"].
absl::Status WriteReportFiles(const std::string& json_path, Json& report,
                              const std::string& markdown, const std::string& png);

}  // namespace knowd::bench::internal
