// knowd eval's report (bench/eval.h): the markdown table (stdout), and with --report the JSON, the
// table as FILE.md and the EM-vs-stored-passages plot as FILE.png.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/eval_internal.h"
#include "bench/png_plot.h"

namespace knowd::bench::internal {

std::string Fixed(double v, int digits) { return absl::StrFormat("%.*f", digits, v); }

absl::Status WriteReport(Json& report, const EvalOptions& o, int total) {
  // The markdown table.
  std::string md =
      absl::StrCat("## knowd eval — ", o.split, " split, ", report["questions"].get<int>(),
                   " questions, ", total, " passages streamed\n\n");
  absl::StrAppend(&md,
                  "| mode | EM | F1 | retention EM (right after → whole stream) | update EM "
                  "(stale) |\n|---|---|---|---|---|\n");
  for (int m = 0; m < kNumModes; ++m) {
    const Json& mode = report["modes"][kModeNames[m]];
    if (mode["status"] != "ok") {
      absl::StrAppend(&md, "| ", kModeNames[m], " | skipped: ", mode["reason"].get<std::string>(),
                      " | | | |\n");
      continue;
    }
    const Json& ret = report["retention"]["modes"][kModeNames[m]];
    const std::string retention =
        ret.contains("em_right_after")
            ? absl::StrCat(Fixed(ret["em_right_after"]), " → ", Fixed(ret["em_after_stream"]))
            : "n/a (no memory)";
    const Json& upd = report["updates"]["modes"][kModeNames[m]];
    const std::string update =
        report["updates"]["questions"].get<int>() > 0
            ? absl::StrCat(Fixed(upd["em"]), " (", Fixed(upd["stale_em"]), ")")
            : "n/a";
    absl::StrAppend(&md, "| ", kModeNames[m], " | ", Fixed(mode["em"]), " | ", Fixed(mode["f1"]),
                    " | ", retention, " | ", update, " |\n");
  }
  absl::StrAppend(&md, "\nEM by relation:\n\n| relation | questions |");
  std::vector<const char*> ran;
  for (const char* name : kModeNames) {
    if (report["modes"][name]["status"] == "ok") ran.push_back(name);
  }
  for (const char* name : ran) absl::StrAppend(&md, " ", name, " |");
  absl::StrAppend(&md, "\n|---|---|");
  for (size_t i = 0; i < ran.size(); ++i) absl::StrAppend(&md, "---|");
  absl::StrAppend(&md, "\n");
  for (const auto& [relation, r] : report["by_relation"].items()) {
    absl::StrAppend(&md, "| ", relation, " | ", r["questions"].get<int>(), " |");
    for (const char* name : ran) absl::StrAppend(&md, " ", Fixed(r["modes"][name]["em"]), " |");
    absl::StrAppend(&md, "\n");
  }
  const Json& ret = report["retrieval"];
  absl::StrAppend(
      &md, "\nRetrieval recall@1 / @5 (", ret["questions"].get<int>(), " questions): BM25 ",
      Fixed(ret["bm25"]["recall_at_1"]), " / ", Fixed(ret["bm25"]["recall_at_5"]), "; dense (",
      ret["dense_key"].get<std::string>(), ") ", Fixed(ret["dense"]["recall_at_1"]), " / ",
      Fixed(ret["dense"]["recall_at_5"]), "; hybrid ", Fixed(ret["hybrid"]["recall_at_1"]), " / ",
      Fixed(ret["hybrid"]["recall_at_5"]), " (rrf_k ", ret["fusion"]["rrf_k"].get<int>(),
      ", lexical weight ", Fixed(ret["fusion"]["lexical_weight"]), "); retrieval served: rag ",
      ret["served"]["rag"].get<std::string>(), ", mac ", ret["served"]["mac"].get<std::string>(),
      ", mac+rag ", ret["served"]["mac+rag"].get<std::string>(), "\n");
  const Json& curve = report["em_vs_stored"];
  absl::StrAppend(&md, "\nEM vs stored passages (", curve["questions"].get<int>(),
                  " retention questions):\n\n| mode |");
  for (const Json& n : curve["bank_sizes"]) absl::StrAppend(&md, " ", n.get<int>(), " |");
  absl::StrAppend(&md, "\n|---|");
  for (size_t i = 0; i < curve["bank_sizes"].size(); ++i) absl::StrAppend(&md, "---|");
  absl::StrAppend(&md, "\n");
  for (const auto& [name, values] : curve["series"].items()) {
    absl::StrAppend(&md, "| ", name, " |");
    for (const Json& v : values) absl::StrAppend(&md, " ", Fixed(v.get<double>()), " |");
    absl::StrAppend(&md, "\n");
  }
  const Json& bytes = report["storage_bytes"];
  absl::StrAppend(
      &md, "\nBytes per stored passage: modulation ",
      bytes["modulation"].contains("bytes")
          ? absl::StrCat(bytes["modulation"]["bytes"].get<int64_t>(), " (latents ",
                         bytes["modulation"]["latent_bytes"].get<int64_t>(), " ",
                         bytes["modulation"]["latent_format"].get<std::string>(), " + key ",
                         bytes["modulation"]["key_bytes"].get<int64_t>(), "; 1/",
                         Fixed(1.0 / bytes["modulation_vs_kv_f16"].get<double>(), 1),
                         " of the f16 KV cache)")
          : absl::StrCat("n/a (", bytes["modulation"]["reason"].get<std::string>(), ")"),
      "; text ", Fixed(bytes["text_per_passage"], 1), "; KV cache of the passage ",
      Fixed(bytes["kv_cache_f16_per_passage"], 0), " (f16) / ",
      Fixed(bytes["kv_cache_f32_per_passage"], 0), " (f32, as the engine holds it)\n");

  if (report.contains("abstention")) {
    const Json& ab = report["abstention"];
    auto rate = [&](const char* what) {
      return absl::StrCat(Fixed(ab[what]["rate"]), " (", ab[what]["abstained"].get<int>(), " of ",
                          ab[what]["questions"].get<int>(), ")");
    };
    absl::StrAppend(
        &md, "\nNothing in memory (relevance below ", Fixed(ab["threshold"]), ", ",
        ab["source"].get<std::string>(), "): refused ", rate("unknown"),
        " questions about people never streamed (", ab["unknown"]["split"].get<std::string>(),
        " split), ", rate("forgotten"), " about ", ab["forgotten"]["subjects"].get<int>(),
        " people forgotten after the stream, ", rate("known"), " of this split's own questions.");
    for (const auto& [mode, m] : ab["modes"].items()) {
      if (mode != "mac" && mode != "mac+rag" && mode != "rag-subject") continue;
      absl::StrAppend(&md, " ", mode, " EM ", Fixed(m["em_without_abstention"]), " → ",
                      Fixed(m["em"]), ";");
    }
    absl::StrAppend(&md, "\n");
  }

  if (o.print_table) std::fputs(md.c_str(), stdout);
  if (o.report_path.empty()) return absl::OkStatus();

  std::vector<PlotSeries> series;
  const Rgb colors[kNumModes] = {{120, 120, 120}, {0, 0, 0},     {31, 119, 180}, {214, 39, 40},
                                 {255, 127, 14},  {44, 160, 44}, {148, 103, 189}};
  for (int m = 0; m < kNumModes; ++m) {
    if (!curve["series"].contains(kModeNames[m])) continue;
    PlotSeries s;
    s.label = kModeNames[m];
    s.color = colors[m];
    for (const Json& n : curve["bank_sizes"]) s.x.push_back(n.get<double>());
    for (const Json& v : curve["series"][kModeNames[m]]) s.y.push_back(v.get<double>());
    series.push_back(std::move(s));
  }
  LinePlot plot;
  plot.title = "EM vs stored passages";
  plot.x_label = "passages in the bank";
  plot.y_label = "EM";
  absl::StatusOr<std::string> png = RenderLinePlot(plot, series);
  if (!png.ok()) return png.status();

  return WriteReportFiles(o.report_path, report, md, *png);
}

absl::Status WriteReportFiles(const std::string& json_file, Json& report,
                              const std::string& markdown, const std::string& png) {
  const std::filesystem::path json_path(json_file);
  std::filesystem::path md_path = json_path, png_path = json_path;
  md_path.replace_extension(".md");
  png_path.replace_extension(".png");
  report["files"] = {{"markdown", md_path.string()}, {"plot", png_path.string()}};
  std::error_code ec;
  if (json_path.has_parent_path()) std::filesystem::create_directories(json_path.parent_path(), ec);
  auto write = [](const std::filesystem::path& path, const std::string& content) -> absl::Status {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
    return absl::OkStatus();
  };
  if (absl::Status s = write(json_path, report.dump(2) + "\n"); !s.ok()) return s;
  if (absl::Status s = write(md_path, markdown); !s.ok()) return s;
  return write(png_path, png);
}

}  // namespace knowd::bench::internal
