// The prompts' side of a pipeline run: each U-Net row's texts over a pass, encoded, and the contexts and guidance
// of each step (Pipeline::TextConditioning, built by Pipeline::encode_prompts in text_conditioning.cpp).
#pragma once

#include <torch/script.h>

#include <map>
#include <set>
#include <utility>
#include <vector>

#include "txt2img/pipeline.hpp"

namespace txt2img {

// diffusers' rescale_noise_cfg: `guided` brought to the per-image standard deviation of `text` (unbiased, over
// channels and pixels), mixed with `guided` by `rescale`.
torch::Tensor rescale_guidance(const torch::Tensor& guided, const torch::Tensor& text, double rescale);

// Groups of rows ([rows, tokens, ...]) of different lengths, each padded to the longest by repeating its rows' last
// position (as A1111's reconstruct_multicond_batch pads prompts that take fewer chunks), one after another.
torch::Tensor cat_padded(std::vector<torch::Tensor> groups);

// A step's negative prompt and prompt contexts ([rows, tokens, hidden]) of different lengths brought to one, as
// A1111's CFGDenoiser.pad_cond_uncond (the shorter gets `empty`, the empty prompt's one chunk, as often as it is
// chunks short) and pad_cond_uncond_v0 (the negative prompts' last vector repeated, or cut to the prompts' length)
// do. Lengths that are no whole number of chunks apart stay apart, as A1111 then runs them.
std::pair<torch::Tensor, torch::Tensor> pad_conds(torch::Tensor negatives, torch::Tensor prompts,
                                                  GenerationParams::PadConds how, const torch::Tensor& empty);

// Each U-Net row's texts over a pass, encoded, and the contexts the rows read at each step of the pass.
class Pipeline::TextConditioning {
 public:
  // The prompt rows of a batch: the image each guides and its weight (A1111's composable diffusion gives an image
  // one row for each of its prompts).
  struct PromptRow {
    int64_t image;
    double weight;
  };
  // A row's prompt over the pass: its schedule, and for each entry the entry's text in `hidden`, which holds the
  // prompt's distinct texts ([texts, tokens, hidden]).
  struct Row {
    std::vector<ScheduledText> schedule;
    std::vector<int64_t> entry_texts;
    torch::Tensor hidden;
  };

  // `rows`: the negative prompt rows (`negative_rows` of them; none without guidance), then the prompt rows, which
  // `prompt_rows` describes in order. `empty`: the empty prompt's encoding ([1, tokens, hidden]) where `pad` needs it.
  TextConditioning(std::vector<Row> rows, size_t negative_rows, std::vector<PromptRow> prompt_rows,
                   GenerationParams::PadConds pad, torch::Tensor empty)
      : rows_(std::move(rows)),
        negative_rows_(negative_rows),
        prompt_rows_(std::move(prompt_rows)),
        pad_(pad),
        empty_(std::move(empty)) {
    std::map<int64_t, std::vector<int64_t>> image_rows;
    for (size_t row = 0; row < prompt_rows_.size(); ++row) {
      if (prompt_rows_[row].image == static_cast<int64_t>(first_rows_.size()))
        first_rows_.push_back(static_cast<int64_t>(row));
      one_row_each_ =
          one_row_each_ && prompt_rows_[row].image == static_cast<int64_t>(row) && prompt_rows_[row].weight == 1.0;
      image_rows[prompt_rows_[row].image].push_back(static_cast<int64_t>(row));
    }
    for (const auto& [image, its_rows] : image_rows)
      if (its_rows.size() == 1 && prompt_rows_[static_cast<size_t>(its_rows[0])].weight == 1.0)
        plain_rows_.emplace_back(image, its_rows[0]);
  }

  // The guided U-Net batch's samples: the images' for the negative prompt rows, then prompt_batch's.
  torch::Tensor guided_batch(const torch::Tensor& latents) { return torch::cat({latents, prompt_batch(latents)}); }

  // The samples of the prompt rows alone: each prompt row's image's.
  torch::Tensor prompt_batch(const torch::Tensor& latents) {
    if (one_row_each_) return latents;
    if (!row_images_.defined()) {
      std::vector<int64_t> images;
      for (const auto& row : prompt_rows_) images.push_back(row.image);
      row_images_ = torch::tensor(images).to(latents.device());
    }
    return latents.index_select(0, row_images_);
  }

  // The guided prediction from the guided batch's: diffusers' uncond + scale (cond - uncond) where each image has one
  // prompt row of weight 1; else, as A1111 adds composable prompts up, uncond plus (cond - uncond) (weight scale)
  // for each of the image's rows in turn. Then diffusers' guidance rescale, where `rescale` > 0; the text prediction
  // it measures is, for composable prompts, their sum at scale 1.
  torch::Tensor guide(const torch::Tensor& predicted, double scale, double rescale) const {
    const int64_t images = predicted.size(0) - static_cast<int64_t>(prompt_rows_.size());
    const auto uncond = predicted.slice(0, 0, images);
    if (one_row_each_) {
      const auto text = predicted.slice(0, images);
      const auto guided = uncond + scale * (text - uncond);
      return rescale > 0 ? rescale_guidance(guided, text, rescale) : guided;
    }
    const auto guided = add_rows(uncond, predicted, images, scale);
    if (rescale <= 0) return guided;
    // An image with one prompt row of weight 1 measures that row's prediction, as alone in its batch.
    auto text = add_rows(uncond, predicted, images, 1.0);
    for (const auto& [image, row] : plain_rows_) text[image] = predicted[images + row];
    return rescale_guidance(guided, text, rescale);
  }

  // The prediction from prompt_batch's alone, as A1111 guides a call that skips the negative prompt: each image's
  // first prompt row stands in for its negative prompt's, and the rows are added up at scale 1 (for an image of one
  // row of weight 1, that row's prediction).
  torch::Tensor guide_without_uncond(const torch::Tensor& predicted) {
    if (!first_row_indices_.defined()) first_row_indices_ = torch::tensor(first_rows_).to(predicted.device());
    return add_rows(predicted.index_select(0, first_row_indices_), predicted, 0, 1.0);
  }

  // The contexts of the U-Net calls at `step` of the pass (from 0), each [rows, tokens, hidden] for the batch's
  // rows in order, each row's text as A1111's reconstruct_cond_batch picks it: one call, or with guidance two (the
  // negative prompt rows, then the prompt rows) when the two read different numbers of tokens, as A1111 runs them
  // unless told to pad (GenerationParams::pad_conds). Within each, rows of fewer tokens are padded by repeating
  // their last vector. Each combination of texts is gathered once ([a|b] takes turns between two).
  const std::vector<torch::Tensor>& at(size_t step) {
    const auto texts = texts_at(step);
    auto& contexts = gathered_[texts];
    if (contexts.empty()) {
      const auto prompts = group(texts, negative_rows_, rows_.size());
      if (negative_rows_ == 0) {
        contexts = {prompts};
      } else {
        const auto negatives = group(texts, 0, negative_rows_);
        if (negatives.size(1) == prompts.size(1)) {
          contexts = {torch::cat({negatives, prompts})};
        } else if (auto [padded_negatives, padded_prompts] = pad_conds(negatives, prompts, pad_, empty_);
                   padded_negatives.size(1) == padded_prompts.size(1)) {
          contexts = {torch::cat({padded_negatives, padded_prompts})};
          padded_.insert(texts);
        } else {
          contexts = {negatives, prompts};
        }
      }
    }
    return contexts;
  }

  // Whether `at` padded the step's contexts to one call (A1111 records "Pad conds" where its last call did).
  bool padded_at(size_t step) {
    at(step);
    return padded_.count(texts_at(step)) > 0;
  }

  // The context of prompt_batch's U-Net call at `step`: the prompt rows' alone, padded among themselves as in `at`.
  const std::vector<torch::Tensor>& prompt_contexts_at(size_t step) {
    const auto texts = texts_at(step);
    auto& contexts = gathered_prompts_[texts];
    if (contexts.empty()) contexts = {group(texts, negative_rows_, rows_.size())};
    return contexts;
  }

 private:
  // `base` plus, for each prompt row in turn, (its prediction - base's for its image) (weight scale), as A1111 adds
  // composable prompts up; the prompt rows' predictions start at `first` in `predicted`.
  torch::Tensor add_rows(const torch::Tensor& base, const torch::Tensor& predicted, int64_t first, double scale) const {
    auto out = base.clone();
    for (size_t row = 0; row < prompt_rows_.size(); ++row) {
      const int64_t image = prompt_rows_[row].image;
      out[image] += (predicted[first + static_cast<int64_t>(row)] - base[image]) * (prompt_rows_[row].weight * scale);
    }
    return out;
  }

  // Rows `from` to `to` reading `texts`, as one context: rows of fewer tokens padded by repeating their last vector.
  torch::Tensor group(const std::vector<int64_t>& texts, size_t from, size_t to) const {
    std::vector<torch::Tensor> rows;
    for (size_t row = from; row < to; ++row) rows.push_back(rows_[row].hidden.narrow(0, texts[row], 1));
    return cat_padded(std::move(rows));
  }

  // Each row's text at `step`, an index into its `hidden`.
  std::vector<int64_t> texts_at(size_t step) const {
    std::vector<int64_t> texts;
    for (const auto& row : rows_)
      texts.push_back(row.entry_texts[scheduled_index(row.schedule, static_cast<int>(step))]);
    return texts;
  }

  std::vector<Row> rows_;
  size_t negative_rows_;
  std::vector<PromptRow> prompt_rows_;
  bool one_row_each_ = true;
  std::vector<std::pair<int64_t, int64_t>> plain_rows_;  // (image, its prompt row) for images of one row of weight 1
  std::vector<int64_t> first_rows_;                      // each image's first prompt row, in image order
  torch::Tensor first_row_indices_;  // first_rows_ on the device, made at the first guide_without_uncond
  GenerationParams::PadConds pad_;
  torch::Tensor empty_;
  torch::Tensor row_images_;  // the prompt rows' images, on the device
  std::map<std::vector<int64_t>, std::vector<torch::Tensor>> gathered_;
  std::map<std::vector<int64_t>, std::vector<torch::Tensor>> gathered_prompts_;  // prompt_contexts_at's
  std::set<std::vector<int64_t>> padded_;  // the combinations of texts whose contexts `at` padded
};

}  // namespace txt2img
