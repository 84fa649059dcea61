#include "cli/truncation.hpp"

#include <vector>

namespace txt2img::cli {
namespace {

constexpr size_t kDroppedWordsShown = 6;

}  // namespace

Truncation find_truncation(const Tokenizer& tokenizer, const std::string& text, int context, int pad_id) {
  const auto padded = tokenizer.encode_padded(text, context, pad_id);
  Truncation t{padded.total_tokens, padded.kept_tokens, ""};
  if (!t.truncated()) return t;
  // CLIP's BPE never merges across pre-tokens, so the ids of the whole text are the pre-tokens' ids in a row: the
  // pre-token holding the first id past the limit is where the text stops counting.
  const std::vector<std::string> words = pre_tokenize(clean_text(text));
  size_t tokens = 0;
  size_t first = words.size();
  for (size_t i = 0; i < words.size(); ++i) {
    tokens += tokenizer.encode(words[i]).size();
    if (tokens > t.kept_tokens) {
      first = i;
      break;
    }
  }
  for (size_t i = first; i < words.size() && i < first + kDroppedWordsShown; ++i)
    t.dropped += (i > first ? " " : "") + words[i];
  if (first + kDroppedWordsShown < words.size()) t.dropped += " ...";
  return t;
}

std::string describe(const Truncation& t) {
  return "is " + std::to_string(t.total_tokens) + " tokens long; the model reads " + std::to_string(t.kept_tokens) +
         ", so everything from \"" + t.dropped + "\" on is ignored";
}

}  // namespace txt2img::cli
