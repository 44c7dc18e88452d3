// tutti: one binary, many subcommands.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "tools/tutti/commands.h"
#include "tools/tutti/help.h"

int main(int argc, char** argv) {
  const std::vector<std::string> all(argv + 1, argv + argc);
  if (all.empty() || all[0] == "--help" || all[0] == "-h" || (all[0] == "help" && all.size() == 1)) {
    std::fputs(tutti::cli::overview().c_str(), all.empty() ? stderr : stdout);
    return all.empty() ? 2 : 0;
  }
  // `tutti help CMD...` and `tutti CMD... --help`: the command's options and defaults.
  const bool asked_help = all[0] == "help" || std::count(all.begin(), all.end(), "--help") || std::count(all.begin(), all.end(), "-h");
  if (asked_help) {
    const std::vector<std::string> words(all.begin() + (all[0] == "help" ? 1 : 0), all.end());
    if (const char* text = tutti::cli::command_help(words)) {
      std::fputs(text, stdout);
      return 0;
    }
    std::fprintf(stderr, "tutti: no command '%s'\n\n%s", words.empty() ? "" : words[0].c_str(), tutti::cli::overview().c_str());
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "tokenize") return tutti::cli::cmd_tokenize(args);
  if (command == "generate") return tutti::cli::cmd_generate(args);
  if (command == "model") return tutti::cli::cmd_model(args);
  if (command == "bench" && !args.empty() && args[0] == "voice")
    return tutti::cli::cmd_bench_voice(std::vector<std::string>(args.begin() + 1, args.end()));
  if (command == "bench" && !args.empty() && args[0] == "media")
    return tutti::cli::cmd_bench_media(std::vector<std::string>(args.begin() + 1, args.end()));
  if (command == "bench" && !args.empty() && args[0] == "cluster")
    return tutti::cli::cmd_bench_cluster(std::vector<std::string>(args.begin() + 1, args.end()));
  if (command == "bench" && !args.empty() && args[0] == "serve")
    return tutti::cli::cmd_bench_serve(std::vector<std::string>(args.begin() + 1, args.end()));
  if (command == "bench") return tutti::cli::cmd_bench(args);
  if (command == "serve") return tutti::cli::cmd_serve(args);
  if (command == "usage") return tutti::cli::cmd_usage(args);
  if (command == "loadtest") return tutti::cli::cmd_loadtest(args);
  if (command == "codec") return tutti::cli::cmd_codec(args);
  if (command == "cluster") return tutti::cli::cmd_cluster(args);
  std::fprintf(stderr, "tutti: unknown command '%s'\n\n%s", command.c_str(), tutti::cli::overview().c_str());
  return 2;
}
