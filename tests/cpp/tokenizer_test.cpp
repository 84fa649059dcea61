#include "txt2img/tokenizer.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "clip_text.hpp"
#include "txt2img/error.hpp"

namespace {

using txt2img::clean_text;
using txt2img::pre_tokenize;
using txt2img::Tokenizer;

std::filesystem::path env_path(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) throw std::runtime_error(std::string(name) + " is not set (run the tests through ctest)");
  return value;
}

const Tokenizer& tokenizer() {
  static const Tokenizer t = Tokenizer::load(env_path("TXT2IMG_FIXTURES") / "tokenizer.model");
  return t;
}

std::vector<int> ids_of(const std::string& text) { return tokenizer().encode(text); }

txt2img::ErrorKind error_kind_of(const std::string& text) {
  try {
    clean_text(text);
  } catch (const txt2img::Error& e) {
    return e.kind();
  }
  return txt2img::ErrorKind::Runtime;
}

// The golden prompts: OpenAI CLIP's simple_tokenizer with ftfy 6.3.1.
TEST(TokenizerGolden, MatchesClip) {
  std::ifstream in(env_path("TXT2IMG_SHARED") / "clip" / "tokenizer-golden.jsonl");
  ASSERT_TRUE(in) << "cannot open tokenizer-golden.jsonl";
  int plain = 0, plain_exact = 0, repair = 0, repair_exact = 0, shown = 0;
  std::string line;
  while (std::getline(in, line)) {
    const auto record = nlohmann::json::parse(line);
    const auto prompt = record.at("prompt").get<std::string>();
    const auto expected = record.at("ids").get<std::vector<int>>();
    const auto expected_padded = record.at("padded77").get<std::vector<int64_t>>();
    const bool exact = ids_of(prompt) == expected && tokenizer().encode_padded(prompt) == expected_padded;
    if (record.at("encoding_repair").get<bool>()) {
      ++repair;
      repair_exact += exact;
      if (!exact) ADD_FAILURE() << "encoding_repair prompt " << nlohmann::json(prompt) << " cleaned to "
                                << nlohmann::json(clean_text(prompt));
      continue;
    }
    ++plain;
    plain_exact += exact;
    if (!exact && shown++ < 10) ADD_FAILURE() << "prompt " << nlohmann::json(prompt) << " cleaned to "
                                              << nlohmann::json(clean_text(prompt));
  }
  std::cout << "golden: " << plain_exact << "/" << plain << " exact; encoding_repair: " << repair_exact << "/"
            << repair << " exact\n";
  EXPECT_EQ(plain, 2987);
  EXPECT_EQ(plain_exact, plain);
  EXPECT_EQ(repair, 13);
  EXPECT_EQ(repair_exact, 13);
}

TEST(TokenizerClean, InvalidUtf8IsAUsageErrorNamingTheOffset) {
  for (const std::string bad : {"abc\xff", "abc\xc0\xaf", "abc\xed\xa0\x80", "abc\xe2\x82"}) {
    EXPECT_EQ(error_kind_of(bad), txt2img::ErrorKind::Usage) << nlohmann::json::binary({bad.begin(), bad.end()});
    try {
      tokenizer().encode(bad);
      ADD_FAILURE() << "no exception";
    } catch (const txt2img::Error& e) {
      EXPECT_NE(std::string(e.what()).find("byte offset 3"), std::string::npos) << e.what();
    }
  }
}

TEST(TokenizerClean, HtmlEntities) {
  EXPECT_EQ(clean_text("Tom &amp; Jerry, &quot;quoted&quot;"), "tom & jerry, \"quoted\"");
  EXPECT_EQ(clean_text("&amp;amp;amp;amp;amp;"), "&");  // ftfy repeats until stable
  EXPECT_EQ(clean_text("P&EACUTE;REZ"), "p\u00e9rez");   // ftfy's all-caps names
  EXPECT_EQ(clean_text("&copy 2023 &notit;"), "\u00a9 2023 \u00acit;");  // html.unescape's prefix rule
  EXPECT_EQ(clean_text("&#x1F600; &#128512; &#8217;s &#0; &#x110000; &#150;"),
            "\U0001F600 \U0001F600 's \ufffd \ufffd \u2013");
}

TEST(TokenizerClean, ReadmeFacts) {
  EXPECT_EQ(clean_text("vertical\vtab\fform\x1c" "fs"), "verticaltab formfs");
  EXPECT_EQ(clean_text("a\u0085b"), "a\u2026b");
  // From the first line containing '<' on, ftfy stops unescaping; only html.unescape's two passes remain.
  EXPECT_EQ(clean_text("x &amp;amp;amp;\n<b> &amp;amp;amp;\nz &amp;amp;amp;"), "x & <b> &amp; z &amp;");
  EXPECT_EQ(pre_tokenize(clean_text("\u2018soft light\u2019")), (std::vector<std::string>{"'s", "oft", "light", "'"}));
}

TEST(TokenizerClean, UnicodeFixesAndCase) {
  EXPECT_EQ(clean_text("\uFB01nal \uFB05 \u0149"), "final \u017Ft 'n");
  EXPECT_EQ(clean_text("\uFF33\uFF34\u3000\uFF8A\uFF9E\uFF72"), "st \u30D0\u30A4");
  EXPECT_EQ(clean_text("\u039F\u0394\u039F\u03A3 \u03A3"), "\u03BF\u03B4\u03BF\u03C2 \u03C3");  // Final_Sigma
  EXPECT_EQ(clean_text("\u0130I"), "i\u0307i");  // full case mapping, no Turkish rules
  EXPECT_EQ(clean_text("\t a \u3000\u2028 b\u00a0\u200b "), "a b \u200b");
  EXPECT_EQ(clean_text("ANSI \x1b[31mred\x1b[0m"), "ansi red");
  EXPECT_EQ(clean_text("Cafe\u0301"), "caf\u00e9");
}

// UTF-8 read as Windows-1252 or Latin-1 is decoded back, also when doubly broken or mixed with correct text.
TEST(TokenizerClean, RepairsMojibake) {
  EXPECT_EQ(clean_text("caf\u00c3\u00a9 cr\u00c3\u00a8me"), "caf\u00e9 cr\u00e8me");
  EXPECT_EQ(clean_text("\u00e2\u20ac\u0153quoted\u00e2\u20ac\u009d"), "\"quoted\"");  // C1 U+009D is byte 0x9D
  EXPECT_EQ(clean_text("doesn\u00c3\u00a2\u00e2\u201a\u00ac\u00e2\u201e\u00a2t"), "doesn't");  // twice broken
  EXPECT_EQ(clean_text("\U0001F98B \u00f0\u0178\u00a6\u2039 \U0001F363"), "\U0001F98B \U0001F98B \U0001F363");
  EXPECT_EQ(clean_text("\u00f0\u0178\u2018\u0081"), "\U0001F441");  // a curly quote inside the mojibake
  EXPECT_EQ(clean_text("\u00e5\u00a0\u00a1 \u00c2\u00b7 \u00c4\u0152e\u00c5\u00a1t\u00c3\u00ad"),
            "\u5821 \u00b7 \u010de\u0161t\u00ed");  // NBSP as a continuation byte; Latin-1 "Â·"
  // Cyrillic "плохо": "Ñ…" and "Ð»" end in closing punctuation but sit among other mojibake.
  EXPECT_EQ(clean_text("\u00d0\u00bf\u00d0\u00bb\u00d0\u00be\u00d1\u2026\u00d0\u00be"),
            "\u043f\u043b\u043e\u0445\u043e");
  EXPECT_EQ(clean_text("\u0093smart\u0094 \u0085"), "\"smart\" \u2026");  // lone C1 controls as Windows-1252
}

// Correct text that merely contains Latin-1 or Windows-1252 characters stays as it is.
TEST(TokenizerClean, LeavesCorrectTextAlone) {
  for (const std::string text : {
           "cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade, s\u00e3o paulo, \u00e4rger \u00fcber \u00f6l",
           "\u00e5ngstr\u00f6m p\u00e2t\u00e9 \u00e3 la carte \u00e2 \u00e0 \u00bfqu\u00e9? \u00a1s\u00ed! 50\u00b0 \u00a9",
           "\u00abcaf\u00e9\u00bb fu\u00df\u2026 \u00e9t\u00e9\u2014 3\u00d7\u00bd",  // « » … — after é/ß/×
           "\U0001F98B\u270B\U0001F3FC \u5B87\u5B99\u98DB\u884C\u58EB \uBC14\uB2E4 \u0928\u0940\u0932\u093E",
       }) {
    EXPECT_EQ(clean_text(text), text);
  }
  EXPECT_EQ(clean_text("S\u00c3O PAULO, CAF\u00c9, \u00c9T\u00c9\u2026 \u00abCAF\u00c9\u00bb STRA\u00dfE"),
            "s\u00e3o paulo, caf\u00e9, \u00e9t\u00e9\u2026 \u00abcaf\u00e9\u00bb stra\u00dfe");
}

TEST(TokenizerPreTokenize, ClipRegex) {
  EXPECT_EQ(pre_tokenize("it's 2023, v1.5 <|endoftext|>!<|startoftext|>"),
            (std::vector<std::string>{"it", "'s", "2", "0", "2", "3", ",", "v", "1", ".", "5", "<|endoftext|>", "!<|",
                                      "startoftext", "|>"}));
  EXPECT_EQ(pre_tokenize("a\u0345b ''s"), (std::vector<std::string>{"a", "b", "''", "s"}));
  EXPECT_EQ(pre_tokenize("'\u017Ft"), (std::vector<std::string>{"'\u017F", "t"}));
}

TEST(Tokenizer, SpecialTokensAreLiteral) {
  EXPECT_EQ(ids_of("<|startoftext|>"), std::vector<int>{Tokenizer::kBos});
  const auto ids = ids_of("a cat<|endoftext|>a dog");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), Tokenizer::kEos), 1);
  EXPECT_EQ(ids.size(), 5u);
}

TEST(Tokenizer, EmptyPromptIsStartEndAndPadding) {
  for (const char* empty : {"", "   ", "\t\n"}) {
    std::vector<int64_t> expected(77, Tokenizer::kEos);
    expected[0] = Tokenizer::kBos;
    EXPECT_EQ(tokenizer().encode_padded(empty), expected);
    EXPECT_TRUE(tokenizer().encode_traced(empty).ids.empty());
  }
}

TEST(Tokenizer, PaddedEncodingKeepsTheFirstContextMinusTwoIds) {
  std::string prompt;
  for (int i = 0; i < 100; ++i) prompt += "cat ";
  const int cat = ids_of("cat").at(0);
  EXPECT_EQ(tokenizer().encode_traced(prompt).ids.size(), 100u);
  const auto padded = tokenizer().encode_padded(prompt);
  ASSERT_EQ(padded.size(), 77u);
  EXPECT_EQ(padded[75], cat);
  EXPECT_EQ(padded[76], Tokenizer::kEos);

  EXPECT_EQ(tokenizer().encode_padded("cat cat", 8, 0),
            (std::vector<int64_t>{Tokenizer::kBos, cat, cat, Tokenizer::kEos, 0, 0, 0, 0}));
  EXPECT_EQ(tokenizer().encode_padded("cat cat cat cat cat cat cat", 8, 0),
            (std::vector<int64_t>{Tokenizer::kBos, cat, cat, cat, cat, cat, cat, Tokenizer::kEos}));
  EXPECT_THROW(tokenizer().encode_padded("cat", 1), txt2img::Error);
}

Tokenizer with_embeddings(const std::vector<txt2img::TextualInversion>& embeddings) {
  auto t = Tokenizer::load(env_path("TXT2IMG_FIXTURES") / "tokenizer.model");
  t.add_embeddings(embeddings);
  return t;
}

std::vector<int> concat(std::initializer_list<std::vector<int>> parts) {
  std::vector<int> out;
  for (const auto& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

TEST(TokenizerEmbeddings, NamesBecomeTheirVectorsIds) {
  const auto t = with_embeddings({{"EasyNegative", 49408, 3}, {"bad-hands-5", 49411, 2}, {"negative", 49413, 1}});
  ASSERT_EQ(ids_of("easynegative").size(), 2u);  // "easy", "negative</w>": the name is two CLIP tokens
  // Case does not matter (CLIP lowercases); a name of several words ("bad", "-", "hands", "-", "5") matches whole.
  const auto traced = t.encode_traced("a cat, EasyNegative, Bad-Hands-5 negative");
  EXPECT_EQ(traced.ids, concat({ids_of("a cat,"), {49408, 49409, 49410}, ids_of(","), {49411, 49412}, {49413}}));
  EXPECT_EQ(traced.embeddings, (std::vector<std::string>{"EasyNegative", "bad-hands-5", "negative"}));
  // Each id knows its word: the vectors stand for the name's first word.
  EXPECT_EQ(traced.words, (std::vector<size_t>{0, 1, 2, 3, 3, 3, 4, 5, 5, 10}));
  EXPECT_EQ(t.encode("EASYNEGATIVE"), (std::vector<int>{49408, 49409, 49410}));
  // Only at the start of a word, and only the whole name: "negative" inside "easynegatives" is not the embedding.
  EXPECT_EQ(t.encode("easynegatives"), ids_of("easynegatives"));
  EXPECT_EQ(t.encode("bad-hands"), ids_of("bad-hands"));
  EXPECT_EQ(t.encode("a cat"), ids_of("a cat"));
  // The vectors count towards the 75 tokens the model reads.
  EXPECT_EQ(t.encode_traced("a cat, easynegative").ids.size(), ids_of("a cat,").size() + 3);
}

// A token a diffusers model's own tokenizer adds is split out of the text first, as transformers' CLIPTokenizer
// splits it: wherever it stands and in its exact case, the text around it tokenized on its own.
TEST(TokenizerEmbeddings, AddedTokensAreSplitOutOfTheTextFirst) {
  const auto t = with_embeddings(
      {{"<cat-toy>", 49408, 1, true}, {"<style>", 49409, 2, true}, {"<style>-x", 49411, 1, true}, {"sks", 49412, 1}});
  EXPECT_EQ(t.encode("a <cat-toy>, photo"), concat({ids_of("a"), {49408}, ids_of(", photo")}));
  EXPECT_EQ(t.encode("x<cat-toy>y"), concat({ids_of("x"), {49408}, ids_of("y")}));
  EXPECT_EQ(t.encode("<Cat-Toy>"), ids_of("<cat-toy>"));  // another case is text
  // The longest of the tokens that start at one place; an embedding file's name is still found by its tokens.
  EXPECT_EQ(t.encode("<style>-x <style> SKS"), concat({{49411}, {49409, 49410}, {49412}}));
  const auto traced = t.encode_traced("(a <cat-toy>:1.5)", true);
  EXPECT_EQ(traced.ids, concat({ids_of("a"), {49408}}));
  EXPECT_EQ(traced.weights, (std::vector<double>{1.5, 1.5}));
  EXPECT_EQ(traced.embeddings, std::vector<std::string>{"<cat-toy>"});
  EXPECT_EQ(traced.unit_lengths, (std::vector<size_t>{1, 1}));
}

TEST(TokenizerEmbeddings, NamesWithoutTokensOrWithTheSameTokensAreBundleErrors) {
  for (const auto& embeddings : std::vector<std::vector<txt2img::TextualInversion>>{
           {{" ", 49408, 1}}, {{"EasyNegative", 49408, 1}, {"easynegative", 49409, 1}}}) {
    try {
      with_embeddings(embeddings);
      ADD_FAILURE() << "no exception for " << embeddings.back().name;
    } catch (const txt2img::Error& e) {
      EXPECT_EQ(e.kind(), txt2img::ErrorKind::Bundle) << e.what();
      EXPECT_NE(std::string(e.what()).find(embeddings.back().name), std::string::npos) << e.what();
    }
  }
}

std::string repeat(const std::string& word, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += word + " ";
  return out;
}

// [bos] ids [eos] padded with eos to 77, as A1111 lays out each chunk.
std::vector<int64_t> chunk_of(const std::vector<int>& ids) {
  std::vector<int64_t> chunk = {Tokenizer::kBos};
  chunk.insert(chunk.end(), ids.begin(), ids.end());
  chunk.push_back(Tokenizer::kEos);
  chunk.resize(77, Tokenizer::kEos);
  return chunk;
}

std::vector<std::vector<int64_t>> long_chunks(const Tokenizer& t, const std::string& text) {
  std::vector<std::vector<int64_t>> ids;
  for (const auto& chunk : Tokenizer::chunks(t.encode_traced(text), true)) ids.push_back(chunk.ids);
  return ids;
}

std::vector<int> times(int id, int n) { return std::vector<int>(static_cast<size_t>(n), id); }

TEST(TokenizerChunks, ATextThatFitsIsOneChunkAsPadded) {
  for (const std::string& text : std::vector<std::string>{"", "a photo of a cat", repeat("cat", 75)}) {
    const auto chunks = long_chunks(tokenizer(), text);
    ASSERT_EQ(chunks.size(), 1u) << text;
    EXPECT_EQ(chunks[0], tokenizer().encode_padded(text)) << text;
  }
}

TEST(TokenizerChunks, LongTextsContinueInChunksOf75) {
  const int cat = ids_of("cat").at(0), dog = ids_of("dog").at(0), comma = ids_of(",").at(0);
  EXPECT_EQ(long_chunks(tokenizer(), repeat("cat", 76)),
            (std::vector<std::vector<int64_t>>{chunk_of(times(cat, 75)), chunk_of({cat})}));
  EXPECT_EQ(long_chunks(tokenizer(), repeat("cat", 160)).size(), 3u);
  // A comma among the last 20 tokens of a full chunk ends it; what follows starts the next one.
  EXPECT_EQ(long_chunks(tokenizer(), repeat("cat", 70) + ", " + repeat("dog", 10)),
            (std::vector<std::vector<int64_t>>{chunk_of(concat({times(cat, 70), {comma}})), chunk_of(times(dog, 10))}));
  EXPECT_EQ(long_chunks(tokenizer(), repeat("cat", 55) + ", " + repeat("dog", 30)),  // 20 back: the limit
            (std::vector<std::vector<int64_t>>{chunk_of(concat({times(cat, 55), {comma}})), chunk_of(times(dog, 30))}));
  // Further back than 20 tokens it does not.
  EXPECT_EQ(long_chunks(tokenizer(), repeat("cat", 54) + ", " + repeat("dog", 30)).at(0),
            chunk_of(concat({times(cat, 54), {comma}, times(dog, 20)})));
  EXPECT_EQ(long_chunks(tokenizer(), repeat("cat", 50) + ", " + repeat("dog", 40)),
            (std::vector<std::vector<int64_t>>{chunk_of(concat({times(cat, 50), {comma}, times(dog, 24)})),
                                               chunk_of(times(dog, 16))}));
  // A comma that arrives at a full chunk goes to the next one.
  EXPECT_EQ(long_chunks(tokenizer(), repeat("cat", 75) + ", dog"),
            (std::vector<std::vector<int64_t>>{chunk_of(times(cat, 75)), chunk_of({comma, dog})}));
}

TEST(TokenizerChunks, AnEmbeddingIsNeverSplit) {
  const auto t = with_embeddings({{"EasyNegative", 49408, 3}});
  const int cat = ids_of("cat").at(0);
  EXPECT_EQ(long_chunks(t, repeat("cat", 73) + "easynegative cat"),
            (std::vector<std::vector<int64_t>>{chunk_of(times(cat, 73)), chunk_of({49408, 49409, 49410, cat})}));
  EXPECT_EQ(long_chunks(t, repeat("cat", 72) + "easynegative").size(), 1u);  // 72 + 3 fit exactly
  const auto huge = with_embeddings({{"huge", 49408, 80}});
  EXPECT_THROW(long_chunks(huge, "huge"), txt2img::Error);
}

TEST(TokenizerEmphasis, EachSpanIsTokenizedOnItsOwnWithItsWeight) {
  EXPECT_EQ(ids_of(","), std::vector<int>{Tokenizer::kComma});
  const auto traced = tokenizer().encode_traced("a (red:1.5) [cat]", true);
  EXPECT_EQ(traced.ids, concat({ids_of("a"), ids_of("red"), ids_of("cat")}));
  EXPECT_EQ(traced.weights, (std::vector<double>{1.0, 1.5, 1 / 1.1}));
  EXPECT_EQ(traced.word_texts, (std::vector<std::string>{"a", "red", "cat"}));
  EXPECT_EQ(traced.word_spaced, (std::vector<bool>{false, true, true}));
  // Blanks between words are kept track of (CLIP splits digits and punctuation off), also across an emphasis span.
  const auto digits = tokenizer().encode_traced("sdxl1.0 4k");
  EXPECT_EQ(digits.word_texts, (std::vector<std::string>{"sdxl", "1", ".", "0", "4", "k"}));
  EXPECT_EQ(digits.word_spaced, (std::vector<bool>{false, false, false, false, true, false}));
  EXPECT_EQ(tokenizer().encode_traced("[cat]dog", true).word_spaced, (std::vector<bool>{false, false}));
  EXPECT_EQ(traced.words, (std::vector<size_t>{0, 1, 2}));
  // Without emphasis the brackets are text, with every weight 1.
  const auto plain = tokenizer().encode_traced("a (red:1.5) [cat]");
  EXPECT_EQ(plain.ids, ids_of("a (red:1.5) [cat]"));
  EXPECT_EQ(plain.weights, std::vector<double>(plain.ids.size(), 1.0));
  // Escaped brackets are the characters.
  EXPECT_EQ(tokenizer().encode_traced("a \\(cat\\)", true).ids, ids_of("a (cat)"));
}

TEST(TokenizerEmphasis, AWeightPastFloat32IsAUsageError) {
  // It would make the text embeddings infinite, and the image with them.
  std::string deep;
  for (int i = 0; i < 8000; ++i) deep += "(";  // 1.1^8000
  for (const std::string& prompt : {"a (cat:1" + std::string(39, '0') + ") dog", deep + "cat"}) {
    try {
      tokenizer().encode_traced(prompt, true);
      ADD_FAILURE() << "no exception";
    } catch (const txt2img::Error& e) {
      EXPECT_EQ(e.kind(), txt2img::ErrorKind::Usage);
      EXPECT_NE(std::string(e.what()).find("beyond what float32 holds"), std::string::npos) << e.what();
    }
  }
  // Large weights within float32 are A1111's to take, as are brackets around no text.
  EXPECT_EQ(tokenizer().encode_traced("a (cat:1" + std::string(30, '0') + ") dog", true).weights.at(1), 1e30);
  EXPECT_EQ(tokenizer().encode_traced(deep + std::string(8000, ')') + " cat", true).ids.size(), 1u);
}

TEST(TokenizerEmphasis, ChunksCarryTheWeightsAndBreakEndsAChunk) {
  const int cat = ids_of("cat").at(0), dog = ids_of("dog").at(0);
  const auto chunks = Tokenizer::chunks(tokenizer().encode_traced("(cat) BREAK dog", true), true);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].ids, chunk_of({cat}));
  EXPECT_EQ(chunks[1].ids, chunk_of({dog}));
  std::vector<double> weights(77, 1.0);
  weights[1] = 1.1;  // bos, then "cat"
  EXPECT_EQ(chunks[0].weights, weights);
  EXPECT_EQ(chunks[1].weights, std::vector<double>(77, 1.0));
  // Without long prompts a BREAK is nothing, and what does not fit is cut off.
  EXPECT_EQ(Tokenizer::chunks(tokenizer().encode_traced("(cat) BREAK dog", true), false).at(0).ids,
            chunk_of({cat, dog}));
  EXPECT_EQ(Tokenizer::chunks(tokenizer().encode_traced(repeat("cat", 80), true), false).size(), 1u);
}

TEST(Tokenizer, MissingOrCorruptModelIsABundleError) {
  const auto corrupt = std::filesystem::temp_directory_path() / "txt2img_tokenizer_test_corrupt.model";
  std::ofstream(corrupt, std::ios::binary) << "not a model";
  for (const auto& path : {std::filesystem::path("/nonexistent/tokenizer.model"), corrupt}) {
    try {
      Tokenizer::load(path);
      ADD_FAILURE() << "no exception for " << path;
    } catch (const txt2img::Error& e) {
      EXPECT_EQ(e.kind(), txt2img::ErrorKind::Bundle) << e.what();
    }
  }
  std::filesystem::remove(corrupt);
}

}  // namespace
