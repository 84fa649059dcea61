// A1111's prompt-editing grammar (modules/prompt_parser.py, a lark grammar) read by recursive descent:
//   start:      (prompt | any of "[]():" as text)*
//   prompt:     (emphasized | scheduled | alternate | plain)*
//   emphasized: "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"    (kept as text, brackets included)
//   scheduled:  "[" [prompt ":"] prompt ":" NUMBER "]"    (blanks allowed around NUMBER)
//   alternate:  "[" prompt ("|" [prompt])+ "]"
//   plain:      characters other than \ [ ] ( ) : |, and backslash escapes of any character
// A bracket that does not close as one of these is text where the top level allows it; anything else ("|" outside
// brackets, a lone trailing backslash) fails the parse, and A1111 then takes the prompt as it is.
#include "txt2img/prompt_schedule.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <set>
#include <string_view>

#include "python_text.hpp"
#include "txt2img/error.hpp"
#include "txt2img/tokenizer.hpp"

namespace txt2img {
namespace {

struct Node;
using Sequence = std::vector<Node>;

struct Node {
  enum class Kind { Text, Scheduled, Alternate } kind = Kind::Text;
  std::string text;             // Text
  bool has_before = false;      // Scheduled: whether "[before:after:when]" rather than "[after:when]"
  std::vector<Sequence> parts;  // Scheduled: {before, after}; Alternate: the options
  std::string when_text;        // Scheduled: its NUMBER as written
  int when = 0;                 // Scheduled: the last step of `before`, once resolved
};

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
bool is_digit(char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  std::optional<Sequence> start() {
    Sequence out;
    while (true) {
      append(out, prompt());
      if (pos_ == s_.size()) return out;
      if (std::string_view("[]():").find(s_[pos_]) == std::string_view::npos) return std::nullopt;
      out.push_back(text(std::string(1, s_[pos_++])));
    }
  }

 private:
  static Node text(std::string value) {
    Node n;
    n.text = std::move(value);
    return n;
  }
  static void append(Sequence& out, Sequence more) {
    for (auto& node : more) out.push_back(std::move(node));
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_blanks() {
    while (pos_ < s_.size() && is_space(s_[pos_])) ++pos_;
  }

  // Items up to a character that cannot start one (or a bracket that does not parse), which is left unread.
  Sequence prompt() {
    Sequence out;
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == '(' || c == '[') {
        if (!bracket(out)) break;
      } else if (c == ')' || c == ']' || c == ':' || c == '|') {
        break;
      } else if (!plain(out)) {
        break;
      }
    }
    return out;
  }

  bool plain(Sequence& out) {
    const size_t begin = pos_;
    while (pos_ < s_.size()) {
      const char c = s_[pos_];
      if (c == '\\') {
        // A backslash escapes the next character; not a newline (the grammar's "." does not match one).
        if (pos_ + 1 == s_.size() || s_[pos_ + 1] == '\n') break;
        pos_ += 2;
      } else if (std::string_view("[]():|").find(c) == std::string_view::npos) {
        ++pos_;
      } else {
        break;
      }
    }
    if (pos_ == begin) return false;
    out.push_back(text(std::string(s_.substr(begin, pos_ - begin))));
    return true;
  }

  // lark's SIGNED_NUMBER: [+-]? then digits with an optional fraction, or a fraction alone, then an optional
  // exponent.
  std::optional<std::string> number() {
    const size_t begin = pos_;
    size_t p = pos_;
    if (p < s_.size() && (s_[p] == '+' || s_[p] == '-')) ++p;
    const size_t integer = p;
    while (p < s_.size() && is_digit(s_[p])) ++p;
    bool digits = p > integer;
    if (p < s_.size() && s_[p] == '.') {
      size_t q = p + 1;
      while (q < s_.size() && is_digit(s_[q])) ++q;
      if (digits || q > p + 1) {
        digits = true;
        p = q;
      }
    }
    if (!digits) return std::nullopt;
    if (p < s_.size() && (s_[p] == 'e' || s_[p] == 'E')) {
      size_t q = p + 1;
      if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
      const size_t exponent = q;
      while (q < s_.size() && is_digit(s_[q])) ++q;
      if (q > exponent) p = q;
    }
    pos_ = p;
    return std::string(s_.substr(begin, p - begin));
  }

  // ":" NUMBER "]" with blanks around the number, after the prompt(s) of a scheduled bracket.
  std::optional<std::string> when_and_close() {
    const size_t begin = pos_;
    if (peek() == ':') {
      ++pos_;
      skip_blanks();
      auto when = number();
      skip_blanks();
      if (when && peek() == ']') {
        ++pos_;
        return when;
      }
    }
    pos_ = begin;
    return std::nullopt;
  }

  // At "(" or "[": appends the construct and returns true, or leaves the position and returns false. Brackets nested
  // deeper than kMaxNesting do not parse, which keeps the parser's recursion within the stack (A1111's own parser
  // fails far earlier, at Python's recursion limit).
  static constexpr int kMaxNesting = 1000;
  bool bracket(Sequence& out) {
    if (nesting_ == kMaxNesting) return false;
    ++nesting_;
    const bool parsed = nested_bracket(out);
    --nesting_;
    return parsed;
  }

  bool nested_bracket(Sequence& out) {
    const size_t begin = pos_;
    const char open = s_[pos_++];
    Sequence first = prompt();
    if (open == '(') {
      Sequence emphasized;
      emphasized.push_back(text("("));
      append(emphasized, std::move(first));
      if (peek() == ':') {
        ++pos_;
        emphasized.push_back(text(":"));
        append(emphasized, prompt());
      }
      if (peek() == ')') {
        ++pos_;
        emphasized.push_back(text(")"));
        append(out, std::move(emphasized));
        return true;
      }
    } else if (peek() == ']') {
      ++pos_;
      out.push_back(text("["));
      append(out, std::move(first));
      out.push_back(text("]"));
      return true;
    } else if (peek() == '|') {
      Node alternate;
      alternate.kind = Node::Kind::Alternate;
      alternate.parts.push_back(std::move(first));
      while (peek() == '|') {
        ++pos_;
        alternate.parts.push_back(prompt());
      }
      if (peek() == ']') {
        ++pos_;
        out.push_back(std::move(alternate));
        return true;
      }
    } else if (peek() == ':') {
      Node scheduled;
      scheduled.kind = Node::Kind::Scheduled;
      if (auto when = when_and_close()) {  // "[after:when]"
        scheduled.when_text = *when;
        scheduled.parts = {{}, std::move(first)};
        out.push_back(std::move(scheduled));
        return true;
      }
      ++pos_;
      Sequence second = prompt();
      if (auto when = when_and_close()) {  // "[before:after:when]"
        scheduled.when_text = *when;
        scheduled.has_before = true;
        scheduled.parts = {std::move(first), std::move(second)};
        out.push_back(std::move(scheduled));
        return true;
      }
    }
    pos_ = begin;
    return false;
  }

  std::string_view s_;
  size_t pos_ = 0;
  int nesting_ = 0;
};

// A1111's CollectSteps: resolves each scheduled bracket's step (in every branch, taken or not) and gathers the
// steps where the text changes.
void collect_steps(Sequence& sequence, int steps, int int_offset, double fraction_offset, std::set<int>& changes) {
  for (auto& node : sequence) {
    for (auto& part : node.parts) collect_steps(part, steps, int_offset, fraction_offset, changes);
    if (node.kind == Node::Kind::Alternate) {
      for (int step = 1; step <= steps; ++step) changes.insert(step);
    } else if (node.kind == Node::Kind::Scheduled) {
      double value = std::strtod(node.when_text.c_str(), nullptr);
      value = node.when_text.find('.') != std::string::npos ? (value - fraction_offset) * steps : value - int_offset;
      // Python's int() truncates towards zero; a value beyond int's range is clamped by the min() in any case.
      const double truncated = std::trunc(value);
      node.when = truncated >= steps ? steps : static_cast<int>(std::max(truncated, -1e9));
      if (node.when >= 1) changes.insert(node.when);
    }
  }
}

void text_at(const Sequence& sequence, int step, std::string& out) {
  for (const auto& node : sequence) {
    switch (node.kind) {
      case Node::Kind::Text:
        out += node.text;
        break;
      case Node::Kind::Scheduled:
        if (step > node.when) {
          text_at(node.parts[1], step, out);
        } else if (node.has_before) {
          text_at(node.parts[0], step, out);
        }
        break;
      case Node::Kind::Alternate:
        text_at(node.parts[static_cast<size_t>(step - 1) % node.parts.size()], step, out);
        break;
    }
  }
}

}  // namespace

std::vector<ScheduledText> prompt_schedule(const std::string& prompt, int steps, int hires_steps) {
  const bool hires = hires_steps > 0;
  const int pass_steps = hires ? hires_steps : steps;
  auto tree = Parser(prompt).start();
  if (!tree) return {{pass_steps, prompt}};
  std::set<int> changes = {pass_steps};
  collect_steps(*tree, pass_steps, hires ? steps : 0, hires ? 1.0 : 0.0, changes);
  std::vector<ScheduledText> schedule;
  for (int step : changes) {
    std::string text;
    text_at(*tree, step, text);
    schedule.push_back({step, std::move(text)});
  }
  return schedule;
}

std::vector<WeightedPrompt> composable_prompts(const std::string& prompt) {
  // re.split(r"\bAND\b"): AND without a word character on either side.
  std::vector<std::string> parts;
  size_t begin = 0;
  for (size_t at = prompt.find("AND"); at != std::string::npos; at = prompt.find("AND", at + 1)) {
    if (!python_text::whole_word_at(prompt, at, 3)) continue;
    parts.push_back(prompt.substr(begin, at - begin));
    begin = at + 3;
  }
  parts.push_back(prompt.substr(begin));
  // ^(text)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$ with the text as short as it can be. Blanks and digits are
  // Python's (Unicode's, float() reading any script's digits by their values).
  std::vector<WeightedPrompt> prompts;
  for (const auto& part : parts) {
    const size_t end = python_text::blanks_before(part, part.size());
    WeightedPrompt p{part.substr(0, end), 1.0};
    const size_t colon = part.rfind(':', end);
    if (colon != std::string::npos && colon < end) {
      size_t q = python_text::blanks_after(part, colon + 1);
      std::string number;
      if (q < end && (part[q] == '+' || part[q] == '-')) number.push_back(part[q++]);
      std::string digits;
      const bool whole = python_text::dots_and_digits(part, q, &digits) == end;
      const auto dots = std::count(digits.begin(), digits.end(), '.');
      if (whole && dots <= 1 && digits.size() > static_cast<size_t>(dots))
        p = {part.substr(0, python_text::blanks_before(part, colon)), std::strtod((number + digits).c_str(), nullptr)};
    }
    prompts.push_back(std::move(p));
  }
  return prompts;
}

bool is_composable(const std::string& prompt) {
  const auto prompts = composable_prompts(prompt);
  return prompts.size() > 1 || prompts[0].weight != 1.0;
}

void check_guidance_weights(const std::vector<WeightedPrompt>& prompts, double cfg_scale) {
  for (const auto& prompt : prompts)
    if (prompt.weight != 1.0 && !fits_float32(prompt.weight * cfg_scale))
      throw Error(ErrorKind::Usage, "the prompt's guidance weight " + format_weight(prompt.weight) +
                                        " (a trailing :number, as A1111 reads it) times the CFG scale is beyond what "
                                        "float32 holds");
}

size_t scheduled_index(const std::vector<ScheduledText>& schedule, int step) {
  for (size_t i = 0; i < schedule.size(); ++i)
    if (step <= schedule[i].end_at_step) return i;
  return 0;
}

}  // namespace txt2img
