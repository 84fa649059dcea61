// txt2img tokenize: the token ids the text encoder sees, and where a prompt is cut off.
#include <iostream>

#include "cli/commands.hpp"
#include "cli/prompt_source.hpp"
#include "cli/reporter.hpp"
#include "cli/truncation.hpp"
#include "txt2img/bundle.hpp"
#include "txt2img/prompt_schedule.hpp"
#include "txt2img/tokenizer.hpp"

namespace txt2img::cli {

int run_tokenize(const TokenizeOptions& o) {
  PromptSource source = o.prompt ? PromptSource::argument(*o.prompt) : PromptSource::file(o.from_file);
  const Bundle bundle = Bundle::open(o.model);
  const Manifest& m = bundle.manifest();
  const Tokenizer tokenizer = bundle.load_tokenizer();
  const bool json = o.json || source.is_file();

  // As generating does, the whole file is read first, so that a bad line leaves nothing printed.
  PromptEntry entry;
  while (source.next(entry)) {
  }
  source.rewind();
  while (source.next(entry)) {
    // A JSON line's own settings, as generating reads it.
    const bool emphasis = entry.emphasis.value_or(o.emphasis);
    const bool long_prompts = entry.long_prompts.value_or(o.long_prompts);
    const auto traced = tokenizer.encode_traced(entry.prompt, emphasis);
    const std::vector<int>& ids = traced.ids;
    // With long prompts nothing is cut off; the text takes as many chunks as it needs.
    const Truncation t =
        long_prompts ? Truncation{ids.size(), ids.size(), ""} : find_truncation(traced, m.context_length);
    const size_t chunks = Tokenizer::chunks(traced, long_prompts, m.context_length, m.pad_id).size();
    if (json) {
      nlohmann::json j = {{"prompt", entry.prompt},     {"ids", ids},       {"tokens", t.total_tokens},
                          {"kept", t.kept_tokens},       {"truncated", t.truncated()}, {"chunks", chunks}};
      if (source.is_file()) j["line"] = entry.line;
      if (t.truncated()) j["dropped"] = t.dropped;
      std::cout << j.dump() << "\n";
    } else {
      for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
      std::cout << "\n";
      const std::string up_to = std::to_string(m.context_length - 2);
      std::cerr << ids.size() << " tokens"
                << (long_prompts ? " in " + std::to_string(chunks) + (chunks == 1 ? " chunk" : " chunks") +
                                       " of up to " + up_to + " (--long-prompts)"
                                 : "; the model reads up to " + up_to)
                << "\n";
      if (t.truncated()) Reporter(false, false).warn("the prompt " + describe(t));
    }
    // The texts of a schedule depend on the steps, which tokenize does not know.
    const auto schedule = emphasis ? prompt_schedule(entry.prompt, 1000) : std::vector<ScheduledText>();
    Reporter warnings(false, false);
    if (emphasis && (schedule.size() > 1 || schedule[0].text != entry.prompt))
      warnings.warn(
          "the prompt uses A1111's prompt editing ([from:to:when], [a|b]): these are the ids of the text as "
          "written; generating reads the texts of its schedule (\"" +
          schedule[0].text + "\" first)");
    const auto composable = emphasis ? composable_prompts(entry.prompt) : std::vector<WeightedPrompt>();
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
