// `knowctl load`: N concurrent clients, each with its own channel, mixing Ask with Ingest, Search
// and Forget for a fixed time; prints throughput, p50/p99 latency per call and errors by code,
// and on request writes the same as a JSON report.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/knowctl_commands.h"
#include "nlohmann/json.hpp"

namespace knowd::client {
namespace {

using Clock = std::chrono::steady_clock;

enum Op { kAsk = 0, kIngest = 1, kSearch = 2, kForget = 3, kOps = 4 };
constexpr std::array<const char*, kOps> kOpNames = {"ask", "ingest", "search", "forget"};

// What one client thread measured; merged after the run.
struct Tally {
  std::array<std::vector<double>, kOps> ok_ms;  // latencies of successful calls
  std::array<std::map<absl::StatusCode, int64_t>, kOps> errors;
  std::map<absl::StatusCode, std::string> example;  // the first message of each failing code
};

constexpr std::array<const char*, 8> kNames = {"Ardo Velin", "Bessa Kuro", "Corin Dalt",
                                               "Dima Orsk",  "Elra Thune", "Fenn Oskar",
                                               "Gala Mirr",  "Holt Ansery"};
constexpr std::array<const char*, 6> kCities = {"Ethdamith", "Dripe",  "Korvale",
                                                "Ustrin",    "Pellow", "Marrowgate"};

double Percentile(std::vector<double>& values, double p) {
  if (values.empty()) return 0;
  const size_t k = std::min(values.size() - 1, static_cast<size_t>(p * values.size()));
  std::nth_element(values.begin(), values.begin() + k, values.end());
  return values[k];
}

struct Mix {
  double ask = 0.5;
  double forget = 0;
};

// Picks the next call: Ask with probability mix.ask, Forget with mix.forget, Ingest and Search
// share the rest equally.
Op PickOp(double pick, const Mix& mix) {
  if (pick < mix.ask) return kAsk;
  if (pick < mix.ask + mix.forget) return kForget;
  return pick < mix.ask + mix.forget + (1 - mix.ask - mix.forget) / 2 ? kIngest : kSearch;
}

void RunClient(Client& client, int index, Mix mix, Clock::time_point end, Tally* tally) {
  std::mt19937_64 rng(1000 + index);
  std::uniform_real_distribution<double> unit(0, 1);
  int64_t ingested = 0;
  // Documents this client ingested (acknowledged) and has not forgotten yet, oldest first: a
  // Forget removes the oldest. A Forget with nothing stored ingests instead, which alone would
  // let each client's count drift up like a random walk held at zero (the bank grew ~1,100
  // documents in a 10-minute soak); an Ingest past kMaxStored forgets instead, so with equal
  // ingest and forget ratios the bank stays between 0 and clients x kMaxStored documents.
  constexpr size_t kMaxStored = 16;
  std::deque<std::string> stored;
  while (Clock::now() < end) {
    const std::string name = kNames[rng() % kNames.size()];
    const std::string city = kCities[rng() % kCities.size()];
    Op op = PickOp(unit(rng), mix);
    // Nothing of this client's to forget yet: ingest instead; too much of it: forget instead.
    if (op == kForget && stored.empty()) op = kIngest;
    if (op == kIngest && mix.forget > 0 && stored.size() >= kMaxStored) op = kForget;
    const auto start = Clock::now();
    absl::Status status;
    if (op == kAsk) {
      v1::AskRequest request;
      request.set_question(absl::StrCat("In which city does ", name, " live?"));
      status = client.Ask(request).status();
    } else if (op == kSearch) {
      v1::SearchRequest request;
      request.set_query(absl::StrCat(name, " ", city));
      status = client.Search(request).status();
    } else if (op == kForget) {
      v1::ForgetRequest request;
      request.add_ids(stored.front());
      absl::StatusOr<v1::ForgetResponse> response = client.Forget(request);
      status = response.status();
      if (status.ok() && response->forgotten_size() != 1) {
        status = absl::DataLossError(
            absl::StrCat(stored.front(), " was not found, though its ingest was acknowledged"));
      }
      if (status.ok()) stored.pop_front();
    } else {
      const std::string id = absl::StrCat("load-", index, "-", ingested++);
      bool sent = false;
      absl::Status ack_status;
      status = client.Ingest(
          [&](v1::IngestRequest* request) -> absl::StatusOr<bool> {
            if (sent) return false;
            sent = true;
            request->set_id(id);
            request->set_text(absl::StrCat(name, " now lives in ", city, ". By trade, ", name,
                                           " is a carpenter. Load test document ", ingested,
                                           " of client ", index, "."));
            return true;
          },
          [&](const v1::IngestAck& ack) {
            if (ack.error_code() != 0) {
              ack_status = absl::Status(static_cast<absl::StatusCode>(ack.error_code()),
                                        ack.error_message());
            }
          });
      if (status.ok()) status = ack_status;
      if (status.ok()) stored.push_back(id);
    }
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    if (status.ok()) {
      tally->ok_ms[op].push_back(ms);
    } else {
      ++tally->errors[op][status.code()];
      tally->example.emplace(status.code(), absl::StrCat(kOpNames[op], ": ", status.message()));
      // A full queue asks for backoff; an unreachable daemon should not be hammered either.
      if (status.code() == absl::StatusCode::kResourceExhausted ||
          status.code() == absl::StatusCode::kUnavailable) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }
}

// "RESOURCE_EXHAUSTED,UNAVAILABLE" -> the codes; an unknown name is a usage error.
absl::StatusOr<std::set<absl::StatusCode>> ParseCodes(const std::string& list) {
  std::set<absl::StatusCode> codes;
  for (absl::string_view name : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    bool found = false;
    for (int c = 0; c <= static_cast<int>(absl::StatusCode::kUnauthenticated); ++c) {
      if (absl::StatusCodeToString(static_cast<absl::StatusCode>(c)) == name) {
        codes.insert(static_cast<absl::StatusCode>(c));
        found = true;
      }
    }
    if (!found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tolerate: \"", name, "\" is not a status code name (e.g. RESOURCE_EXHAUSTED)"));
    }
  }
  return codes;
}

}  // namespace

int RunLoad(const ClientOptions& options, const LoadFlags& flags) {
  absl::StatusOr<std::set<absl::StatusCode>> tolerated = ParseCodes(flags.tolerate.value_or(""));
  if (!tolerated.ok()) {
    std::cerr << "knowctl load: " << tolerated.status().message() << "\n";
    return 2;
  }
  const int clients = flags.clients;
  const double duration = flags.duration, ask_ratio = flags.ask_ratio;
  const double forget_ratio = flags.forget_ratio;
  if (clients < 1 || duration < 0 || ask_ratio < 0 || forget_ratio < 0 ||
      ask_ratio + forget_ratio > 1) {
    std::cerr << "knowctl load: --clients must be at least 1, --duration, --ask-ratio and "
                 "--forget-ratio at least 0 and the two ratios' sum at most 1\n";
    return 2;
  }
  const std::string report_path = flags.report;
  std::vector<std::unique_ptr<Client>> connections;
  for (int i = 0; i < clients; ++i) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    if (!client.ok()) return ReportError("load", options, client.status());
    connections.push_back(std::move(*client));
  }
  // Fail fast, with the usual message, when the daemon is not there.
  if (absl::StatusOr<v1::StatsResponse> stats = connections[0]->Stats(); !stats.ok()) {
    return ReportError("load", options, stats.status());
  }
  const Mix mix{ask_ratio, forget_ratio};
  std::vector<Tally> tallies(clients);
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  const auto end = start + std::chrono::microseconds(static_cast<int64_t>(duration * 1e6));
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back(RunClient, std::ref(*connections[i]), i, mix, end, &tallies[i]);
  }
  for (std::thread& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  Tally all;
  for (Tally& t : tallies) {
    for (int op = 0; op < kOps; ++op) {
      all.ok_ms[op].insert(all.ok_ms[op].end(), t.ok_ms[op].begin(), t.ok_ms[op].end());
      for (const auto& [code, count] : t.errors[op]) all.errors[op][code] += count;
    }
    all.example.insert(t.example.begin(), t.example.end());
  }
  nlohmann::json report = {
      {"clients", clients},           {"seconds", seconds},
      {"target", options.target},     {"ask_ratio", ask_ratio},
      {"forget_ratio", forget_ratio}, {"client_cores", std::thread::hardware_concurrency()}};
  std::cout << absl::StrFormat(
      "knowctl load: %d clients for %.1f s against %s, ask ratio %.2f, forget ratio %.2f (client "
      "machine: %d cores)\n",
      clients, seconds, options.target, ask_ratio, forget_ratio,
      std::thread::hardware_concurrency());
  std::cout << absl::StrFormat("%-8s %8s %8s %10s %10s %10s %8s\n", "call", "ok", "ok/s", "p50 ms",
                               "p99 ms", "max ms", "errors");
  std::vector<double> every;
  std::map<absl::StatusCode, int64_t> errors;
  int64_t failed = 0, untolerated = 0;
  auto row = [&](const char* name, std::vector<double>& ms, int64_t op_failed) {
    const double max = ms.empty() ? 0 : *std::max_element(ms.begin(), ms.end());
    const double p50 = Percentile(ms, 0.5), p99 = Percentile(ms, 0.99);
    std::cout << absl::StrFormat("%-8s %8d %8.1f %10.1f %10.1f %10.1f %8d\n", name, ms.size(),
                                 ms.size() / seconds, p50, p99, max, op_failed);
    return nlohmann::json{{"ok", ms.size()},
                          {"ok_per_s", ms.size() / seconds},
                          {"p50_ms", p50},
                          {"p99_ms", p99},
                          {"max_ms", max},
                          {"failed", op_failed},
                          {"errors", nlohmann::json::object()}};
  };
  for (int op = 0; op < kOps; ++op) {
    int64_t op_failed = 0;
    for (const auto& [code, count] : all.errors[op]) {
      op_failed += count;
      errors[code] += count;
      if (!tolerated->count(code)) untolerated += count;
    }
    failed += op_failed;
    every.insert(every.end(), all.ok_ms[op].begin(), all.ok_ms[op].end());
    nlohmann::json& entry = report["calls"][kOpNames[op]] =
        row(kOpNames[op], all.ok_ms[op], op_failed);
    for (const auto& [code, count] : all.errors[op]) {
      entry["errors"][absl::StatusCodeToString(code)] = count;
    }
  }
  report["all"] = row("all", every, failed);
  report["errors"] = nlohmann::json::object();
  if (errors.empty()) {
    std::cout << "errors: none\n";
  } else {
    std::cout << "errors:";
    for (const auto& [code, count] : errors) {
      std::cout << " " << absl::StatusCodeToString(code) << " " << count;
      report["errors"][absl::StatusCodeToString(code)] = count;
    }
    std::cout << "\n";
    for (const auto& [code, message] : all.example) {
      std::cout << "  first " << absl::StatusCodeToString(code) << ": " << message << "\n";
      report["error_examples"][absl::StatusCodeToString(code)] = message;
    }
  }
  report["all"]["errors"] = report["errors"];
  report["untolerated_errors"] = untolerated;
  if (!report_path.empty()) {
    std::ofstream out(report_path);
    out << report.dump(2) << "\n";
    if (!out.good()) {
      return ReportError(
          "load", options,
          absl::UnavailableError(absl::StrCat("--report ", report_path,
                                              ": cannot write (does its directory exist?)")));
    }
  }
  if (flags.tolerate.has_value() && untolerated > 0) {
    std::cerr << "knowctl load: " << untolerated
              << " call(s) failed with a code --tolerate does not list\n";
    return 1;
  }
  return 0;
}

}  // namespace knowd::client
