#include "client/knowctl_commands.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/document_source.h"
#include "google/protobuf/util/json_util.h"

namespace knowd::client {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One line of JSON with the proto field names, defaults included (so "passages": 0 is printed).
std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

std::string Shorten(const std::string& text, size_t width) {
  if (text.size() <= width) return text;
  size_t cut = width - 3;
  // Do not split a UTF-8 sequence.
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut) + "...";
}

void PrintPassages(const google::protobuf::RepeatedPtrField<v1::Passage>& passages) {
  int rank = 0;
  for (const v1::Passage& p : passages) {
    std::cout << absl::StrFormat("[%d] %s#%d  score %.3f\n    %s\n", ++rank, p.document_id(),
                                 p.index(), p.score(), Shorten(p.text(), 200));
  }
}

int Usage(const std::string& command, const std::string& message) {
  std::cerr << "knowctl " << command << ": " << message << "\n";
  return 2;
}

// Progress of an ingest on a terminal: "[#####.....] 120/500 docs  35.2 docs/s  ETA 0:11".
class ProgressBar {
 public:
  ProgressBar(std::optional<int64_t> total, bool enabled) : total_(total), enabled_(enabled) {}

  void Update(int64_t done, double seconds, bool force = false) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (!force && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const double rate = seconds > 0 ? done / seconds : 0;
    std::string line;
    if (total_ && *total_ > 0) {
      const int width = 30;
      const int filled = static_cast<int>(width * std::min<int64_t>(done, *total_) / *total_);
      const int64_t eta = rate > 0 ? static_cast<int64_t>((*total_ - done) / rate + 0.5) : 0;
      line = absl::StrFormat("[%s%s] %d/%d docs  %.1f docs/s  ETA %d:%02d",
                             std::string(filled, '#'), std::string(width - filled, '.'), done,
                             *total_, rate, eta / 60, eta % 60);
    } else {
      line = absl::StrFormat("%d docs  %.1f docs/s", done, rate);
    }
    std::cerr << "\r" << line << "\033[K" << std::flush;
    drawn_ = true;
  }

  // Prints a line of its own above the bar.
  void Print(const std::string& line) {
    if (drawn_) std::cerr << "\r\033[K";
    std::cerr << line;
    drawn_ = false;
  }

  void Finish() {
    if (drawn_) std::cerr << "\n";
  }

 private:
  std::optional<int64_t> total_;
  bool enabled_;
  bool drawn_ = false;
  Clock::time_point last_draw_{};
};

}  // namespace

int ReportError(const std::string& command, const ClientOptions& options,
                const absl::Status& status) {
  if (status.code() == absl::StatusCode::kUnavailable) {
    std::cerr << "knowctl: cannot reach " << options.target << ": " << status.message() << "\n";
  } else {
    std::cerr << "knowctl " << command << ": " << absl::StatusCodeToString(status.code()) << ": "
              << status.message() << "\n";
  }
  return 1;
}

int RunIngest(Client& client, const IngestFlags& flags) {
  absl::StatusOr<std::unique_ptr<DocumentSource>> source = DocumentSource::Open(flags.source);
  if (!source.ok()) return ReportError("ingest", client.options(), source.status());
  const bool json = flags.json;
  ProgressBar bar((*source)->total(), !json && isatty(STDERR_FILENO));
  const auto start = Clock::now();
  int64_t acked = 0, passages = 0, replaced = 0, failed = 0;
  absl::Status status = client.Ingest(
      [&](v1::IngestRequest* request) { return (*source)->Next(request); },
      [&](const v1::IngestAck& ack) {
        ++acked;
        if (json) {
          std::cout << ToJson(ack) << "\n" << std::flush;
        } else if (ack.error_code() != 0) {
          bar.Print(absl::StrCat(
              "knowctl ingest: ", ack.id(), ": ",
              absl::StatusCodeToString(static_cast<absl::StatusCode>(ack.error_code())), ": ",
              ack.error_message(), "\n"));
        }
        if (ack.error_code() != 0) {
          ++failed;
        } else {
          passages += ack.passages();
          replaced += ack.replaced() ? 1 : 0;
        }
        bar.Update(acked, SecondsSince(start));
      });
  const double seconds = SecondsSince(start);
  bar.Update(acked, seconds, /*force=*/true);
  bar.Finish();
  if (!json) {
    std::cerr << absl::StrFormat(
        "knowctl ingest: %d documents stored (%d passages, %d replaced), %d failed, in %.2f s "
        "(%.1f docs/s)\n",
        acked - failed, passages, replaced, failed, seconds, seconds > 0 ? acked / seconds : 0.0);
  }
  if (!status.ok()) return ReportError("ingest", client.options(), status);
  return failed == 0 ? 0 : 1;
}

int RunAsk(Client& client, const AskFlags& flags) {
  const std::string command = flags.session.empty() ? "ask" : "session ask";
  v1::AskRequest request;
  request.set_question(flags.question);
  request.set_session_id(flags.session);
  if (!flags.mode.empty()) {
    absl::StatusOr<v1::AskMode> mode = ParseAskMode(flags.mode);
    if (!mode.ok()) return Usage(command, std::string(mode.status().message()));
    request.set_mode(*mode);
  }
  request.set_top_k(flags.top_k);
  request.set_max_tokens(flags.max_tokens);
  absl::StatusOr<v1::Retrieval> retrieval = ParseRetrieval(flags.retrieval);
  if (!retrieval.ok()) return Usage(command, std::string(retrieval.status().message()));
  request.set_retrieval(*retrieval);
  request.set_explain(flags.explain);
  const bool json = flags.json;
  request.set_stream(!json);
  absl::StatusOr<v1::AskFinal> final_message =
      client.Ask(request, [](std::string_view text) { std::cout << text << std::flush; });
  if (!final_message.ok()) {
    if (!json) std::cout << std::endl;
    return ReportError(command, client.options(), final_message.status());
  }
  if (json) {
    std::cout << ToJson(*final_message) << "\n";
    return 0;
  }
  if (final_message->nothing_in_memory()) {
    std::cout << absl::StrFormat(
        "nothing in memory: no stored passage is about this question (relevance %.2f); ask "
        "closed-book (--mode closed-book) for the model's own guess\n",
        final_message->relevance());
  } else {
    std::cout << "\n";
  }
  if (!final_message->cited().empty()) {
    std::cout << "\ncited (" << AskModeName(final_message->mode()) << "):\n";
    PrintPassages(final_message->cited());
  }
  if (flags.explain && final_message->has_explain()) {
    const v1::Explain& e = final_message->explain();
    std::cout << absl::StrFormat("\nthe model read (%d prompt tokens", e.prompt_ids_size());
    if (e.prefix_rows() > 0) {
      std::cout << absl::StrFormat(" after a MAC prefix of %d rows, sha256 %s", e.prefix_rows(),
                                   e.prefix_sha256().substr(0, 16));
    }
    std::cout << "):\n" << e.prompt() << "\n";
  }
  return 0;
}

int RunSearch(Client& client, const SearchFlags& flags) {
  v1::SearchRequest request;
  request.set_query(flags.query);
  request.set_top_k(flags.top_k);
  absl::StatusOr<v1::Retrieval> retrieval = ParseRetrieval(flags.retrieval);
  if (!retrieval.ok()) return Usage("search", std::string(retrieval.status().message()));
  request.set_retrieval(*retrieval);
  absl::StatusOr<v1::SearchResponse> response = client.Search(request);
  if (!response.ok()) return ReportError("search", client.options(), response.status());
  if (flags.json) {
    std::cout << ToJson(*response) << "\n";
  } else {
    PrintPassages(response->passages());
  }
  return 0;
}

int RunGet(Client& client, const GetFlags& flags) {
  v1::GetRequest request;
  request.set_id(flags.id);
  absl::StatusOr<v1::Document> doc = client.Get(request);
  if (!doc.ok()) return ReportError("get", client.options(), doc.status());
  if (flags.json) {
    std::cout << ToJson(*doc) << "\n";
    return 0;
  }
  std::cout << "id: " << doc->id() << "\nnamespace: " << doc->namespace_() << "\n";
  for (const auto& [key, value] : doc->metadata()) std::cout << key << ": " << value << "\n";
  std::cout << "passages: " << doc->passages_size() << "\n";
  for (const v1::Passage& p : doc->passages()) std::cout << "\n[" << p.index() << "] " << p.text();
  std::cout << "\n";
  if (doc->truncated()) {
    std::cout << "(the last passages were left out: the document is larger than the daemon's "
                 "--max-response-bytes)\n";
  }
  return 0;
}

int RunForget(Client& client, const ForgetFlags& flags) {
  v1::ForgetRequest request;
  for (const std::string& id : flags.ids) request.add_ids(id);
  absl::StatusOr<v1::ForgetResponse> response = client.Forget(request);
  if (!response.ok()) return ReportError("forget", client.options(), response.status());
  if (flags.json) {
    std::cout << ToJson(*response) << "\n";
    return 0;
  }
  std::cout << "forgot " << response->forgotten_size() << " documents (" << response->passages()
            << " passages)";
  if (response->not_found_size() > 0) {
    std::cout << "; not stored: " << absl::StrJoin(response->not_found(), " ");
  }
  std::cout << "\n";
  return 0;
}

int RunStats(Client& client, const StatsFlags& flags) {
  absl::StatusOr<v1::StatsResponse> stats = client.Stats();
  if (!stats.ok()) return ReportError("stats", client.options(), stats.status());
  if (flags.json) {
    std::cout << ToJson(*stats) << "\n";
    return 0;
  }
  std::cout << absl::StrFormat(
      "documents            %d\npassages             %d\nsessions             %d (%d bytes)\n",
      stats->documents(), stats->passages(), stats->sessions(), stats->session_bytes());
  for (const v1::NamespaceStats& ns : stats->namespaces()) {
    std::cout << absl::StrFormat("  %-18s %d documents, %d passages, %d sessions (%d bytes)\n",
                                 ns.name(), ns.documents(), ns.passages(), ns.sessions(),
                                 ns.session_bytes());
  }
  std::cout << absl::StrFormat(
      "disk                 %d bytes\nmodulations          %d bytes (%d per passage; the KV "
      "cache of a median passage: %d)\nmodel                %s\nadapter              %s\n"
      "fingerprint          %s\nversion              %s\nuptime               %.0f s\n",
      stats->disk_bytes(), stats->modulation_bytes(), stats->bytes_per_modulation(),
      stats->kv_bytes_per_median_passage(), stats->model(), stats->adapter(), stats->fingerprint(),
      stats->version(), stats->uptime_seconds());
  if (!stats->recovery_warning().empty()) {
    std::cout << "recovery warning     " << stats->recovery_warning() << "\n";
  }
  return 0;
}

namespace {

// The messages of a session's input: `chunk_lines` lines each, or (0) pieces of at most
// kMaxSessionMessage bytes cut at line ends, which the daemon splits further into chunks.
constexpr size_t kMaxSessionMessage = 256 << 10;

std::vector<std::string> SessionMessages(const std::string& text, int chunk_lines) {
  std::vector<std::string> out;
  std::string current;
  int lines = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    end = end == std::string::npos ? text.size() : end + 1;
    const std::string_view line(text.data() + start, end - start);
    start = end;
    const bool full =
        chunk_lines > 0 ? lines == chunk_lines : current.size() + line.size() > kMaxSessionMessage;
    if (full && !current.empty()) {
      out.push_back(std::move(current));
      current.clear();
      lines = 0;
    }
    current.append(line);
    ++lines;
  }
  if (current.find_first_not_of(" \t\r\n") != std::string::npos) out.push_back(std::move(current));
  return out;
}

void PrintSession(const v1::Session& s) {
  std::cout << absl::StrFormat(
      "session %s\n  namespace %s%s\n  state     %d bytes (%d chunks, %d tokens absorbed)\n",
      s.id(), s.namespace_(), s.label().empty() ? "" : absl::StrCat("\n  label     ", s.label()),
      s.state_bytes(), s.chunks(), s.tokens());
  if (s.expires_unix() != 0) {
    std::cout << "  expires   "
              << absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixSeconds(s.expires_unix()),
                                  absl::UTCTimeZone())
              << "\n";
  }
}

}  // namespace

int RunSessionWrite(Client& client, const SessionWriteFlags& flags, bool append) {
  const std::string command = append ? "session append" : "session create";
  if (flags.ttl_seconds < 0) return Usage(command, "--ttl-seconds must not be negative");
  if (flags.chunk_lines < 0) return Usage(command, "--chunk-lines must not be negative");
  std::string text;
  if (flags.source == "-") {
    std::ostringstream in;
    in << std::cin.rdbuf();
    text = in.str();
  } else {
    std::ifstream in(flags.source, std::ios::binary);
    if (!in) return Usage(command, flags.source + ": cannot open");
    std::ostringstream read;
    read << in.rdbuf();
    text = read.str();
  }
  std::vector<v1::SessionChunk> chunks;
  for (std::string& message : SessionMessages(text, flags.chunk_lines)) {
    chunks.emplace_back().set_text(std::move(message));
  }
  if (chunks.empty()) return Usage(command, flags.source + " holds no text");
  chunks.front().set_ttl_seconds(flags.ttl_seconds);
  if (append) {
    chunks.front().set_session_id(flags.id);
  } else {
    chunks.front().set_label(flags.label);
  }
  absl::StatusOr<v1::Session> session =
      append ? client.AppendSession(std::move(chunks)) : client.CreateSession(std::move(chunks));
  if (!session.ok()) return ReportError(command, client.options(), session.status());
  if (flags.json) {
    std::cout << ToJson(*session) << "\n";
  } else {
    PrintSession(*session);
  }
  return 0;
}

int RunSessionDelete(Client& client, const SessionIdFlags& flags) {
  v1::DeleteSessionRequest request;
  request.set_session_id(flags.id);
  if (absl::Status s = client.DeleteSession(request); !s.ok()) {
    return ReportError("session delete", client.options(), s);
  }
  std::cout << "deleted session " << flags.id << "\n";
  return 0;
}

int RunSessionList(Client& client, const SessionListFlags& flags) {
  absl::StatusOr<v1::ListSessionsResponse> list = client.ListSessions();
  if (!list.ok()) return ReportError("session list", client.options(), list.status());
  if (flags.json) {
    std::cout << ToJson(*list) << "\n";
    return 0;
  }
  for (const v1::Session& s : list->sessions()) PrintSession(s);
  if (list->sessions().empty()) std::cout << "no sessions\n";
  return 0;
}

}  // namespace knowd::client
