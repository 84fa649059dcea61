#include "cli/truncation.hpp"

#include <algorithm>
#include <cctype>
#include <vector>

namespace txt2img::cli {
namespace {

constexpr size_t kDroppedWordsShown = 6;

}  // namespace

Truncation find_truncation(const Tokenizer::Traced& traced, int context) {
  Truncation t{traced.ids.size(), std::min(traced.ids.size(), static_cast<size_t>(context - 2)), ""};
  if (!t.truncated()) return t;
  // The word holding the first id past the limit is where the text stops counting.
  const auto& words = traced.word_texts;
  const size_t first = traced.words[t.kept_tokens];
  // CLIP's pre-tokens split punctuation, contractions and every digit off their word; they are joined back as
  // usually written ("detailed, very", "fox's", "1.5", "2024").
  const auto closes = [](const std::string& word) {
    return !word.empty() && std::string(",.;:!?)]}'").find(word.front()) != std::string::npos;
  };
  const auto opens = [](const std::string& word) {
    return !word.empty() && std::string("([{").find(word.back()) != std::string::npos;
  };
  const auto digit = [](const std::string& word) {
    return word.size() == 1 && std::isdigit(static_cast<unsigned char>(word[0]));
  };
  for (size_t i = first; i < words.size() && i < first + kDroppedWordsShown; ++i) {
    const bool joined = i > first && (closes(words[i]) || opens(words[i - 1]) ||
                                      (digit(words[i]) && (digit(words[i - 1]) || (i >= 2 && words[i - 1] == "." &&
                                                                                   digit(words[i - 2])))));
    t.dropped += (i > first && !joined ? " " : "") + words[i];
  }
  if (first + kDroppedWordsShown < words.size()) t.dropped += " ...";
  return t;
}

std::string describe(const Truncation& t) {
  return "is " + std::to_string(t.total_tokens) + " tokens long; the model reads " + std::to_string(t.kept_tokens) +
         ", so everything from \"" + t.dropped + "\" on is ignored";
}

}  // namespace txt2img::cli
