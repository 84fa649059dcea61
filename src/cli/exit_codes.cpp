#include "cli/exit_codes.hpp"

#include <csignal>
#include <iostream>
#include <new>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "cli/reporter.hpp"
#include "txt2img/error.hpp"

namespace txt2img::cli {

std::string exit_code_table() {
  const std::pair<ErrorKind, const char*> kinds[] = {
      {ErrorKind::Usage, "usage: a bad flag, value, prompt, prompt file line or output name"},
      {ErrorKind::Bundle, "model bundle missing, incomplete, corrupt or mismatched"},
      {ErrorKind::Io,
       "input/output file error: unreadable prompt file, output exists, directory not writable, disk full"},
      {ErrorKind::Runtime, "runtime failure: out of memory, non-finite values, backend error"},
      {ErrorKind::Nsfw, "an image was flagged as NSFW and --fail-on-nsfw was given (every image is still written)"},
      {ErrorKind::Interrupted,
       "interrupted by SIGINT, SIGTERM, SIGHUP or a closed output pipe (finished images are kept)"},
  };
  const auto row = [](int code, const char* meaning) {
    std::string number = std::to_string(code);
    return "  " + number + std::string(5 - number.size(), ' ') + meaning + "\n";
  };
  std::string table = "Exit codes:\n" + row(kExitSuccess, "success");
  for (const auto& [kind, meaning] : kinds) table += row(exit_code(kind), meaning);
  return table;
}

int report_failure(std::exception_ptr failure, bool json_line) {
  std::string message;
  int code = exit_code(ErrorKind::Runtime);
  try {
    std::rethrow_exception(failure);
  } catch (const Error& e) {
    message = e.what();
    code = exit_code(e.kind());
  } catch (const std::bad_alloc&) {
    message = "out of memory; try a smaller --batch-size or image size";
  } catch (const std::exception& e) {
    message = e.what();
  }
  print_error(message);
  if (json_line) {
    // A usage error comes before the run's own SIGPIPE handling: a closed pipe must not make its exit code 141.
    std::signal(SIGPIPE, SIG_IGN);
    std::cout << nlohmann::ordered_json{{"event", "error"}, {"exit_code", code}, {"error", message}}.dump(
                     -1, ' ', false, nlohmann::json::error_handler_t::replace)
              << std::endl;
  }
  return code;
}

}  // namespace txt2img::cli
