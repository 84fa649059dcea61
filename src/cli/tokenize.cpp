// txt2img tokenize: the token ids the text encoder sees, and where a prompt is cut off.
#include <iostream>

#include "cli/commands.hpp"
#include "cli/prompt_source.hpp"
#include "cli/reporter.hpp"
#include "cli/truncation.hpp"
#include "txt2img/bundle.hpp"
#include "txt2img/lora_tags.hpp"
#include "txt2img/prompt_schedule.hpp"
#include "txt2img/tokenizer.hpp"

namespace txt2img::cli {
namespace {

// One text as the text encoder reads it: its ids, where they are cut off, how many chunks they take.
struct Tokenized {
  std::vector<int> ids;
  Truncation truncation;
  size_t chunks;
};

Tokenized tokenize(const Tokenizer& tokenizer, const Manifest& m, const std::string& text, bool emphasis,
                   bool long_prompts, std::string_view what) {
  const auto traced = tokenizer.encode_traced(text, emphasis, what);
  // With long prompts nothing is cut off; the text takes as many chunks as it needs.
  const Truncation t =
      long_prompts ? Truncation{traced.ids.size(), traced.ids.size(), ""} : find_truncation(traced, m.context_length);
  return {traced.ids, t, Tokenizer::chunks(traced, long_prompts, m.context_length, m.pad_id).size()};
}

nlohmann::json to_json(const std::string& text, const Tokenized& t) {
  nlohmann::json j = {{"prompt", text},
                      {"ids", t.ids},
                      {"tokens", t.truncation.total_tokens},
                      {"kept", t.truncation.kept_tokens},
                      {"truncated", t.truncation.truncated()},
                      {"chunks", t.chunks}};
  if (t.truncation.truncated()) j["dropped"] = t.truncation.dropped;
  return j;
}

// The human form: the ids on stdout, the count and any cut-off on stderr, `what` ("the prompt") naming the text.
void print(const std::string& what, const Tokenized& t, bool long_prompts, const Manifest& m) {
  for (size_t i = 0; i < t.ids.size(); ++i) std::cout << (i ? " " : "") << t.ids[i];
  std::cout << "\n";
  const std::string up_to = std::to_string(m.context_length - 2);
  std::cerr << what << ": " << t.ids.size() << (t.ids.size() == 1 ? " token" : " tokens")
            << (long_prompts ? " in " + std::to_string(t.chunks) + (t.chunks == 1 ? " chunk" : " chunks") +
                                   " of up to " + up_to + " (--long-prompts)"
                             : "; the model reads up to " + up_to)
            << "\n";
  if (t.truncation.truncated()) Reporter(false, false).warn(what + " " + describe(t.truncation));
}

}  // namespace

int run_tokenize(const TokenizeOptions& o) {
  if (o.negative_prompt) require_utf8(*o.negative_prompt, "the negative prompt");
  PromptSource source = o.prompt ? PromptSource::argument(*o.prompt) : PromptSource::file(o.from_file);
  const Bundle bundle = Bundle::open(o.model);
  const Manifest& m = bundle.manifest();
  const Tokenizer tokenizer = bundle.load_tokenizer();
  const bool json = o.json || source.is_file();

  // A negative prompt is shown where one is given, by -n or by the line.
  const auto negative_of = [&](const PromptEntry& entry) {
    return entry.negative_prompt ? entry.negative_prompt : o.negative_prompt;
  };
  // The text encoder reads the prompt without its LoRA tags, which generating takes out (and refuses in a negative
  // prompt).
  const auto model_prompt_of = [&](const PromptEntry& entry) {
    try {
      return parse_lora_tags(entry.prompt, negative_of(entry).value_or("")).text;
    } catch (const Error& e) {
      throw Error(e.kind(), source.where(entry.line) + ": " + e.what());
    }
  };
  // As generating does, the whole file is read first, so that a bad line leaves nothing printed.
  PromptEntry entry;
  while (source.next(entry)) model_prompt_of(entry);
  source.rewind();
  while (source.next(entry)) {
    // A JSON line's own settings, as generating reads it.
    const bool emphasis = entry.emphasis.value_or(o.emphasis || !o.emphasis_mode.empty());
    // Emphasis mode none reads prompt editing and AND but not the brackets (GenerationParams::parses_emphasis).
    const bool brackets = emphasis && o.emphasis_mode != "none";
    const bool long_prompts = entry.long_prompts.value_or(o.long_prompts);
    const auto negative_text = negative_of(entry);
    const std::string model_prompt = model_prompt_of(entry);
    const Tokenized prompt = tokenize(tokenizer, m, model_prompt, brackets, long_prompts, "the prompt");
    std::optional<Tokenized> negative;
    if (negative_text) negative = tokenize(tokenizer, m, *negative_text, brackets, long_prompts, "the negative prompt");
    if (json) {
      auto j = to_json(entry.prompt, prompt);
      if (source.is_file()) j["line"] = entry.line;
      if (negative) j["negative_prompt"] = to_json(*negative_text, *negative);
      std::cout << j.dump() << "\n";
    } else {
      print("the prompt", prompt, long_prompts, m);
      if (negative) print("the negative prompt", *negative, long_prompts, m);
    }
    Reporter warnings(false, false);
    const auto chunks = [](size_t n) { return std::to_string(n) + (n == 1 ? " chunk" : " chunks"); };
    if (negative && long_prompts && negative->chunks != prompt.chunks)
      warnings.warn("the prompt takes " + chunks(prompt.chunks) + " and the negative prompt " +
                    chunks(negative->chunks) +
                    ": with guidance they go through the U-Net in two calls, as A1111 runs them (--pad-conds or "
                    "--pad-conds-v0 pad them to one call, as A1111's options do)");
    // The texts of a schedule depend on the steps, which tokenize does not know.
    for (const auto& [what, text] : {std::pair<std::string, const std::string*>{"the prompt", &model_prompt},
                                     {"the negative prompt", negative_text ? &*negative_text : nullptr}}) {
      if (!emphasis || !text) continue;
      const auto schedule = prompt_schedule(*text, 1000);
      if (schedule.size() > 1 || schedule[0].text != *text)
        warnings.warn(what +
                      " uses A1111's prompt editing ([from:to:when], [a|b]): these are the ids of the text as "
                      "written; generating reads the texts of its schedule (\"" +
                      schedule[0].text + "\" first)");
    }
    const auto composable = emphasis ? composable_prompts(model_prompt) : std::vector<WeightedPrompt>();
    if (composable.size() > 1)
      warnings.warn(
          "the prompt has AND (A1111's composable diffusion): these are the ids of the whole text; with "
          "guidance, generating encodes each of its " +
          std::to_string(composable.size()) + " prompts on its own");
  }
  std::cout << std::flush;
  return 0;
}

}  // namespace txt2img::cli
