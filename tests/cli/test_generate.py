"""Generating images: output names, seeds, reproducibility, batching, --json, progress and quiet modes."""

import json
import os
import re
import subprocess
import unittest

from cli_support import (BIN, EXIT_BUNDLE, EXIT_IO, EXIT_NSFW, EXIT_USAGE, FAST, TINY, CliTestCase, derived_bundle,
                         files_under, fixture_bundle, json_lines, png_pixels, png_text, run, run_printed_command,
                         without_taesd)


class Outputs(CliTestCase):
    def test_single_prompt_to_named_file(self):
        result = self.txt2img("a photo of an astronaut riding a horse on mars", "-o", "astronaut.png", "--seed", "1")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["astronaut.png"])
        width, height, _ = png_pixels(self.dir / "astronaut.png")
        self.assertEqual((width, height), (32, 32))

    def test_default_size_comes_from_the_bundle(self):
        result = run(["a fox", "--model", TINY, "--steps", "2", "--device", "cpu", "-o", "fox.png"], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        default = json.loads((TINY / "model.json").read_text())["default_size"]
        self.assertEqual(png_pixels(self.dir / "fox.png")[:2], (default, default))

    def test_default_pattern(self):
        result = self.txt2img("a fox", "--seed", "7", "--images-per-prompt", "2")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["outputs/00000-7.png", "outputs/00001-8.png"])

    def test_output_directory_gets_the_default_file_name(self):
        result = self.txt2img("a fox", "--seed", "7", "-o", "dir/")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["dir/00000-7.png"])

    def test_pattern_placeholders_and_nested_directories(self):
        result = self.txt2img("A Red Fox, in the snow!", "--seed", "3", "--images-per-prompt", "2",
                              "-o", "a/b/{prompt}_{index:03}_{n}_{seed:6}_{{x}}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["a/b/a-red-fox-in-the-snow_000_0_     3_{x}.png",
                                                 "a/b/a-red-fox-in-the-snow_001_1_     4_{x}.png"])

    def test_prompt_slug_width(self):
        result = self.txt2img("abcdefghij klmnop", "--seed", "3", "-o", "{prompt:12}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["abcdefghij-k.png"])

    def test_never_overwrites_without_flag(self):
        self.write("fox.png", "precious")
        result = self.txt2img("a fox", "-o", "fox.png")
        self.assertExit(result, EXIT_IO, "fox.png", "exists", "--overwrite", "--skip-existing")
        self.assertEqual((self.dir / "fox.png").read_text(), "precious")
        # A prompt-file line's output names the line; a dangling symbolic link counts as there.
        self.write("p.jsonl", '{"prompt": "a fox", "output": "fox.png"}\n')
        self.assertExit(self.txt2img("--from-file", "p.jsonl"), EXIT_IO, 'p.jsonl:1: output "fox.png" exists')
        os.symlink("no/such/target.png", self.dir / "link.png")
        self.assertExit(self.txt2img("a fox", "-o", "link.png"), EXIT_IO, 'output "link.png" exists')
        self.assertExit(self.txt2img("a fox", "-o", "link.png", "--seed", "1", "--skip-existing"), EXIT_IO,
                        'output "link.png" is a dangling symbolic link')
        self.assertTrue((self.dir / "link.png").is_symlink())

    def test_dot_dot_after_a_linked_folder_leads_where_the_file_system_says(self):
        """`link/../x.png` is beside the link's target, as `touch link/../x.png` makes it, not beside the link; "."
        components and doubled slashes are left out of the reported name."""
        (self.dir / "real" / "sub").mkdir(parents=True)
        os.symlink(self.dir / "real" / "sub", self.dir / "link")
        result = self.txt2img("a fox", "--seed", "1", "-o", "link/../x.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[0]["path"], "link/../x.png")
        self.assertTrue((self.dir / "real" / "x.png").is_file())
        self.assertFalse((self.dir / "x.png").exists())
        result = self.txt2img("a fox", "--seed", "1", "-o", "./out//./y.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[0]["path"], "out/y.png")

    def test_one_file_under_two_names_and_names_too_long_are_found_first(self):
        """Two prompts whose outputs name one file (a relative and an absolute path, or through a linked folder), and
        a name longer than the file system allows, are usage errors before any image is made."""
        (self.dir / "out").mkdir()
        os.symlink(self.dir / "out", self.dir / "link")
        for other in (str(self.dir / "out" / "y.png"), "link/y.png", "./out/../out/y.png"):
            self.write("p.jsonl", json.dumps({"prompt": "a", "output": other}) + "\n" +
                       json.dumps({"prompt": "b", "output": "out/y.png"}) + "\n")
            self.assertExit(self.txt2img("--from-file", "p.jsonl", "--seed", "1"), EXIT_USAGE,
                            "p.jsonl:1 and p.jsonl:2 would both write")
            self.assertEqual(files_under(self.dir / "out"), [])
        # With variations every image keeps the seed: {seed} is no way out then.
        plain = self.txt2img("a fox", "--seed", "1", "--images-per-prompt", "2", "-o", "fox.png")
        self.assertExit(plain, EXIT_USAGE, "(or {n}, {seed})")
        varied = self.txt2img("a fox", "--seed", "1", "--images-per-prompt", "2", "--variation-strength", "0.5",
                              "-o", "fox.png")
        self.assertExit(varied, EXIT_USAGE, "(or {n}) so that each image gets its own file")
        # Two lines of one seed: neither {n} (0 for both) nor {seed} tells them apart.
        self.write("s.jsonl", json.dumps({"prompt": "a", "seed": 5}) + "\n" + json.dumps({"prompt": "b", "seed": 5}))
        self.assertExit(self.txt2img("--from-file", "s.jsonl", "-o", "{seed}.png"), EXIT_USAGE,
                        "put {index} in the output pattern so that each image gets its own file")
        self.assertExit(self.txt2img("a fox", "--seed", "1", "-o", "a" * 300 + ".png"), EXIT_USAGE,
                        "has a name of 304 bytes, above the 255 a file name may have")
        self.assertExit(self.txt2img("a fox", "--seed", "1", "-o", "{prompt}" + "-x" * 124 + ".png"), EXIT_USAGE,
                        "has a name of 257 bytes")
        # A name of 255 bytes is written: the file written first and renamed has a short name of its own.
        longest = self.txt2img("a fox", "--seed", "1", "-o", "long/" + "a" * 251 + ".png")
        self.assertEqual(longest.returncode, 0, longest.stderr)
        self.assertEqual(os.listdir(self.dir / "long"), ["a" * 251 + ".png"])
        (self.dir / "long" / ("a" * 251 + ".png")).unlink()
        (self.dir / "long").rmdir()
        self.assertNothingWritten("p.jsonl", "s.jsonl", "out", "link")

    def test_overwrite(self):
        self.write("fox.png", "old")
        result = self.txt2img("a fox", "-o", "fox.png", "--overwrite")
        self.assertEqual(result.returncode, 0, result.stderr)
        png_pixels(self.dir / "fox.png")
        self.assertEqual(files_under(self.dir), ["fox.png"])

    def test_existing_file_is_found_before_any_work(self):
        # The second image's file exists: nothing at all is made, not even the first image.
        self.write("out/00001-11.png", "x")
        result = self.txt2img("a fox", "--seed", "10", "--images-per-prompt", "3", "-o", "out/")
        self.assertExit(result, EXIT_IO, "out/00001-11.png")
        self.assertEqual(files_under(self.dir), ["out/00001-11.png"])

    def test_skip_existing_skips_before_generating(self):
        # Another image in the second one's place, which is kept as it is.
        self.assertEqual(self.txt2img("a cat", "--seed", "3", "-o", "out/00001-11.png").returncode, 0)
        placeholder = (self.dir / "out/00001-11.png").read_bytes()
        result = self.txt2img("a fox", "--seed", "10", "--images-per-prompt", "3", "-o", "out/", "--skip-existing",
                              "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        records = json_lines(result.stdout)
        self.assertEqual([r["path"] for r in records if r["event"] == "image"],
                         ["out/00000-10.png", "out/00002-12.png"])
        self.assertEqual(records[-1]["skipped"], 1)
        self.assertEqual((self.dir / "out/00001-11.png").read_bytes(), placeholder)

    def test_skip_existing_with_everything_done_loads_no_model(self):
        self.assertEqual(self.txt2img("a cat", "-o", "fox.png").returncode, 0)
        result = self.txt2img("a fox", "-o", "fox.png", "--seed", "1", "--skip-existing", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[-1]["skipped"], 1)
        self.assertNotIn("loading", result.stderr)
        self.assertIn("nothing to make: the image is there already", result.stderr)

    def test_skip_existing_keeps_no_file_that_is_no_image(self):
        """An empty, foreign, cut-off or damaged file where an image goes (another tool's crash, a copy that stopped,
        an in-place copy interrupted: zeros in the image data, the length kept) is not counted as made: the run
        stops before any work, naming it, and leaves it as it is."""
        self.assertEqual(self.txt2img("a fox", "-o", "whole.png", "--seed", "1").returncode, 0)
        whole = (self.dir / "whole.png").read_bytes()
        idat = whole.index(b"IDAT") + 8
        zeroed = whole[:idat] + bytes(20) + whole[idat + 20:]
        for content in (b"", b"GIF89a", whole[:8], whole[:-12], whole[:-4], zeroed):
            (self.dir / "fox.png").write_bytes(content)
            result = self.txt2img("a fox", "-o", "fox.png", "--seed", "1", "--skip-existing")
            self.assertExit(result, EXIT_IO, 'output "fox.png" exists but does not read as a whole PNG image')
            self.assertEqual((self.dir / "fox.png").read_bytes(), content)

    def test_one_image_s_file_as_another_s_folder_is_refused_before_any_work(self):
        for lines in (['{"prompt": "a", "output": "c/a.png"}', '{"prompt": "b", "output": "c/a.png/b.png"}'],
                      ['{"prompt": "b", "output": "c/a.png/d/b.png"}', '{"prompt": "a", "output": "./c/a.png"}']):
            self.write("p.jsonl", "\n".join(lines) + "\n")
            file_line, folder_line = ("1", "2") if lines[0].endswith('a.png"}') else ("2", "1")
            result = self.txt2img("-f", "p.jsonl", "--seed", "1")
            self.assertExit(result, EXIT_USAGE, f"p.jsonl:{file_line} would write its image to ",
                            f", which p.jsonl:{folder_line} needs as a folder for ", "give one of them another name")
            self.assertEqual(files_under(self.dir), ["p.jsonl"])


class Seeds(CliTestCase):
    def test_same_seed_same_bytes_different_seed_different_bytes(self):
        for name, seed in [("a.png", "5"), ("b.png", "5"), ("c.png", "6")]:
            self.assertEqual(self.txt2img("a fox", "--seed", seed, "-o", name).returncode, 0)
        a, b, c = [(self.dir / n).read_bytes() for n in ["a.png", "b.png", "c.png"]]
        self.assertEqual(a, b)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "c.png"))

    def test_image_k_uses_seed_plus_k(self):
        result = self.txt2img("a fox", "--seed", "100", "--images-per-prompt", "3", "-o", "{n}.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([r["seed"] for r in json_lines(result.stdout)[:-1]], [100, 101, 102])
        # Image 2 alone, made with seed 102, is the same image.
        self.assertEqual(self.txt2img("a fox", "--seed", "102", "-o", "alone.png").returncode, 0)
        self.assertEqual((self.dir / "2.png").read_bytes(), (self.dir / "alone.png").read_bytes())

    def test_ddpm_draws_its_step_noise_from_each_image_s_seed(self):
        """DDPM adds fresh noise at every step, drawn from the image's own seed after its initial noise: the same seed
        makes the same bytes, another seed another image, and image k of a batch is the image seed + k makes alone."""
        common = ["a fox", "--sampler", "ddpm", "--steps", "4"]
        for name, seed in [("a.png", "5"), ("b.png", "5"), ("c.png", "6")]:
            self.assertEqual(self.txt2img(*common, "--seed", seed, "-o", name).returncode, 0)
        self.assertEqual((self.dir / "a.png").read_bytes(), (self.dir / "b.png").read_bytes())
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "c.png"))
        result = self.txt2img(*common, "--seed", "5", "--images-per-prompt", "2", "--batch-size", "2", "-o",
                              "batch-{n}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        # Rows of one U-Net batch may round differently in the last bits.
        batched, alone = png_pixels(self.dir / "batch-1.png")[2], png_pixels(self.dir / "c.png")[2]
        self.assertLessEqual(max(abs(x - y) for x, y in zip(batched, alone)), 1)
        self.assertIn("Steps: 4, Sampler: DDPM,", png_text(self.dir / "a.png")["parameters"])

    def test_random_seed_is_reported_and_reproduces(self):
        result = self.txt2img("a fox", "-o", "r.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        seed = json_lines(result.stdout)[0]["seed"]
        self.assertIn(f"--seed {seed}", result.stderr)
        self.assertEqual(self.txt2img("a fox", "-o", "again.png", "--seed", str(seed)).returncode, 0)
        self.assertEqual((self.dir / "r.png").read_bytes(), (self.dir / "again.png").read_bytes())
        # A seed of -1 asks for a random one, as A1111 and stable-diffusion.cpp take it.
        seeds = set()
        for name in ("minus1.png", "minus1-again.png"):
            result = self.txt2img("a fox", "--seed", "-1", "-o", name, "--json")
            self.assertEqual(result.returncode, 0, result.stderr)
            seeds.add(json_lines(result.stdout)[0]["seed"])
            self.assertIn(f"(random; --seed {json_lines(result.stdout)[0]['seed']} repeats this run)", result.stderr)
        self.assertEqual(len(seeds), 2)
        # No random seed is announced when every image's prompt-file line sets its own.
        self.write("own.jsonl", '{"prompt": "a fox", "seed": 3, "output": "own.png"}\n')
        result = self.txt2img("--from-file", "own.jsonl")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("(random; --seed", result.stderr)

    def test_variation_seeds(self):
        """A1111's variation seed: the images keep the seed, image k takes variation seed V + k; strength 1 (with
        DDIM) is the image of the variation seed; each image can be made again alone, also from its metadata."""
        args = ["a fox", "--seed", "5", "--variation-seed", "100", "--variation-strength", "0.3"]
        result = self.txt2img(*args, "--images-per-prompt", "3", "-o", "{n}.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        images = json_lines(result.stdout)[:-1]
        self.assertEqual([(r["seed"], r["variation"]) for r in images],
                         [(5, {"seed": 100 + k, "strength": 0.3}) for k in range(3)])
        self.assertEqual(len({png_pixels(self.dir / f"{k}.png") for k in range(3)}), 3)
        self.assertIn("Seed: 5, Size: 32x32, Model hash: ", png_text(self.dir / "1.png")["parameters"])
        self.assertIn("Variation seed: 101, Variation seed strength: 0.3,", png_text(self.dir / "1.png")["parameters"])
        self.assertEqual(json.loads(png_text(self.dir / "1.png")["txt2img"])["variation"],
                         {"seed": 101, "strength": 0.3})

        self.assertEqual(self.txt2img("a fox", "--seed", "5", "-o", "plain.png").returncode, 0)
        self.assertNotIn(png_pixels(self.dir / "plain.png"), {png_pixels(self.dir / f"{k}.png") for k in range(3)})
        self.assertNotIn("Variation", png_text(self.dir / "plain.png")["parameters"])
        self.assertIsNone(json.loads(png_text(self.dir / "plain.png")["txt2img"])["variation"])
        # Image 1 alone, and from its metadata.
        self.assertEqual(self.txt2img("a fox", "--seed", "5", "--variation-seed", "101", "--variation-strength", "0.3",
                                      "-o", "alone.png").returncode, 0)
        self.assertEqual(png_pixels(self.dir / "alone.png"), png_pixels(self.dir / "1.png"))
        command = run(["info", "1.png", "--command"], self.dir).stdout.strip()
        self.assertIn("--seed 5 --variation-seed 101 --variation-strength 0.3 ", command)
        # Strength 1: the variation seed's image (DDIM draws no noise after the first); 0: the seed's.
        self.assertEqual(self.txt2img("a fox", "--seed", "5", "--variation-seed", "7", "--variation-strength", "1",
                                      "-o", "one.png").returncode, 0)
        self.assertEqual(self.txt2img("a fox", "--seed", "7", "-o", "seven.png").returncode, 0)
        self.assertEqual(png_pixels(self.dir / "one.png"), png_pixels(self.dir / "seven.png"))

        # A random variation seed is printed; settings that cannot work are usage errors before any work.
        result = self.txt2img("a fox", "--seed", "5", "--variation-strength", "0.5", "-o", "r.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        seed = json_lines(result.stdout)[0]["variation"]["seed"]
        self.assertIn(f"--variation-seed {seed} repeats this run", result.stderr)
        # -1 is the default (random), which needs no strength.
        self.assertEqual(self.txt2img("a fox", "--variation-seed", "-1", "-o", "v.png").returncode, 0)
        for bad, message in [(["--variation-seed", "3"], "--variation-seed needs --variation-strength"),
                             (["--variation-strength", "1.5"], "--variation-strength must be from 0 to 1"),
                             (["--variation-strength", "nan"], "--variation-strength must be from 0 to 1"),
                             (["--variation-strength", "0.5", "--variation-seed", "-2"],
                              '--variation-seed "-2" must be a whole number'),
                             (["--variation-strength", "0.5", "--seed", "1", "--shard", "0/2"],
                              "--shard needs a fixed --variation-seed"),
                             (["--variation-strength", "0.5", "--seed", "1", "--variation-seed", "-1", "--shard",
                               "0/2"], "--shard needs a fixed --variation-seed")]:
            result = self.txt2img("a fox", *bad, "-o", "bad.png")
            self.assertExit(result, EXIT_USAGE, message)
            self.assertFalse((self.dir / "bad.png").exists())

    def test_seed_resize_from(self):
        """A1111's Seed resize from: another image than the seed's alone, none at the image's own size; recorded as A1111
        writes it (after the variation fields) and in the JSON, and made again from either; a malformed size is a
        usage error before any work."""
        result = self.txt2img("a fox", "--seed", "5", "--seed-resize-from", "48x24", "-o", "r.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[0]["seed_resize_from"], {"width": 48, "height": 24})
        self.assertIn("Seed: 5, Size: 32x32, Model hash: ", png_text(self.dir / "r.png")["parameters"])
        self.assertRegex(png_text(self.dir / "r.png")["parameters"], r", Seed resize from: 48x24, (.*, )?RNG: CPU")
        self.assertEqual(json.loads(png_text(self.dir / "r.png")["txt2img"])["seed_resize_from"],
                         {"width": 48, "height": 24})
        for args, name in ((["--seed-resize-from", "32x32"], "same.png"), ([], "plain.png")):
            self.assertEqual(self.txt2img("a fox", "--seed", "5", *args, "-o", name).returncode, 0)
        self.assertEqual(png_pixels(self.dir / "same.png"), png_pixels(self.dir / "plain.png"))
        self.assertNotEqual(png_pixels(self.dir / "r.png"), png_pixels(self.dir / "plain.png"))
        self.assertIsNone(json.loads(png_text(self.dir / "plain.png")["txt2img"])["seed_resize_from"])
        self.assertNotIn("Seed resize", png_text(self.dir / "plain.png")["parameters"])
        command = run(["info", "r.png", "--command"], self.dir).stdout.strip()
        self.assertIn("--seed 5 --seed-resize-from 48x24 ", command)
        again = run_printed_command(command, self.dir, TINY, "again.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(png_pixels(self.dir / "again.png"), png_pixels(self.dir / "r.png"))
        for bad in ("48", "48x", "4x48", "48x24x", "48x5000", "48X24", "-8x8"):
            result = self.txt2img("a fox", "--seed-resize-from", bad, "-o", "bad.png")
            self.assertExit(result, EXIT_USAGE, f'--seed-resize-from "{bad}" must be WxH in pixels')
            self.assertFalse((self.dir / "bad.png").exists())

    def test_eta_noise_seed_delta(self):
        """--ensd (A1111's ENSD) changes the images of samplers that draw noise at each step, not the others', and
        is recorded and given back where it changed them (where not, said once, and left out as A1111 does): DDPM's
        noise at each step too."""
        for sampler in ("euler_a", "ddpm", "ddim"):
            for name, extra in [("plain", []), ("ensd", ["--ensd", "31337"])]:
                result = self.txt2img("a fox", "--seed", "5", "--sampler", sampler, *extra, "-o", f"{sampler}-{name}.png")
                self.assertEqual(result.returncode, 0, result.stderr)
                unused = "--ensd has no effect on the prompt's images: ddim with --eta 0 draws no noise as it steps"
                self.assertEqual(unused in result.stderr, (sampler, name) == ("ddim", "ensd"), result.stderr)
        self.assertNotIn("ENSD", png_text(self.dir / "ddim-ensd.png")["parameters"])
        self.assertEqual(json.loads(png_text(self.dir / "ddim-ensd.png")["txt2img"])["ensd"], 0)
        for sampler in ("euler_a", "ddpm"):
            self.assertNotEqual(png_pixels(self.dir / f"{sampler}-plain.png"),
                                png_pixels(self.dir / f"{sampler}-ensd.png"))
            self.assertIn(", ENSD: 31337,", png_text(self.dir / f"{sampler}-ensd.png")["parameters"])
            self.assertNotIn("ENSD", png_text(self.dir / f"{sampler}-plain.png")["parameters"])
            self.assertEqual(json.loads(png_text(self.dir / f"{sampler}-ensd.png")["txt2img"])["ensd"], 31337)
            self.assertIn("--ensd 31337", run(["info", f"{sampler}-ensd.png", "--command"], self.dir).stdout)
        self.assertEqual(png_pixels(self.dir / "ddim-plain.png"), png_pixels(self.dir / "ddim-ensd.png"))
        self.assertExit(self.txt2img("a fox", "--ensd", "-1", "-o", "bad.png"), EXIT_USAGE, "--ensd")

    def test_dpm_fast(self):
        """A1111's DPM fast: written "Sampler: DPM fast", given back by `info --command`, whose command makes the same
        image; it draws noise after each of its solver steps, which --ensd moves and --eta-ancestral 0 scales away
        (the image then another, and recorded as A1111's Eta)."""
        args = ["--sampler", "dpm_fast", "--steps", "5", "--seed", "5"]
        self.assertRemadeWithEnsd(args, "Steps: 5, Sampler: DPM fast, CFG scale: 7.5,")
        self.assertEqual(self.txt2img("a fox", "-o", "plain.png", *args).returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "plain.png"))
        self.assertEqual(self.txt2img("a fox", "-o", "ode.png", "--eta-ancestral", "0", *args).returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "ode.png"), png_pixels(self.dir / "plain.png"))
        self.assertIn(", Eta: 0.0,", png_text(self.dir / "ode.png")["parameters"])
        self.assertCommandRemakes("ode.png", " --eta-ancestral 0.0 ")

    def test_restart(self):
        """A1111's Restart: written as A1111 writes it (restart_karras a plain "Sampler: Restart"), given back by
        `info --command`, whose command makes the same image; from 20 steps it draws noise where it runs a stretch
        again, which --ensd moves (recorded); below 20 it draws none (--ensd said to do nothing)."""
        args = ["--sampler", "restart_karras", "--steps", "20", "--seed", "5", "--cfg-scale", "5"]
        self.assertRemadeWithEnsd(args, "Steps: 20, Sampler: Restart, CFG scale: 5.0,")
        self.assertEqual(self.txt2img("a fox", "-o", "plain.png", *args).returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "plain.png"))
        fewer = self.txt2img("a fox", "--ensd", "31337", "-o", "b.png", *args[:2], "--steps", "19")
        self.assertEqual(fewer.returncode, 0, fewer.stderr)
        self.assertIn("restart_karras below 20 steps draws no noise as it steps", fewer.stderr)

    def test_a1111_unipc(self):
        """A1111's UniPC: written as A1111 writes it ("Sampler: UniPC", which A1111's own text reads back as
        unipc_a1111), given back by `info --command`, whose command makes the same image, hires pass included; fewer
        than 3 steps, or 4 hires steps, are a usage error naming the least it takes."""
        args = ["--sampler", "unipc_a1111", "--steps", "10", "--seed", "5", "--hires-scale", "1.5", "--hires-steps",
                "5", "--hires-denoise", "0.6"]
        made = self.txt2img("a fox", "--json", "-o", "a.png", *args)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(json_lines(made.stdout)[0]["sampler"], "unipc_a1111")
        parameters = png_text(self.dir / "a.png")["parameters"]
        self.assertIn("Steps: 10, Sampler: UniPC, CFG scale: 7.5,", parameters)
        self.assertCommandRemakes("a.png", " --sampler unipc_a1111 ")
        self.assertEqual(self.txt2img("a fox", "-o", "b.png", *args, "--sampler", "unipc").returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "b.png"))
        self.assertExit(self.txt2img("a fox", "-o", "c.png", "--sampler", "unipc_a1111", "--steps", "2"), EXIT_USAGE,
                        "needs 3 or more steps")
        self.assertExit(self.txt2img("a fox", "-o", "c.png", *args[:4], "--hires-scale", "1.5", "--hires-steps", "3"),
                        EXIT_USAGE, "give it 4 or more steps")
        self.assertFalse((self.dir / "c.png").exists())

    def test_largest_seed(self):
        result = self.txt2img("a fox", "--seed", "9223372036854775807", "--images-per-prompt", "2", "--json",
                              "-o", "{n}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([r["seed"] for r in json_lines(result.stdout)[:-1]], [9223372036854775807, 0])


class Batching(CliTestCase):
    def test_batch_size_does_not_change_images(self):
        runs = {}
        for batch in ["1", "3"]:
            result = self.txt2img("a fox", "--seed", "9", "--images-per-prompt", "4", "--batch-size", batch,
                                  "-o", f"b{batch}/{{n}}.png")
            self.assertEqual(result.returncode, 0, result.stderr)
            runs[batch] = [png_pixels(self.dir / f"b{batch}/{n}.png")[2] for n in range(4)]
        for one, three in zip(runs["1"], runs["3"]):
            self.assertLessEqual(max(abs(x - y) for x, y in zip(one, three)), 1)

    def test_graph_passes_keep_the_image(self):
        runs = {}
        for graph in ["none", "freeze", "optimize"]:
            result = self.txt2img("a fox", "--seed", "9", "--graph", graph, "-o", f"{graph}.png")
            self.assertEqual(result.returncode, 0, result.stderr)
            runs[graph] = png_pixels(self.dir / f"{graph}.png")[2]
        for graph in ["freeze", "optimize"]:
            self.assertLessEqual(max(abs(x - y) for x, y in zip(runs["none"], runs[graph])), 1)

    def test_low_vram_writes_the_image(self):
        """576 pixels wide is 72 latents: above the 64-latent tile, so the decode goes through two tiles, which the
        image records (its pixels differ slightly from a whole decode's) and `info --command` gives back."""
        result = self.txt2img("a fox", "--seed", "9", "--low-vram", "--width", "576", "--height", "64", "-o", "fox.png",
                              "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(png_pixels(self.dir / "fox.png")[:2], (576, 64))
        self.assertTrue(json_lines(result.stdout)[0]["vae_tiling"])
        self.assertTrue(json.loads(png_text(self.dir / "fox.png")["txt2img"])["vae_tiling"])
        self.assertIn(" --low-vram", run(["info", "fox.png", "--command"], self.dir).stdout)
        small = self.txt2img("a fox", "--seed", "9", "--low-vram", "-o", "small.png", "--json")
        self.assertFalse(json_lines(small.stdout)[0]["vae_tiling"])  # one tile: a whole decode
        self.assertNotIn("--low-vram", run(["info", "small.png", "--command"], self.dir).stdout)

    def test_no_cuda_graph_changes_nothing_on_the_cpu(self):
        # The flag only chooses how the U-Net runs on CUDA; a script may pass it on any machine.
        for name, extra in (("default", []), ("plain", ["--no-cuda-graph"])):
            result = self.txt2img("a fox", "--seed", "9", *extra, "-o", f"{name}.png")
            self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual((self.dir / "default.png").read_bytes(), (self.dir / "plain.png").read_bytes())

    def test_batches_span_prompts_with_equal_settings(self):
        self.write("p.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c", "steps": 3}\n{"prompt": "d"}\n')
        result = self.txt2img("--from-file", "p.jsonl", "--seed", "1", "--batch-size", "4", "-o", "{index}.png",
                              "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([r["steps"] for r in json_lines(result.stdout)[:-1]], [2, 2, 3, 2])
        # Prompt 2 (seed 1 + 2) had its own batch, as it would alone.
        alone = self.txt2img("c", "--seed", "3", "--steps", "3", "-o", "c.png")
        self.assertEqual(alone.returncode, 0, alone.stderr)
        self.assertEqual((self.dir / "2.png").read_bytes(), (self.dir / "c.png").read_bytes())


class Reporting(CliTestCase):
    def test_json_records_and_summary(self):
        result = self.txt2img("a fox", "--seed", "4", "--images-per-prompt", "2", "-n", "blurry", "--json",
                              "-o", "{n}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        records = json_lines(result.stdout)
        self.assertEqual([r["event"] for r in records], ["image", "image", "summary"])
        first = records[0]
        for key, value in {"path": "0.png", "prompt": "a fox", "negative_prompt": "blurry", "seed": 4, "steps": 2,
                           "sampler": "ddim", "cfg_scale": 7.5, "width": 32, "height": 32, "nsfw": False,
                           "safety": "replace", "index": 0, "n": 0}.items():
            self.assertEqual(first[key], value, key)
        self.assertEqual(first["model_hash"], json.loads((TINY / "model.json").read_text())["model_hash"])
        self.assertIn("generate_s", first["timings"])
        summary = records[-1]
        self.assertEqual((summary["written"], summary["skipped"], summary["failed"], summary["interrupted"]),
                         (2, 0, 0, False))
        self.assertIn("total_s", summary)

    def test_json_progress(self):
        """--json-progress: a "step" line after each U-Net call of each batch, before that batch's images; progress
        grows to 1 over the whole run. It needs --json."""
        result = self.txt2img("a fox", "--seed", "4", "--images-per-prompt", "3", "--batch-size", "2", "--steps", "3",
                              "--json", "--json-progress", "-o", "{n}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        records = json_lines(result.stdout)
        self.assertEqual([r["event"] for r in records],
                         ["step"] * 3 + ["image"] * 2 + ["step"] * 3 + ["image", "summary"])
        steps = [r for r in records if r["event"] == "step"]
        self.assertEqual([(r["images_done"], r["images"], r["batch"], r["step"], r["steps"]) for r in steps],
                         [(0, 3, 2, 1, 3), (0, 3, 2, 2, 3), (0, 3, 2, 3, 3), (2, 3, 1, 1, 3), (2, 3, 1, 2, 3),
                          (2, 3, 1, 3, 3)])
        progress = [r["progress"] for r in steps]
        self.assertEqual(progress, sorted(progress))
        self.assertAlmostEqual(progress[0], 2 / 9)
        self.assertEqual(progress[-1], 1.0)
        self.assertEqual(steps[-1]["eta_s"], 0)
        self.assertExit(self.txt2img("a fox", "--json-progress", "-o", "x.png"), EXIT_USAGE, "--json")
        # Without it, no step lines.
        plain = self.txt2img("a fox", "--seed", "4", "--json", "-o", "p.png")
        self.assertNotIn("step", [r["event"] for r in json_lines(plain.stdout)])

    def test_json_failures_end_with_an_error_line(self):
        """With --json, a failed run's stdout ends with {"event": "error"} carrying the exit code and stderr's
        message: a refusal before any work (the only line), a usage error where --json was read, an --fail-on-nsfw
        exit after the summary. Without --json, and for info --json, stdout stays empty."""
        def error_line(result, code):
            self.assertEqual(result.returncode, code, result.stderr)
            last = json_lines(result.stdout)[-1]
            self.assertEqual(set(last), {"event", "exit_code", "error"})
            self.assertEqual((last["event"], last["exit_code"]), ("error", code))
            self.assertEqual(result.stderr.strip().splitlines()[-1], "error: " + last["error"])
            return json_lines(result.stdout)

        refused = error_line(self.txt2img("a fox", "--json", "-o", "a.png", model=self.dir / "none"), EXIT_BUNDLE)
        self.assertEqual(len(refused), 1)
        self.assertIn("not found", refused[0]["error"])
        for args in (["a fox", "--json", "--steps", "abc"], ["a fox", "--steps", "abc", "--json"], ["--json"],
                     ["a fox", "--json", "--no-such-flag"]):
            self.assertEqual(len(error_line(self.txt2img(*args), EXIT_USAGE)), 1, args)
        self.write("a.png", "there\n")
        self.assertIn("exists", error_line(self.txt2img("a fox", "--json", "-o", "a.png"), EXIT_IO)[0]["error"])
        flagged = error_line(self.txt2img("a fox", "--json", "--fail-on-nsfw", "-o", "f.png",
                                          model=fixture_bundle("tiny-flag-all")), EXIT_NSFW)
        self.assertEqual([r["event"] for r in flagged], ["image", "summary", "error"])
        self.assertIn("flagged as NSFW", flagged[-1]["error"])
        # A closed pipe does not change a refusal's exit code, even before the run handles SIGPIPE itself.
        closed = subprocess.Popen([BIN, "a fox", "--json", "--bogus"], cwd=self.dir, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        closed.stdout.close()
        self.assertEqual(closed.wait(timeout=60), EXIT_USAGE)
        for quiet in (self.txt2img("a fox", "--steps", "abc"), self.txt2img("a fox", "-o", "a.png"),
                      self.txt2img("info", "no-such.png", "--json")):
            self.assertNotEqual(quiet.returncode, 0)
            self.assertEqual(quiet.stdout, "")

    def test_preview(self):
        """--preview FILE: TAESD's view of the image as it forms, rewritten as the steps go; the image made is the
        same as without it; flagged previews are black like flagged images."""
        result = self.txt2img("a fox", "--seed", "4", "--steps", "4", "--preview", "p.png", "--preview-every", "2",
                              "-o", "a.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        width, height, pixels = png_pixels(self.dir / "p.png")
        self.assertEqual((width, height), (32, 32))
        self.assertNotEqual(set(pixels), {0})
        # No generation parameters: only the mark that lets a later run replace it.
        self.assertEqual(list(png_text(self.dir / "p.png")), ["txt2img-preview"])
        self.assertEqual(self.txt2img("a fox", "--seed", "4", "--steps", "4", "-o", "b.png").returncode, 0)
        self.assertEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "b.png"))
        # --json-progress reports each preview written, after its step.
        reported = self.txt2img("a fox", "--seed", "4", "--steps", "4", "--preview", "p.png", "--preview-every", "2",
                                "--json", "--json-progress", "-o", "j.png")
        events = [(r["event"], r.get("step")) for r in json_lines(reported.stdout)]
        self.assertEqual(events, [("step", 1), ("step", 2), ("preview", 2), ("step", 3), ("step", 4), ("preview", 4),
                                  ("image", None), ("summary", None)])
        self.assertEqual(json_lines(reported.stdout)[2]["path"], "p.png")
        # An interval above an image's calls leaves it without a preview, which is said once.
        sparse = self.txt2img("a fox", "--steps", "3", "--images-per-prompt", "2", "--preview", "s.png",
                              "--preview-every", "4", "-o", "s{n}.png")
        self.assertEqual(sparse.returncode, 0, sparse.stderr)
        self.assertEqual(sparse.stderr.count("--preview-every 4 is more than the 3 U-Net calls of an image here"), 1)
        self.assertFalse((self.dir / "s.png").exists())
        self.assertNotIn("--preview-every", result.stderr)
        flagged = self.txt2img("a fox", "--seed", "4", "--preview", "f.png", "-o", "c.png",
                               model=fixture_bundle("tiny-flag-all"))
        self.assertEqual(flagged.returncode, 0, flagged.stderr)
        self.assertEqual(set(png_pixels(self.dir / "f.png")[2]), {0})

    def test_preview_errors_come_before_any_work(self):
        bundle = without_taesd(self.dir / "b")
        self.assertExit(self.txt2img("a fox", "--preview", "p.png", "-o", "a.png", model=bundle), EXIT_USAGE,
                        "has no TAESD decoder", "without previews")
        self.assertExit(self.txt2img("a fox", "--preview", "p.jpg", "-o", "a.png"), EXIT_USAGE,
                        "--preview p.jpg: the file name must end in .png")
        self.assertExit(self.txt2img("a fox", "--preview", "no/such/dir/p.png", "-o", "a.png"), EXIT_IO,
                        "no directory")
        self.assertFalse((self.dir / "no").exists())
        # A folder the run's images go to is made for the preview too, before the first image is.
        made = self.txt2img("a fox", "--preview", "out/now.png", "-o", "out/{index}.png", "--json",
                            "--json-progress")
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertIn("preview", {line["event"] for line in json_lines(made.stdout)})
        self.assertTrue((self.dir / "out" / "now.png").exists())
        (self.dir / "out" / "now.png").unlink()
        (self.dir / "out" / "0.png").unlink()
        (self.dir / "out").rmdir()
        self.assertExit(self.txt2img("a fox", "--preview-every", "2", "-o", "a.png"), EXIT_USAGE, "--preview")
        # The preview is no image's folder, nor inside an image's file.
        self.assertExit(self.txt2img("a fox", "--preview", "pv/q.png", "-o", "pv/q.png/a.png"), EXIT_USAGE,
                        '--preview "pv/q.png" is a folder that the prompt needs for "pv/q.png/a.png"')
        self.assertExit(self.txt2img("a fox", "--preview", "pv/a.png/p.png", "-o", "pv/a.png"), EXIT_USAGE,
                        '--preview "pv/a.png/p.png" would be inside "pv/a.png", which the prompt writes as its image')
        self.assertFalse((self.dir / "pv").exists())
        for name in ("a.png", "p.png"):
            self.assertFalse((self.dir / name).exists(), name)
        # Each update replaces the preview file: only an earlier preview may be there, never the prompt file, a
        # finished image, a directory, or an image of this run.
        self.write("prompts.txt", "a fox\n")
        self.assertExit(self.txt2img("--from-file", "prompts.txt", "--preview", "prompts.txt", "-o", "a.png"),
                        EXIT_USAGE, "--preview prompts.txt: the file name must end in .png")
        self.assertEqual((self.dir / "prompts.txt").read_text(), "a fox\n")
        self.write("notes.png", "not an image\n")
        self.assertExit(self.txt2img("a fox", "--preview", "notes.png", "-o", "a.png"), EXIT_IO,
                        "--preview notes.png exists and is not an earlier preview (not a PNG)")
        for extra in ([], ["--no-metadata"]):
            self.assertEqual(self.txt2img("a fox", "--steps", "1", "-o", "done.png", "--overwrite", *extra).returncode, 0)
            finished = (self.dir / "done.png").read_bytes()
            self.assertExit(self.txt2img("a fox", "--preview", "done.png", "-o", "a.png"), EXIT_IO,
                            "a PNG txt2img did not write as a preview")
            self.assertEqual((self.dir / "done.png").read_bytes(), finished)
        os.symlink("no/such/preview.png", self.dir / "dangling.png")
        self.assertExit(self.txt2img("a fox", "--preview", "dangling.png", "-o", "a.png"), EXIT_IO,
                        "a dangling symbolic link")
        (self.dir / "folder").mkdir()
        (self.dir / "folder.png").mkdir()
        self.assertExit(self.txt2img("a fox", "--preview", "folder.png", "-o", "a.png"), EXIT_IO, "(not a file)")
        self.assertExit(self.txt2img("a fox", "--preview", "./a.png", "-o", "a.png"), EXIT_USAGE,
                        'the prompt would write its image to "a.png", the --preview file')
        os.symlink("folder", self.dir / "alias")
        self.assertExit(self.txt2img("a fox", "--preview", "alias/a.png", "-o", "folder/a.png"), EXIT_USAGE,
                        "the --preview file")
        self.assertFalse((self.dir / "a.png").exists())

    def test_a_preview_that_cannot_be_written_stops_the_previews_not_the_images(self):
        # /proc is a directory in which no file can be created, not even by root.
        result = self.txt2img("a fox", "--seed", "4", "--images-per-prompt", "2", "--preview",
                              "/proc/txt2img-preview.png", "-o", "{n}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr.count("no more previews in this run"), 1, result.stderr)
        self.assertTrue((self.dir / "0.png").is_file() and (self.dir / "1.png").is_file())

    def test_pipe_prints_at_most_one_line_per_image(self):
        result = self.txt2img("a fox", "--seed", "4", "--images-per-prompt", "3", "-o", "{n}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertNotIn("\r", result.stderr)
        self.assertNotIn("\033", result.stderr)
        self.assertLessEqual(len(result.stderr.splitlines()), 3 + 2)  # images, plus "loading" and the summary
        self.assertEqual(sum("seed" in l and ".png" in l for l in result.stderr.splitlines()), 3)

    def test_quiet(self):
        result = self.txt2img("a fox", "-o", "fox.png", "--quiet")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual((result.stdout, result.stderr), ("", ""))
        failed = self.txt2img("a fox", "-o", "fox.png", "--quiet")
        self.assertExit(failed, EXIT_IO, "error:")

    def test_truncation_warning_names_the_dropped_words(self):
        prompt = " ".join(["cat"] * 80) + " zebra giraffe"
        result = self.txt2img(prompt, "-o", "long.png", "--seed", "1")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("warning:", result.stderr)
        self.assertIn("82 tokens", result.stderr)
        self.assertIn('"cat cat cat cat cat zebra', result.stderr)
        self.assertIn("--long-prompts reads all of it", result.stderr)
        # --json records list what was cut off, for every image of the prompt; with --long-prompts nothing is.
        result = self.txt2img(prompt, "-n", "blurry", "--images-per-prompt", "2", "-o", "j{n}.png", "--json")
        self.assertEqual([r["truncated"] for r in json_lines(result.stdout)[:-1]], [["prompt"], ["prompt"]])
        result = self.txt2img("a fox", "-n", prompt, "-o", "neg.png", "--json")
        self.assertEqual(json_lines(result.stdout)[0]["truncated"], ["negative_prompt"])
        result = self.txt2img(prompt, "--long-prompts", "-o", "whole.png", "--json")
        self.assertEqual(json_lines(result.stdout)[0]["truncated"], [])
        self.assertNotIn("warning", result.stderr)

    def test_prompt_editing(self):
        """With A1111's syntax a prompt's scheduled texts are what the text encoder reads: a too long one is named,
        and the brackets of a plain run are text."""
        long = " ".join(["cat"] * 80) + " zebra"
        result = self.txt2img(f"[a fox:{long}:1]", "--emphasis", "-o", "edited.png", "--seed", "1")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn('the prompt (as prompt editing or AND makes it: "cat cat', result.stderr)
        self.assertIn("81 tokens", result.stderr)
        plain = self.txt2img(f"[a fox:{long}:1]", "-o", "plain.png", "--seed", "1")
        self.assertIn("the prompt is 88 tokens long", plain.stderr)
        self.assertEqual(self.txt2img("[a fox:a cat:1]", "--emphasis", "-o", "short.png").stderr.count("warning"), 0)
        # A1111's composable AND guides at any CFG scale, as A1111 guides every prompt: the negative prompt is read
        # then (no warning that it is unused, another image with another one).
        for n, negative in enumerate(["blurry", "sharp"]):
            result = self.txt2img("a fox AND a cat:0.5", "--emphasis", "--cfg-scale", "1", "-n", negative, "--seed",
                                  "1", "-o", f"and{n}.png")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertNotIn("warning", result.stderr)
        self.assertNotEqual(png_pixels(self.dir / "and0.png"), png_pixels(self.dir / "and1.png"))
        # Such a prompt and a plain one (unguided at a CFG scale of 0.5, where guidance would change it) never share
        # a batch; two plain ones do.
        for lines, batches in (("a fox AND a cat\na fox\n", {1}), ("a fox\na cat\n", {2})):
            self.write("mixed.txt", lines)
            result = self.txt2img("--from-file", "mixed.txt", "--emphasis", "--cfg-scale", "0.5", "--batch-size", "2",
                                  "--json", "--json-progress", "--overwrite", "-o", "b{index}.png")
            self.assertEqual(result.returncode, 0, result.stderr)
            steps = [line for line in json_lines(result.stdout) if line["event"] == "step"]
            self.assertEqual({line["batch"] for line in steps}, batches, lines)
        for prompt, flags in (("a fox AND a cat", ["--emphasis"]), ("a fox AND a cat", ["--cfg-scale", "1"]),
                              ("ANDROID and a fox", ["--emphasis", "--cfg-scale", "1"])):
            result = self.txt2img(prompt, *flags, "-o", f"{len(flags)}.png")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertNotIn("warning", result.stderr)
        # A prompt ending in ":9" is a weight of its guidance, as A1111 reads it; that is pointed out.
        weighted = self.txt2img("a photo 16:9", "--emphasis", "-o", "weighted.png")
        self.assertIn("the prompt ends in a weight, which A1111 (and --emphasis) reads as the strength of its "
                      "guidance: 9.0 times the CFG scale", weighted.stderr)

    def test_long_prompts(self):
        """Encoded whole, in chunks: no warning, another image than the cut-off prompt, the same image for a prompt
        that fits, recorded in the metadata, and the same image whatever the batch."""
        long = " ".join(["cat"] * 80) + " zebra giraffe"
        self.assertEqual(self.txt2img(long, "-o", "cut.png", "--seed", "1").returncode, 0)
        whole = self.txt2img(long, "-o", "whole.png", "--seed", "1", "--long-prompts")
        self.assertEqual(whole.returncode, 0, whole.stderr)
        self.assertNotIn("warning:", whole.stderr)
        self.assertNotEqual(png_pixels(self.dir / "cut.png")[2], png_pixels(self.dir / "whole.png")[2])
        self.assertTrue(json.loads(png_text(self.dir / "whole.png")["txt2img"])["long_prompts"])
        self.assertFalse(json.loads(png_text(self.dir / "cut.png")["txt2img"])["long_prompts"])
        for name, flags in (("short-a.png", []), ("short-b.png", ["--long-prompts"])):
            self.assertEqual(self.txt2img("a fox", "-o", name, "--seed", "2", *flags).returncode, 0)
        self.assertEqual(png_pixels(self.dir / "short-a.png")[2], png_pixels(self.dir / "short-b.png")[2])
        # A long and a short prompt in one run with --batch-size 2 make the images they make alone.
        self.write("prompts.txt", long + "\na fox\n")
        batched = self.txt2img("--from-file", "prompts.txt", "--seed", "1", "--long-prompts", "--batch-size", "2",
                               "-o", "b{index}.png")
        self.assertEqual(batched.returncode, 0, batched.stderr)
        self.assertEqual(png_pixels(self.dir / "b0.png")[2], png_pixels(self.dir / "whole.png")[2])
        self.assertEqual(png_pixels(self.dir / "b1.png")[2], png_pixels(self.dir / "short-b.png")[2])
        # So do two prompts whose negative prompts take different numbers of chunks.
        negative = " ".join(["dog"] * 90)
        alone = self.txt2img(long, "-n", negative, "-o", "negative.png", "--seed", "2", "--long-prompts")
        self.assertEqual(alone.returncode, 0, alone.stderr)
        self.write("prompts.jsonl", json.dumps({"prompt": long, "seed": 1}) + "\n" +
                   json.dumps({"prompt": long, "negative_prompt": negative, "seed": 2}) + "\n")
        batched = self.txt2img("--from-file", "prompts.jsonl", "--long-prompts", "--batch-size", "2",
                               "-o", "n{index}.png")
        self.assertEqual(batched.returncode, 0, batched.stderr)
        self.assertEqual(png_pixels(self.dir / "n0.png")[2], png_pixels(self.dir / "whole.png")[2])
        self.assertEqual(png_pixels(self.dir / "n1.png")[2], png_pixels(self.dir / "negative.png")[2])

    def test_emphasis(self):
        """A1111's brackets: a weight of 1 changes nothing, brackets without the flag are text, the flag is recorded
        (that other weights weigh is pipeline_test's: the tiny model's embeddings have mean 0)."""
        def pixels(name, prompt, *flags):
            result = self.txt2img(prompt, "-o", name, "--seed", "3", *flags)
            self.assertEqual(result.returncode, 0, result.stderr)
            return png_pixels(self.dir / name)[2]

        plain = pixels("plain.png", "a red fox")
        self.assertEqual(pixels("one.png", "a (red:1.0) fox", "--emphasis"), plain)
        self.assertNotEqual(pixels("text.png", "a (red:1.0) fox"), plain)  # without the flag brackets are text
        self.assertTrue(json.loads(png_text(self.dir / "one.png")["txt2img"])["emphasis"])
        self.assertFalse(json.loads(png_text(self.dir / "plain.png")["txt2img"])["emphasis"])

    def test_last_value_of_a_repeated_flag_wins(self):
        result = self.txt2img("a fox", "-o", "first.png", "-o", "second.png", "--steps", "3", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["second.png"])
        self.assertEqual(json_lines(result.stdout)[0]["steps"], 3)

    def test_threads(self):
        """The thread count changes the speed, not the image (beyond float rounding)."""
        for name, threads in (("one.png", "1"), ("two.png", "2")):
            result = self.txt2img("a fox", "--seed", "4", "-o", name, "--threads", threads)
            self.assertEqual(result.returncode, 0, result.stderr)
        one, two = png_pixels(self.dir / "one.png")[2], png_pixels(self.dir / "two.png")[2]
        self.assertLessEqual(max(abs(a - b) for a, b in zip(one, two)), 1)
        self.assertExit(self.txt2img("a fox", "-o", "x.png", "--threads", "0"), EXIT_USAGE, "--threads")

    def test_prompt_flag_for_stable_diffusion_cpp_users(self):
        result = self.txt2img("-p", "a fox", "-n", "ugly", "-s", "3", "-W", "32", "-H", "32", "-o", "fox.png",
                              "--steps", "2", "--device", "cpu", fast=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Negative prompt: ugly", png_text(self.dir / "fox.png")["parameters"])

    def test_subcommand_name_as_prompt_after_double_dash(self):
        result = run(["-o", "info.png", "--model", TINY, *FAST, "--", "info"], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(png_text(self.dir / "info.png")["parameters"].startswith("info\n"))


class Samplers(CliTestCase):
    def test_every_sampler_runs(self):
        """Every sampler --help lists runs, and each of A1111's own schedule types with samplers in turn (each sampler
        on one), recorded as A1111 records them."""
        help_text = run(["--help"], self.dir).stdout
        listed = help_text.split("Samplers: ")[1].splitlines()[0]
        samplers, on_schedules = listed.split("; and on AUTOMATIC1111's schedule types ")
        samplers = samplers.split(", ")
        self.assertIn("ddim", samplers)
        schedules, bases = on_schedules.split(" with the schedule after the name")[0].split(": ")
        schedules = re.split(", | and ", schedules)
        bases = re.split(", | and ", bases)
        self.assertEqual(schedules, ["uniform", "sgm_uniform", "align_your_steps", "simple", "normal", "polyexponential",
                                     "beta", "ddim", "kl_optimal"])
        self.assertIn("dpmpp_2m", bases)
        combined = [f"{base}_{schedules[i % len(schedules)]}" for i, base in enumerate(bases)]
        for sampler in samplers + combined:
            # A1111's UniPC needs as many steps as its order, 3.
            steps = ["--steps", "3"] if sampler == "unipc_a1111" else []
            result = self.txt2img("a fox", "--sampler", sampler, "-o", f"{sampler}.png", "--seed", "1", *steps)
            self.assertEqual(result.returncode, 0, f"{sampler}: {result.stderr}")
        labels = {"uniform": "Uniform", "sgm_uniform": "SGM Uniform", "align_your_steps": "Align Your Steps",
                  "simple": "Simple", "normal": "Normal", "polyexponential": "Polyexponential", "beta": "Beta",
                  "ddim": "DDIM", "kl_optimal": "KL Optimal"}
        schedule = schedules[bases.index("dpmpp_2m") % len(schedules)]
        self.assertIn(f"Sampler: DPM++ 2M, Schedule type: {labels[schedule]},",
                      png_text(self.dir / f"dpmpp_2m_{schedule}.png")["parameters"])
        self.assertIn("Sampler: Euler, Schedule type: Uniform,", png_text(self.dir / "euler_uniform.png")["parameters"])
        # A1111 records the Beta schedule's shape, its default alpha and beta.
        on_beta = [name for name in combined if name.endswith("_beta")][0]
        self.assertIn(", Beta schedule alpha: 0.6, Beta schedule beta: 0.6, ",
                      png_text(self.dir / f"{on_beta}.png")["parameters"])
        self.assertNotIn("Beta schedule", png_text(self.dir / "euler_uniform.png")["parameters"])
        command = run(["info", "heun_align_your_steps.png", "--command"], self.dir)
        self.assertIn(" --sampler heun_align_your_steps ", command.stdout)

    def test_ddim_schedule_type_takes_the_steps_its_stride_fits(self):
        """A1111's DDIM schedule type steps every (1000 // steps)-th training timestep from 1 up: 7 steps take a stride
        of 142 and make 8 calls, as A1111's do; the image records the 7 asked for, and reads back."""
        result = self.txt2img("a fox", "--sampler", "euler_ddim", "--steps", "7", "-o", "a.png", "--seed", "1",
                              "--json", "--json-progress")
        self.assertEqual(result.returncode, 0, result.stderr)
        steps = [line for line in json_lines(result.stdout) if line.get("event") == "step"]
        self.assertEqual([line["step"] for line in steps], list(range(1, 9)))
        self.assertEqual({line["steps"] for line in steps}, {8})
        parameters = png_text(self.dir / "a.png")["parameters"]
        self.assertIn("Steps: 7, Sampler: Euler, Schedule type: DDIM,", parameters)
        command = run(["info", "a.png", "--command"], self.dir)
        self.assertIn(" --steps 7 --sampler euler_ddim ", command.stdout)

    def test_kl_optimal_schedule_type_ends_above_sigma_0(self):
        """A1111's KL Optimal schedule ends at the smallest training sigma, not at 0, so that Heun corrects its last
        step too, as k-diffusion does: 3 steps make 6 calls where they make 5 on the other schedules."""
        calls = {}
        for sampler in ["heun_kl_optimal", "heun_uniform"]:
            result = self.txt2img("a fox", "--sampler", sampler, "--steps", "3", "-o", f"{sampler}.png", "--seed", "1",
                                  "--json", "--json-progress")
            self.assertEqual(result.returncode, 0, result.stderr)
            calls[sampler] = len([line for line in json_lines(result.stdout) if line.get("event") == "step"])
        self.assertEqual(calls, {"heun_kl_optimal": 6, "heun_uniform": 5})
        self.assertIn("Steps: 3, Sampler: Heun, Schedule type: KL Optimal,",
                      png_text(self.dir / "heun_kl_optimal.png")["parameters"])
        command = run(["info", "heun_kl_optimal.png", "--command"], self.dir)
        self.assertIn(" --sampler heun_kl_optimal ", command.stdout)

    def test_other_tools_sampler_names(self):
        # A1111's infotext name on the command line, diffusers' class name in a prompt file: the run records ours and
        # makes the same image as our name does.
        self.write("p.jsonl", json.dumps({"prompt": "a fox", "sampler": "EulerAncestralDiscreteScheduler",
                                          "output": "class.png"}) + "\n")
        runs = [self.txt2img("a fox", "--sampler", "Euler a", "-o", "a1111.png", "--seed", "1", "--json"),
                self.txt2img("--from-file", "p.jsonl", "--seed", "1", "--json"),
                self.txt2img("a fox", "--sampler", "euler_a", "-o", "ours.png", "--seed", "1", "--json")]
        for result in runs:
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(json_lines(result.stdout)[0]["sampler"], "euler_a")
        for name in ["a1111.png", "class.png"]:
            self.assertEqual(png_pixels(self.dir / name), png_pixels(self.dir / "ours.png"))
            self.assertIn("Sampler: Euler a,", png_text(self.dir / name)["parameters"])

    def test_unused_negative_prompt_is_pointed_out(self):
        result = self.txt2img("a fox", "-n", "blurry", "--cfg-scale", "1", "-o", "a.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("the negative prompt is unused: --cfg-scale 1 or less turns classifier-free guidance off",
                      result.stderr)
        self.assertNotIn("unused", self.txt2img("a fox", "-n", "blurry", "-o", "b.png").stderr)
        # A prompt file's line that guides reads it.
        self.write("p.jsonl", '{"prompt": "a fox", "cfg_scale": 7}\n')
        guided = self.txt2img("--from-file", "p.jsonl", "-n", "blurry", "--cfg-scale", "1", "-o", "{index}.png")
        self.assertEqual(guided.returncode, 0, guided.stderr)
        self.assertNotIn("unused", guided.stderr)
        # A run without images says nothing of guidance.
        self.write("none.txt", "# nothing yet\n")
        empty = self.txt2img("--from-file", "none.txt", "-n", "blurry", "--guidance-rescale", "0.5", "-o", "{index}.png")
        self.assertEqual(empty.returncode, 0, empty.stderr)
        self.assertNotIn("unused", empty.stderr)
        self.assertNotIn("no effect", empty.stderr)
        # One whose lines turn guidance off is named for it, not the flag.
        self.write("p.jsonl", '{"prompt": "a fox", "cfg_scale": 1}\n')
        unguided = self.txt2img("--from-file", "p.jsonl", "-n", "blurry", "--guidance-rescale", "0.5", "-o",
                                "{index}.png", "--overwrite")
        self.assertEqual(unguided.returncode, 0, unguided.stderr)
        self.assertIn("the negative prompt is unused: the prompt file's cfg_scale of 1 or less turns classifier-free "
                      "guidance off", unguided.stderr)
        self.assertIn("--guidance-rescale has no effect: it rescales classifier-free guidance, which the prompt file's "
                      "cfg_scale of 1 or less turns off", unguided.stderr)
        # An unread negative prompt is not also said to be too long.
        long = self.txt2img("a fox", "-n", " ".join(["cat"] * 80), "--cfg-scale", "1", "-o", "c.png")
        self.assertEqual(long.returncode, 0, long.stderr)
        self.assertNotIn("tokens long", long.stderr)

    def test_lcm_takes_at_most_its_50_distillation_steps(self):
        result = self.txt2img("a fox", "--sampler", "lcm", "--steps", "51", "-o", "x.png")
        self.assertExit(result, EXIT_USAGE, "at most 50 steps")
        self.assertNothingWritten()
        result = self.txt2img("a fox", "--sampler", "lcm", "--steps", "4", "--cfg-scale", "1", "-o", "lcm.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Steps: 4, Sampler: LCM, CFG scale: 1.0", png_text(self.dir / "lcm.png")["parameters"])

    def test_a1111_lcm(self):
        """A1111's LCM: written as A1111 writes it ("Sampler: LCM", which A1111's own text reads back as lcm_a1111),
        given back by `info --command`, whose command makes the same image; it draws noise after each step but the
        last, which --ensd moves; a hires pass enters its schedule part-way."""
        args = ["--sampler", "lcm_a1111", "--steps", "4", "--cfg-scale", "1.5", "--seed", "5"]
        self.assertRemadeWithEnsd(args, "Steps: 4, Sampler: LCM, CFG scale: 1.5,")
        for name, extra in (("diffusers.png", ["--sampler", "lcm"]), ("plain.png", [])):
            self.assertEqual(self.txt2img("a fox", "-o", name, *args, *extra).returncode, 0)
            self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / name))
        hires = self.txt2img("a fox", "-o", "h.png", *args, "--hires-scale", "1.5", "--hires-steps", "3")
        self.assertEqual(hires.returncode, 0, hires.stderr)
        self.assertCommandRemakes("h.png", " --sampler lcm_a1111 ")

    def test_lcm_model_with_a_guidance_embedding(self):
        """An LCM-distilled model runs one U-Net row per image with the scale as its input: the negative prompt
        changes nothing, the scale does; another sampler gets a warning; info names it."""
        lcm = fixture_bundle("tiny-lcm")
        common = ["--sampler", "lcm", "--steps", "4", "--seed", "2", "-W", "16", "-H", "16"]
        for name, extra in [("a.png", ["--cfg-scale", "8"]), ("b.png", ["--cfg-scale", "8", "-n", "blurry"]),
                            ("c.png", ["--cfg-scale", "2"])]:
            result = self.txt2img("a fox", *common, *extra, "-o", name, model=lcm, fast=False)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertNotIn("it is made for --sampler lcm", result.stderr)
        self.assertEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "b.png"))
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "c.png"))
        unused = self.txt2img("a fox", *common, "-n", "blurry", "-o", "e.png", model=lcm, fast=False)
        self.assertIn("the negative prompt is unused: this LCM-distilled model takes the guidance scale as an input",
                      unused.stderr)
        result = self.txt2img("a fox", "--steps", "2", "-W", "16", "-H", "16", "-o", "d.png", model=lcm, fast=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("this model is LCM-distilled (it takes the guidance scale as an input): it is made for "
                      "--sampler lcm", result.stderr)
        self.assertIn("  guidance       an input of the U-Net (LCM-distilled", run(["info", lcm], self.dir).stdout)

    def test_the_models_own_sampler(self):
        """--sampler model (and "sampler": "model" in a prompt file) runs the sampler of the model's diffusers
        scheduler and records its name; a model without one is a usage error before any work."""
        ref_tiny = fixture_bundle("ref-tiny")  # the reference folder's PNDMScheduler
        self.write("p.jsonl", json.dumps({"prompt": "a fox", "sampler": "model", "output": "file.png"}) + "\n")
        runs = [self.txt2img("a fox", "--sampler", "model", "-o", "model.png", "--seed", "1", "--json",
                             model=ref_tiny),
                self.txt2img("--from-file", "p.jsonl", "--seed", "1", "--json", model=ref_tiny),
                self.txt2img("a fox", "--sampler", "pndm", "-o", "pndm.png", "--seed", "1", "--json", model=ref_tiny)]
        for result in runs:
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(json_lines(result.stdout)[0]["sampler"], "pndm")
        for name in ["model.png", "file.png"]:
            self.assertEqual(png_pixels(self.dir / name), png_pixels(self.dir / "pndm.png"))
        self.assertIn("  scheduler      PNDMScheduler: --sampler model runs it as pndm",
                      run(["info", ref_tiny], self.dir).stdout)

        lcm = fixture_bundle("tiny-lcm")  # an LCMScheduler, as LCM-distilled models come with
        result = self.txt2img("a fox", "--sampler", "model", "--steps", "4", "-W", "16", "-H", "16", "-o", "lcm.png",
                              model=lcm, fast=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("it is made for --sampler lcm", result.stderr)
        self.assertIn("Sampler: LCM,", png_text(self.dir / "lcm.png")["parameters"])

        result = self.txt2img("a fox", "--sampler", "model", "-o", "none.png")  # random weights: no scheduler
        self.assertExit(result, EXIT_USAGE, "sampler \"model\": the model has no scheduler of its own")
        self.assertFalse((self.dir / "none.png").exists())
        self.write("p.jsonl", '{"prompt": "a fox", "sampler": "Model"}\n')  # the line's setting, not a flag
        self.assertExit(self.txt2img("--from-file", "p.jsonl", "-o", "none.png"), EXIT_USAGE,
                        'p.jsonl:1: sampler "Model": the model has no scheduler')
        self.assertIn("  scheduler      none of its own", run(["info", TINY], self.dir).stdout)

    def test_an_outdated_steps_offset_runs_as_diffusers_runs_it(self):
        """StableDiffusionPipeline sets a scheduler config's steps_offset to 1 when it loads (early diffusers
        releases wrote 0), so DDIM and PNDM run the same timesteps from a bundle converted from such a config."""
        def offset_zero(m):
            m["scheduler"]["steps_offset"] = 0
            return m

        outdated = derived_bundle(self.dir / "outdated", edit_manifest=offset_zero)
        for sampler in ["ddim", "pndm"]:
            for name, bundle in [("current", TINY), ("outdated", outdated)]:
                result = self.txt2img("a fox", "--sampler", sampler, "--seed", "3", "-o", f"{sampler}-{name}.png",
                                      model=bundle)
                self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(png_pixels(self.dir / f"{sampler}-current.png"),
                             png_pixels(self.dir / f"{sampler}-outdated.png"))

    def test_zero_terminal_snr_model_with_guidance_rescale(self):
        """A zero-terminal-SNR v-prediction bundle says so; --guidance-rescale (and a prompt file's
        "guidance_rescale") is recorded in --json, the PNG's parameters and `info --command`, whose command makes
        the same image; a sampler whose diffusers class cannot run such a model, and a rescale outside [0, 1], are
        usage errors; without classifier-free guidance it has no effect, and a warning says so."""
        model = fixture_bundle("ref-tiny-zero-snr")
        self.assertIn("  training       v_prediction prediction, zero terminal SNR (every sampler on its trailing "
                      "spacing)", run(["info", model], self.dir).stdout)
        self.assertIn("  training       epsilon prediction\n", run(["info", TINY], self.dir).stdout)
        made = self.txt2img("a fox", "--guidance-rescale", "0.7", "--sampler", "euler_a", "--seed", "5",
                            "--no-safety-checker", "--json", "-o", "a.png", model=model)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(json_lines(made.stdout)[0]["guidance_rescale"], 0.7)
        self.assertIn("CFG scale: 7.5, Guidance rescale: 0.7, Seed: 5", png_text(self.dir / "a.png")["parameters"])
        self.assertCommandRemakes("a.png", " --guidance-rescale 0.7 ", model)
        self.assertPromptFileRemakes("a.png", {"prompt": "a fox", "seed": 5, "guidance_rescale": 0.7}, "--sampler",
                                     "euler_a", "--no-safety-checker", model=model)

        self.assertExit(self.txt2img("a fox", "--sampler", "heun", "--no-safety-checker", "-o", "d.png", model=model),
                        EXIT_USAGE, "the heun sampler cannot run a zero-terminal-SNR model")
        self.assertExit(self.txt2img("a fox", "--guidance-rescale", "1.5", "-o", "d.png"), EXIT_USAGE,
                        "guidance rescale must be from 0 to 1")
        self.assertFalse((self.dir / "d.png").exists())
        unused = self.txt2img("a fox", "--guidance-rescale", "0.7", "--cfg-scale", "1", "-o", "e.png")
        self.assertEqual(unused.returncode, 0, unused.stderr)
        self.assertIn("--guidance-rescale has no effect", unused.stderr)

    def test_skip_early_cfg(self):
        """--skip-early-cfg (and a prompt file's "skip_early_cfg") is recorded as A1111 records it, in --json and
        `info --command`, whose command makes the same image; every call skipped is the unguided image; outside [0, 1] it is a usage error, and without guidance a warning says it
        does nothing."""
        args = ["--sampler", "euler", "--steps", "10", "--seed", "5", "-W", "64", "-H", "64"]
        made = self.txt2img("a fox", "--skip-early-cfg", "0.2", "--json", "-o", "a.png", *args)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(json_lines(made.stdout)[0]["skip_early_cfg"], 0.2)
        self.assertIn(", Skip Early CFG: 0.2,", png_text(self.dir / "a.png")["parameters"])
        self.assertCommandRemakes("a.png", " --skip-early-cfg 0.2 ")
        self.assertEqual(self.txt2img("a fox", "-o", "guided.png", *args).returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "guided.png"))
        self.assertNotIn("Skip Early CFG", png_text(self.dir / "guided.png")["parameters"])

        self.assertPromptFileRemakes("a.png", {"prompt": "a fox", "skip_early_cfg": 0.2}, *args)

        self.assertEqual(self.txt2img("a fox", "--skip-early-cfg", "1", "-o", "all.png", *args).returncode, 0)
        self.assertEqual(self.txt2img("a fox", "--cfg-scale", "1", "-o", "unguided.png", *args).returncode, 0)
        self.assertEqual(png_pixels(self.dir / "all.png"), png_pixels(self.dir / "unguided.png"))

        self.assertExit(self.txt2img("a fox", "--skip-early-cfg", "1.5", "-o", "d.png"), EXIT_USAGE,
                        "skip early CFG must be from 0 to 1")
        self.assertFalse((self.dir / "d.png").exists())
        unused = self.txt2img("a fox", "--skip-early-cfg", "0.5", "--cfg-scale", "1", "-o", "e.png", *args)
        self.assertEqual(unused.returncode, 0, unused.stderr)
        self.assertIn("--skip-early-cfg has no effect", unused.stderr)
        self.assertNotIn("Skip Early CFG", png_text(self.dir / "e.png")["parameters"])

    def test_ngms(self):
        """--ngms (and a prompt file's "ngms") and --ngms-all-steps are recorded as A1111 records them, where they
        skipped a call, and always in --json and `info --command`, whose command makes the same image; a negative
        threshold is a usage error, and warnings say when they do nothing."""
        # DDIM's 10 steps are timesteps 901, 801, ..., 1, which A1111 compares with NGMS: below 450 are calls 5 to 9, of
        # which 5, 7 and 9 are odd.
        args = ["--steps", "10", "--seed", "5", "-W", "64", "-H", "64"]
        made = self.txt2img("a fox", "--ngms", "450", "--json", "-o", "a.png", *args)
        self.assertEqual(made.returncode, 0, made.stderr)
        record = json_lines(made.stdout)[0]
        self.assertEqual((record["ngms"], record["ngms_all_steps"]), (450, False))
        self.assertIn(", NGMS: 450.0,", png_text(self.dir / "a.png")["parameters"])
        self.assertCommandRemakes("a.png", " --ngms 450.0 ")
        self.assertEqual(self.txt2img("a fox", "-o", "guided.png", *args).returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "guided.png"))
        self.assertNotIn("NGMS", png_text(self.dir / "guided.png")["parameters"])

        self.assertPromptFileRemakes("a.png", {"prompt": "a fox", "ngms": 450}, *args)

        # Every call below 450 skipped is another image, recorded as such.
        made = self.txt2img("a fox", "--ngms", "450", "--ngms-all-steps", "-o", "all.png", *args)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertIn(", NGMS: 450.0, NGMS all steps: True,", png_text(self.dir / "all.png")["parameters"])
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "all.png"))
        self.assertCommandRemakes("all.png", " --ngms 450.0 --ngms-all-steps ")

        # Below every timestep it skips nothing: the guided image, the setting in --json only.
        made = self.txt2img("a fox", "--ngms", "0.5", "--json", "-o", "none.png", *args)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(json_lines(made.stdout)[0]["ngms"], 0.5)
        self.assertNotIn("NGMS", png_text(self.dir / "none.png")["parameters"])
        self.assertEqual(png_pixels(self.dir / "none.png"), png_pixels(self.dir / "guided.png"))

        self.assertExit(self.txt2img("a fox", "--ngms", "-1", "-o", "d.png"), EXIT_USAGE,
                        "NGMS must be a finite number of 0 or more")
        self.assertFalse((self.dir / "d.png").exists())
        unused = self.txt2img("a fox", "--ngms", "450", "--cfg-scale", "1", "-o", "e.png", *args)
        self.assertEqual(unused.returncode, 0, unused.stderr)
        self.assertIn("--ngms has no effect", unused.stderr)
        self.assertNotIn("NGMS", png_text(self.dir / "e.png")["parameters"])
        alone = self.txt2img("a fox", "--ngms-all-steps", "-o", "f.png", *args)
        self.assertEqual(alone.returncode, 0, alone.stderr)
        self.assertIn("--ngms-all-steps has no effect without --ngms", alone.stderr)

    def test_eta(self):
        for eta, name in [("0", "a.png"), ("1", "b.png")]:
            self.assertEqual(self.txt2img("a fox", "--eta", eta, "-o", name, "--seed", "1").returncode, 0)
        self.assertNotEqual((self.dir / "a.png").read_bytes(), (self.dir / "b.png").read_bytes())
        self.assertIn("Eta DDIM: 1.0", png_text(self.dir / "b.png")["parameters"])
        # Above 1 DDIM's noise would exceed the step's variance (NaNs): refused before the model loads.
        self.assertExit(self.txt2img("a fox", "--eta", "2", "-o", "c.png"), EXIT_USAGE, "eta must be from 0 to 1")
        self.assertNotIn("loading", self.txt2img("a fox", "--eta", "2", "-o", "c.png").stderr)
        self.assertFalse((self.dir / "c.png").exists())

    def test_step_counts_a_schedule_cannot_take_are_usage_errors(self):
        """1000 steps exceed the training steps with SD v1's DDIM and PNDM schedules, and repeat a timestep in the
        log-SNR solvers' (a zero step, NaNs in diffusers): both refused before the model loads; 999 works."""
        for sampler, message in [("ddim", "outside [0, 999]"), ("dpmpp_2m", "at most 999 steps"),
                                 ("unipc", "at most 999 steps")]:
            result = self.txt2img("a fox", "--sampler", sampler, "--steps", "1000", "-o", "x.png")
            self.assertExit(result, EXIT_USAGE, message)
            self.assertNotIn("loading", result.stderr)
        self.assertEqual(self.txt2img("a fox", "--sampler", "dpmpp_2m", "--steps", "999", "-W", "16", "-H", "16",
                                      "-o", "y.png").returncode, 0)

    def test_eta_refused_for_samplers_without_one(self):
        result = self.txt2img("a fox", "--eta", "0.5", "--sampler", "euler", "-o", "x.png")
        self.assertExit(result, EXIT_USAGE, "eta")
        self.assertNothingWritten()


if __name__ == "__main__":
    unittest.main()
