#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "txt2img/tokenizer.hpp"

namespace {

using Spans = std::vector<std::pair<std::string, double>>;

Spans spans(const std::string& text) {
  Spans out;
  for (const auto& span : txt2img::parse_emphasis(text)) {
    EXPECT_EQ(span.is_break, span.text == "BREAK" && span.weight == -1) << text;
    out.emplace_back(span.text, span.weight);
  }
  return out;
}

// The examples of A1111's parse_prompt_attention docstring, with its exact doubles.
TEST(Emphasis, MatchesA1111sExamples) {
  EXPECT_EQ(spans("normal text"), (Spans{{"normal text", 1.0}}));
  EXPECT_EQ(spans("an (important) word"), (Spans{{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}}));
  EXPECT_EQ(spans("(unbalanced"), (Spans{{"unbalanced", 1.1}}));
  EXPECT_EQ(spans("\\(literal\\]"), (Spans{{"(literal]", 1.0}}));
  EXPECT_EQ(spans("(unnecessary)(parens)"), (Spans{{"unnecessaryparens", 1.1}}));
  EXPECT_EQ(spans("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            (Spans{{"a ", 1.0},
                   {"house", 1.5730000000000004},
                   {" ", 1.1},
                   {"on", 1.0},
                   {" a ", 1.1},
                   {"hill", 0.55},
                   {", sun, ", 1.1},
                   {"sky", 1.4641000000000006},
                   {".", 1.1}}));
}

TEST(Emphasis, BracketsThatCloseNothingAndColonsAreText) {
  EXPECT_EQ(spans("a) b] c:d :1.5) e"), (Spans{{"a) b] c:d :1.5) e", 1.0}}));
  EXPECT_EQ(spans("[down"), (Spans{{"down", 1 / 1.1}}));
  EXPECT_EQ(spans("(x: 0.5 )"), (Spans{{"x", 0.5}}));          // blanks around the weight
  EXPECT_EQ(spans("(x:1.2.3)"), (Spans{{"x:1.2.3", 1.1}}));  // not a number (A1111 fails): text, ")" closes
  EXPECT_EQ(spans("a\\b \\\\"), (Spans{{"ab \\", 1.0}}));      // a lone backslash is dropped
  EXPECT_EQ(spans(""), (Spans{{"", 1.0}}));
}

TEST(Emphasis, BreakSplitsAtWholeWords) {
  EXPECT_EQ(spans("a cat  BREAK a dog"), (Spans{{"a cat", 1.0}, {"BREAK", -1.0}, {"a dog", 1.0}}));
  EXPECT_EQ(spans("BREAKFAST, BREAKs"), (Spans{{"BREAKFAST, BREAKs", 1.0}}));
  // Inside brackets A1111 multiplies a BREAK's weight too, which makes it the word "BREAK" (weight -1.1).
  EXPECT_EQ(spans("(red BREAK blue)"), (Spans{{"red", 1.1}, {"BREAK", -1.1}, {"blue", 1.1}}));
  // Word characters and blanks are Python's in any script: a letter next to BREAK keeps it in the word.
  EXPECT_EQ(spans("猫BREAK犬"), (Spans{{"猫BREAK犬", 1.0}}));
  EXPECT_EQ(spans("éBREAK b"), (Spans{{"éBREAK b", 1.0}}));
  EXPECT_EQ(spans("a\u3000BREAK\u3000b"), (Spans{{"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0}}));
  EXPECT_EQ(spans("(x:\u30001.5\u3000)"), (Spans{{"x", 1.5}}));
}

// A weight's digits are Python's \d and float()'s: a decimal digit of any script counts by its value.
TEST(Emphasis, WeightsInAnyScriptsDigits) {
  EXPECT_EQ(spans("(cat:１.５)"), (Spans{{"cat", 1.5}}));  // fullwidth
  EXPECT_EQ(spans("(cat: ٢)"), (Spans{{"cat", 2.0}}));     // Arabic-Indic
  EXPECT_EQ(spans("(cat:-১.৫)"), (Spans{{"cat", -1.5}}));  // Bengali
  EXPECT_EQ(spans("(cat:+.５)"), (Spans{{"cat", 0.5}}));
  // Other numbers are no digits: a superscript two or a Roman numeral leaves the weight as text.
  EXPECT_EQ(spans("(cat:²)"), (Spans{{"cat:²", 1.1}}));
  EXPECT_EQ(spans("(cat:Ⅱ)"), (Spans{{"cat:Ⅱ", 1.1}}));
}

}  // namespace
