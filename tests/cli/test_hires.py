"""A1111's hires fix (--hires-scale and friends) end to end: the image's size, the metadata A1111 reads, the
command that makes the image again, and the flags' errors."""

import json
import re
import shlex
import unittest

from cli_support import (EXIT_USAGE, TINY, CliTestCase, json_lines, png_pixels, png_text, run, run_printed_command)
from test_metadata import a1111_command


class HiresFix(CliTestCase):
    def test_makes_the_larger_image_and_records_it_as_a1111_does(self):
        result = self.txt2img("a fox", "--seed", "3", "--sampler", "euler_a", "--hires-scale", "2", "--hires-steps",
                              "3", "-o", "a.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        width, height, _ = png_pixels(self.dir / "a.png")
        self.assertEqual((width, height), (64, 64))
        event = json_lines(result.stdout)[0]
        self.assertEqual((event["width"], event["height"]), (32, 32))
        self.assertEqual(event["hires"], {"scale": 2.0, "resize": None, "steps": 3, "denoise": 0.7,
                                          "upscaler": "latent", "sampler": "euler_a", "width": 64, "height": 64})
        text = png_text(self.dir / "a.png")
        self.assertIn("Size: 32x32, ", text["parameters"])
        self.assertIn("Denoising strength: 0.7, ", text["parameters"])
        self.assertIn("RNG: CPU, Hires upscale: 2, Hires steps: 3, Hires upscaler: Latent, ", text["parameters"])
        self.assertEqual(json.loads(text["txt2img"])["hires"], event["hires"])

        plain = self.txt2img("a fox", "--seed", "3", "--sampler", "euler_a", "-o", "plain.png", "--json")
        self.assertIsNone(json_lines(plain.stdout)[0]["hires"])
        self.assertNotIn("Hires", png_text(self.dir / "plain.png")["parameters"])
        self.assertNotIn("Denoising strength", png_text(self.dir / "plain.png")["parameters"])

    def test_resize_to_a_size_as_a1111_does(self):
        """--hires-resize WxH (A1111's Resize width to / height to) makes the image that size, covering it and cutting
        the rest in the middle where both sides are given, or keeping the proportions where one is 0; it is recorded
        as A1111's "Hires resize", comes back through info --command (from an A1111 text too), and is refused with a
        scale, alone as a side or with a hires setting and no hires pass."""
        for size, image in (("48x40", (48, 40)), ("0x48", (48, 48)), ("40x0", (40, 40))):
            name = f"{size}.png"
            result = self.txt2img("a fox", "--seed", "3", "--hires-resize", size, "--hires-steps", "2", "-o", name,
                                  "--json")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(png_pixels(self.dir / name)[:2], image, size)
            hires = json_lines(result.stdout)[0]["hires"]
            rx, ry = (int(side) for side in size.split("x"))
            self.assertEqual((hires["scale"], hires["resize"]), (0.0, {"width": rx, "height": ry}))
            self.assertEqual((hires["width"], hires["height"]), image)
            parameters = png_text(self.dir / name)["parameters"]
            self.assertIn(f"RNG: CPU, Hires resize: {size}, Hires steps: 2, ", parameters)
            self.assertNotIn("Hires upscale:", parameters)
            self.assertCommandRemakes(name, f" --hires-resize {size} ")
        result = a1111_command(self, "a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768, "
                                     "Denoising strength: 0.5, Hires resize: 1024x1024, Hires upscaler: Latent, "
                                     "Version: v1.10.1")
        self.assertIn(" --hires-resize 1024x1024 ", result.stdout)
        self.assertNotIn("--hires-scale", result.stdout)
        self.assertNotIn("not carried over", result.stderr)
        # A prompt-file line's hires_scale takes the resize's place: 0 turns the pass off, another scale replaces it.
        self.write("p.jsonl", "".join(json.dumps(line) + "\n" for line in (
            {"prompt": "a fox", "output": "f1.png"}, {"prompt": "a fox", "hires_scale": 0, "output": "f2.png"},
            {"prompt": "a fox", "hires_scale": 1.5, "output": "f3.png"},
            {"prompt": "a fox", "hires_resize": "0x40", "output": "f4.png"})))
        result = self.txt2img("--from-file", "p.jsonl", "--hires-resize", "48x40", "--hires-steps", "2", "--seed", "3")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([png_pixels(self.dir / f"f{k}.png")[:2] for k in (1, 2, 3, 4)],
                         [(48, 40), (32, 32), (48, 48), (40, 40)])
        self.write("q.jsonl", json.dumps({"prompt": "a fox", "hires_resize": "48", "output": "q.png"}) + "\n")
        self.assertExit(self.txt2img("--from-file", "q.jsonl"), EXIT_USAGE,
                        'q.jsonl:1: "hires_resize" "48" must be WxH in pixels')
        self.write("q.jsonl", json.dumps({"prompt": "a fox", "hires_resize": "48x48", "hires_scale": 2}) + "\n")
        self.assertExit(self.txt2img("--from-file", "q.jsonl"), EXIT_USAGE,
                        'a "hires_scale" or a "hires_resize", not both')
        self.assertExit(self.txt2img("a fox", "--hires-resize", "64x64", "--hires-scale", "2", "-o", "b.png"),
                        EXIT_USAGE, "--hires-scale excludes --hires-resize")
        for bad in ("0x0", "64", "64x-8", "8192x64"):
            self.assertExit(self.txt2img("a fox", "--hires-resize", bad, "-o", "b.png"), EXIT_USAGE,
                            f'--hires-resize "{bad}" must be WxH in pixels, each side from 0 to 4096')
        self.assertExit(self.txt2img("a fox", "--hires-steps", "3", "-o", "b.png"), EXIT_USAGE,
                        "--hires-steps requires --hires-scale or --hires-resize")
        self.assertFalse((self.dir / "b.png").exists())

    def test_hires_steps_default_to_the_steps(self):
        """Without --hires-steps the pass runs --steps steps, and the metadata records that number (not a 0 that would
        read as no steps), so info --command gives the flag back and the image made again has the same bytes."""
        result = self.txt2img("a fox", "--seed", "3", "--steps", "3", "-W", "32", "-H", "32", "--device", "cpu",
                              "--hires-scale", "1.5", "-o", "a.png", "--json", fast=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[0]["hires"]["steps"], 3)
        self.assertIn("Hires steps: 3, ", png_text(self.dir / "a.png")["parameters"])
        self.assertEqual(json.loads(png_text(self.dir / "a.png")["txt2img"])["hires"]["steps"], 3)

    def test_another_sampler_for_the_hires_pass(self):
        """--hires-sampler (A1111's Hires sampler) changes the hires pass only, is recorded as A1111 records it, and
        comes back through info --command; the first pass's sampler named again changes nothing."""
        common = ["a fox", "--seed", "3", "--sampler", "euler_a", "--hires-scale", "1.5", "--hires-steps", "3"]
        for name, extra in [("same.png", []), ("again.png", ["--hires-sampler", "Euler a"]),
                            ("heun.png", ["--hires-sampler", "heun"])]:
            result = self.txt2img(*common, *extra, "-o", name, "--json")
            self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(png_pixels(self.dir / "again.png"), png_pixels(self.dir / "same.png"))
        self.assertNotEqual(png_pixels(self.dir / "heun.png"), png_pixels(self.dir / "same.png"))
        self.assertNotIn("Hires sampler", png_text(self.dir / "again.png")["parameters"])
        self.assertIn("Hires upscaler: Latent, Hires sampler: Heun, ", png_text(self.dir / "heun.png")["parameters"])
        self.assertEqual(json_lines(result.stdout)[0]["hires"]["sampler"], "heun")
        line = run(["info", "heun.png", "--command"], self.dir).stdout.strip()
        self.assertIn("--hires-sampler heun", line)
        self.assertNotIn("--hires-sampler", run(["info", "same.png", "--command"], self.dir).stdout)
        again = run_printed_command(line, self.dir, TINY, "heun2.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(png_pixels(self.dir / "heun2.png"), png_pixels(self.dir / "heun.png"))
        # Per prompt-file line, and a DDIM pass after another sampler's first pass (eta stays DDIM's).
        self.write("p.jsonl", json.dumps({"prompt": "a fox", "hires_sampler": "ddim", "output": "ddim.png"}) + "\n")
        result = self.txt2img("--from-file", "p.jsonl", *common[1:], "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[0]["hires"]["sampler"], "ddim")

    def test_a1111_ddim_makes_a1111s_calls(self):
        """A1111's DDIM (ddim_a1111) makes one U-Net call fewer than its steps where they divide 1000, and a hires
        pass of N steps makes N - 2, since A1111 noises it to the timestep above its first call's; its eta is recorded
        as A1111's. A hires pass it leaves no call is refused before the model loads."""
        result = self.txt2img("a fox", "--seed", "3", "--sampler", "ddim_a1111", "--steps", "4", "--eta", "0.5",
                              "--hires-scale", "1.5", "--hires-steps", "5", "-o", "a.png", "--json", "--json-progress")
        self.assertEqual(result.returncode, 0, result.stderr)
        steps = [r for r in json_lines(result.stdout) if r["event"] == "step"]
        self.assertEqual([r["step"] for r in steps], [1, 2, 3, 4, 5, 6])
        self.assertEqual(steps[-1]["steps"], 6)
        parameters = png_text(self.dir / "a.png")["parameters"]
        self.assertIn("Sampler: DDIM, ", parameters)
        self.assertIn("Eta DDIM: 0.5, ", parameters)
        self.assertIn("--sampler ddim_a1111 ", run(["info", "a.png", "--command"], self.dir).stdout)
        self.assertExit(self.txt2img("a fox", "--sampler", "ddim_a1111", "--hires-scale", "1.5", "--hires-steps", "2",
                                     "-o", "b.png"), EXIT_USAGE, "give it 3 or more steps")
        self.assertFalse((self.dir / "b.png").exists())

    def test_a1111_plms_makes_a1111s_calls(self):
        """A1111's PLMS (plms_a1111) makes two U-Net calls in its first step and one in each other, one step fewer
        than its timesteps; it records A1111's "PLMS", and cannot run a hires pass, which A1111 does not offer it."""
        result = self.txt2img("a fox", "--seed", "3", "--sampler", "plms_a1111", "--steps", "4", "-o", "a.png",
                              "--json", "--json-progress")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([r["step"] for r in json_lines(result.stdout) if r["event"] == "step"], [1, 2, 3, 4])
        self.assertIn("Sampler: PLMS, ", png_text(self.dir / "a.png")["parameters"])
        self.assertIn("--sampler plms_a1111 ", run(["info", "a.png", "--command"], self.dir).stdout)
        self.assertExit(self.txt2img("a fox", "--sampler", "euler", "--hires-scale", "1.5", "--hires-sampler",
                                     "plms_a1111", "-o", "b.png"), EXIT_USAGE, "plms_a1111 scheduler cannot start")

    def a1111_round_trip(self, sampler, hires_sampler, name, version=""):
        """Makes an image with a hires pass of those samplers, and reads the samplers back from its A1111 parameters
        alone as A1111's (their txt2img Version replaced by `version`): the parameters, and info --command's
        result."""
        result = self.txt2img("a fox", "--seed", "3", "--sampler", sampler, "--hires-scale", "1.5", "--hires-steps",
                              "3", "--hires-sampler", hires_sampler, "-o", name)
        self.assertEqual(result.returncode, 0, result.stderr)
        parameters = png_text(self.dir / name)["parameters"]
        as_a1111s = re.sub(r", Version: txt2img [^,]*$", version, parameters)
        self.assertNotEqual(as_a1111s, parameters)
        result = a1111_command(self, as_a1111s, "a1111-" + name)
        self.assertEqual(result.returncode, 0, result.stderr)
        args = shlex.split(result.stdout)
        return parameters, result, (args[args.index("--sampler") + 1], args[args.index("--hires-sampler") + 1])

    def test_a1111_schedule_types_of_both_passes(self):
        """Each pass's schedule is recorded so that A1111, which gives a hires sampler without a schedule type the
        first pass's, reads it as made, and txt2img reads the parameters alone back as A1111 reads them: diffusers'
        spacing as A1111's Uniform (the _uniform samplers, where txt2img has them)."""
        # (first pass, hires pass, A1111 version, what the parameters say, what they leave out, what is read back)
        cases = [
            # After a first pass on Karras sigmas, a hires sampler without them names its schedule type: A1111's
            # default where that is the spaced sigmas, Uniform where A1111 1.9 and later default to Karras (DPM2).
            ("Euler Karras", "euler", "", ["Sampler: Euler Karras, ", "Hires sampler: Euler, Hires schedule type: "
                                           "Automatic"], [], ("euler_karras", "euler_uniform")),
            ("DPM2 Karras", "dpm2", ", Version: v1.10.1",
             ["Sampler: DPM2 Karras, ", "Hires sampler: DPM2, Hires schedule type: Uniform"], [],
             ("dpm2_karras", "dpm2_uniform")),
            # An exponential schedule has no A1111 name of its own: it is written as A1111's schedule type, for
            # either pass.
            ("euler_exponential", "heun_karras", "",
             ["Sampler: Euler, Schedule type: Exponential, CFG scale: 7.5, ", "Hires sampler: Heun Karras, "],
             ["Hires schedule type"], ("euler_exponential", "heun_karras")),
            ("euler_a", "dpm2_exponential", "", ["Hires sampler: DPM2, Hires schedule type: Exponential"], [],
             ("euler_a_uniform", "dpm2_exponential")),
            # DPM++ 2M's A1111 default is Karras sigmas: its spaced ones are written as Uniform, for either pass, and
            # read so by A1111 1.9 and later.
            ("dpmpp_2m", "euler_karras", ", Version: v1.10.1",
             ["Sampler: DPM++ 2M, Schedule type: Uniform, CFG scale", "Hires sampler: Euler Karras, "], [],
             ("dpmpp_2m_uniform", "euler_karras")),
            ("euler_karras", "dpmpp_2m", ", Version: v1.10.1", ["Hires sampler: DPM++ 2M, Hires schedule type: Uniform"],
             [], ("euler_karras", "dpmpp_2m_uniform")),
            # A hires pass on the first pass's sampler with another schedule type: A1111 names the schedule type
            # alone.
            ("euler_uniform", "euler_sgm_uniform", "",
             ["Sampler: Euler, Schedule type: Uniform, ", "Hires schedule type: SGM Uniform"], ["Hires sampler"],
             ("euler_uniform", "euler_sgm_uniform")),
        ]
        for i, (sampler, hires_sampler, version, said, unsaid, read_back) in enumerate(cases):
            parameters, result, samplers = self.a1111_round_trip(sampler, hires_sampler, f"{i}.png", version)
            for text in said:
                self.assertIn(text, parameters)
            for text in unsaid:
                self.assertNotIn(text, parameters)
            self.assertEqual(samplers, read_back)
            if i == 0:
                self.assertNotIn("not carried over", result.stderr)

    def test_info_command_makes_the_image_again(self):
        made = self.txt2img("a fox", "--seed", "4", "--hires-scale", "1.5", "--hires-denoise", "0.55",
                            "--hires-upscaler", "latent-bicubic-antialiased", "-o", "a.png")
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(png_pixels(self.dir / "a.png")[:2], (48, 48))
        self.assertIn("Hires upscaler: Latent (bicubic antialiased)", png_text(self.dir / "a.png")["parameters"])
        line = run(["info", "a.png", "--command"], self.dir).stdout.strip()
        args = shlex.split(line)
        for flag, value in (("--hires-scale", "1.5"), ("--hires-denoise", "0.55"),
                            ("--hires-upscaler", "latent-bicubic-antialiased")):
            self.assertEqual(args[args.index(flag) + 1], value)
        self.assertEqual(args[args.index("--hires-steps") + 1], "2")  # the steps that ran, though not given
        again = run_printed_command(line, self.dir, TINY, "b.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual((self.dir / "a.png").read_bytes(), (self.dir / "b.png").read_bytes())

    def test_info_command_reads_an_a1111_hires_fix(self):
        latent = ("a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.6, "
                  "RNG: CPU, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent (nearest-exact), Version: v1.10.1")
        result = a1111_command(self, latent)
        self.assertEqual(result.returncode, 0, result.stderr)
        args = shlex.split(result.stdout)
        self.assertEqual(args[args.index("--hires-scale"):args.index("--hires-scale") + 8],
                         ["--hires-scale", "2", "--hires-steps", "10", "--hires-denoise", "0.6", "--hires-upscaler",
                          "latent-nearest-exact"])
        self.assertNotIn("not carried over", result.stderr)
        self.assertNotIn("--hires-sampler", args)
        # A1111's Hires sampler (with its Hires schedule type) carries over; one txt2img lacks is left out.
        for fields, expected, left_out in [("Hires sampler: DPM++ 2M, Hires schedule type: Karras", "dpmpp_2m_karras",
                                            None),
                                           # A1111 leaves the hires schedule type out when it is the first pass's.
                                           ("Schedule type: Karras, Hires sampler: Heun", "heun_karras", None),
                                           # Restart's own schedule is Karras, not the first pass's Automatic.
                                           ("Hires sampler: Restart", "restart_karras", None),
                                           ("Hires sampler: DPM fast", "dpm_fast", None),
                                           ("Hires sampler: DPM adaptive", None, "Hires sampler: DPM adaptive")]:
            result = a1111_command(self, f"{latent}, {fields}")
            self.assertEqual(result.returncode, 0, result.stderr)
            args = shlex.split(result.stdout)
            if expected:
                self.assertEqual(args[args.index("--hires-sampler") + 1], expected)
            else:
                self.assertNotIn("--hires-sampler", args)
            if left_out:
                self.assertIn(left_out, result.stderr)
            else:
                self.assertNotIn("not carried over", result.stderr)
        # An upscaler that works on pixels has no txt2img equivalent: the hires fix is left out, and said so.
        esrgan = latent.replace("Latent (nearest-exact)", "R-ESRGAN 4x+")
        result = a1111_command(self, esrgan)
        self.assertNotIn("--hires-scale", result.stdout)
        self.assertIn("not carried over (no txt2img equivalent): Denoising strength: 0.6; Hires upscale: 2; "
                      "Hires steps: 10; Hires upscaler: R-ESRGAN 4x+", result.stderr)

    def test_errors(self):
        cases = [
            (["--hires-steps", "4"], ["--hires-steps", "--hires-scale"]),
            (["--hires-denoise", "0.5"], ["--hires-denoise", "--hires-scale"]),
            (["--hires-scale", "2", "--sampler", "pndm"],
             ["hires fix: ", "pndm", "every sampler but pndm, plms_a1111, lcm and tcd"]),
            (["--hires-scale", "0.5"], ["--hires-scale: it must be from 1 to 16, not 0.5"]),
            (["--hires-scale", "0"], ["--hires-scale: it must be from 1 to 16, not 0"]),  # not "no hires fix"
            (["--hires-scale", "2", "--hires-sampler", "lcm"], ["hires fix: ", "lcm"]),
            (["--hires-scale", "2", "--hires-sampler", "nosuch"], ['unknown hires sampler "nosuch"']),
            (["--hires-sampler", "euler"], ["--hires-sampler", "--hires-scale"]),
            (["--hires-scale", "2", "--hires-denoise", "0"], ["denoising strength"]),
            (["--hires-scale", "2", "--hires-upscaler", "esrgan"], ["unknown hires upscaler"]),
            (["--hires-scale", "-1"], ["--hires-scale"]),
        ]
        for args, parts in cases:
            self.assertExit(self.txt2img("a fox", *args, "-o", "x.png"), EXIT_USAGE, *parts)
        self.assertNothingWritten()


if __name__ == "__main__":
    unittest.main()
