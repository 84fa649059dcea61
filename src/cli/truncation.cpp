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
  // The word holding the first id past the limit is where the text stops counting.
  const std::vector<std::string> words = pre_tokenize(clean_text(text));
  const size_t first = tokenizer.encode_traced(text).words[t.kept_tokens];
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
