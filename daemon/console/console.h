// The web console's static files (daemon/console/: index.html, console.js, console.css), compiled
// into the binary by daemon/console/embed.cmake. HttpServer serves them at / and /console/; the
// pages call the REST API (docs/http-api.md) only.
#pragma once

#include <string_view>

namespace knowd {

struct ConsoleFile {
  std::string_view name;          // "index.html"
  std::string_view content_type;  // "text/html; charset=utf-8"
  std::string_view body;
};

// The file called `name` (no directory), or nullptr.
const ConsoleFile* FindConsoleFile(std::string_view name);

}  // namespace knowd
