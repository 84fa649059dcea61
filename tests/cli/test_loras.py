"""LoRAs named in prompts (A1111's <lora:name:weight> tags), on the ref-tiny-loras bundle: the reference tiny model
with two LoRAs added by scripts/add_lora.py (ink-style, a kohya LoRA; detail-loha, a LyCORIS LoHa)."""

import json
import shlex
import unittest

from cli_support import (EXIT_BUNDLE, EXIT_USAGE, TINY, CliTestCase, fixture_bundle, json_lines, png_pixels,
                         png_text, run, run_printed_command)

TAGS = "<lora:ink-style:0.8> <lora:detail-loha:-0.5>"


class PromptLoras(CliTestCase):
    def setUp(self):
        super().setUp()
        self.model = fixture_bundle("ref-tiny-loras")
        with open(self.model / "model.json", encoding="utf-8") as f:
            self.hashes = {lora["name"]: lora["a1111_hash"] for lora in json.load(f)["loras"]}

    def make(self, prompt, seed, out, *args):
        result = self.txt2img(prompt, "--seed", str(seed), "-o", out, *args, model=self.model)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result

    def pixels(self, name):
        return png_pixels(self.dir / name)

    def test_tags_add_the_loras_and_the_metadata_records_them(self):
        result = self.make(f"a fox {TAGS}", 3, "a.png", "--json")
        event = json_lines(result.stdout)[0]
        self.assertEqual(event["prompt"], f"a fox {TAGS}")
        self.assertEqual(event["loras"], [
            {"name": "ink-style", "te_weight": 0.8, "unet_weight": 0.8, "hash": self.hashes["ink-style"]},
            {"name": "detail-loha", "te_weight": -0.5, "unet_weight": -0.5, "hash": self.hashes["detail-loha"]}])
        text = png_text(self.dir / "a.png")
        self.assertTrue(text["parameters"].startswith(f"a fox {TAGS}\nSteps: 2, "), text["parameters"])
        self.assertIn(f'Lora hashes: "ink-style: {self.hashes["ink-style"]}, detail-loha: '
                      f'{self.hashes["detail-loha"]}"', text["parameters"])
        self.assertEqual(json.loads(text["txt2img"])["loras"], event["loras"])

        self.make("a fox", 3, "plain.png")
        self.assertNotEqual(self.pixels("a.png"), self.pixels("plain.png"))
        self.assertEqual(json.loads(png_text(self.dir / "plain.png")["txt2img"])["loras"], [])
        # A tag leaves its spaces behind, which the tokenizer's cleaning collapses; weight 0 changes no weight.
        self.make("a fox <lora:ink-style:0>", 3, "zero.png")
        self.assertEqual(self.pixels("zero.png"), self.pixels("plain.png"))
        # The text encoder's and the U-Net's weights apart.
        self.make("a fox <lora:ink-style:1:0>", 3, "te.png")
        self.make("a fox <lora:ink-style:te=0:unet=1>", 3, "unet.png")
        self.make("a fox <lora:ink-style>", 3, "both.png")
        self.assertEqual(len({self.pixels(n) for n in ("te.png", "unet.png", "both.png", "plain.png")}), 4)

    def test_the_lora_flag_adds_a_tag_to_every_prompt(self):
        """--lora NAME:W is <lora:NAME:W> at the end of every prompt: the same image, recorded the same way; a
        prompt's own tags come first."""
        self.make(f"a fox {TAGS}", 3, "tags.png")
        result = self.make("a fox", 3, "flag.png", "--lora", "ink-style:0.8", "--lora", "detail-loha:-0.5", "--json")
        self.assertEqual(json_lines(result.stdout)[0]["prompt"], f"a fox {TAGS}")
        self.assertEqual(self.pixels("flag.png"), self.pixels("tags.png"))
        self.assertEqual(png_text(self.dir / "flag.png")["parameters"], png_text(self.dir / "tags.png")["parameters"])
        self.write("prompts.txt", "a fox <lora:ink-style:0.8>\n")
        result = self.txt2img("--from-file", "prompts.txt", "--lora", "detail-loha:-0.5", "--seed", "3", "-o",
                              "file.png", "--json", model=self.model)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[0]["prompt"], f"a fox {TAGS}")
        self.assertEqual(self.pixels("file.png"), self.pixels("tags.png"))
        self.make("a fox", 3, "split.png", "--lora", "ink-style:1:0")
        self.make("a fox <lora:ink-style:1:0>", 3, "split-tag.png")
        self.assertEqual(self.pixels("split.png"), self.pixels("split-tag.png"))

        for value, message in [("ink-style:x", '--lora "ink-style:x": '), ("", '--lora is empty'),
                               ("ink-style:dyn=4", '--lora "ink-style:dyn=4": '),
                               ("nosuch", '--lora: the model has no LoRA named "nosuch"')]:
            result = self.txt2img("a fox", "--lora", value, "-o", "bad.png", model=self.model)
            self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
            self.assertIn(message, result.stderr)
            self.assertFalse((self.dir / "bad.png").exists())

    def test_prompts_with_other_loras_never_share_a_batch(self):
        """Each image is what it is alone, whatever else its batch would have held: the LoRAs of one prompt are
        taken out again for the next."""
        lines = ["a fox <lora:ink-style:1>", "a fox", "a fox <lora:ink-style:1>", "a fox <lora:detail-loha:2>",
                 "a fox"]
        self.write("prompts.txt", "\n".join(lines) + "\n")
        result = self.txt2img("--from-file", "prompts.txt", "--batch-size", "4", "--seed", "7", "-o",
                              "run/{index}.png", model=self.model)
        self.assertEqual(result.returncode, 0, result.stderr)
        for index, line in enumerate(lines):
            self.make(line, 7 + index, f"alone{index}.png")
            self.assertEqual(self.pixels(f"run/{index}.png"), self.pixels(f"alone{index}.png"), line)

    def test_output_names_leave_the_tags_out(self):
        self.make("a fox <lora:ink-style:0.5>", 1, "{prompt}.png")
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["a-fox.png"])

    def test_bad_tags_unknown_names_and_frozen_graphs_are_usage_errors(self):
        cases = [
            (["a <lora:inkstyle:1>"], ['no LoRA named "inkstyle" (it has detail-loha, ink-style)', "add_lora.py"]),
            (["a <lora:ink-style:x>"], ['weight "x" is not a finite number']),
            # Past float32 it would only make the image non-finite, once the model ran.
            (["a <lora:ink-style:1e39>"], ["LoRA ink-style: its weights must be finite numbers that float32 holds"]),
            (["a", "--lora", "ink-style:1:-1e39"], ["float32 holds"]),
            (["a <lora:ink-style:1:dyn=4>"], ["dyn="]),
            (["a", "-n", "<lora:ink-style:1>"], ["negative prompt"]),
            (["a <hypernet:h:1>"], ["hypernetworks are not supported"]),
            (["a <lora:ink-style:1>", "--graph", "freeze"], ["frozen weights", "--graph"]),
        ]
        for args, parts in cases:
            self.assertExit(self.txt2img(*args, "-o", "x.png", model=self.model), EXIT_USAGE, *parts)
        self.write("prompts.txt", "a fox\na fox <lora:ink-styel:1>\n")
        self.assertExit(self.txt2img("--from-file", "prompts.txt", "-o", "{index}.png", model=self.model), EXIT_USAGE,
                        "prompts.txt:2: ", 'no LoRA named "ink-styel"')
        self.assertExit(self.txt2img("a <lora:ink-style:1>", "-o", "x.png", model=TINY), EXIT_USAGE,
                        'no LoRA named "ink-style" (it has none)')
        self.assertNothingWritten("prompts.txt")

    def test_a_deleted_lora_file_is_found_before_any_image(self):
        bundle = self.dir / "b"
        bundle.mkdir()
        for entry in self.model.iterdir():
            if entry.name != "loras":
                (bundle / entry.name).symlink_to(entry)
        (bundle / "loras").mkdir()
        (bundle / "loras" / "detail-loha.safetensors").symlink_to(self.model / "loras" / "detail-loha.safetensors")
        self.write("prompts.txt", "a fox <lora:detail-loha:1>\na fox <lora:ink-style:1>\n")
        self.assertExit(self.txt2img("--from-file", "prompts.txt", "-o", "{index}.png", model=bundle), EXIT_BUNDLE,
                        "prompts.txt:2: ", 'LoRA "ink-style" is missing its file', "add_lora.py")
        self.assertFalse(list(self.dir.glob("*.png")), "a failed run must write nothing")
        result = self.txt2img("a fox <lora:detail-loha:1>", "-o", "a.png", model=bundle)
        self.assertEqual(result.returncode, 0, result.stderr)
        listing = run(["info", bundle], self.dir).stdout
        self.assertIn(f"  LoRA           ink-style [{self.hashes['ink-style']}], deleted (add it again with "
                      f"scripts/add_lora.py {bundle} FILE --overwrite)", listing)
        self.assertExit(self.txt2img("a fox", "--lora", "ink-style:0.5", "-o", "l.png", model=bundle), EXIT_BUNDLE,
                        '--lora: the model bundle\'s LoRA "ink-style" is missing its file')
        self.assertRegex(listing, r"loras/ink-style\.safetensors .* MISSING")

    def test_info_lists_them_and_the_command_makes_the_image_again(self):
        listing = run(["info", self.model], self.dir)
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn(f"  LoRA           ink-style [{self.hashes['ink-style']}], added by a prompt's "
                      "<lora:ink-style:WEIGHT>", listing.stdout)
        self.assertIn("loras/detail-loha.safetensors", listing.stdout)

        self.make(f"a fox {TAGS}", 5, "a.png")
        line = run(["info", "a.png", "--command"], self.dir).stdout.strip()
        self.assertEqual(shlex.split(line)[1], f"a fox {TAGS}")
        again = run_printed_command(line, self.dir, self.model, "b.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual((self.dir / "a.png").read_bytes(), (self.dir / "b.png").read_bytes())


if __name__ == "__main__":
    unittest.main()
