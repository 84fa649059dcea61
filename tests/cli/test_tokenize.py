"""txt2img tokenize: ids, truncation, prompt files."""

import json
import unittest

from cli_support import EXIT_USAGE, SHARED, TINY, CliTestCase, run


class Tokenize(CliTestCase):
    def tokenize(self, *args, **kwargs):
        return run(["tokenize", *args, "--model", TINY], self.dir, **kwargs)

    def test_ids_of_a_prompt(self):
        result = self.tokenize("a photo of a cat")
        self.assertEqual(result.returncode, 0, result.stderr)
        ids = [int(x) for x in result.stdout.split()]
        self.assertEqual(len(ids), 5)
        as_json = json.loads(self.tokenize("a photo of a cat", "--json").stdout)
        self.assertEqual(as_json["ids"], ids)
        self.assertEqual((as_json["tokens"], as_json["kept"], as_json["truncated"]), (5, 5, False))

    def test_matches_the_reference_tokenizer(self):
        path = SHARED / "clip" / "tokenizer-golden.jsonl"
        with open(path, encoding="utf-8") as f:
            cases = [json.loads(next(f)) for _ in range(40)]
        prompts = self.write("p.jsonl", "".join(json.dumps({"prompt": c["prompt"]}) + "\n" for c in cases
                                               if c["prompt"].strip()))
        result = self.tokenize("--from-file", prompts)
        self.assertEqual(result.returncode, 0, result.stderr)
        got = {r["prompt"]: r["ids"] for r in map(json.loads, result.stdout.splitlines())}
        for c in cases:
            if c["prompt"].strip():
                self.assertEqual(got[c["prompt"]], c["ids"], c["prompt"])

    def test_weights_past_float32_are_usage_errors_not_crashes(self):
        """11,000 nested brackets crashed the prompt-editing parser (its recursion overflowed the stack); now the weight
        they give, 1.1 to the 11,000th, is refused as any weight past float32, by tokenize and by a run alike."""
        deep = "(" * 11000 + "a" + ")" * 11000
        for result in (self.tokenize(deep, "--emphasis"),
                       self.txt2img(deep, "--emphasis", "-o", "a.png", "--steps", "1", "-W", "32", "-H", "32")):
            self.assertExit(result, EXIT_USAGE, "weighs \"a\" by inf", "beyond what float32 holds")
        self.assertFalse((self.dir / "a.png").exists())
        # Square brackets weigh it towards 0, which float32 holds: only the parser's depth was in danger there.
        square = self.tokenize("[" * 11000 + "a" + "]" * 11000, "--emphasis")
        self.assertEqual(square.returncode, 0, square.stderr)
        # In a prompt file the refusal names its line, before the model loads: the lines before it make no image. So
        # does a guidance weight (a trailing :number) past float32 times the CFG scale.
        self.write("prompts.txt", "a fox\na (cat:1" + "0" * 39 + ") dog\n")
        result = self.txt2img("-f", "prompts.txt", "--emphasis", "-o", "{index}.png", "--seed", "1")
        self.assertExit(result, EXIT_USAGE, "prompts.txt:2: the prompt's emphasis weighs \"cat\" by 1e+39")
        self.assertNotIn("loading", result.stderr)
        self.write("prompts.txt", "a fox\na cat AND a dog:1" + "0" * 37 + "\n")
        result = self.txt2img("-f", "prompts.txt", "--emphasis", "--cfg-scale", "100", "-o", "{index}.png")
        self.assertExit(result, EXIT_USAGE, "prompts.txt:2: the prompt's guidance weight 1e+37", "float32")
        self.assertNotIn("loading", result.stderr)
        self.assertFalse((self.dir / "0.png").exists())
        # Every text a run refuses is refused before the model loads: as written (also a negative prompt that no
        # guidance reads), and as prompt editing makes it, where a weight inside its brackets grows by 1.1.
        weight_4e38, weight_35e37 = "4" + "0" * 38, "35" + "0" * 37  # A1111 reads weights written in digits only
        for prompt, negative, cfg, weighs in (("a cat", f"(dog:{weight_4e38})", "1", "by 4e+38"),
                                               (f"[(dog:{weight_35e37}):cat:1]", "", "7", "by 3.5e+38")):
            result = self.txt2img(prompt, "-n", negative, "--cfg-scale", cfg, "--emphasis", "-o", "x.png")
            self.assertExit(result, EXIT_USAGE, weighs)
            self.assertNotIn("loading", result.stderr)

    def test_truncation(self):
        prompt = " ".join(["dog"] * 76) + " zebra"
        result = self.tokenize(prompt)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("77 tokens", result.stderr)
        self.assertIn('"dog zebra"', result.stderr)
        record = json.loads(self.tokenize(prompt, "--json").stdout)
        self.assertEqual((record["tokens"], record["kept"], record["truncated"], record["dropped"]),
                         (77, 75, True, "dog zebra"))
        # Punctuation and digits, pre-tokens of their own, are quoted against their words as written; six words.
        record = json.loads(self.tokenize(" ".join(["dog"] * 73) + " dog dog red, (blue fox)! a b c d", "--json").stdout)
        self.assertEqual(record["dropped"], "red, (blue fox)! a b c ...")
        record = json.loads(self.tokenize(" ".join(["dog"] * 75) + " fox's 1.5 sdxl1.0 4k-uhd w29", "--json").stdout)
        self.assertEqual(record["dropped"], "fox's 1.5 sdxl1.0 4k-uhd w29")
        # With emphasis the brackets go, and a span's words keep the blanks around it.
        record = json.loads(self.tokenize(" ".join(["dog"] * 75) + " big (red:1.2) [cat]dog BREAK x", "--emphasis",
                                          "--json").stdout)
        self.assertEqual(record["dropped"], "big red catdog x")

    def test_long_prompts_count_chunks_and_cut_nothing(self):
        prompt = " ".join(["dog"] * 76) + " zebra"
        record = json.loads(self.tokenize(prompt, "--json", "--long-prompts").stdout)
        self.assertEqual((record["tokens"], record["kept"], record["truncated"], record["chunks"]), (77, 77, False, 2))
        self.assertNotIn("dropped", record)
        self.assertEqual(json.loads(self.tokenize(prompt, "--json").stdout)["chunks"], 1)
        human = self.tokenize(prompt, "--long-prompts")
        self.assertIn("77 tokens in 2 chunks of up to 75", human.stderr)
        self.assertNotIn("warning", human.stderr)
        self.assertEqual(json.loads(self.tokenize("a cat", "--json", "--long-prompts").stdout)["chunks"], 1)

    def test_emphasis_reads_brackets_and_weights(self):
        plain = json.loads(self.tokenize("a red fox", "--json").stdout)["ids"]
        self.assertEqual(json.loads(self.tokenize("a ((red:1.3)) [fox]", "--json", "--emphasis").stdout)["ids"], plain)
        self.assertNotEqual(json.loads(self.tokenize("a ((red:1.3)) [fox]", "--json").stdout)["ids"], plain)

    def test_emphasis_modes_read_as_generating_reads(self):
        """--emphasis-mode implies --emphasis; with none the brackets are tokens, prompt editing is still read."""
        text = "a ((red:1.3)) [fox]"
        ids = {mode: json.loads(self.tokenize(text, "--json", "--emphasis-mode", mode).stdout)["ids"]
               for mode in ("original", "no-norm", "ignore", "none")}
        emphasis = json.loads(self.tokenize(text, "--json", "--emphasis").stdout)["ids"]
        plain = json.loads(self.tokenize(text, "--json").stdout)["ids"]
        self.assertEqual([ids["original"], ids["no-norm"], ids["ignore"], ids["none"]],
                         [emphasis, emphasis, emphasis, plain])
        result = self.tokenize("a [red:blue:5] fox", "--emphasis-mode", "none")
        self.assertIn("warning: the prompt uses A1111's prompt editing", result.stderr)
        self.assertExit(self.tokenize("a fox", "--emphasis-mode", "nothing"), EXIT_USAGE, "--emphasis-mode")

    def test_prompt_editing_is_pointed_out(self):
        result = self.tokenize("a [red:blue:5] fox", "--emphasis")
        self.assertIn("warning: the prompt uses A1111's prompt editing", result.stderr)
        self.assertIn('("a red fox" first)', result.stderr)
        self.assertNotIn("prompt editing", self.tokenize("a [red:blue:5] fox").stderr)
        self.assertNotIn("prompt editing", self.tokenize("a (red) [fox]", "--emphasis").stderr)

    def test_from_file_one_json_line_per_prompt(self):
        self.write("p.txt", "a cat\n# comment\n\na dog\n")
        result = self.tokenize("--from-file", "p.txt")
        self.assertEqual(result.returncode, 0, result.stderr)
        records = [json.loads(l) for l in result.stdout.splitlines()]
        self.assertEqual([(r["prompt"], r["line"]) for r in records], [("a cat", 1), ("a dog", 4)])
        # A bad line anywhere leaves nothing printed, as generating checks the whole file first.
        self.write("bad.jsonl", '{"prompt": "a cat"}\n{"prompt": 3}\n')
        result = self.tokenize("--from-file", "bad.jsonl")
        self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
        self.assertIn("bad.jsonl:2", result.stderr)
        self.assertEqual(result.stdout, "")

    def test_lora_tags_are_not_tokens(self):
        """The text encoder never reads a LoRA tag (generating takes it out), so neither are its ids shown nor does it
        count towards a cut-off; a malformed tag, or one in the negative prompt, is refused as generating refuses it,
        before anything is printed."""
        plain = json.loads(self.tokenize("a fox ", "--json").stdout)
        tagged = json.loads(self.tokenize("a fox <lora:ink-style:0.5>", "--json").stdout)
        self.assertEqual(tagged["ids"], plain["ids"])
        self.assertEqual(tagged["prompt"], "a fox <lora:ink-style:0.5>")
        fits = " ".join(["cat"] * 74) + " <lora:ink-style:0.5>"
        self.assertFalse(json.loads(self.tokenize(fits, "--json").stdout)["truncated"])
        self.write("p.txt", "a cat\na fox <lora:x:1:2:3>\n")
        result = self.tokenize("--from-file", "p.txt")
        self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
        self.assertIn("p.txt:2: LoRA tag <lora:x:1:2:3>: at most two weights", result.stderr)
        self.assertEqual(result.stdout, "")
        negative = self.tokenize("a fox", "-n", "blurry <lora:x:1>")
        self.assertEqual(negative.returncode, EXIT_USAGE, negative.stderr)
        self.assertIn("a LoRA tag in the negative prompt", negative.stderr)

    def test_a_json_line_s_own_settings_apply(self):
        long = " ".join(["dog"] * 76) + " zebra"
        self.write("p.jsonl", "\n".join(json.dumps(line) for line in [
            {"prompt": "a ((red:1.3)) [fox]", "emphasis": True}, {"prompt": "a ((red:1.3)) [fox]"},
            {"prompt": long, "long_prompts": True}, {"prompt": long}]) + "\n")
        result = self.tokenize("--from-file", "p.jsonl")
        self.assertEqual(result.returncode, 0, result.stderr)
        records = [json.loads(l) for l in result.stdout.splitlines()]
        plain = json.loads(self.tokenize("a red fox", "--json").stdout)["ids"]
        self.assertEqual(records[0]["ids"], plain)
        self.assertNotEqual(records[1]["ids"], plain)
        self.assertEqual([(r["truncated"], r["chunks"]) for r in records[2:]], [(False, 2), (True, 1)])
        # A line's false overrides the flag, as when generating.
        self.write("q.jsonl", json.dumps({"prompt": "a ((red:1.3)) [fox]", "emphasis": False}) + "\n")
        self.assertEqual(json.loads(self.tokenize("--from-file", "q.jsonl", "--emphasis").stdout)["ids"],
                         records[1]["ids"])

    def test_negative_prompts(self):
        """-n tokenizes a negative prompt beside the prompt, as A1111 counts both boxes' tokens; a prompt file line's
        own negative prompt takes its place. With long prompts, texts of different chunk counts are pointed out."""
        dog = json.loads(self.tokenize("a dog", "--json").stdout)["ids"]
        both = self.tokenize("a cat", "-n", "a dog")
        self.assertEqual(both.returncode, 0, both.stderr)
        self.assertEqual(both.stdout.splitlines()[1], " ".join(map(str, dog)))
        self.assertIn("the negative prompt: 2 tokens; the model reads up to 75", both.stderr)
        record = json.loads(self.tokenize("a cat", "-n", "a dog", "--json").stdout)
        self.assertEqual(record["negative_prompt"]["prompt"], "a dog")
        self.assertEqual(record["negative_prompt"]["ids"], dog)
        self.assertNotIn("negative_prompt", json.loads(self.tokenize("a cat", "--json").stdout))
        long = " ".join(["dog"] * 76) + " zebra"
        cut = self.tokenize("a cat", "-n", long)
        self.assertIn('warning: the negative prompt is 77 tokens long', cut.stderr)
        self.assertIn('"dog zebra"', cut.stderr)
        apart = self.tokenize("a cat", "-n", long, "--long-prompts")
        self.assertIn("the negative prompt: 77 tokens in 2 chunks", apart.stderr)
        self.assertIn("the prompt takes 1 chunk and the negative prompt 2 chunks", apart.stderr)
        self.assertNotIn("negative prompt 2", self.tokenize(long, "-n", long, "--long-prompts").stderr)
        self.write("p.jsonl", json.dumps({"prompt": "a cat", "negative_prompt": "a fox"}) + "\n" +
                   json.dumps({"prompt": "a cat"}) + "\n")
        records = [json.loads(line) for line in
                   self.tokenize("--from-file", "p.jsonl", "-n", "a dog").stdout.splitlines()]
        self.assertEqual([r["negative_prompt"]["prompt"] for r in records], ["a fox", "a dog"])
        plain = [json.loads(line) for line in self.tokenize("--from-file", "p.jsonl").stdout.splitlines()]
        self.assertEqual(["negative_prompt" in r for r in plain], [True, False])
        # What is wrong with a negative prompt is said of the negative prompt, here and when generating.
        edited = self.tokenize("a cat", "-n", "[ugly:blurry:0.5]", "--emphasis")
        self.assertIn("warning: the negative prompt uses A1111's prompt editing", edited.stderr)
        self.assertIn('("ugly" first)', edited.stderr)
        for result in (self.tokenize("a cat", "-n", "(ugly:1" + "0" * 40 + ")", "--emphasis"),
                       self.txt2img("a cat", "-n", "(ugly:1" + "0" * 40 + ")", "--emphasis", "-o", "a.png")):
            self.assertExit(result, EXIT_USAGE, "the negative prompt's emphasis weighs \"ugly\" by 1e+40")
        # "\udcff" is the byte 0xff passed through unchanged (os.fsencode's surrogate escape).
        for result in (self.tokenize("a cat", "-n", "ug\udcffly"),
                       self.txt2img("a cat", "-n", "ug\udcffly", "-o", "a.png")):
            self.assertExit(result, EXIT_USAGE, "the negative prompt is not valid UTF-8")
        self.assertFalse((self.dir / "a.png").exists())

    def test_no_prompt(self):
        self.assertEqual(self.tokenize().returncode, EXIT_USAGE)


if __name__ == "__main__":
    unittest.main()
