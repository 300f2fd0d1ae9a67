// A progress line on stderr for long commands (knowd eval, knowd reencode, knowctl ingest).
// On a terminal, one line redrawn in place at most every 100 ms:
//   "re-encoding [#####.........] 1200/5000 passages  24%  310.5 passages/s  ETA 0:12"
// Otherwise (a log file, CI) a plain line at every tenth of the work, so logs stay readable.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace knowd::cli {

class ProgressBar {
 public:
  // `what` names the work ("re-encoding"), `unit` what is counted ("passages"). `terminal`:
  // redraw in place (pass isatty(STDERR_FILENO)).
  ProgressBar(std::string what, std::string unit, bool terminal);
  ~ProgressBar();  // Finish()es

  // `done` of `total`; the rate counts only what this process did: `done - resumed_from` in the
  // time since the first Update (a resumed run's earlier work does not inflate it).
  void Update(uint64_t done, uint64_t total, uint64_t resumed_from = 0);
  // Ends the line (on a terminal) so that later output starts on its own line.
  void Finish();

 private:
  const std::string what_;
  const std::string unit_;
  const bool terminal_;
  bool drawn_ = false;
  bool started_ = false;
  int last_tenth_ = -1;
  std::chrono::steady_clock::time_point start_{};
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace knowd::cli
