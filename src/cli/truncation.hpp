// Where a prompt stops fitting the text encoder, in words a user can find in the prompt.
#pragma once

#include <cstddef>
#include <string>

#include "txt2img/tokenizer.hpp"

namespace txt2img::cli {

struct Truncation {
  size_t total_tokens = 0;  // without the start and end tokens
  size_t kept_tokens = 0;
  std::string dropped;  // the first dropped words (as the tokenizer cleans them), "..." when more follow

  bool truncated() const { return kept_tokens < total_tokens; }
};

// `emphasis`: the text in A1111's emphasis syntax, whose brackets and weights are no tokens (GenerationParams).
Truncation find_truncation(const Tokenizer& tokenizer, const std::string& text, int context, bool emphasis);

// "is 82 tokens long; the model reads 75, so everything from "riding a horse ..." on is ignored".
std::string describe(const Truncation& truncation);

}  // namespace txt2img::cli
