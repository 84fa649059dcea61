"""The command line makes diffusers' image: the reference tiny model converted, the first image of a reference run
(whose noise is the first row of its seeded draw, as an image made alone with that seed), within one 8-bit level."""

import array
import json
import shlex
import unittest
from pathlib import Path

from cli_support import (FIXTURES, SHARED, CliTestCase, fixture_bundle, png_pixels, png_text, run, safetensors_header,
                         safetensors_tensor)

RUNS = SHARED / "reference" / "tiny" / "runs"
REF_TINY = FIXTURES / "ref-tiny"
# diffusers' inpainting pipeline with the whole image masked (tests/fixtures/make_inpainting_reference.py).
INPAINTING_REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "inpainting_reference.safetensors"


def float32_values(path, key):
    """(shape, values) of one float32 tensor of a .safetensors file."""
    info, data = safetensors_tensor(path, key)
    assert info["dtype"] == "F32", info
    values = array.array("f")
    values.frombytes(data)
    return info["shape"], values


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
        self.assertNotIn("Conditional mask weight", png_text(self.dir / f"{run}.png")["parameters"])

    def test_ddim(self):
        self.check_run("ddim_s10")

    def test_ddim_negative_prompt_guidance_and_size(self):
        self.check_run("ddim_s10_neg_g5_w24_h16")

    def test_pndm(self):
        self.check_run("pndm_s10")

    def test_inpainting_model_with_the_whole_image_masked(self):
        """An inpainting model makes diffusers' inpainting pipeline's image for a white mask, says so in its metadata
        as A1111 does, and its parameters make the same image again."""
        bundle = fixture_bundle("tiny-inpainting")
        info = json.loads(safetensors_header(INPAINTING_REFERENCE)["__metadata__"]["runs"])["ddim_s10_w24_h16"]
        args = [info["prompt"], "--seed", str(info["seed"]), "--steps", str(info["steps"]), "--sampler",
                info["sampler"], "--cfg-scale", str(info["guidance_scale"]), "--width", str(info["width"]),
                "--height", str(info["height"]), "--safety", "report", "--device", "cpu", "-o", "a.png"]
        result = self.txt2img(*args, model=bundle, fast=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        shape, values = float32_values(INPAINTING_REFERENCE, "runs/ddim_s10_w24_h16/image")
        ours = png_pixels(self.dir / "a.png")
        self.assertEqual(ours[:2], (shape[2], shape[1]))
        self.assertLessEqual(max(abs(a - round(b * 255)) for a, b in zip(ours[2], values)), 1)

        text = png_text(self.dir / "a.png")
        self.assertIn(", Conditional mask weight: 1.0, RNG: CPU", text["parameters"])
        self.assertTrue(json.loads(text["txt2img"])["model"]["inpainting"])
        self.assertIn("  inpainting     its U-Net also takes a mask and a masked image",
                      run(["info", bundle], self.dir).stdout)
        command = run(["info", "a.png", "--command"], self.dir)
        self.assertEqual(command.returncode, 0, command.stderr)
        again = self.txt2img(*shlex.split(command.stdout)[1:], "--safety", "report", "-o", "b.png", model=bundle,
                             fast=False)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(png_pixels(self.dir / "b.png"), ours)


if __name__ == "__main__":
    unittest.main()
