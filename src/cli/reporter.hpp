// Everything a run tells its user. Human messages go to stderr: a progress bar when stderr is a terminal, at most
// one line per image otherwise, nothing but errors with --quiet, colour only on a terminal without NO_COLOR.
// With --json, stdout carries one JSON object per finished image and a summary object, nothing else; with
// --json-progress also one per denoising step and one per preview written.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace txt2img::cli {

// "error: ..." on stderr, whatever the verbosity.
void print_error(const std::string& message);

class Reporter {
 public:
  Reporter(bool quiet, bool json, bool json_progress = false);
  ~Reporter();

  void info(const std::string& line);
  void warn(const std::string& message);
  // Clears the progress bar, then prints the error.
  void error(const std::string& message);

  // The run's size, for the ETA: images to make and the sum of their steps.
  void begin(uint64_t images, uint64_t image_steps);
  // A U-Net batch of `count` images starts; `first` counts from 1 among the images this run makes.
  void begin_batch(uint64_t first, size_t count, int steps);
  void step(size_t call, size_t calls);
  // A preview (--preview) was written after U-Net call `call` of `calls`.
  void preview(const std::string& path, size_t call, size_t calls);
  // One image is on disk: `line` for people, `record` for --json.
  void image(const std::string& line, const nlohmann::ordered_json& record);
  void summary(const std::string& line, const nlohmann::ordered_json& record);

 private:
  void clear_bar();
  void draw_bar(size_t call, size_t calls);
  void emit(const nlohmann::ordered_json& record);
  // Seconds until the run is done at its pace so far; 0 before any work is done.
  double eta_seconds() const;
  std::string paint(const std::string& text, const char* sgr) const;

  using Clock = std::chrono::steady_clock;
  bool quiet_;
  bool json_;
  bool json_progress_;
  bool bar_;  // stderr is a terminal that can redraw a line
  bool bar_shares_stdout_;  // and stdout is a terminal too: its records would land on the bar's line
  bool color_;
  bool bar_shown_ = false;
  uint64_t images_ = 0;
  double total_work_ = 0;  // image-steps
  double done_work_ = 0;
  Clock::time_point start_;
  Clock::time_point batch_start_;
  Clock::time_point last_draw_;
  uint64_t batch_first_ = 0;
  size_t batch_count_ = 0;
  int batch_steps_ = 0;
};

}  // namespace txt2img::cli
