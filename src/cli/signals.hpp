// While generating, SIGINT, SIGTERM and SIGHUP ask the run to stop after the current denoising step, so that
// finished images are kept and no file is left half-written; a second one stops at once. The other commands (info,
// tokenize) keep every signal's default and end there, as Unix tools end.
#pragma once

namespace txt2img::cli {

// For every command: file size limits (ulimit -f) make writes fail with EFBIG, reported as an I/O error with the
// temporary file removed, instead of killing the process with SIGXFSZ.
void ignore_file_size_signal();

// For generating: SIGINT, SIGTERM and SIGHUP ask the run to stop (each unless the process was started ignoring it, as
// under nohup), and so does SIGPIPE (a closed stdout or stderr pipe), which never stops it at once.
void stop_on_signals();

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
