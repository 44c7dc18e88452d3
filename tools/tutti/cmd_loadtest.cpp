// tutti loadtest: realistic mixed load against a server on this machine, with a report.
//   tutti loadtest [SCENARIO.toml] [--target HOST:PORT] [--api-key KEY] [--out PREFIX] [--quiet]
//       writes PREFIX.json and PREFIX.html (default: loadtest-<scenario name>) and prints a
//       summary; the default scenario is config/loadtest-default.toml.
//   tutti loadtest compare A.json B.json    each metric of run B against run A (b / a)
#include <cstdio>
#include <fstream>

#include "tools/loadtest/report.h"
#include "tools/loadtest/runner.h"
#include "tools/tutti/args.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"

namespace tutti::cli {

namespace {

Expected<nlohmann::json> read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) return Error{"cannot read " + path};
  auto j = nlohmann::json::parse(f, nullptr, false);
  if (j.is_discarded() || !j.contains("metrics")) return Error{path + " is not a load-test report"};
  return j;
}

}  // namespace

int cmd_loadtest(const std::vector<std::string>& argv) {
  if (!argv.empty() && argv[0] == "compare") {
    Args args(std::vector<std::string>(argv.begin() + 1, argv.end()), {"json"}, {});
    if (!args.ok() || args.positional().size() != 2) return fail("usage: tutti loadtest compare A.json B.json [--json OUT]");
    auto a = read_json(args.positional()[0]);
    auto b = read_json(args.positional()[1]);
    if (!a) return fail(a.error().message);
    if (!b) return fail(b.error().message);
    const auto c = loadtest::compare_reports(*a, *b);
    std::fputs(loadtest::compare_table(c).c_str(), stdout);
    if (args.has("json")) std::ofstream(args.get("json")) << c.dump(2) << "\n";
    return 0;
  }
  Args args(argv, {"target", "api-key", "out"}, {"quiet"});
  if (!args.ok()) return fail(args.error());
  const std::string path = args.positional().empty() ? "config/loadtest-default.toml" : args.positional()[0];
  auto scenario = loadtest::load_scenario(path);
  if (!scenario) return fail(scenario.error().message);
  if (args.has("target"))
    if (Status s = loadtest::set_target(*scenario, args.get("target")); !s) return fail(s.message());
  if (args.has("api-key")) scenario->api_key = args.get("api-key");
  std::string name = scenario->name;
  for (char& c : name)
    if (!isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') c = '-';
  const std::string prefix = args.get("out", "loadtest-" + name);
  const bool quiet = args.has("quiet");
  std::fprintf(stderr, "tutti loadtest: %s against %s:%u, %zu stage(s), %.0f s\n", path.c_str(), scenario->host.c_str(),
               unsigned(scenario->port), scenario->stages.size(), scenario->total_seconds());
  auto report = loadtest::run_scenario(*scenario, [&](const std::string& line) {
    if (!quiet) std::fprintf(stderr, "\r%-150s", line.c_str());
  });
  if (!quiet) std::fprintf(stderr, "\n");
  if (!report) return fail(report.error().message);
  std::ofstream(prefix + ".json") << report->dump(2) << "\n";
  std::ofstream(prefix + ".html") << loadtest::html_report(*report);
  std::fputs(loadtest::terminal_summary(*report).c_str(), stdout);
  std::printf("wrote %s.json and %s.html\n", prefix.c_str(), prefix.c_str());
  return 0;
}

}  // namespace tutti::cli
