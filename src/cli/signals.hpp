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

// Throws Error(Interrupted) naming the signal once one has arrived.
void throw_if_stop_requested();

}  // namespace txt2img::cli
