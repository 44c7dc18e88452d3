// `tutti help [COMMAND]` and `--help` on every subcommand: one entry per command with its
// options and their defaults, kept beside the commands so they are changed together.
#pragma once

#include <string>
#include <vector>

namespace tutti::cli {

// The help of `words` ("serve", "model random", "bench voice"); nullptr when there is none.
const char* command_help(const std::vector<std::string>& words);
// Every command, one line each (tutti help).
std::string overview();

}  // namespace tutti::cli
