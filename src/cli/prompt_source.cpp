#include "cli/prompt_source.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/pixel_size.hpp"
#include "cli/signals.hpp"
#include "join.hpp"
#include "txt2img/error.hpp"
#include "txt2img/tokenizer.hpp"

namespace txt2img::cli {
namespace {

constexpr std::string_view kWhitespace = " \t\r\n\f\v";
constexpr std::string_view kUtf8Bom = "\xEF\xBB\xBF";

std::string_view trim(std::string_view s) {
  const auto begin = s.find_first_not_of(kWhitespace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kWhitespace) - begin + 1);
}

// A line ends at "\n", "\r\n" or a lone "\r", as in Python's universal newlines (which A1111's prompt-file script
// reads with): a file saved with classic Mac line endings would otherwise be one prompt made of all of its lines.
bool read_line(std::istream& in, std::string& line) {
  line.clear();
  for (auto c = in.get(); c != std::istream::traits_type::eof(); c = in.get()) {
    if (c == '\n') return true;
    if (c == '\r') {
      if (in.peek() == '\n') in.get();
      return true;
    }
    line.push_back(static_cast<char>(c));
  }
  return !line.empty();
}

bool skipped(std::string_view trimmed) { return trimmed.empty() || trimmed.front() == '#'; }

// A byte order mark starts the file's first line, and the first line of every file that was joined to it (cat).
std::string_view without_bom(std::string_view line) {
  return line.substr(0, kUtf8Bom.size()) == kUtf8Bom ? line.substr(kUtf8Bom.size()) : line;
}

// "{" then a key or "}": a JSON object's start, where a prompt in the {red|blue} syntax of A1111's Dynamic Prompts
// is none.
bool opens_json_object(std::string_view trimmed) {
  const auto after_brace = trimmed.find_first_not_of(" \t", 1);
  return trimmed.front() == '{' &&
         (after_brace == std::string_view::npos || trimmed[after_brace] == '"' || trimmed[after_brace] == '}');
}

bool ends_with_jsonl(const std::string& path) {
  std::string lower = path;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  return lower.size() >= 6 && lower.compare(lower.size() - 6, 6, ".jsonl") == 0;
}

// Copies the prompts (standard input for "-") into an anonymous temporary file, read once to validate and again to
// generate without holding them in memory. Reading the source itself twice would find a pipe or a process
// substitution empty (or wait forever on a named pipe), and would generate lines appended after the check.
// Whether the process started with its standard input closed, noted before main (static initialisation): once the
// run is under way its descriptor 0 may be another file's (the temporary file below, the CUDA driver's), which would
// read as an empty prompt file or worse.
const bool kStandardInputClosedAtStart = ::fcntl(STDIN_FILENO, F_GETFD) < 0;

std::shared_ptr<std::FILE> spool(const std::string& path, const std::string& name) {
  if (path == "-" && kStandardInputClosedAtStart)
    throw Error(ErrorKind::Io, "cannot read the prompts from " + name + ": standard input is closed");
  struct Input {
    int fd;
    ~Input() {
      if (fd > STDIN_FILENO) ::close(fd);
    }
  } const input{path == "-" ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  const int fd = input.fd;
  if (fd < 0) throw Error(ErrorKind::Io, "cannot read prompt file " + name + ": " + std::strerror(errno));
  std::shared_ptr<std::FILE> copy(std::tmpfile(), [](std::FILE* f) { std::fclose(f); });
  if (!copy) throw Error(ErrorKind::Io, "cannot buffer the prompts of " + name + ": " + std::strerror(errno));
  char buffer[1 << 16];
  for (;;) {
    // A read restarts after a signal (SA_RESTART) and would wait on for a terminal's or a pipe's next line; poll
    // returns, so that Ctrl-C stops a run that is still waiting for its prompts. A signal that arrives between two
    // polls is seen by the check before the next; one in that narrow gap waits for the next line or a second Ctrl-C.
    throw_if_stop_requested();
    pollfd ready{fd, POLLIN, 0};
    if (::poll(&ready, 1, -1) < 0) {
      if (errno != EINTR)
        throw Error(ErrorKind::Io, "cannot read the prompts from " + name + ": " + std::strerror(errno));
      continue;
    }
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorKind::Io, "cannot read the prompts from " + name + ": " + std::strerror(errno));
    }
    if (std::fwrite(buffer, 1, static_cast<size_t>(n), copy.get()) != static_cast<size_t>(n) ||
        std::fflush(copy.get()) != 0)
      throw Error(ErrorKind::Io, "cannot buffer the prompts of " + name + ": " + std::strerror(errno));
  }
  // Ctrl-C on `producer | txt2img -f -` ends the producer too: the input's end may come before the signal is seen.
  throw_if_stop_requested();
  return copy;
}

// A JSON value as an error message quotes it: an array or an object by its kind alone (its text may be megabytes, or
// nested deeper than nlohmann's recursive dump survives), anything else as written, cut after 40 characters.
std::string shown(const nlohmann::json& value) {
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  const std::string text = value.dump(-1, ' ', true);  // ASCII, so that the cut splits no character
  return text.size() > 40 ? text.substr(0, 40) + "..." : text;
}

// JSON has one kind of number, and writers such as pandas and NumPy give whole numbers as 64.0 or 1e2: those are
// taken as the integers they are, below 2^53, from which on a double no longer holds every whole number (a seed
// written so may not be the one its writer had: 2^53 + 1 reads as 2^53).
nlohmann::json whole_number(const nlohmann::json& value, const std::string& key, const std::string& where) {
  if (value.is_number_integer()) return value;
  constexpr double exact = 9007199254740992.0;  // 2^53
  if (value.is_number_float()) {
    const double number = value.get<double>();
    if (number == std::floor(number)) {
      if (std::fabs(number) >= exact)
        throw Error(ErrorKind::Usage, where + ": \"" + key + "\" " + shown(value) +
                                          " is a float of 2^53 or more, where floats skip whole numbers; write it as "
                                          "an integer (without a fraction or exponent)");
      return static_cast<int64_t>(number);
    }
  }
  throw Error(ErrorKind::Usage, where + ": \"" + key + "\" must be a whole number, not " + shown(value));
}

template <typename T>
std::optional<T> int_field(const nlohmann::json& value, const std::string& key, const std::string& where) {
  const auto whole = whole_number(value, key, where);
  if (whole.is_number_unsigned() ? whole.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<T>::max())
                                 : whole.get<int64_t>() < std::numeric_limits<T>::min() ||
                                       whole.get<int64_t>() > std::numeric_limits<T>::max())
    throw Error(ErrorKind::Usage, where + ": \"" + key + "\" " + shown(value) + " is out of range");
  return whole.get<T>();
}

std::optional<std::string> string_field(const nlohmann::json& value, const std::string& key, const std::string& where) {
  if (!value.is_string())
    throw Error(ErrorKind::Usage, where + ": \"" + key + "\" must be a string, not " + shown(value));
  auto text = value.get<std::string>();
  // No command line can carry a NUL (info --command could not give the prompt back) and no path can hold one.
  if (text.find('\0') != std::string::npos)
    throw Error(ErrorKind::Usage, where + ": \"" + key + "\" contains a NUL character (\\u0000)");
  return text;
}

}  // namespace

uint64_t parse_seed(const std::string& text, const std::string& what) {
  const std::string range = "must be a whole number from 0 to " + std::to_string(kMaxSeed);
  if (text.empty() || text.size() > 19 || text.find_first_not_of("0123456789") != std::string::npos)
    throw Error(ErrorKind::Usage, what + " \"" + text + "\" " + range);
  const uint64_t seed = std::stoull(text);
  if (seed > kMaxSeed) throw Error(ErrorKind::Usage, what + " " + text + " " + range);
  return seed;
}

std::string utf8_problem(std::string_view text) {
  const auto bad = invalid_utf8_at(text);
  if (!bad) return {};
  char buf[64];
  std::snprintf(buf, sizeof buf, "byte 0x%02x at column %zu", static_cast<unsigned char>(text[*bad]), *bad + 1);
  return buf;
}

const std::vector<std::string>& jsonl_keys() {
  static const std::vector<std::string> keys = {
      "prompt",           "negative_prompt", "seed",          "steps",          "cfg_scale",
      "guidance_rescale", "skip_early_cfg",  "ngms",          "width",          "height",
      "sampler",          "clip_skip",       "long_prompts",  "emphasis",       "hires_scale",
      "hires_resize",     "hires_steps",     "hires_denoise", "hires_upscaler", "hires_sampler",
      "images",           "output"};
  return keys;
}

void require_utf8(std::string_view text, const std::string& what) {
  if (auto problem = utf8_problem(text); !problem.empty())
    throw Error(ErrorKind::Usage, what + " is not valid UTF-8 (" + problem + ")");
}

PromptSource PromptSource::argument(std::string prompt) {
  PromptSource source;
  require_utf8(prompt, "the prompt");
  source.argument_ = std::move(prompt);
  return source;
}

PromptSource PromptSource::file(const std::string& path) {
  PromptSource source;
  source.name_ = path == "-" ? "<stdin>" : path;
  source.spool_ = spool(path, source.name_);
  source.path_ = "/proc/self/fd/" + std::to_string(fileno(source.spool_.get()));
  source.open();

  // The format: JSON Lines by extension, or when the first prompt line opens an object.
  source.jsonl_ = ends_with_jsonl(path);
  std::string line;
  while (!source.jsonl_ && read_line(*source.in_, line)) {
    const std::string_view text = trim(without_bom(line));
    if (skipped(text)) continue;
    source.jsonl_ = opens_json_object(text);
    break;
  }
  source.rewind();
  return source;
}

PromptSource PromptSource::reopen() const {
  PromptSource copy;
  copy.argument_ = argument_;
  copy.name_ = name_;
  copy.path_ = path_;
  copy.spool_ = spool_;
  copy.jsonl_ = jsonl_;
  if (is_file()) copy.open();
  return copy;
}

void PromptSource::open() {
  in_ = std::make_unique<std::ifstream>(path_, std::ios::binary);
  if (!*in_) throw Error(ErrorKind::Io, "cannot read prompt file " + name_ + ": " + std::strerror(errno));
}

void PromptSource::rewind() {
  argument_done_ = false;
  line_ = 0;
  index_ = 0;
  if (is_file()) open();
}

std::string PromptSource::where(size_t line) const {
  return is_file() ? name_ + ":" + std::to_string(line) : "the prompt";
}

bool PromptSource::next(PromptEntry& entry) {
  if (!is_file()) {
    if (argument_done_) return false;
    argument_done_ = true;
    entry = PromptEntry{};
    entry.prompt = *argument_;
    return true;
  }
  std::string line;
  while (read_line(*in_, line)) {
    ++line_;
    if (parse_line(line, entry)) return true;
  }
  if (in_->bad()) throw Error(ErrorKind::Io, "cannot read prompt file " + name_ + ": " + std::strerror(errno));
  return false;
}

bool PromptSource::parse_line(std::string& line, PromptEntry& entry) {
  const std::string_view untrimmed = without_bom(line);
  const std::string_view text = trim(untrimmed);
  if (skipped(text)) return false;
  const std::string where = this->where(line_);
  // Columns count from the line's start, as an editor shows them.
  if (auto problem = utf8_problem(untrimmed); !problem.empty())
    throw Error(ErrorKind::Usage, where + ": not valid UTF-8 (" + problem + "); save the file as UTF-8");
  if (const auto nul = line.find('\0'); nul != std::string::npos)
    throw Error(ErrorKind::Usage, where + ": a NUL character at column " + std::to_string(nul + 1) +
                                      " (no command line can carry one); is this a text file?");

  entry = PromptEntry{};
  entry.line = line_;
  entry.index = index_++;
  if (!jsonl_) {
    // Its settings would be read as the prompt's words, and the image made with the run's.
    if (opens_json_object(text) && nlohmann::json::parse(text, nullptr, false).is_object())
      throw Error(ErrorKind::Usage, where +
                                        ": a JSON object, in a file read as one prompt a line (its first prompt "
                                        "line is no JSON); write every prompt line as JSON, as JSON Lines");
    entry.prompt = std::string(text);
    return true;
  }

  nlohmann::json j;
  // nlohmann keeps the last of a key set twice; a line that sets one twice is a mistake to report instead.
  std::set<std::string> keys_seen;
  std::string twice;
  const auto note_keys = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && !keys_seen.insert(parsed.get<std::string>()).second)
      twice = parsed.get<std::string>();
    return true;
  };
  try {
    j = nlohmann::json::parse(text, note_keys);
  } catch (const nlohmann::json::exception& e) {  // a syntax error, or a number beyond a double (1e999)
    std::string what = e.what();
    what = what.substr(what.find(' ', what.find(']')) + 1);  // drop nlohmann's "[json.exception.parse_error.101]"
    // The line is the file's; nlohmann counts lines within it, always 1.
    const std::string line_one = "at line 1, column";
    if (const auto at = what.find(line_one); at != std::string::npos) what.replace(at, line_one.size(), "at column");
    throw Error(ErrorKind::Usage, where + ": not a JSON object (" + what + ")");
  }
  if (!twice.empty()) throw Error(ErrorKind::Usage, where + ": \"" + twice + "\" is set twice");
  if (!j.is_object()) throw Error(ErrorKind::Usage, where + ": each line must be a JSON object, not " + shown(j));
  for (const auto& [key, value] : j.items()) {
    const auto& keys = jsonl_keys();
    if (std::find(keys.begin(), keys.end(), key) == keys.end())
      throw Error(ErrorKind::Usage, where + ": unknown key \"" + key + "\" (a line may set " + join(keys) + ")");
    if (value.is_null()) continue;  // JSON writers often emit null for "not set"
    if (key == "prompt") {
      entry.prompt = *string_field(value, key, where);
    } else if (key == "negative_prompt") {
      entry.negative_prompt = string_field(value, key, where);
    } else if (key == "seed") {
      const auto seed = whole_number(value, key, where);
      if (seed == -1)  // A1111's random seed, which a line cannot ask for: the run's seed is that
        throw Error(ErrorKind::Usage, where +
                                          ": \"seed\" -1: leave \"seed\" out (or null) for the run's seed, "
                                          "--seed (random without it)");
      entry.seed = parse_seed(seed.dump(), where + ": \"seed\"");
    } else if (key == "steps") {
      entry.steps = int_field<int>(value, key, where);
    } else if (key == "cfg_scale" || key == "guidance_rescale" || key == "skip_early_cfg" || key == "ngms" ||
               key == "hires_scale" || key == "hires_denoise") {
      if (!value.is_number())
        throw Error(ErrorKind::Usage, where + ": \"" + key + "\" must be a number, not " + shown(value));
      (key == "cfg_scale"          ? entry.cfg_scale
       : key == "guidance_rescale" ? entry.guidance_rescale
       : key == "skip_early_cfg"   ? entry.skip_early_cfg
       : key == "ngms"             ? entry.ngms
       : key == "hires_scale"      ? entry.hires_scale
                                   : entry.hires_denoise) = value.get<double>();
    } else if (key == "hires_steps") {
      entry.hires_steps = int_field<int>(value, key, where);
    } else if (key == "hires_resize") {
      const std::string size = *string_field(value, key, where);
      if (size.empty()) throw Error(ErrorKind::Usage, where + ": \"hires_resize\" must be WxH in pixels, not empty");
      entry.hires_resize = pixel_size(where + ": \"hires_resize\"", size, 0);
    } else if (key == "hires_upscaler") {
      entry.hires_upscaler = string_field(value, key, where);
    } else if (key == "hires_sampler") {
      entry.hires_sampler = string_field(value, key, where);
    } else if (key == "width" || key == "height") {
      const auto side = int_field<int>(value, key, where);
      // GenerationParams reads a side of 0 as the model's size, which only leaving the key out asks for.
      if (side == 0)
        throw Error(ErrorKind::Usage, where + ": \"" + key + "\" 0 is no image size (leave \"" + key +
                                          "\" out for the model's size)");
      (key == "width" ? entry.width : entry.height) = side;
    } else if (key == "sampler") {
      entry.sampler = string_field(value, key, where);
    } else if (key == "clip_skip") {
      entry.clip_skip = int_field<int>(value, key, where);
    } else if (key == "long_prompts" || key == "emphasis") {
      if (!value.is_boolean())
        throw Error(ErrorKind::Usage, where + ": \"" + key + "\" must be true or false, not " + shown(value));
      (key == "long_prompts" ? entry.long_prompts : entry.emphasis) = value.get<bool>();
    } else if (key == "images") {
      entry.images = int_field<int>(value, key, where);
      if (*entry.images < 1 || *entry.images > kMaxImagesPerPrompt)
        throw Error(ErrorKind::Usage,
                    where + ": \"images\" must be from 1 to " + std::to_string(kMaxImagesPerPrompt) + ", as the flag");
    } else if (key == "output") {
      entry.output = string_field(value, key, where);
    }
  }
  if (!j.contains("prompt") || j.at("prompt").is_null())
    throw Error(ErrorKind::Usage, where + ": the line has no \"prompt\"");
  return true;
}

}  // namespace txt2img::cli
