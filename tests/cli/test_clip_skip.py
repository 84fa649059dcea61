"""--clip-skip (AUTOMATIC1111's "Clip skip"): the images it changes, what the metadata, --json and `txt2img info`
record, prompt-file lines that set "clip_skip", and the values it refuses. The tiny bundle's text encoder has 5
layers."""

import json
import re
import shutil
import tempfile
import unittest
from pathlib import Path

from cli_support import EXIT_USAGE, TINY, CliTestCase, derived_bundle, json_lines, png_pixels, png_text, run

TINY_LAYERS = 5


class ClipSkip(CliTestCase):
    def make(self, name, *args):
        result = self.txt2img("a fox", "-n", "dogs", "--seed", "5", "-o", name, "--json", "-q", *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        [image] = [r for r in json_lines(result.stdout) if r["event"] == "image"]
        return image

    def test_the_bundle_records_its_text_encoder_layers(self):
        self.assertEqual(json.loads((TINY / "model.json").read_text())["text_num_layers"], TINY_LAYERS)

    def test_clip_skip_2_changes_the_image_and_is_recorded(self):
        default = self.make("default.png")
        skipped = self.make("skip2.png", "--clip-skip", "2")
        self.assertEqual((default["clip_skip"], skipped["clip_skip"]), (1, 2))
        self.assertNotEqual(png_pixels(self.dir / "default.png"), png_pixels(self.dir / "skip2.png"))

        text = png_text(self.dir / "skip2.png")
        # As A1111 writes it: after the model, before the extra parameters.
        self.assertRegex(text["parameters"], r"\nSteps: 2, .*, Model: [^,]+, Clip skip: 2, RNG: CPU, Version: ")
        self.assertEqual(json.loads(text["txt2img"])["clip_skip"], 2)

        # `txt2img info` shows both, and its JSON gives what reproduces the image.
        human = run(["info", "skip2.png"], self.dir)
        self.assertEqual(human.returncode, 0, human.stderr)
        self.assertIn("Clip skip: 2", human.stdout)
        self.assertIn('"clip_skip": 2', human.stdout)
        record = json.loads(run(["info", "skip2.png", "--json"], self.dir).stdout)["txt2img"]
        self.make("again.png", "--clip-skip", str(record["clip_skip"]))
        self.assertEqual(png_pixels(self.dir / "again.png"), png_pixels(self.dir / "skip2.png"))

    def test_default_is_1_and_not_written_into_the_parameters(self):
        default = self.make("default.png")
        explicit = self.make("one.png", "--clip-skip", "1")
        self.assertEqual(explicit["clip_skip"], 1)
        for name in ("default.png", "one.png"):
            text = png_text(self.dir / name)
            self.assertNotIn("Clip skip", text["parameters"])
            self.assertEqual(json.loads(text["txt2img"])["clip_skip"], 1)
        # The same file, byte for byte: --clip-skip 1 is exactly today's run.
        self.assertEqual((self.dir / "default.png").read_bytes(), (self.dir / "one.png").read_bytes())
        self.assertEqual(default["clip_skip"], 1)

    def test_every_layer_gives_another_image(self):
        for n in range(1, TINY_LAYERS + 1):  # up to the last layer from the end: the first layer alone
            self.make(f"{n}.png", "--clip-skip", str(n))
        self.assertEqual(len({png_pixels(self.dir / f"{n}.png") for n in range(1, TINY_LAYERS + 1)}), TINY_LAYERS)

    def test_bad_values_are_usage_errors_naming_the_flag(self):
        for value, fragments in [("0", ["clip skip 0", "from 1 to 5"]), ("6", ["clip skip 6", "from 1 to 5"]),
                                 ("-1", ["clip skip -1"]), ("two", []), ("2.5", [])]:
            result = self.txt2img("a fox", "--clip-skip", value)
            self.assertExit(result, EXIT_USAGE, "--clip-skip", *fragments)
            self.assertEqual(len([l for l in result.stderr.splitlines() if l.startswith("error:")]), 1, result.stderr)
            self.assertNothingWritten()

    def test_a_bundle_without_the_layer_count_assumes_sd1s_12(self):
        # Bundles converted before --clip-skip have no "text_num_layers" (nor an encode() method; the C++ tests
        # check that error): the checks before loading assume SD v1's 12 layers.
        elsewhere = Path(tempfile.mkdtemp(prefix="txt2img-cli-bundle-"))
        self.addCleanup(shutil.rmtree, elsewhere, ignore_errors=True)
        old = derived_bundle(elsewhere / "old", edit_manifest=lambda m: {k: v for k, v in m.items()
                                                                        if k != "text_num_layers"})
        result = self.txt2img("a fox", "--clip-skip", "13", model=old)
        self.assertExit(result, EXIT_USAGE, "clip skip 13", "from 1 to 12", "--clip-skip")
        self.assertNothingWritten()
        self.assertEqual(self.txt2img("a fox", "-o", "a.png", model=old).returncode, 0)


class PromptFileClipSkip(CliTestCase):
    def test_a_line_sets_clip_skip(self):
        lines = [{"prompt": "a fox", "seed": 5, "output": "flag.png"},
                 {"prompt": "a fox", "seed": 5, "clip_skip": 1, "output": "one.png"},
                 {"prompt": "a fox", "seed": 5, "clip_skip": 3, "output": "three.png"},
                 {"prompt": "a fox", "seed": 5, "clip_skip": None, "output": "null.png"}]
        self.write("p.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
        result = self.txt2img("--from-file", "p.jsonl", "--clip-skip", "2", "--json", "--batch-size", "4")
        self.assertEqual(result.returncode, 0, result.stderr)
        images = {r["path"]: r["clip_skip"] for r in json_lines(result.stdout) if r["event"] == "image"}
        self.assertEqual(images, {"flag.png": 2, "one.png": 1, "three.png": 3, "null.png": 2})
        for name, clip_skip in images.items():
            text = png_text(self.dir / name)
            self.assertEqual(json.loads(text["txt2img"])["clip_skip"], clip_skip, name)
            self.assertEqual(re.findall(r"Clip skip: (\d+)", text["parameters"]),
                             [] if clip_skip == 1 else [str(clip_skip)], name)
        self.assertEqual(png_pixels(self.dir / "flag.png"), png_pixels(self.dir / "null.png"))
        self.assertEqual(len({png_pixels(self.dir / n) for n in ("flag.png", "one.png", "three.png")}), 3)

        # Each image equals the one made alone with the flag.
        alone = self.txt2img("a fox", "--seed", "5", "--clip-skip", "3", "-o", "alone.png")
        self.assertEqual(alone.returncode, 0, alone.stderr)
        self.assertEqual(png_pixels(self.dir / "alone.png"), png_pixels(self.dir / "three.png"))

    def test_bad_lines_name_the_line(self):
        for value, fragments in [(0, ["clip skip 0", "from 1 to 5"]), (9, ["clip skip 9"]),
                                 ("2", ['"clip_skip" must be a whole number']),
                                 (2.5, ['"clip_skip" must be a whole number'])]:
            self.write("p.jsonl", '{"prompt": "a fox"}\n' + json.dumps({"prompt": "a cat", "clip_skip": value}) + "\n")
            result = self.txt2img("--from-file", "p.jsonl", "--seed", "1")
            self.assertExit(result, EXIT_USAGE, "p.jsonl:2:", *fragments)
            self.assertNothingWritten("p.jsonl")


if __name__ == "__main__":
    unittest.main()
