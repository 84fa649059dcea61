// AUTOMATIC1111's prompt editing: "[from:to:when]" changes the text after step `when`, "[to:when]" adds it then,
// "[from::when]" removes it then, and "[a|b|c]" alternates every step. A prompt becomes the texts it reads and the
// last step of each, as A1111's get_learned_conditioning_prompt_schedules makes them.
#pragma once

#include <string>
#include <vector>

namespace txt2img {

struct ScheduledText {
  int end_at_step;  // the text conditions the sampler's steps up to and including this one (counted from 0)
  std::string text;
};

// The schedule of `prompt` over `steps` sampling steps: when numbers with a "." are fractions of the steps (0.25:
// after a quarter), others step numbers. For a hires pass give the first pass's steps and the pass's own
// `hires_steps` (> 0): step numbers then count on from the first pass, and fractions from 1 to 2 cover the hires
// pass. A prompt that is not in the syntax (an unmatched bracket, a "|" outside brackets) is one text, unchanged.
// The texts keep emphasis brackets, which are read afterwards.
std::vector<ScheduledText> prompt_schedule(const std::string& prompt, int steps, int hires_steps = 0);

// A1111's composable diffusion: a prompt split at the word AND into prompts, each guiding the image by its weight
// (a trailing ":1.5"; 1 without), as A1111's get_multicond_prompt_list splits it. A prompt without AND is one
// prompt, still with its weight.
struct WeightedPrompt {
  std::string text;
  double weight;
};
std::vector<WeightedPrompt> composable_prompts(const std::string& prompt);
// Whether composable_prompts makes more of the prompt than itself: it has AND, or a trailing weight other than 1.
bool is_composable(const std::string& prompt);
// Throws Error(Usage) where a prompt's guidance weight times `cfg_scale` is past float32 (fits_float32).
void check_guidance_weights(const std::vector<WeightedPrompt>& prompts, double cfg_scale);

// Which entry of a schedule conditions step `step` (from 0), as A1111's reconstruct_cond_batch picks it: the first
// whose end_at_step is not before it, else the first.
size_t scheduled_index(const std::vector<ScheduledText>& schedule, int step);

}  // namespace txt2img
