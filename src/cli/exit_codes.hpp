// The documented exit codes (txt2img::exit_code gives them for each error kind), and the edge where whatever was
// thrown becomes one message and one code.
#pragma once

#include <exception>
#include <string>

namespace txt2img::cli {

constexpr int kExitSuccess = 0;

// The table --help prints.
std::string exit_code_table();

// Prints the error of `failure` on stderr ("error: ...") and returns its exit code. With `json_line` (generate's
// --json) stdout, whatever it carried before, ends with {"event":"error","exit_code":N,"error":"..."}: a script
// reading it learns why the run failed without parsing stderr.
int report_failure(std::exception_ptr failure, bool json_line);

}  // namespace txt2img::cli
