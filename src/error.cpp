#include "txt2img/error.hpp"

#include <c10/util/Exception.h>

#include <sstream>
#include <vector>

namespace txt2img {
namespace {

std::vector<std::string> nonempty_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(" \t\r") != std::string::npos) lines.push_back(line);
  return lines;
}

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

// The sentence a person can act on. A c10::Error's first line is its message (a C++ backtrace may follow); a
// TorchScript traceback ends with "<Python exception type>: <message>".
std::string essential_line(const std::exception& failure) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&failure);
  const auto lines = nonempty_lines(c10_error ? c10_error->what_without_backtrace() : failure.what());
  if (lines.empty()) return "unknown LibTorch failure";
  const bool script_traceback = lines.front().find("TorchScript interpreter") != std::string::npos;
  std::string line = script_traceback ? lines.back() : lines.front();
  for (const char* prefix : {"RuntimeError: ", "torch.OutOfMemoryError: ", "OutOfMemoryError: "})
    if (starts_with(line, prefix)) line.erase(0, std::string(prefix).size());
  return line;
}

bool is_out_of_memory(const std::exception& failure, const std::string& line) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&failure)) return true;
  for (const char* wording : {"out of memory", "can't allocate memory", "not enough memory"})
    if (line.find(wording) != std::string::npos) return true;
  return false;
}

}  // namespace

bool is_out_of_memory(const std::exception& failure) { return is_out_of_memory(failure, essential_line(failure)); }

int exit_code(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Usage: return 2;
    case ErrorKind::Bundle: return 3;
    case ErrorKind::Io: return 4;
    case ErrorKind::Runtime: return 5;
    case ErrorKind::Nsfw: return 6;
    case ErrorKind::Interrupted: return 130;
  }
  return 1;
}

Error backend_failure(const std::exception& failure) {
  const std::string line = essential_line(failure);
  if (is_out_of_memory(failure, line))
    return Error(ErrorKind::Runtime, "out of memory (" + line +
                                         "); make fewer or smaller images at once (--batch-size, --width, "
                                         "--height), or on a GPU try --low-vram");
  return Error(ErrorKind::Runtime, line);
}

}  // namespace txt2img
