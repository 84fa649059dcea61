#include "cli/signals.hpp"

#include <atomic>
#include <csignal>
#include <cstring>
#include <string>

#include "txt2img/error.hpp"

namespace txt2img::cli {
namespace {

// Atomics, not sig_atomic_t: the handler may run on any of LibTorch's threads while the main thread writes a file.
static_assert(std::atomic<bool>::is_always_lock_free && std::atomic<int>::is_always_lock_free,
              "the signal handler needs lock-free atomics");
std::atomic<int> g_signal{0};
std::atomic<bool> g_deferring{false};
std::atomic<int> g_deferred{0};

void end_process(int signal) {
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

void on_stop_signal(int signal) {
  if (g_signal != SIGINT && g_signal != SIGTERM && g_signal != SIGHUP) {
    g_signal = signal;
    return;
  }
  // The second signal: the user does not want to wait for the step to finish, only for a file to be complete.
  if (g_deferring) {
    g_deferred = signal;
    // The write may have ended between the two loads; then whichever of the two sides takes the signal ends.
    if (g_deferring || g_deferred.exchange(0) == 0) return;
  }
  end_process(signal);
}

// A closed output pipe (`txt2img --json | head -1`) stops the run as a first Ctrl-C does, instead of killing it at
// the next message; every later write to the pipe raises SIGPIPE again, so it never escalates.
void on_broken_pipe(int) {
  if (g_signal == 0) g_signal = SIGPIPE;
}

// Interrupted system calls restart: a signal only sets the flag the run checks between steps.
void handle(int signal, void (*handler)(int)) {
  struct sigaction action;
  std::memset(&action, 0, sizeof action);
  action.sa_handler = handler;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(signal, &action, nullptr);
}

// A stop signal the process was started ignoring stays ignored, as Unix tools leave it: nohup's SIGHUP, the SIGINT
// a non-interactive shell has its `txt2img … &` jobs ignore.
void handle_unless_ignored(int signal, void (*handler)(int)) {
  struct sigaction current;
  if (sigaction(signal, nullptr, &current) == 0 && current.sa_handler == SIG_IGN) return;
  handle(signal, handler);
}

}  // namespace

void ignore_file_size_signal() { std::signal(SIGXFSZ, SIG_IGN); }

void stop_on_signals() {
  handle_unless_ignored(SIGINT, on_stop_signal);
  handle_unless_ignored(SIGTERM, on_stop_signal);
  handle_unless_ignored(SIGHUP, on_stop_signal);  // a closed terminal or ssh session
  handle(SIGPIPE, on_broken_pipe);
}

bool stop_requested() { return g_signal != 0; }

DeferSecondSignal::DeferSecondSignal() { g_deferring = true; }

DeferSecondSignal::~DeferSecondSignal() {
  g_deferring = false;
  if (const int signal = g_deferred.exchange(0)) end_process(signal);
}

void throw_if_stop_requested() {
  if (const int signal = g_signal)
    throw Error(ErrorKind::Interrupted,
                std::string("interrupted by ") + (signal == SIGINT    ? "SIGINT"
                                                  : signal == SIGTERM ? "SIGTERM"
                                                  : signal == SIGHUP  ? "SIGHUP (the terminal was closed)"
                                                                      : "SIGPIPE (the output pipe was closed)"));
}

}  // namespace txt2img::cli
