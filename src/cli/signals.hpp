// SIGINT and SIGTERM ask the run to stop after the current denoising step, so that finished images are kept and
// no file is left half-written; a second one stops at once.
#pragma once

namespace txt2img::cli {

// Installs the handlers. File size limits (ulimit -f) make writes fail with EFBIG, reported as an I/O error with
// the temporary file removed, instead of killing the process with SIGXFSZ.
void install_signal_handlers();

// For generating: SIGPIPE (a closed stdout or stderr pipe) asks the run to stop as a first SIGINT does, and never
// stops it at once. Elsewhere (info, tokenize) it keeps its default, ending the process as Unix tools end.
void stop_on_broken_pipe();

bool stop_requested();

// While one lives, a second SIGINT or SIGTERM ends the process only when it is destroyed, not at once: a file being
// written (a temporary file, then renamed) is then always in place or removed, never left behind half-written.
// Used around short writes only; one at a time.
class DeferSecondSignal {
 public:
  DeferSecondSignal();
  ~DeferSecondSignal();
  DeferSecondSignal(const DeferSecondSignal&) = delete;
  DeferSecondSignal& operator=(const DeferSecondSignal&) = delete;
};

// Throws Error(Interrupted) naming the signal once one has arrived.
void throw_if_stop_requested();

}  // namespace txt2img::cli
