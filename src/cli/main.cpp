// txt2img: parse the command line, run the subcommand, turn whatever went wrong into one message and the
// documented exit code.
#include <variant>

#include "cli/commands.hpp"
#include "cli/exit_codes.hpp"
#include "cli/options.hpp"
#include "cli/signals.hpp"

int main(int argc, char** argv) {
  using namespace txt2img::cli;
  install_signal_handlers();
  try {
    const auto parsed = parse_command_line(argc, argv);
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
    return report_failure(std::current_exception());
  }
}
