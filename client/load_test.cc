// `knowctl load`: N concurrent clients, each with its own channel, mixing Ask with Ingest and
// Search for a fixed time; prints throughput, p50/p99 latency per call and errors by code.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/knowctl_commands.h"

namespace knowd::client {
namespace {

using Clock = std::chrono::steady_clock;

enum Op { kAsk = 0, kIngest = 1, kSearch = 2, kOps = 3 };
constexpr std::array<const char*, kOps> kOpNames = {"ask", "ingest", "search"};

// What one client thread measured; merged after the run.
struct Tally {
  std::array<std::vector<double>, kOps> ok_ms;  // latencies of successful calls
  std::array<int64_t, kOps> failed{};
  std::map<absl::StatusCode, int64_t> errors;
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

void RunClient(Client& client, int index, double ask_ratio, Clock::time_point end, Tally* tally) {
  std::mt19937_64 rng(1000 + index);
  std::uniform_real_distribution<double> unit(0, 1);
  int64_t ingested = 0;
  while (Clock::now() < end) {
    const std::string name = kNames[rng() % kNames.size()];
    const std::string city = kCities[rng() % kCities.size()];
    const double pick = unit(rng);
    const Op op =
        pick < ask_ratio ? kAsk : (pick < ask_ratio + (1 - ask_ratio) / 2 ? kIngest : kSearch);
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
    } else {
      bool sent = false;
      absl::Status ack_status;
      status = client.Ingest(
          [&](v1::IngestRequest* request) -> absl::StatusOr<bool> {
            if (sent) return false;
            sent = true;
            request->set_id(absl::StrCat("load-", index, "-", ingested++));
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
    }
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    if (status.ok()) {
      tally->ok_ms[op].push_back(ms);
    } else {
      ++tally->failed[op];
      ++tally->errors[status.code()];
      // A full queue asks for backoff; an unreachable daemon should not be hammered either.
      if (status.code() == absl::StatusCode::kResourceExhausted ||
          status.code() == absl::StatusCode::kUnavailable) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }
}

}  // namespace

int RunLoad(const ClientOptions& options, const CommandLine& line) {
  if (!line.words.empty())
    return ReportError("load", options, absl::InvalidArgumentError("takes no arguments"));
  absl::StatusOr<int> clients = IntFlag(line, "clients", 1);
  absl::StatusOr<double> duration = DoubleFlag(line, "duration", 10);
  absl::StatusOr<double> ask_ratio = DoubleFlag(line, "ask-ratio", 0.5);
  for (const absl::Status& s : {clients.status(), duration.status(), ask_ratio.status()}) {
    if (!s.ok()) {
      std::cerr << "knowctl load: " << s.message() << "\n";
      return 2;
    }
  }
  if (*clients < 1 || *ask_ratio > 1) {
    std::cerr << "knowctl load: --clients must be at least 1 and --ask-ratio within [0, 1]\n";
    return 2;
  }
  std::vector<std::unique_ptr<Client>> connections;
  for (int i = 0; i < *clients; ++i) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(options);
    if (!client.ok()) return ReportError("load", options, client.status());
    connections.push_back(std::move(*client));
  }
  // Fail fast, with the usual message, when the daemon is not there.
  if (absl::StatusOr<v1::StatsResponse> stats = connections[0]->Stats(); !stats.ok()) {
    return ReportError("load", options, stats.status());
  }
  std::vector<Tally> tallies(*clients);
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  const auto end = start + std::chrono::microseconds(static_cast<int64_t>(*duration * 1e6));
  for (int i = 0; i < *clients; ++i) {
    threads.emplace_back(RunClient, std::ref(*connections[i]), i, *ask_ratio, end, &tallies[i]);
  }
  for (std::thread& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  Tally all;
  for (Tally& t : tallies) {
    for (int op = 0; op < kOps; ++op) {
      all.ok_ms[op].insert(all.ok_ms[op].end(), t.ok_ms[op].begin(), t.ok_ms[op].end());
      all.failed[op] += t.failed[op];
    }
    for (const auto& [code, count] : t.errors) all.errors[code] += count;
  }
  std::cout << absl::StrFormat(
      "knowctl load: %d clients for %.1f s against %s, ask ratio %.2f (client machine: %d "
      "cores)\n",
      *clients, seconds, options.target, *ask_ratio, std::thread::hardware_concurrency());
  std::cout << absl::StrFormat("%-8s %8s %8s %10s %10s %8s\n", "call", "ok", "ok/s", "p50 ms",
                               "p99 ms", "errors");
  std::vector<double> every;
  int64_t failed = 0;
  for (int op = 0; op < kOps; ++op) {
    std::vector<double>& ms = all.ok_ms[op];
    every.insert(every.end(), ms.begin(), ms.end());
    failed += all.failed[op];
    std::cout << absl::StrFormat("%-8s %8d %8.1f %10.1f %10.1f %8d\n", kOpNames[op], ms.size(),
                                 ms.size() / seconds, Percentile(ms, 0.5), Percentile(ms, 0.99),
                                 all.failed[op]);
  }
  std::cout << absl::StrFormat("%-8s %8d %8.1f %10.1f %10.1f %8d\n", "all", every.size(),
                               every.size() / seconds, Percentile(every, 0.5),
                               Percentile(every, 0.99), failed);
  if (all.errors.empty()) {
    std::cout << "errors: none\n";
  } else {
    std::cout << "errors:";
    for (const auto& [code, count] : all.errors) {
      std::cout << " " << absl::StatusCodeToString(code) << " " << count;
    }
    std::cout << "\n";
  }
  return 0;
}

}  // namespace knowd::client
