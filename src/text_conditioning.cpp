#include "text_conditioning.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "pipeline_parts.hpp"
#include "txt2img/error.hpp"

namespace txt2img {
namespace {

// [rows, tokens, ...] padded to `tokens` along dim 1 by repeating each row's last position, as A1111's
// reconstruct_multicond_batch pads the conditioning of prompts that take fewer chunks.
torch::Tensor pad_by_repeating_last(const torch::Tensor& rows, int64_t tokens) {
  const int64_t missing = tokens - rows.size(1);
  if (missing == 0) return rows;
  auto last = rows.narrow(1, rows.size(1) - 1, 1);
  std::vector<int64_t> repeated(last.sizes().begin(), last.sizes().end());
  repeated[1] = missing;
  return torch::cat({rows, last.expand(repeated)}, 1);
}

}  // namespace

torch::Tensor rescale_guidance(const torch::Tensor& guided, const torch::Tensor& text, double rescale) {
  const auto std_text = text.std({1, 2, 3}, /*unbiased=*/true, /*keepdim=*/true);
  const auto std_guided = guided.std({1, 2, 3}, /*unbiased=*/true, /*keepdim=*/true);
  return rescale * (guided * (std_text / std_guided)) + (1 - rescale) * guided;
}

torch::Tensor cat_padded(std::vector<torch::Tensor> groups) {
  int64_t tokens = 0;
  for (const auto& group : groups) tokens = std::max(tokens, group.size(1));
  for (auto& group : groups) group = pad_by_repeating_last(group, tokens);
  return torch::cat(groups);
}

std::pair<torch::Tensor, torch::Tensor> pad_conds(torch::Tensor negatives, torch::Tensor prompts,
                                                  GenerationParams::PadConds how, const torch::Tensor& empty) {
  if (how == GenerationParams::PadConds::Off) return {std::move(negatives), std::move(prompts)};
  if (how == GenerationParams::PadConds::LastVector) {
    negatives = negatives.size(1) < prompts.size(1) ? pad_by_repeating_last(negatives, prompts.size(1))
                                                    : negatives.narrow(1, 0, prompts.size(1));
  } else {
    auto& shorter = negatives.size(1) < prompts.size(1) ? negatives : prompts;
    const int64_t chunks = std::abs(prompts.size(1) - negatives.size(1)) / empty.size(1);
    shorter = torch::cat({shorter, empty.repeat({shorter.size(0), chunks, 1})}, 1);
  }
  return {std::move(negatives), std::move(prompts)};
}

std::vector<Tokenizer::Chunk> Pipeline::token_chunks(const std::string& text, const GenerationParams& params,
                                                     bool negative) const {
  return Tokenizer::chunks(
      tokenizer_.encode_traced(text, params.parses_emphasis(), negative ? "the negative prompt" : "the prompt"),
      params.long_prompts, manifest_.context_length, manifest_.pad_id);
}

// The texts a prompt reads over a pass: its schedule in A1111's prompt-editing syntax where params.emphasis reads
// A1111's syntax, else itself throughout. A1111 counts a pass's steps for it in U-Net calls, as many as the sampler's
// steps, twice as many for the second-order ones (Heun, DPM2, DPM2 a, DPM++ 2S a); a hires pass's schedule continues
// the first pass's.
std::vector<ScheduledText> Pipeline::schedule_of(const Manifest& manifest, const std::string& prompt,
                                                 const GenerationParams& params, Pass pass) {
  const auto editing_steps = [&](const GenerationParams& pass_params, int steps) {
    return static_cast<int>(make_sampler(manifest, pass_params, steps)->calls_per_step()) * steps;
  };
  const int first_steps = editing_steps(params, params.steps);
  if (!params.emphasis) return {{first_steps, prompt}};
  if (pass == Pass::First) return prompt_schedule(prompt, first_steps);
  const auto hires = hires_pass(params);
  return prompt_schedule(prompt, first_steps, editing_steps(hires, params.hires_steps()));
}

std::vector<WeightedPrompt> Pipeline::row_prompts(const Manifest& manifest, const std::string& prompt,
                                                  const GenerationParams& params) {
  if (!params.emphasis || !classifier_free_guidance(manifest, params, prompt)) return {{prompt, 1.0}};
  auto rows = composable_prompts(prompt);
  check_guidance_weights(rows, params.cfg_scale);
  return rows;
}

bool Pipeline::hires_reads_other_texts(const std::vector<std::string>& prompts,
                                       const std::vector<std::string>& negative_prompts, const GenerationParams& params,
                                       bool guided) const {
  if (!params.emphasis) return false;
  std::vector<std::string> rows;
  if (guided) rows = negative_prompts;
  for (const auto& prompt : prompts)
    for (auto& row : row_prompts(manifest_, prompt, params)) rows.push_back(std::move(row.text));
  for (const auto& row : rows) {
    const auto first = schedule_of(manifest_, row, params, Pass::First);
    const auto hires = schedule_of(manifest_, row, params, Pass::Hires);
    if (first.size() > 1 || hires.size() > 1 || first[0].text != hires[0].text) return true;
  }
  return false;
}

// The distinct texts of one pass that a prompt (each of its row_prompts) or a negative prompt makes the text encoder
// read, appended to `texts`.
void Pipeline::add_pass_texts(const Manifest& manifest, const std::string& text, bool negative,
                              const GenerationParams& params, Pass pass, std::vector<std::string>& texts) {
  for (const auto& row : negative ? std::vector<WeightedPrompt>{{text, 1.0}} : row_prompts(manifest, text, params))
    for (auto& entry : schedule_of(manifest, row.text, params, pass))
      if (std::find(texts.begin(), texts.end(), entry.text) == texts.end()) texts.push_back(std::move(entry.text));
}

std::vector<Pipeline::TextChunks> Pipeline::text_chunks(const std::string& prompt, const std::string& negative_prompt,
                                                        const GenerationParams& params) const {
  const auto most_chunks = [&](const std::string& text, bool negative, Pass pass) {
    std::vector<std::string> texts;
    add_pass_texts(manifest_, text, negative, params, pass, texts);
    size_t chunks = 0;
    for (const auto& read : texts)
      chunks = std::max(chunks, params.long_prompts ? token_chunks(read, params, negative).size() : 1);
    return chunks;
  };
  const bool guided = classifier_free_guidance(manifest_, params, prompt);
  std::vector<TextChunks> passes;
  for (Pass pass : {Pass::First, Pass::Hires}) {
    if (pass == Pass::Hires && !params.hires.enabled()) break;
    passes.push_back({most_chunks(prompt, false, pass), guided ? most_chunks(negative_prompt, true, pass) : 0});
  }
  return passes;
}

Pipeline::TextsRead Pipeline::texts_read(const Manifest& manifest, const std::string& prompt,
                                         const std::string& negative_prompt, const GenerationParams& params) {
  TextsRead texts;
  const bool guided = classifier_free_guidance(manifest, params, prompt);
  for (Pass pass : {Pass::First, Pass::Hires}) {
    if (pass == Pass::Hires && !params.hires.enabled()) break;
    add_pass_texts(manifest, prompt, false, params, pass, texts.prompt);
    if (guided) add_pass_texts(manifest, negative_prompt, true, params, pass, texts.negative_prompt);
  }
  return texts;
}

// With classifier-free guidance the negative prompts' rows come first ([uncond, cond]). Each prompt (a negative
// prompt, a composable prompt) is encoded as A1111 encodes one: the distinct texts of its schedule in the pass, all
// with as many chunks as the longest of them takes. Observed: each group's texts as the text encoder gave
// them, "text/..." for the prompts', "uncond_text/..." for the negative prompts' (with "hires/" before them in the
// hires pass), padded as `at` pads a group (the input ids too, their last id repeated).
Pipeline::TextConditioning Pipeline::encode_prompts(const std::vector<std::string>& prompts,
                                                    const std::vector<std::string>& negative_prompts,
                                                    const GenerationParams& params, bool guided, Pass pass,
                                                    Observer* observer) {
  std::vector<TextConditioning::Row> rows;
  std::vector<TextConditioning::PromptRow> prompt_rows;
  // The rows of each group: the negative prompts (with guidance), then the images' prompt rows.
  std::vector<std::string> group_rows[2];
  if (guided) group_rows[0] = negative_prompts;
  for (size_t image = 0; image < prompts.size(); ++image)
    for (auto& prompt : row_prompts(manifest_, prompts[image], params)) {
      group_rows[1].push_back(std::move(prompt.text));
      prompt_rows.push_back({static_cast<int64_t>(image), prompt.weight});
    }
  // Each prompt's row, with its texts as the text encoder gave them (for the observer).
  std::map<std::string, std::pair<TextConditioning::Row, EncodedTexts>> encoded;
  const std::string prefix = pass == Pass::First ? "" : "hires/";
  for (int group : {0, 1}) {
    std::vector<torch::Tensor> ids, hidden;
    for (const auto& prompt : group_rows[group]) {
      auto& [row, texts] = encoded[prompt];
      if (!row.hidden.defined()) {
        row.schedule = schedule_of(manifest_, prompt, params, pass);
        std::vector<std::string> seen;
        std::vector<int64_t> uses;  // how many of the schedule's entries read each text
        std::vector<std::vector<Tokenizer::Chunk>> chunks;
        for (const auto& entry : row.schedule) {
          const auto found = std::find(seen.begin(), seen.end(), entry.text);
          row.entry_texts.push_back(found - seen.begin());
          if (found != seen.end()) {
            ++uses[static_cast<size_t>(found - seen.begin())];
            continue;
          }
          seen.push_back(entry.text);
          uses.push_back(1);
          chunks.push_back(token_chunks(entry.text, params, group == 0));
        }
        texts = encode_texts(std::move(chunks), uses, params);
        row.hidden = texts.hidden.to(options_.device, options_.dtype);
      }
      rows.push_back(row);
      ids.push_back(texts.input_ids);
      hidden.push_back(texts.hidden);
    }
    if (!observer || ids.empty()) continue;
    const auto name = prefix + (group == 0 ? "uncond_text" : "text");
    observe(observer, name + "/input_ids", cat_padded(std::move(ids)));
    observe(observer, name + (params.clip_skip == 1 ? "/last_hidden_state" : "/clip_skip_hidden_state"),
            cat_padded(std::move(hidden)));
  }
  const bool pads_with_empty = guided && params.pad_conds == GenerationParams::PadConds::EmptyChunks;
  return TextConditioning(std::move(rows), group_rows[0].size(), std::move(prompt_rows), params.pad_conds,
                          pads_with_empty ? empty_prompts_.at(params.clip_skip) : torch::Tensor());
}

// Texts encoded as A1111 encodes one prompt's: each text's chunks, padded with empty ones to the most any text has,
// encoded as one text-encoder batch and laid end to end (A1111's long prompts; one chunk is diffusers' encoding).
// With emphasis each chunk's embeddings are scaled by their tokens' weights and (its Original mode) then rescaled to
// their former mean, as A1111's emphasis does: the mean over the chunk, at its position, of every text the prompt's
// schedule reads (`uses`: how many of its entries read each text).
Pipeline::EncodedTexts Pipeline::encode_texts(std::vector<std::vector<Tokenizer::Chunk>> texts,
                                              const std::vector<int64_t>& uses, const GenerationParams& params) {
  const Tokenizer::Chunk empty = {tokenizer_.encode_padded("", manifest_.context_length, manifest_.pad_id),
                                  std::vector<double>(static_cast<size_t>(manifest_.context_length), 1.0)};
  size_t chunks = 1;
  for (const auto& text : texts) chunks = std::max(chunks, text.size());
  std::vector<int64_t> ids;
  std::vector<double> weights;
  for (auto& padded : texts) {
    padded.resize(chunks, empty);
    for (const auto& chunk : padded) {
      ids.insert(ids.end(), chunk.ids.begin(), chunk.ids.end());
      weights.insert(weights.end(), chunk.weights.begin(), chunk.weights.end());
    }
  }
  const auto rows = static_cast<int64_t>(texts.size());
  auto input_ids = torch::tensor(ids, torch::kInt64).view({rows, -1});
  const auto per_chunk = input_ids.view({rows * static_cast<int64_t>(chunks), -1}).to(side_device(options_));
  // The last layer through `forward`, as before --clip-skip existed (and as the reference fixtures name it).
  auto hidden = (params.clip_skip == 1 ? text_encoder_.forward({per_chunk})
                                       : text_encoder_.run_method("encode", per_chunk, int64_t{params.clip_skip}))
                    .toTensor();
  if (params.parses_emphasis() && params.emphasis_mode != GenerationParams::EmphasisMode::Ignore) {
    // In float32 whatever the text encoder's dtype, as A1111's float32 multipliers make it: fp16 would turn weights
    // above 65504 into infinities, and round each text's mean before they are added up.
    // [texts, chunks, tokens, hidden]; the means are per chunk position, over the texts as often as they are read.
    hidden = hidden.to(torch::kFloat32).view({rows, static_cast<int64_t>(chunks), hidden.size(1), hidden.size(2)});
    const auto read = torch::tensor(uses, torch::kFloat32).to(hidden.device()).view({rows, 1, 1, 1});
    const auto mean = [&](const torch::Tensor& z) {
      return (z.mean({2, 3}, /*keepdim=*/true) * read).sum(0, /*keepdim=*/true) / read.sum();
    };
    const auto before = mean(hidden);
    const auto scale = torch::tensor(weights, torch::kFloat64).view({rows, static_cast<int64_t>(chunks), -1, 1});
    hidden = hidden * scale.to(hidden.device(), torch::kFloat32);
    if (params.emphasis_mode == GenerationParams::EmphasisMode::Original) {
      // A chunk whose mean is 0 keeps its scale (A1111 would divide by zero).
      const auto ratio = before / mean(hidden);
      hidden = hidden * torch::where(torch::isfinite(ratio), ratio, torch::ones_like(ratio));
    }
  }
  return {std::move(input_ids), hidden.reshape({rows, -1, hidden.size(-1)})};
}

}  // namespace txt2img
