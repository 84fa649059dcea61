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
  // The words as written: CLIP's pre-tokens (which split punctuation, contractions and every digit off) joined where
  // no blank parted them ("detailed, very", "fox's", "1.5", "4k").
  size_t i = first;
  for (size_t shown = 0; i < words.size(); ++i) {
    if (i > first && traced.word_spaced[i]) {
      if (++shown == kDroppedWordsShown) break;
      t.dropped += ' ';
    }
    t.dropped += words[i];
  }
  if (i < words.size()) t.dropped += " ...";
  return t;
}

std::string describe(const Truncation& t) {
  return "is " + std::to_string(t.total_tokens) + " tokens long; the model reads " + std::to_string(t.kept_tokens) +
         ", so everything from \"" + t.dropped + "\" on is ignored";
}

}  // namespace txt2img::cli
