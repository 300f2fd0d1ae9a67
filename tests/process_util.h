// Running a program from a test as a user would: its exit code and what it printed.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace knowd::testing {

struct CommandResult {
  int exit_code = -1;  // -1 when it could not start or did not exit normally
  std::string out;     // stdout, or stdout and stderr interleaved when asked
};

// Runs `command` with /bin/sh and waits for it; its stderr is discarded unless `with_stderr`.
inline CommandResult RunCommand(const std::string& command, bool with_stderr = false) {
  CommandResult r;
  FILE* pipe = popen((command + (with_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  if (pipe == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace knowd::testing
