// The command line: flags, their help, and which subcommand runs.
#pragma once

#include <variant>

#include "cli/commands.hpp"

namespace txt2img::cli {

struct Command {
  enum Which { Generate, Info, Tokenize } which = Generate;
  GenerateOptions generate;
  InfoOptions info;
  TokenizeOptions tokenize;
};

// The command to run, or the exit code when parsing already did all there was to do (--help, --version).
// Throws Error(Usage) for a bad command line. Sets `json_failure` once the command line is known to be generate's
// with --json (a failed parse included, where --json was read), whose failure stdout reports too.
std::variant<Command, int> parse_command_line(int argc, char** argv, bool& json_failure);

}  // namespace txt2img::cli
