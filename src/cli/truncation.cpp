#include "cli/truncation.hpp"

#include <algorithm>
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
  // CLIP's pre-tokens split punctuation off its word; it is joined back as written ("detailed, very").
  const auto closes = [](const std::string& word) {
    return !word.empty() && std::string(",.;:!?)]}").find(word.front()) != std::string::npos;
  };
  const auto opens = [](const std::string& word) {
    return !word.empty() && std::string("([{").find(word.back()) != std::string::npos;
  };
  for (size_t i = first; i < words.size() && i < first + kDroppedWordsShown; ++i)
    t.dropped += (i > first && !closes(words[i]) && !opens(words[i - 1]) ? " " : "") + words[i];
  if (first + kDroppedWordsShown < words.size()) t.dropped += " ...";
  return t;
}

std::string describe(const Truncation& t) {
  return "is " + std::to_string(t.total_tokens) + " tokens long; the model reads " + std::to_string(t.kept_tokens) +
         ", so everything from \"" + t.dropped + "\" on is ignored";
}

}  // namespace txt2img::cli
