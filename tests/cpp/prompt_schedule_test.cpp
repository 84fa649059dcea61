#include "txt2img/prompt_schedule.hpp"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

namespace {

// Every case of tests/fixtures/prompt_schedule_goldens.json: A1111's own parser on its doctests, everyday prompt
// editing and random (partly damaged) prompts, for first and hires passes.
TEST(PromptSchedule, MatchesA1111sParser) {
  std::ifstream in(TXT2IMG_PROMPT_SCHEDULE_GOLDENS);
  ASSERT_TRUE(in) << "missing " << TXT2IMG_PROMPT_SCHEDULE_GOLDENS;
  const auto goldens = nlohmann::json::parse(in);
  size_t cases = 0, edited = 0;
  for (const auto& c : goldens.at("cases")) {
    const auto prompt = c.at("prompt").get<std::string>();
    const auto schedule = txt2img::prompt_schedule(prompt, c.at("steps"), c.at("hires_steps"));
    std::vector<std::pair<int, std::string>> ours, theirs;
    for (const auto& entry : schedule) ours.emplace_back(entry.end_at_step, entry.text);
    for (const auto& entry : c.at("schedule")) theirs.emplace_back(entry.at(0), entry.at(1));
    EXPECT_EQ(ours, theirs) << "prompt \"" << prompt << "\", steps " << c.at("steps") << ", hires steps "
                            << c.at("hires_steps");
    ++cases;
    edited += theirs.size() > 1;
  }
  EXPECT_GT(cases, 700u);
  EXPECT_GT(edited, 250u);
}

TEST(ComposablePrompts, MatchA1111sSplit) {
  std::ifstream in(TXT2IMG_PROMPT_SCHEDULE_GOLDENS);
  const auto goldens = nlohmann::json::parse(in);
  ASSERT_GT(goldens.at("composable").size(), 50u);
  for (const auto& c : goldens.at("composable")) {
    std::vector<std::pair<std::string, double>> ours, theirs;
    for (const auto& p : txt2img::composable_prompts(c.at("prompt"))) ours.emplace_back(p.text, p.weight);
    for (const auto& p : c.at("prompts")) theirs.emplace_back(p.at(0), p.at(1));
    EXPECT_EQ(ours, theirs) << "prompt \"" << c.at("prompt").get<std::string>() << "\"";
  }
}

// A trailing weight's digits are Python's \d and float()'s: any script's decimal digits, by value (the expected splits
// are Python's re_weight of A1111's prompt_parser.py on these prompts); a fullwidth full stop is no decimal point.
TEST(ComposablePrompts, WeightsInAnyScriptsDigits) {
  using Split = std::vector<std::pair<std::string, double>>;
  auto split = [](const std::string& prompt) {
    Split out;
    for (const auto& p : txt2img::composable_prompts(prompt)) out.emplace_back(p.text, p.weight);
    return out;
  };
  EXPECT_EQ(split("a cat:１.５ AND a dog: ٢"), (Split{{"a cat", 1.5}, {" a dog", 2.0}}));
  EXPECT_EQ(split("a cat:-১.৫"), (Split{{"a cat", -1.5}}));
  EXPECT_EQ(split("a cat:１.５.５"), (Split{{"a cat:１.５.５", 1.0}}));
  EXPECT_EQ(split("a cat:²"), (Split{{"a cat:²", 1.0}}));
  EXPECT_EQ(split("a cat: ．５"), (Split{{"a cat: ．５", 1.0}}));
}

TEST(PromptSchedule, EachStepTakesTheFirstTextNotEndedBeforeIt) {
  // A1111 counts steps from 0 and ends a text after its step: "[a:b:3]" is "a" for steps 0 to 3.
  const auto schedule = txt2img::prompt_schedule("[a:b:3]", 10);
  ASSERT_EQ(schedule.size(), 2u);
  for (int step = 0; step < 10; ++step) EXPECT_EQ(txt2img::scheduled_index(schedule, step), step <= 3 ? 0u : 1u);
  // Past the last end (a sampler making more calls than its steps) the first text is taken again, as in A1111.
  EXPECT_EQ(txt2img::scheduled_index(schedule, 11), 0u);
  EXPECT_EQ(txt2img::prompt_schedule("a plain prompt", 10).size(), 1u);
}

std::string nested(const std::string& open, const std::string& inner, const std::string& close, int depth) {
  std::string out;
  for (int i = 0; i < depth; ++i) out += open;
  out += inner;
  for (int i = 0; i < depth; ++i) out += close;
  return out;
}

TEST(PromptSchedule, BracketsNestedElevenThousandDeepNeitherCrashNorHideTheEditInside) {
  // 11,000 levels overflowed the recursive parser's stack (a crash). Brackets deeper than 1,000 do not parse: the
  // outer ones are read as text, as A1111's grammar reads brackets that close nothing, and the edit inside still
  // counts.
  for (const auto& open : {"(", "["}) {
    const std::string close = open == std::string("(") ? ")" : "]";
    const auto schedule = txt2img::prompt_schedule(nested(open, "[a:b:3]", close, 11000), 10);
    ASSERT_EQ(schedule.size(), 2u) << open;
    EXPECT_EQ(schedule[0].text, nested(open, "a", close, 11000));
    EXPECT_EQ(schedule[1].text, nested(open, "b", close, 11000));
  }
}

}  // namespace
