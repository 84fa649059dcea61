// AUTOMATIC1111's emphasis syntax (modules/prompt_parser.py, parse_prompt_attention), scanned by hand: the same
// alternatives in the same order as its regular expression, the same bracket stacks and the same multiplications,
// so the weights come out as the same doubles.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "python_text.hpp"
#include "txt2img/tokenizer.hpp"

namespace txt2img {
namespace {

constexpr double kRoundMultiplier = 1.1;
constexpr double kSquareMultiplier = 1 / 1.1;
constexpr std::string_view kBreak = "BREAK";

// `:\s*([+-]?[.\d]+)\s*\)` at `pos`: the end of the match and the weight, or npos.
size_t match_weight(std::string_view text, size_t pos, double* weight) {
  size_t p = python_text::blanks_after(text, pos + 1);
  std::string value;
  if (p < text.size() && (text[p] == '+' || text[p] == '-')) value.push_back(text[p++]);
  std::string digits;
  const size_t after_digits = python_text::dots_and_digits(text, p, &digits);
  if (after_digits == p) return std::string_view::npos;
  value += digits;
  p = python_text::blanks_after(text, after_digits);
  if (p >= text.size() || text[p] != ')') return std::string_view::npos;
  // Python's float() rejects "1.2.3" or "."; A1111 then fails, here the text stays text.
  char* end = nullptr;
  *weight = std::strtod(value.c_str(), &end);
  if (end != value.c_str() + value.size()) return std::string_view::npos;
  return p + 1;
}

// re.split(r"\s*\bBREAK\b\s*", text): BREAK as a whole word, with the blanks around it (Python's, in any script).
void append_text(std::vector<EmphasisSpan>& out, std::string_view text) {
  size_t start = 0;
  for (size_t pos = text.find(kBreak); pos != std::string_view::npos; pos = text.find(kBreak, pos + 1)) {
    if (!python_text::whole_word_at(text, pos, kBreak.size())) continue;
    const size_t left = std::max(start, python_text::blanks_before(text, pos));
    out.push_back({std::string(text.substr(start, left - start)), 1.0, false});
    out.push_back({std::string(kBreak), -1.0, false});
    start = python_text::blanks_after(text, pos + kBreak.size());
  }
  out.push_back({std::string(text.substr(start)), 1.0, false});
}

}  // namespace

std::vector<EmphasisSpan> parse_emphasis(std::string_view text) {
  std::vector<EmphasisSpan> res;
  std::vector<size_t> round, square;
  const auto multiply_range = [&](size_t from, double multiplier) {
    for (size_t p = from; p < res.size(); ++p) res[p].weight *= multiplier;
  };
  size_t pos = 0;
  while (pos < text.size()) {
    const char c = text[pos];
    double weight = 0;
    size_t end = 0;
    if (c == '\\') {  // \( \) \[ \] \\ are the character itself; a lone backslash is dropped
      const bool escape = pos + 1 < text.size() && std::string_view("()[]\\").find(text[pos + 1]) != std::string::npos;
      res.push_back({escape ? std::string(1, text[pos + 1]) : std::string(), 1.0, false});
      pos += escape ? 2 : 1;
    } else if (c == '(') {
      round.push_back(res.size());
      ++pos;
    } else if (c == '[') {
      square.push_back(res.size());
      ++pos;
    } else if (c == ':' && (end = match_weight(text, pos, &weight)) != std::string_view::npos && !round.empty()) {
      multiply_range(round.back(), weight);
      round.pop_back();
      pos = end;
    } else if (c == ')' && !round.empty()) {
      multiply_range(round.back(), kRoundMultiplier);
      round.pop_back();
      ++pos;
    } else if (c == ']' && !square.empty()) {
      multiply_range(square.back(), kSquareMultiplier);
      square.pop_back();
      ++pos;
    } else {
      // A run of ordinary characters, or one bracket, colon or weight that closes nothing: text as written.
      size_t run = pos + 1;
      if (c == ':' && end != std::string_view::npos) run = end;  // a weight that closes nothing
      if (std::string_view("()[]:").find(c) == std::string::npos)
        while (run < text.size() && std::string_view("\\()[]:").find(text[run]) == std::string::npos) ++run;
      append_text(res, text.substr(pos, run - pos));
      pos = run;
    }
  }
  for (size_t from : round) multiply_range(from, kRoundMultiplier);
  for (size_t from : square) multiply_range(from, kSquareMultiplier);
  if (res.empty()) res.push_back({"", 1.0, false});
  // Neighbours of equal weight become one span. As in A1111 a BREAK is one only as a span "BREAK" of weight -1:
  // inside brackets its weight is multiplied too, and it is the word BREAK.
  std::vector<EmphasisSpan> merged;
  for (auto& span : res) {
    if (!merged.empty() && merged.back().weight == span.weight)
      merged.back().text += span.text;
    else
      merged.push_back(std::move(span));
  }
  for (auto& span : merged) span.is_break = span.text == kBreak && span.weight == -1.0;
  return merged;
}

bool fits_float32(double weight) { return std::abs(weight) <= std::numeric_limits<float>::max(); }

std::string format_weight(double weight) {
  std::ostringstream text;
  text << weight;
  return text.str();
}

Error emphasis_weight_error(const EmphasisSpan& span, std::string_view what) {
  const std::string quoted = span.text.size() > 40 ? span.text.substr(0, 40) + "..." : span.text;
  return Error(ErrorKind::Usage, std::string(what) + "'s emphasis weighs \"" + quoted + "\" by " +
                                     format_weight(span.weight) +
                                     ", beyond what float32 holds (a weight too large, or brackets nested too deep)");
}

void check_emphasis_weights(std::string_view text, std::string_view what) {
  for (const auto& span : parse_emphasis(text))
    if (!span.is_break && !fits_float32(span.weight) && span.text.find_first_not_of(" \t\r\n") != std::string::npos)
      throw emphasis_weight_error(span, what);
}

}  // namespace txt2img
