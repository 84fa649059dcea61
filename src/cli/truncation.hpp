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

// Of a text as Tokenizer::encode_traced reads it (with A1111's emphasis or without).
Truncation find_truncation(const Tokenizer::Traced& traced, int context);

// "is 82 tokens long; the model reads 75, so everything from "riding a horse ..." on is ignored".
std::string describe(const Truncation& truncation);

}  // namespace txt2img::cli
