// Access control and accounting as plain classes: API keys (constant-time match, bearer and
// subprotocol forms, key files, fingerprints), per-key limits on a fake clock, and the usage
// ledger (one record per request id, totals per key and day, nothing lost when the writing
// process is killed with SIGKILL).
#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <sys/wait.h>
#include <unistd.h>

#include "actors/access/access.hpp"
#include "actors/access/ledger.hpp"

namespace tutti {
namespace {

using access::ApiKeys;
using access::KeyLimiter;
using access::UsageLedger;
using access::UsageRecord;

TEST(ApiKeys, MatchNamesTheKeyAndNeverRevealsIt) {
  ApiKeys keys;
  EXPECT_FALSE(keys.enabled());
  EXPECT_FALSE(keys.add("short").ok());
  EXPECT_FALSE(keys.add("has a space").ok());
  ASSERT_TRUE(keys.add("sk-alpha-0123456789").ok());
  ASSERT_TRUE(keys.add("sk-beta-0123456789", "beta-team").ok());
  EXPECT_TRUE(keys.enabled());
  const auto alpha = keys.match("sk-alpha-0123456789");
  ASSERT_TRUE(alpha);
  EXPECT_EQ(*alpha, ApiKeys::fingerprint("sk-alpha-0123456789"));
  EXPECT_EQ(alpha->find("alpha"), std::string::npos) << "a fingerprint does not show the key";
  EXPECT_EQ(keys.match("sk-beta-0123456789"), "beta-team");
  for (const std::string bad : {"", "sk-alpha-012345678", "sk-alpha-01234567890", "sk-alpha-0123456788", "SK-ALPHA-0123456789"})
    EXPECT_FALSE(keys.match(bad)) << bad;
  EXPECT_EQ(ApiKeys::bearer("Bearer sk-x"), "sk-x");
  EXPECT_EQ(ApiKeys::bearer("bearer   sk-x "), "sk-x");
  EXPECT_EQ(ApiKeys::bearer("Basic abc"), "");
  EXPECT_EQ(ApiKeys::from_subprotocols("realtime, openai-insecure-api-key.sk-y, openai-beta.realtime-v1"), "sk-y");
  EXPECT_EQ(ApiKeys::from_subprotocols("realtime"), "");

  const std::string path = std::string(TUTTI_BINARY_DIR) + "/test-data/keys.txt";
  std::ofstream(path) << "# team keys\n\nsk-gamma-0123456789\nops sk-delta-0123456789\n";
  ApiKeys from_file;
  ASSERT_TRUE(from_file.add_file(path).ok());
  EXPECT_EQ(from_file.size(), 2u);
  EXPECT_EQ(from_file.match("sk-delta-0123456789"), "ops");
  std::ofstream(path) << "a b c\n";
  EXPECT_NE(ApiKeys().add_file(path).message().find(":1:"), std::string::npos);
  EXPECT_FALSE(ApiKeys().add_file(path + ".missing").ok());
}

TEST(KeyLimiter, RequestsSessionsAndTokensPerMinuteWithRetryHints) {
  KeyLimiter lim({3, 2, 100});
  double t = 1000;
  EXPECT_FALSE(lim.begin("a", t, "text"));
  EXPECT_FALSE(lim.begin("a", t + 1, "text"));
  auto busy = lim.begin("a", t + 2, "text");  // third request, but two sessions are open
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy->code, ErrorCode::too_many_sessions);
  EXPECT_FALSE(lim.begin("b", t + 2, "text")) << "other keys are not affected";
  lim.end_session("a");
  EXPECT_FALSE(lim.begin("a", t + 3, "text", false));  // third request of the minute
  auto rate = lim.begin("a", t + 4, "text", false);
  ASSERT_TRUE(rate);
  EXPECT_EQ(rate->code, ErrorCode::rate_limited);
  EXPECT_NEAR(rate->retry_after_s, 56, 1e-9) << "until the first request of the minute expires";
  EXPECT_FALSE(lim.begin("a", t + 61, "text", false)) << "the window slides";
  // Tokens per modality: audio used up, text still allowed.
  KeyLimiter tokens({0, 0, 100});
  tokens.add_tokens("a", "audio", 60, t);
  tokens.add_tokens("a", "audio", 50, t + 10);
  auto quota = tokens.begin("a", t + 20, "audio");
  ASSERT_TRUE(quota);
  EXPECT_EQ(quota->code, ErrorCode::token_quota_exceeded);
  EXPECT_NEAR(quota->retry_after_s, 40, 1e-9);
  EXPECT_FALSE(tokens.begin("a", t + 20, "text"));
  EXPECT_FALSE(tokens.begin("a", t + 61, "audio")) << "the first 60 tokens left the window";
}

UsageRecord record(const std::string& id, const std::string& key, double at, int64_t in, int64_t out, const std::string& outcome = "completed") {
  UsageRecord r;
  r.request_id = id, r.key = key, r.model = "m", r.endpoint = "/v1/completions", r.request_class = "interactive";
  r.tokens_in = {{"text", in}}, r.tokens_out = {{"text", out}, {"audio", 0}};
  r.started_at = at - 1, r.finished_at = at, r.outcome = outcome;
  return r;
}

TEST(UsageLedger, OneRecordPerRequestTotalsPerKeyAndDay) {
  const std::string path = std::string(TUTTI_BINARY_DIR) + "/test-data/ledger-totals.db";
  for (const char* ext : {"", "-wal", "-shm"}) std::remove((path + ext).c_str());
  auto ledger = std::move(UsageLedger::open(path)).value();
  const double day1 = 1767225600;  // 2026-01-01T00:00:00Z
  EXPECT_TRUE(*ledger->record(record("r1", "a", day1 + 10, 5, 7)));
  EXPECT_TRUE(*ledger->record(record("r2", "a", day1 + 20, 1, 2, "failed")));
  EXPECT_FALSE(*ledger->record(record("r1", "a", day1 + 30, 500, 700))) << "a request id is counted once";
  EXPECT_TRUE(*ledger->record(record("r3", "b", day1 + 86400 + 5, 3, 4)));
  EXPECT_EQ(*ledger->count(), 3);
  auto days = std::move(ledger->totals("day")).value();
  ASSERT_EQ(days.size(), 2u);
  EXPECT_EQ(days[0].key, "a");
  EXPECT_EQ(days[0].period, "2026-01-01");
  EXPECT_EQ(days[0].requests, 2);
  EXPECT_EQ(days[0].failed, 1);
  EXPECT_EQ(days[0].tokens_in["text"], 6);
  EXPECT_EQ(days[0].tokens_out["text"], 9);
  EXPECT_EQ(days[1].period, "2026-01-02");
  auto window = std::move(ledger->totals("all", day1 + 15, day1 + 100)).value();
  ASSERT_EQ(window.size(), 1u);
  EXPECT_EQ(window[0].requests, 1);
  EXPECT_FALSE(ledger->totals("week"));
  EXPECT_FALSE(UsageLedger::open("/nonexistent-dir/x.db"));
}

// Billing runs on the ledger: what a process committed is there after it is killed with
// SIGKILL mid-run (no destructor, no checkpoint).
TEST(UsageLedger, CommittedRecordsSurviveKillDashNine) {
  const std::string path = std::string(TUTTI_BINARY_DIR) + "/test-data/ledger-kill.db";
  for (const char* ext : {"", "-wal", "-shm"}) std::remove((path + ext).c_str());
  int pipefd[2];
  ASSERT_EQ(pipe(pipefd), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto ledger = UsageLedger::open(path);
    if (!ledger) _exit(3);
    for (int i = 0; i < 200; ++i)
      if (!(*ledger)->record(record("req-" + std::to_string(i), "k", 1767225600 + i, i, 2 * i))) _exit(4);
    const char ok = 1;
    (void)!write(pipefd[1], &ok, 1);  // committed: now wait to be killed
    for (;;) pause();
  }
  close(pipefd[1]);
  char ok = 0;
  ASSERT_EQ(read(pipefd[0], &ok, 1), 1);
  close(pipefd[0]);
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status));
  auto ledger = std::move(UsageLedger::open(path)).value();
  EXPECT_EQ(*ledger->count(), 200);
  auto all = std::move(ledger->totals("all")).value();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].tokens_out["text"], 2 * (199 * 200 / 2));
}

}  // namespace
}  // namespace tutti
