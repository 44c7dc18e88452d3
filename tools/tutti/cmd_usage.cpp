// tutti usage: what the usage ledger says, per key and period (what billing runs on).
//   tutti usage [--ledger usage.db] [--period day|all] [--since UNIX_S] [--until UNIX_S] [--json]
#include <cstdio>
#include <set>

#include <nlohmann/json.hpp>

#include "actors/access/ledger.hpp"
#include "tools/tutti/args.h"
#include "tools/tutti/commands.h"
#include "tools/tutti/model_loading.h"

namespace tutti::cli {

int cmd_usage(const std::vector<std::string>& argv) {
  Args args(argv, {"ledger", "period", "since", "until"}, {"json"});
  if (!args.ok()) return fail(args.error());
  const std::string path = args.get("ledger", "usage.db");
  const double since = args.get_double("since", 0), until = args.get_double("until", 1e18);
  if (!args.ok()) return fail(args.error());
  auto ledger = access::UsageLedger::open(path);
  if (!ledger) return fail(ledger.error().message);
  auto totals = (*ledger)->totals(args.get("period", "day"), since, until);
  if (!totals) return fail(totals.error().message);
  if (args.has("json")) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& t : *totals)
      out.push_back({{"key", t.key}, {"period", t.period}, {"requests", t.requests}, {"failed", t.failed},
                     {"tokens_in", t.tokens_in}, {"tokens_out", t.tokens_out}});
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("%-20s %-10s %9s %7s  %s\n", "key", "period", "requests", "failed", "tokens in / out by modality");
  for (const auto& t : *totals) {
    std::string tokens;
    std::set<std::string> modalities;
    for (const auto& [m, n] : t.tokens_in) modalities.insert(m);
    for (const auto& [m, n] : t.tokens_out) modalities.insert(m);
    for (const std::string& m : modalities) {
      auto in = t.tokens_in.count(m) ? t.tokens_in.at(m) : 0, out = t.tokens_out.count(m) ? t.tokens_out.at(m) : 0;
      tokens += m + " " + std::to_string(in) + "/" + std::to_string(out) + "  ";
    }
    std::printf("%-20s %-10s %9lld %7lld  %s\n", t.key.empty() ? "(open)" : t.key.c_str(), t.period.c_str(),
                static_cast<long long>(t.requests), static_cast<long long>(t.failed), tokens.c_str());
  }
  return 0;
}

}  // namespace tutti::cli
