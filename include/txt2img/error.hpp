// Errors carry a kind that the command line maps to a documented exit code, and a message that tells the user
// what to fix. Library code throws txt2img::Error; nothing else should reach the CLI edge.
#pragma once

#include <stdexcept>
#include <string>

namespace txt2img {

enum class ErrorKind {
  Usage,        // a bad flag, value or prompt
  Bundle,       // model bundle missing, incomplete, corrupt or mismatched
  Io,           // input or output file problem
  Runtime,      // out of memory, non-finite values, backend failure
  Interrupted,  // SIGINT / SIGTERM
  Nsfw,         // --fail-on-nsfw and an image was flagged
};

// Exit code of the command line for each kind (documented in docs/cli.md, "Exit codes and errors").
int exit_code(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// A LibTorch failure (a c10::Error, or the std::runtime_error the TorchScript interpreter raises, whose message is a
// script traceback ending in the error itself) as an Error(Runtime) with the one line that says what went wrong.
// Running out of host or device memory gets a hint on what to reduce.
Error backend_failure(const std::exception& failure);
// Whether a LibTorch failure is one of memory (the host's or a device's), which backend_failure gives its hint.
bool is_out_of_memory(const std::exception& failure);

}  // namespace txt2img
