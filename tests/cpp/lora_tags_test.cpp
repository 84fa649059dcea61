// A1111's LoRA tags: what is taken out of the prompt, the weights each form gives, and the tags refused.
#include <gtest/gtest.h>

#include "txt2img/error.hpp"
#include "txt2img/lora_tags.hpp"

namespace txt2img {
namespace {

LoraUse use(const std::string& name, double te, double unet) { return {name, te, unet}; }

TEST(LoraTags, TakesTheTagsOutAndKeepsTheSpacesAround) {
  const auto t = parse_lora_tags("a cat <lora:ink-style:0.8> on a mat<lora:detail>");
  EXPECT_EQ(t.text, "a cat  on a mat");
  EXPECT_EQ(t.loras, (std::vector<LoraUse>{use("ink-style", 0.8, 0.8), use("detail", 1, 1)}));
}

TEST(LoraTags, WeightsAsA1111ReadsThem) {
  // Positional: the text encoder's weight, then the U-Net's (which defaults to the text encoder's).
  EXPECT_EQ(parse_lora_tags("<lora:x:0.5:1.5>").loras, std::vector<LoraUse>{use("x", 0.5, 1.5)});
  EXPECT_EQ(parse_lora_tags("<lora:x:-1e-1>").loras, std::vector<LoraUse>{use("x", -0.1, -0.1)});
  // Named, overriding the positional ones.
  EXPECT_EQ(parse_lora_tags("<lora:x:0.5:unet=0>").loras, std::vector<LoraUse>{use("x", 0.5, 0)});
  EXPECT_EQ(parse_lora_tags("<lora:x:te=0:0.7>").loras, std::vector<LoraUse>{use("x", 0, 0)});
  EXPECT_EQ(parse_lora_tags("<lora:x:te=0.25>").loras, std::vector<LoraUse>{use("x", 0.25, 0.25)});
  EXPECT_EQ(parse_lora_tags("<lyco:old style: 0.6 >").loras, std::vector<LoraUse>{use("old style", 0.6, 0.6)});
}

TEST(LoraTags, OtherAngleBracketsAreText) {
  for (const std::string prompt : {"a <b> c", "<lora:>", "x < y: z", "<embedding:x>", "<lora:unclosed", "<:x>"}) {
    const auto t = parse_lora_tags(prompt);
    EXPECT_EQ(t.text, prompt);
    EXPECT_TRUE(t.loras.empty()) << prompt;
  }
  // A tag after text that only looks like one.
  EXPECT_EQ(parse_lora_tags("<a <lora:x:2>").text, "<a ");
}

TEST(LoraTags, RefusesWhatItCannotDo) {
  for (const std::string prompt : {"<lora: :1>", "<lora:x:abc>", "<lora:x:1:2:3>", "<lora:x:nan>", "<lora:x:inf>",
                                   "<lora:x:1:dyn=8>", "<lora:x:scale=2>", "<lora:x:>", "<hypernet:h:1>", "<lora:x:1x>",
                                   "<lora:te=0.5>", "<lora:te=0.5:unet=1>", "<lyco:unet=2>"}) {
    try {
      parse_lora_tags(prompt);
      ADD_FAILURE() << prompt << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Usage) << prompt;
      EXPECT_NE(std::string(e.what()).find(prompt.substr(0, 5)), std::string::npos) << e.what();
    }
  }
}

TEST(LoraTags, NamedArgumentsAloneLeaveTheTagWithoutAName) {
  try {
    parse_lora_tags("a cat <lora:te=0.5:unet=1>");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "LoRA tag <lora:te=0.5:unet=1> has no name (<lora:NAME:WEIGHT>)");
  }
  // As A1111 splits an argument at most twice at "=", one with two is positional: here a weight it refuses.
  EXPECT_THROW(parse_lora_tags("<lora:x:te=1=2>"), Error);
}

TEST(LoraTags, ANegativePromptNamesNone) {
  const auto t = parse_lora_tags("a cat <lora:ink:0.5>", "blurry, (ugly)");
  EXPECT_EQ(t.text, "a cat ");
  EXPECT_EQ(t.loras, std::vector<LoraUse>{use("ink", 0.5, 0.5)});
  try {
    parse_lora_tags("a cat", "blurry <lora:ink>");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Usage);
    EXPECT_EQ(std::string(e.what()), "a LoRA tag in the negative prompt; LoRAs are named in the prompt");
  }
  // The negative prompt's malformed tags are refused as the prompt's are.
  EXPECT_THROW(parse_lora_tags("a cat", "<lora:x:abc>"), Error);
}

}  // namespace
}  // namespace txt2img
