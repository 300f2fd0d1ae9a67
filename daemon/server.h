// `knowd serve`: loads the model (and its adapter when the bundle has one), opens the memory
// bank, and serves KnowledgeService over gRPC (with grpc.health.v1 and server reflection) plus
// /metrics, /healthz and /readyz over HTTP until SIGTERM or SIGINT; then it stops accepting
// calls, drains in-flight ones (bounded by --drain-timeout), saves the index and exits 0.
// SIGHUP reloads the tokens file.
//
// Once serving it prints one line on stdout, which tests parse:
//   knowd: listening on 127.0.0.1:PORT (grpc), 127.0.0.1:PORT2 (http)
#pragma once

#include <signal.h>

#include <string>
#include <vector>

namespace knowd {

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and the threads and exec'd images it
// starts later), which `knowd serve` takes with sigwait(); returns that set.
sigset_t BlockServeSignals();

// `args` are the arguments after "serve"; `executable` is argv[0] (the shipped bundle is also
// looked for beside it). Returns the process exit code: 0 after a clean shutdown, 2 for a bad
// configuration, 1 when startup fails.
int RunServe(const std::vector<std::string>& args, const std::string& executable);

}  // namespace knowd
