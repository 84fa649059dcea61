// The command line's signal handling (src/cli/signals.cpp), each case in a child process of its own: the handlers
// are process-wide and the second signal ends the process.
#include "cli/signals.hpp"

#include <gtest/gtest.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>

namespace {

using txt2img::cli::DeferSecondSignal;
using txt2img::cli::stop_on_signals;
using txt2img::cli::stop_requested;

// The first SIGINT or SIGTERM only asks the run to stop; the child says so on stderr, for the death tests to match.
void first_signal(int signal) {
  stop_on_signals();
  std::raise(signal);
  if (!stop_requested()) std::_Exit(3);
  std::fputs("asked to stop\n", stderr);
}

TEST(SignalsDeathTest, TheFirstSignalOnlyAsksToStop) {
  EXPECT_EXIT(
      {
        first_signal(SIGINT);
        std::_Exit(0);
      },
      testing::ExitedWithCode(0), "asked to stop");
}

// nohup's SIGHUP, and the SIGINT of a shell's background job, stay ignored; the others still ask to stop.
TEST(SignalsDeathTest, ASignalIgnoredAtTheStartStaysIgnored) {
  EXPECT_EXIT(
      {
        std::signal(SIGHUP, SIG_IGN);
        std::signal(SIGINT, SIG_IGN);
        stop_on_signals();
        std::raise(SIGHUP);
        std::raise(SIGINT);
        if (stop_requested()) std::_Exit(3);
        first_signal(SIGTERM);
        std::_Exit(0);
      },
      testing::ExitedWithCode(0), "asked to stop");
}

TEST(SignalsDeathTest, ASecondSignalEndsTheProcessAtOnce) {
  EXPECT_EXIT(
      {
        first_signal(SIGINT);
        std::raise(SIGINT);
        std::_Exit(0);
      },
      testing::KilledBySignal(SIGINT), "asked to stop");
}

TEST(SignalsDeathTest, ASecondSignalDuringAWriteEndsTheProcessAfterIt) {
  EXPECT_EXIT(
      {
        first_signal(SIGTERM);
        {
          const DeferSecondSignal writing;
          std::raise(SIGTERM);
          std::fputs("write finished\n", stderr);
        }
        std::fputs("went on\n", stderr);
        std::_Exit(0);
      },
      testing::KilledBySignal(SIGTERM), "asked to stop\nwrite finished\n$");
}

TEST(SignalsDeathTest, AWriteWithoutASecondSignalGoesOn) {
  EXPECT_EXIT(
      {
        first_signal(SIGINT);
        { const DeferSecondSignal writing; }
        std::fputs("went on\n", stderr);
        std::_Exit(0);
      },
      testing::ExitedWithCode(0), "asked to stop\nwent on\n");
}

TEST(SignalsDeathTest, ASecondSignalAfterAWriteStillEndsTheProcessAtOnce) {
  EXPECT_EXIT(
      {
        first_signal(SIGINT);
        { const DeferSecondSignal writing; }
        std::raise(SIGINT);
        std::_Exit(0);
      },
      testing::KilledBySignal(SIGINT), "asked to stop");
}

}  // namespace
