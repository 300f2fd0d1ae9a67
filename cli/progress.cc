#include "cli/progress.h"

#include <algorithm>
#include <cstdio>

namespace knowd::cli {

ProgressBar::ProgressBar(std::string what, std::string unit, bool terminal)
    : what_(std::move(what)), unit_(std::move(unit)), terminal_(terminal) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Update(uint64_t done, uint64_t total, uint64_t resumed_from) {
  const auto now = std::chrono::steady_clock::now();
  if (!started_) {
    started_ = true;
    start_ = now;
  }
  const int tenth = total > 0 ? static_cast<int>(10 * done / total) : 10;
  if (terminal_ ? done < total && now - last_ < std::chrono::milliseconds(100)
                : tenth == last_tenth_ && done < total) {
    return;
  }
  last_ = now;
  last_tenth_ = tenth;
  const double seconds = std::chrono::duration<double>(now - start_).count();
  const double rate = seconds > 0 && done > resumed_from ? (done - resumed_from) / seconds : 0.0;
  const long long eta =
      rate > 0 && total > done ? static_cast<long long>((total - done) / rate + 0.5) : 0;
  constexpr int kWidth = 30;
  const int filled = total > 0 ? static_cast<int>(kWidth * std::min(done, total) / total) : kWidth;
  char line[256];
  std::snprintf(line, sizeof(line), "%s [%s%s] %llu/%llu %s  %llu%%  %.1f %s/s  ETA %lld:%02lld",
                what_.c_str(), std::string(filled, '#').c_str(),
                std::string(kWidth - filled, '.').c_str(), static_cast<unsigned long long>(done),
                static_cast<unsigned long long>(total), unit_.c_str(),
                static_cast<unsigned long long>(total > 0 ? 100 * done / total : 100), rate,
                unit_.c_str(), eta / 60, eta % 60);
  if (terminal_) {
    std::fprintf(stderr, "\r%s\033[K", line);
    drawn_ = true;
  } else {
    std::fprintf(stderr, "%s\n", line);
  }
  std::fflush(stderr);
}

void ProgressBar::Finish() {
  if (drawn_) std::fputc('\n', stderr);
  drawn_ = false;
}

}  // namespace knowd::cli
