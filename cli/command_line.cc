#include "cli/command_line.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <memory>
#include <sstream>

#include "cli/flag_names.h"

namespace knowd::cli {
namespace {

bool IsLongFlag(const std::string& arg) { return arg.size() > 2 && arg.rfind("--", 0) == 0; }

bool IsFlag(const std::string& arg) { return arg.size() > 1 && arg[0] == '-'; }

// The option "--name" of `app`, else of the parents it falls through to.
const CLI::Option* FindOption(const CLI::App& app, const std::string& flag) {
  for (const CLI::App* a = &app; a != nullptr;
       a = a->get_fallthrough() ? a->get_parent() : nullptr) {
    if (const CLI::Option* option = a->get_option_no_throw(flag); option != nullptr) return option;
  }
  return nullptr;
}

const CLI::App* FindSubcommand(const CLI::App& app, const std::string& name) {
  std::vector<const CLI::App*> found =
      app.get_subcommands([&](const CLI::App* sub) { return sub->get_name() == name; });
  return found.empty() ? nullptr : found.front();
}

// The deepest parsed subcommand (`app` itself when none was).
const CLI::App* Selected(const CLI::App& app) {
  const CLI::App* current = &app;
  while (!current->get_subcommands().empty()) current = current->get_subcommands().front();
  return current;
}

// Every command of the tree under `root` whose options include `flag`, as "knowd generate".
std::vector<std::string> CommandsWithFlag(const CLI::App& root, const std::string& flag) {
  std::vector<std::string> out;
  std::function<void(const CLI::App&)> visit = [&](const CLI::App& app) {
    if (app.get_option_no_throw(flag) != nullptr && flag != "--help") {
      out.push_back(CommandPath(app));
    }
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      visit(*sub);
    }
  };
  visit(root);
  return out;
}

std::string Join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : separator) + p;
  return out;
}

constexpr size_t kHelpWidth = 100;
constexpr size_t kNameWidth = 36;

// `text` cut into lines of at most `width` characters at spaces.
std::string Wrap(const std::string& text, size_t width) {
  std::string out, line;
  auto flush = [&] {
    out += (out.empty() ? "" : "\n") + line;
    line.clear();
  };
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(' ', start);
    if (end == std::string::npos) end = text.size();
    const std::string word = text.substr(start, end - start);
    if (!line.empty() && line.size() + 1 + word.size() > width) flush();
    line += (line.empty() ? "" : " ") + word;
    start = end + 1;
  }
  if (!line.empty()) flush();
  return out;
}

// CLI11's help with descriptions, footers and subcommand lists wrapped to kHelpWidth columns
// (CLI11 2.1 does not wrap).
class WrappingFormatter : public CLI::Formatter {
 public:
  WrappingFormatter() { column_width(kNameWidth); }
  std::string make_option_desc(const CLI::Option* option) const override {
    return Wrap(option->get_description(), kHelpWidth - kNameWidth);
  }
  std::string make_subcommand(const CLI::App* sub) const override {
    std::stringstream out;
    CLI::detail::format_help(out, sub->get_display_name(true),
                             Wrap(sub->get_description(), kHelpWidth - kNameWidth), kNameWidth);
    return out.str();
  }
  std::string make_description(const CLI::App* app) const override {
    const std::string description = app->get_description();
    return description.empty() ? "" : Wrap(description, kHelpWidth) + "\n";
  }
  std::string make_footer(const CLI::App* app) const override {
    const std::string footer = app->get_footer();
    return footer.empty() ? "" : Wrap(footer, kHelpWidth) + "\n";
  }
};

// The help of `command` alone (CLI11's help() names a subcommand without its parents).
std::string Help(const CLI::App& command) {
  return command.help(command.get_parent() == nullptr ? "" : CommandPath(*command.get_parent()));
}

int UsageError(const CLI::App& command, const std::string& message, bool with_help = false) {
  std::cerr << CommandPath(command) << ": " << message << "\n";
  if (with_help) std::cerr << "\n" << Help(command);
  return 2;
}

}  // namespace

std::string CommandPath(const CLI::App& app) {
  std::string path = app.get_name();
  for (const CLI::App* a = app.get_parent(); a != nullptr; a = a->get_parent()) {
    path = a->get_name() + " " + path;
  }
  return path;
}

void Configure(CLI::App& app) {
  app.option_defaults()->always_capture_default()->multi_option_policy(
      CLI::MultiOptionPolicy::TakeLast);
  // Unknown arguments are collected, not thrown: Parse names the command they belong to.
  app.allow_extras();
  app.formatter(std::make_shared<WrappingFormatter>());
}

CLI::Validator NonNegativeInteger() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        int64_t n = 0;
        const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), n);
        if (error != std::errc() || end != value.data() + value.size() || n < 0) {
          return "needs a non-negative integer, got \"" + value + "\"";
        }
        return "";
      },
      /*validator_desc=*/"");
}

std::vector<std::string> NormalizeFlagNames(const CLI::App& app, std::vector<std::string> args) {
  const CLI::App* current = &app;
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = std::move(args[i]);
    if (arg == "--") {  // the rest are positional arguments, whatever they look like
      out.push_back(std::move(arg));
      out.insert(out.end(), std::make_move_iterator(args.begin() + i + 1),
                 std::make_move_iterator(args.end()));
      return out;
    }
    if (IsLongFlag(arg)) {
      const size_t eq = arg.find('=');
      const std::string flag = "--" + CanonicalFlagName(std::string_view(arg).substr(
                                          2, eq == std::string::npos ? std::string::npos : eq - 2));
      const CLI::Option* option = FindOption(*current, flag);
      const int values = option == nullptr ? 0
                                           : std::min(option->get_type_size_min(),
                                                      option->get_items_expected_min());
      if (eq == std::string::npos) {
        out.push_back(flag);
        // The option takes its values whatever they look like: leave them alone.
        for (int v = 0; v < values && i + 1 < args.size(); ++v) out.push_back(std::move(args[++i]));
      } else if (eq + 1 == arg.size() && values > 0) {
        out.push_back(flag);
        out.push_back("");
      } else {
        out.push_back(flag + arg.substr(eq));
      }
      continue;
    }
    if (!IsFlag(arg)) {
      if (const CLI::App* sub = FindSubcommand(*current, arg); sub != nullptr) current = sub;
    }
    out.push_back(std::move(arg));
  }
  return out;
}

std::optional<int> Parse(CLI::App& app, int argc, const char* const* argv) {
  std::vector<std::string> args =
      NormalizeFlagNames(app, std::vector<std::string>(argv + 1, argv + argc));
  std::reverse(args.begin(), args.end());  // CLI11 takes them from the back
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    return UsageError(*Selected(app), e.what());
  }
  const CLI::App& command = *Selected(app);
  const std::vector<std::string> extras = app.remaining(/*recurse=*/true);
  const auto flag = std::find_if(extras.begin(), extras.end(), IsFlag);
  const auto word = std::find_if_not(extras.begin(), extras.end(), IsFlag);
  const bool group = !command.get_subcommands([](const CLI::App*) { return true; }).empty();
  if (group && word != extras.end()) {
    std::vector<std::string> names;
    for (const CLI::App* sub : command.get_subcommands([](const CLI::App*) { return true; })) {
      names.push_back(sub->get_name());
    }
    return UsageError(command, "unknown command \"" + *word + "\" (" + Join(names, ", ") + ")",
                      /*with_help=*/true);
  }
  if (flag != extras.end()) {
    const std::string name = flag->substr(0, flag->find('='));
    const std::vector<std::string> owners = CommandsWithFlag(app, name);
    std::string message = "unknown flag " + name;
    if (!owners.empty()) message += " (a flag of " + Join(owners, ", ") + ")";
    return UsageError(command, message + "; `" + CommandPath(command) + " --help` lists " +
                                   (group ? "the commands" : "this command's flags"));
  }
  if (word != extras.end()) return UsageError(command, "unexpected argument \"" + *word + "\"");
  if (group) {
    std::cerr << Help(command);
    return 2;
  }
  return std::nullopt;
}

void ReexecWithShortSpin(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") == nullptr && std::getenv("GOMP_SPINCOUNT") == nullptr) {
    setenv("GOMP_SPINCOUNT", "20000", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the default
  }
}

int CommandFailed(std::string_view command, std::string_view message) {
  std::cerr << "knowd " << command << ": " << message << "\n";
  return 1;
}

}  // namespace knowd::cli
