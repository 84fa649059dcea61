// txt2img: parse the command line, run the subcommand, turn whatever went wrong into one message and the
// documented exit code.
#include <cstdio>
#include <iostream>
#include <variant>

#include "cli/commands.hpp"
#include "cli/exit_codes.hpp"
#include "cli/options.hpp"
#include "cli/signals.hpp"
#include "txt2img/error.hpp"

namespace {

int run(int argc, char** argv) {
  using namespace txt2img::cli;
  bool json_failure = false;
  try {
    const auto parsed = parse_command_line(argc, argv, json_failure);
    if (const int* code = std::get_if<int>(&parsed)) return *code;
    const auto& command = std::get<Command>(parsed);
    switch (command.which) {
      case Command::Info:
        return run_info(command.info);
      case Command::Tokenize:
        return run_tokenize(command.tokenize);
      case Command::Generate:
        return run_generate(command.generate);
    }
    return kExitSuccess;
  } catch (...) {
    return report_failure(std::current_exception(), json_failure);
  }
}

}  // namespace

int main(int argc, char** argv) {
  txt2img::cli::ignore_file_size_signal();
  const int code = run(argc, argv);
  // What --json, info and tokenize print is lost on a full disk or a closed standard output: a scripted run must
  // not take that for success. (A reader that closed its pipe asked the run to stop: that is an interruption.)
  std::cout.flush();
  if (code == txt2img::cli::kExitSuccess && (!std::cout || std::fflush(stdout) != 0)) {
    if (txt2img::cli::stop_requested()) return txt2img::exit_code(txt2img::ErrorKind::Interrupted);
    std::cerr << "error: cannot write to standard output (a full disk, or closed?): what it should have received "
                 "is lost\n";
    return txt2img::exit_code(txt2img::ErrorKind::Io);
  }
  return code;
}
