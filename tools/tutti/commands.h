// The tutti subcommands. Each takes its arguments (after the subcommand name) and returns
// the process exit code; errors are printed as one line on stderr.
#pragma once

#include <string>
#include <vector>

namespace tutti::cli {

int cmd_tokenize(const std::vector<std::string>& args);
int cmd_generate(const std::vector<std::string>& args);
int cmd_model(const std::vector<std::string>& args);  // info | random | init
int cmd_bench(const std::vector<std::string>& args);
int cmd_serve(const std::vector<std::string>& args);  // the HTTP server
int cmd_bench_serve(const std::vector<std::string>& args);
int cmd_bench_media(const std::vector<std::string>& args);
int cmd_bench_voice(const std::vector<std::string>& args);  // realtime voice sessions under load
int cmd_usage(const std::vector<std::string>& args);        // the usage ledger per key and period
int cmd_loadtest(const std::vector<std::string>& args);     // mixed load against a server, with a report
int cmd_codec(const std::vector<std::string>& args);        // a model's audio codec: decode | encode
int cmd_cluster(const std::vector<std::string>& args);      // a cluster ingress's nodes: status
int cmd_bench_cluster(const std::vector<std::string>& args);  // an ingress's overheads against in-process

}  // namespace tutti::cli
