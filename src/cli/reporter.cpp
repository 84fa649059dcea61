#include "cli/reporter.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "cli/shell_text.hpp"

namespace txt2img::cli {
namespace {

bool stderr_is_terminal() {
  const char* term = std::getenv("TERM");
  return ::isatty(STDERR_FILENO) && !(term && std::strcmp(term, "dumb") == 0);
}

// https://no-color.org: any non-empty NO_COLOR turns colour off.
bool colour_allowed() {
  const char* no_color = std::getenv("NO_COLOR");
  return stderr_is_terminal() && !(no_color && *no_color);
}

std::string paint_if(bool color, const std::string& text, const char* sgr) {
  return color ? std::string("\033[") + sgr + "m" + text + "\033[0m" : text;
}

int terminal_columns() {
  winsize size{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  return 80;
}

std::string clock_time(double seconds) {
  const auto s = static_cast<long long>(std::llround(std::max(0.0, seconds)));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  return buf;
}

}  // namespace

void print_error(const std::string& message) {
  std::cerr << paint_if(colour_allowed(), "error:", "1;31") << " " << one_line(message) << std::endl;
}

Reporter::Reporter(bool quiet, bool json, bool json_progress)
    : quiet_(quiet),
      json_(json),
      json_progress_(json && json_progress),
      bar_(!quiet && stderr_is_terminal()),
      bar_shares_stdout_(bar_ && ::isatty(STDOUT_FILENO)),
      color_(colour_allowed()) {}

Reporter::~Reporter() { clear_bar(); }

std::string Reporter::paint(const std::string& text, const char* sgr) const { return paint_if(color_, text, sgr); }

void Reporter::clear_bar() {
  if (!bar_shown_) return;
  std::cerr << "\r\033[K" << std::flush;
  bar_shown_ = false;
}

void Reporter::info(const std::string& line) {
  if (quiet_) return;
  clear_bar();
  std::cerr << one_line(line) << std::endl;
}

void Reporter::warn(const std::string& message) {
  if (quiet_) return;
  clear_bar();
  std::cerr << paint("warning:", "1;33") << " " << one_line(message) << std::endl;
}

void Reporter::error(const std::string& message) {
  clear_bar();
  print_error(message);
}

void Reporter::begin(uint64_t images, uint64_t image_steps) {
  images_ = images;
  total_work_ = static_cast<double>(image_steps);
  start_ = Clock::now();
}

void Reporter::begin_batch(uint64_t first, size_t count, int steps) {
  batch_first_ = first;
  batch_count_ = count;
  batch_steps_ = steps;
  batch_start_ = Clock::now();
  if (bar_) draw_bar(0, 0);
}

void Reporter::step(size_t call, size_t calls) {
  // Samplers may make more U-Net calls than steps (PNDM makes one more): progress is the fraction of calls.
  done_work_ += static_cast<double>(batch_count_) * batch_steps_ / static_cast<double>(calls);
  if (json_progress_) {
    const nlohmann::ordered_json j = {
        {"event", "step"},
        {"images_done", batch_first_ - 1},
        {"images", images_},
        {"batch", batch_count_},
        {"step", call},
        {"steps", calls},
        {"progress", total_work_ > 0 ? std::min(1.0, done_work_ / total_work_) : 0.0},
        {"elapsed_s", std::chrono::duration<double>(Clock::now() - start_).count()},
        {"eta_s", eta_seconds()},
    };
    emit(j);
  }
  // Ten redraws a second are smooth enough and keep a fast model from flooding a slow (ssh) terminal.
  if (bar_ && (call == calls || Clock::now() - last_draw_ >= std::chrono::milliseconds(100))) draw_bar(call, calls);
}

void Reporter::preview(const std::string& path, size_t call, size_t calls) {
  if (!json_progress_) return;
  const nlohmann::ordered_json j = {
      {"event", "preview"}, {"path", path}, {"images_done", batch_first_ - 1}, {"step", call}, {"steps", calls}};
  emit(j);
}

// One line of stdout; text that is not UTF-8 (a prompt read as bytes) is replaced, never an exception mid-run.
void Reporter::emit(const nlohmann::ordered_json& record) {
  if (bar_shares_stdout_) clear_bar();
  std::cout << record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
}

double Reporter::eta_seconds() const {
  if (done_work_ <= 0) return 0;
  const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
  return std::max(0.0, (total_work_ - done_work_) * elapsed / done_work_);
}

void Reporter::draw_bar(size_t call, size_t calls) {
  const double batch_elapsed = std::chrono::duration<double>(Clock::now() - batch_start_).count();
  std::string images = std::to_string(batch_first_);
  if (batch_count_ > 1) images += "-" + std::to_string(batch_first_ + batch_count_ - 1);
  std::string left = "image " + images + "/" + std::to_string(images_) + " ";
  std::string right = " step " + std::to_string(call) + "/" + std::to_string(calls ? calls : batch_steps_);
  if (call > 0) {
    char rate[32];
    std::snprintf(rate, sizeof rate, "  %.2f it/s", static_cast<double>(call) / batch_elapsed);
    right += rate;
  }
  if (done_work_ > 0) right += "  ETA " + clock_time(eta_seconds());

  const int width = std::min(40, terminal_columns() - 1 - static_cast<int>(left.size() + right.size()));
  std::string bar;
  if (width >= 5) {
    const double fraction = total_work_ > 0 ? std::min(1.0, done_work_ / total_work_) : 0.0;
    const int filled = static_cast<int>(fraction * width);
    std::string done, todo;
    for (int i = 0; i < filled; ++i) done += "\u2588";
    for (int i = filled; i < width; ++i) todo += "\u2591";
    bar = (done.empty() ? "" : paint(done, "32")) + todo;
  }
  std::cerr << "\r\033[K" << left << bar << right << std::flush;
  bar_shown_ = true;
  last_draw_ = Clock::now();
}

void Reporter::image(const std::string& line, const nlohmann::ordered_json& record) {
  if (json_) emit(record);
  info(line);
}

void Reporter::summary(const std::string& line, const nlohmann::ordered_json& record) {
  clear_bar();
  if (json_) emit(record);
  info(line);
}

}  // namespace txt2img::cli
