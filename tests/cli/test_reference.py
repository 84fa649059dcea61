"""The command line makes diffusers' image: the reference tiny model converted, the first image of a reference run
(whose noise is the first row of its seeded draw, as an image made alone with that seed), within one 8-bit level."""

import json
import unittest

from cli_support import FIXTURES, SHARED, CliTestCase, png_pixels

RUNS = SHARED / "reference" / "tiny" / "runs"
REF_TINY = FIXTURES / "ref-tiny"


class MatchesDiffusers(CliTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not (REF_TINY / "model.json").is_file() or not RUNS.is_dir():
            raise AssertionError("needs the ref-tiny bundle (ctest builds it) and ../shared/reference")

    def check_run(self, run):
        info = json.loads((RUNS / run / "info.json").read_text())
        args = [info["prompts"][0], "--seed", str(info["seed"]), "--steps", str(info["num_inference_steps"]),
                "--sampler", info["scheduler"], "--cfg-scale", str(info["guidance_scale"]), "--eta", str(info["eta"]),
                "--width", str(info["width"]), "--height", str(info["height"]), "--device", "cpu", "-o", f"{run}.png"]
        if info["negative_prompt"]:
            args += ["--negative-prompt", info["negative_prompt"][0]]
        result = self.txt2img(*args, model=REF_TINY, fast=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        ours = png_pixels(self.dir / f"{run}.png")
        reference = png_pixels(RUNS / run / "image_0.png")
        self.assertEqual(ours[:2], reference[:2])
        self.assertLessEqual(max(abs(a - b) for a, b in zip(ours[2], reference[2])), 1, run)

    def test_ddim(self):
        self.check_run("ddim_s10")

    def test_ddim_negative_prompt_guidance_and_size(self):
        self.check_run("ddim_s10_neg_g5_w24_h16")

    def test_pndm(self):
        self.check_run("pndm_s10")


if __name__ == "__main__":
    unittest.main()
