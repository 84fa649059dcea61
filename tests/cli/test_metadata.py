"""PNG metadata (A1111 "parameters" text and the "txt2img" JSON chunk), read back with `txt2img info`, and `info` on
model bundles."""

import json
import os
import shlex
import struct
import subprocess
import unittest
import zlib

from cli_support import (BIN, EXIT_BUNDLE, EXIT_IO, EXIT_USAGE, TINY, CliTestCase, derived_bundle, json_lines, png_pixels,
                         png_text, run, run_printed_command, without_taesd)


def manifest():
    return json.loads((TINY / "model.json").read_text())


def with_text_chunk(png: bytes, key: str, text: str, kind: str = "tEXt") -> bytes:
    """The PNG with a text chunk added before IEND: tEXt, as Pillow (and so AUTOMATIC1111) writes "parameters", or
    compressed as tools that optimise PNGs rewrite it: zTXt, or "iTXt" with the compression flag set."""
    if kind == "tEXt":
        data = key.encode("latin-1") + b"\0" + text.encode("latin-1")
    elif kind == "zTXt":
        data = key.encode("latin-1") + b"\0\0" + zlib.compress(text.encode("latin-1"))
    else:
        data = key.encode("latin-1") + b"\0\1\0\0\0" + zlib.compress(text.encode("utf-8"))
    return with_chunk(png, kind, data)


def with_chunk(png: bytes, kind: str, data: bytes) -> bytes:
    """The PNG with a chunk of that type and data added before IEND."""
    chunk = struct.pack(">I", len(data)) + kind.encode() + data + struct.pack(">I", zlib.crc32(kind.encode() + data))
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


def a1111_command(test: CliTestCase, infotext: str, name: str = "a1111.png"):
    """`txt2img info NAME --command` of a PNG (written as NAME) whose only metadata is AUTOMATIC1111's infotext."""
    plain = test.dir / "plain.png"
    if not plain.exists():
        test.assertEqual(test.txt2img("x", "--no-metadata", "-o", "plain.png").returncode, 0)
    (test.dir / name).write_bytes(with_text_chunk(plain.read_bytes(), "parameters", infotext))
    return run(["info", name, "--command"], test.dir)


class Metadata(CliTestCase):
    def test_txt2img_s_own_a1111_text_reads_back_its_samplers(self):
        """Without its txt2img record, an image's A1111 text gives txt2img's samplers back: one on its own timesteps'
        sigmas (no schedule type, or Uniform where A1111's default is another, which _uniform also writes: said)
        rather than A1111's Uniform, and the samplers A1111 lacks by the names txt2img writes for them; and the command
        says that --emphasis and --long-prompts are a guess."""
        for sampler, schedule in (("euler", "(Schedule type|$)"), ("dpmpp_2m", "Schedule type: Uniform"),
                                  ("euler_uniform", "Schedule type: Uniform"), ("ddpm", "Sampler: DDPM, CFG scale"),
                                  ("deis", "Sampler: DEIS, CFG scale"), ("deis_karras", "Sampler: DEIS Karras, CFG"),
                                  ("dpmpp_sde", "Sampler: DPM\\+\\+ SDE, Schedule type: Uniform"),
                                  ("dpmpp_sde_karras", "Sampler: DPM\\+\\+ SDE Karras, CFG"),
                                  ("restart_karras", "Sampler: Restart, CFG"),
                                  ("restart", "Sampler: Restart, Schedule type: Uniform"),
                                  ("restart_exponential", "Sampler: Restart, Schedule type: Exponential")):
            self.assertEqual(self.txt2img("a fox", "--sampler", sampler, "--seed", "5", "-o", "a.png",
                                          "--overwrite").returncode, 0)
            text = png_text(self.dir / "a.png")
            self.assertRegex(text["parameters"], schedule)
            (self.dir / "p.png").write_bytes(with_text_chunk(self.plain(), "parameters", text["parameters"]))
            result = run(["info", "p.png", "--command"], self.dir)
            self.assertEqual(result.returncode, 0, result.stderr)
            words = shlex.split(result.stdout)
            self.assertEqual(words[words.index("--sampler") + 1], sampler)
            self.assertIn("does not say whether the image was made with --emphasis and --long-prompts", result.stderr)
            self.assertIn("a backslash, BREAK, AND", result.stderr)
            self.assertNotIn("--low-vram decoded it in tiles", result.stderr)  # 32x32: one tile
            self.assertEqual("read as dpmpp_2m" in result.stderr, sampler == "dpmpp_2m", result.stderr)
        # A hires pass on the spaced sigmas after a first pass on Karras ones, written "Automatic".
        self.assertEqual(self.txt2img("a fox", "--sampler", "euler_karras", "--hires-scale", "1.5", "--hires-steps",
                                      "2", "--hires-sampler", "euler", "-o", "h.png").returncode, 0)
        text = png_text(self.dir / "h.png")
        self.assertIn("Hires schedule type: Automatic", text["parameters"])
        (self.dir / "p.png").write_bytes(with_text_chunk(self.plain(), "parameters", text["parameters"]))
        result = run(["info", "p.png", "--command"], self.dir)
        words = shlex.split(result.stdout)
        self.assertEqual(words[words.index("--hires-sampler") + 1], "euler")
        self.assertNotIn("alike", result.stderr)  # euler_uniform writes Uniform
        # Only an image above 512 a side may have been decoded in tiles, which the text does not say (this one is
        # 48x48 after its hires pass).
        self.assertNotIn("nor whether --low-vram decoded it in tiles", result.stderr)
        self.assertEqual(self.txt2img("a fox", "--width", "576", "--height", "64", "--steps", "1", "-o", "w.png").returncode,
                         0)
        (self.dir / "p.png").write_bytes(with_text_chunk(self.plain(), "parameters",
                                                         png_text(self.dir / "w.png")["parameters"]))
        self.assertIn("nor whether --low-vram decoded it in tiles", run(["info", "p.png", "--command"], self.dir).stderr)

    def plain(self):
        if not (self.dir / "plain.png").exists():
            self.assertEqual(self.txt2img("x", "--no-metadata", "-o", "plain.png").returncode, 0)
        return (self.dir / "plain.png").read_bytes()

    def test_a_damaged_txt2img_record_hides_nothing_else(self):
        """A txt2img record that is no JSON object, or lacks what a command needs, is shown as text with a warning,
        and --command falls back to the A1111 parameters beside it (an error naming the damage where there are
        none)."""
        self.assertEqual(self.txt2img("a fox", "--seed", "5", "-o", "a.png").returncode, 0)
        text = png_text(self.dir / "a.png")
        self.assertEqual(self.txt2img("x", "--no-metadata", "-o", "plain.png").returncode, 0)
        plain = (self.dir / "plain.png").read_bytes()
        with_parameters = with_text_chunk(plain, "parameters", text["parameters"])
        for name, record in (("cut.png", text["txt2img"][:40]), ("typed.png", text["txt2img"].replace(
                '"prompt":"a fox"', '"prompt":7'))):
            (self.dir / name).write_bytes(with_text_chunk(with_parameters, "txt2img", record))
            result = run(["info", name, "--command"], self.dir)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn(": the command is read from its A1111 parameters instead", result.stderr)
            self.assertTrue(result.stdout.startswith("txt2img 'a fox' --seed 5 "), result.stdout)
            self.assertNotIn("json.exception", result.stderr)
            # Its own text says txt2img made it, whose DDIM text stands for ddim and ddim_a1111 alike.
            self.assertIn("made by txt2img ", result.stderr)
            self.assertIn("txt2img writes Sampler: DDIM for ddim and ddim_a1111 alike: read as ddim", result.stderr)
            self.assertNotIn("A1111 before 1.6", result.stderr)
        # A model field of another type names no model; the command needs none.
        (self.dir / "model.png").write_bytes(with_text_chunk(with_parameters, "txt2img", json.dumps(
            {**json.loads(text["txt2img"]), "model": 5})))
        result = run(["info", "model.png", "--command"], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("made with a model it does not name", result.stderr)
        self.assertTrue(result.stdout.startswith("txt2img 'a fox' --seed 5 "), result.stdout)
        shown = run(["info", "cut.png"], self.dir)
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn("its txt2img text is not a valid JSON object (damaged?); shown as text", shown.stderr)
        self.assertIn("txt2img:\n" + text["txt2img"][:40], shown.stdout)
        # Nested far deeper than any record: damaged, not a crash of the JSON library's recursion.
        deep = '{"x": ' + "[" * 100000 + "]" * 100000 + "}"
        (self.dir / "deep.png").write_bytes(with_text_chunk(with_parameters, "txt2img", deep))
        for args in (["info", "deep.png"], ["info", "deep.png", "--json"], ["info", "deep.png", "--command"]):
            result = run(args, self.dir)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("its txt2img text is not a valid JSON object", result.stderr)
        (self.dir / "alone.png").write_bytes(with_text_chunk(plain, "txt2img", text["txt2img"][:40]))
        self.assertExit(run(["info", "alone.png", "--command"], self.dir), EXIT_IO,
                        "alone.png: its txt2img text is not a valid JSON object")

    def test_compressed_text_chunks_are_read(self):
        """A1111's parameters recompressed by a PNG optimiser (zTXt, compressed iTXt) read as the plain chunk does;
        damaged compressed text is no text."""
        self.assertEqual(self.txt2img("x", "--no-metadata", "-o", "plain.png").returncode, 0)
        plain = (self.dir / "plain.png").read_bytes()
        infotext = "a fox, caf\u00e9\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 32x32, RNG: CPU"
        for kind in ("zTXt", "iTXt"):
            (self.dir / f"{kind}.png").write_bytes(with_text_chunk(plain, "parameters", infotext, kind))
            result = run(["info", f"{kind}.png", "--json"], self.dir)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(json.loads(result.stdout)["parameters"], infotext, kind)
            self.assertIn(" --seed 5 ", run(["info", f"{kind}.png", "--command"], self.dir).stdout)
        # Damaged compressed text (its own checksum wrong) is passed over, with a warning; a chunk that fails the
        # PNG's CRC makes the file corrupt.
        stream = bytearray(zlib.compress(infotext.encode("latin-1")))
        stream[-1] ^= 1
        (self.dir / "damaged.png").write_bytes(with_chunk(plain, "zTXt", b"parameters\0\0" + bytes(stream)))
        result = run(["info", "damaged.png", "--json"], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIsNone(json.loads(result.stdout)["parameters"])
        self.assertEqual(json.loads(result.stdout)["unread"], ['zTXt chunk "parameters": damaged compressed text'])
        self.assertIn('warning: damaged.png: zTXt chunk "parameters": damaged compressed text; not read',
                      result.stderr)
        self.assertExit(run(["info", "damaged.png", "--command"], self.dir), EXIT_IO, "no txt2img or A1111 metadata")
        broken = bytearray(with_text_chunk(plain, "parameters", infotext))
        broken[broken.index(b"Steps")] = ord("s")
        (self.dir / "broken.png").write_bytes(bytes(broken))
        self.assertExit(run(["info", "broken.png"], self.dir), EXIT_IO,
                        "broken.png: corrupt PNG (chunk tEXt fails its CRC check)")
        # iTXt is UTF-8 by definition; one that is not is passed over as Pillow (and so A1111) passes it over.
        (self.dir / "latin1.png").write_bytes(with_chunk(plain, "iTXt", b"parameters\0\0\0\0\0caf\xe9"))
        result = run(["info", "latin1.png", "--json"], self.dir)
        self.assertIsNone(json.loads(result.stdout)["parameters"])
        self.assertIn('latin1.png: iTXt chunk "parameters": not valid UTF-8; not read', result.stderr)

    def test_a1111_parameters(self):
        result = self.txt2img("a photo of an astronaut", "-n", "blurry, low quality", "--seed", "1",
                              "--cfg-scale", "7", "-o", "a.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        m = manifest()
        expected = ("a photo of an astronaut\nNegative prompt: blurry, low quality\n"
                    f"Steps: 2, Sampler: DDIM, CFG scale: 7.0, Seed: 1, Size: 32x32, Model hash: {m['model_hash']}, "
                    f"Model: {m['model_name']}, RNG: CPU, Version: txt2img ")
        self.assertTrue(png_text(self.dir / "a.png")["parameters"].startswith(expected),
                        png_text(self.dir / "a.png")["parameters"])

    def test_negative_prompt_line_omitted_when_empty(self):
        self.assertEqual(self.txt2img("a fox", "--seed", "2", "--sampler", "pndm", "-o", "a.png").returncode, 0)
        lines = png_text(self.dir / "a.png")["parameters"].split("\n")
        self.assertEqual(lines[0], "a fox")
        self.assertTrue(lines[1].startswith("Steps: 2, Sampler: PLMS, CFG scale: 7.5, Seed: 2, Size: 32x32"), lines)
        self.assertEqual(len(lines), 2)

    def test_reproduction_json(self):
        self.assertEqual(self.txt2img("a fox", "-n", "dogs", "--seed", "3", "--eta", "0.5", "-o", "a.png").returncode,
                         0)
        record = json.loads(png_text(self.dir / "a.png")["txt2img"])
        m = manifest()
        for key, value in {"prompt": "a fox", "negative_prompt": "dogs", "seed": 3, "steps": 2, "sampler": "ddim",
                           "eta": 0.5, "cfg_scale": 7.5, "width": 32, "height": 32, "dtype": "fp32", "device": "cpu",
                           "model": {"name": m["model_name"], "hash": m["model_hash"]},
                           "safety": {"mode": "replace", "nsfw": False}}.items():
            self.assertEqual(record[key], value, key)
        self.assertIn("version", record)
        self.assertIn("Eta DDIM: 0.5", png_text(self.dir / "a.png")["parameters"])

    def test_replaced_vae_is_recorded_as_a1111_does(self):
        def with_vae(m):
            m["vae_name"], m["vae_hash"] = "vae-ft-mse-840000-ema-pruned.safetensors", "c6a580b13a"
            return m

        bundle = derived_bundle(self.dir / "b", edit_manifest=with_vae)
        result = self.txt2img("a fox", "--seed", "4", "-o", "a.png", "--json", model=bundle)
        self.assertEqual(result.returncode, 0, result.stderr)
        m = manifest()
        self.assertIn(f"Model hash: {m['model_hash']}, Model: {m['model_name']}, VAE hash: c6a580b13a, "
                      "VAE: vae-ft-mse-840000-ema-pruned.safetensors, RNG: CPU", png_text(self.dir / "a.png")["parameters"])
        self.assertEqual(json.loads(png_text(self.dir / "a.png")["txt2img"])["model"],
                         {"name": m["model_name"], "hash": m["model_hash"],
                          "vae": {"name": "vae-ft-mse-840000-ema-pruned.safetensors", "hash": "c6a580b13a"}})
        image = json.loads(result.stdout.splitlines()[0])
        self.assertEqual((image["vae_name"], image["vae_hash"]),
                         ("vae-ft-mse-840000-ema-pruned.safetensors", "c6a580b13a"))
        info = run(["info", bundle], self.dir)
        self.assertIn("  VAE            vae-ft-mse-840000-ema-pruned.safetensors [c6a580b13a] (replaces the model's)\n",
                      info.stdout)
        # Without one: no VAE fields in the text, null in --json, no line in info.
        result = self.txt2img("a fox", "--seed", "4", "-o", "b.png", "--json")
        self.assertNotIn("VAE", png_text(self.dir / "b.png")["parameters"])
        self.assertNotIn("vae", json.loads(png_text(self.dir / "b.png")["txt2img"])["model"])
        self.assertEqual(json.loads(result.stdout.splitlines()[0])["vae_name"], None)
        self.assertNotIn("VAE ", run(["info", TINY], self.dir).stdout)

    def test_taesd_decoder_is_recorded_and_reproduced(self):
        def named(m):
            m["taesd_name"], m["taesd_hash"] = "taesd", "0123abcdef"
            return m

        bundle = derived_bundle(self.dir / "b", edit_manifest=named)
        result = self.txt2img("a fox", "--seed", "4", "--decoder", "taesd", "-o", "a.png", "--json", model=bundle)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(", VAE Decoder: TAESD, RNG: CPU", png_text(self.dir / "a.png")["parameters"])
        record = json.loads(png_text(self.dir / "a.png")["txt2img"])
        self.assertEqual(record["decoder"], "taesd")
        self.assertEqual(record["model"]["taesd"], {"name": "taesd", "hash": "0123abcdef"})
        self.assertEqual(json.loads(result.stdout.splitlines()[0])["decoder"], "taesd")
        self.assertIn("  TAESD decoder  taesd [0123abcdef]\n", run(["info", bundle], self.dir).stdout)
        # The command it gives makes the same image; the VAE's image is another.
        line = run(["info", "a.png", "--command"], self.dir).stdout.strip()
        self.assertEqual(shlex.split(line)[-2:], ["--decoder", "taesd"])
        again = run_printed_command(line, self.dir, bundle, "b.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "b.png"))
        self.assertEqual(self.txt2img("a fox", "--seed", "4", "-o", "c.png").returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "c.png"))
        full = png_text(self.dir / "c.png")
        self.assertNotIn("VAE Decoder", full["parameters"])
        self.assertEqual(json.loads(full["txt2img"])["decoder"], "full")
        self.assertNotIn("--decoder", run(["info", "c.png", "--command"], self.dir).stdout)
        # An A1111 image decoded with TAESD asks for it too.
        infotext = "a fox\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32, VAE Decoder: TAESD, RNG: CPU"
        result = a1111_command(self, infotext)
        self.assertEqual(shlex.split(result.stdout.strip())[-2:], ["--decoder", "taesd"])
        self.assertNotIn("not carried over", result.stderr)

    def test_a1111_skip_early_cfg(self):
        """A1111's "Skip Early CFG" (its option "Ignore negative prompt during early sampling") carries over."""
        infotext = "a fox\nSteps: 10, Sampler: Euler, CFG scale: 7.5, Seed: 5, Size: 64x64, Skip Early CFG: 0.2, RNG: CPU"
        result = a1111_command(self, infotext)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(" --skip-early-cfg 0.2 ", result.stdout)
        self.assertNotIn("not carried over", result.stderr)

    def test_a1111_ngms(self):
        """A1111's NGMS (Negative Guidance minimum sigma) and "NGMS all steps" carry over."""
        infotext = ("a fox\nSteps: 10, Sampler: Euler, CFG scale: 7.5, Seed: 5, Size: 64x64, RNG: CPU, NGMS: 1.5, "
                    "NGMS all steps: True")
        result = a1111_command(self, infotext)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(" --ngms 1.5 --ngms-all-steps ", result.stdout)
        self.assertNotIn("not carried over", result.stderr)

    def test_a1111_inpainting_mask_weight(self):
        """A1111 records an inpainting model's mask weight, which its txt2img reads only in a hires pass: there a weight
        below 1 conditions the pass on the first pass's image, which txt2img does not do."""
        infotext = "a fox\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32, {}RNG: CPU"
        hires = "Denoising strength: 0.7, Hires upscale: 2, Hires upscaler: Latent, "
        for weight in ("1.0", "1", "0.5"):
            result = a1111_command(self, infotext.format(f"Conditional mask weight: {weight}, "))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertNotIn("not carried over", result.stderr)
        for weight in ("1.0", "1"):
            result = a1111_command(self, infotext.format(f"{hires}Conditional mask weight: {weight}, "))
            self.assertIn("--hires-scale 2", result.stdout)
            self.assertNotIn("not carried over", result.stderr)
        result = a1111_command(self, infotext.format(f"{hires}Conditional mask weight: 0.5, "))
        self.assertIn("not carried over (no txt2img equivalent): Conditional mask weight: 0.5\n", result.stderr)

    def test_tiling_is_recorded_and_reproduced(self):
        """A1111's Tiling: "Tiling: True" after RNG, as A1111 writes it, and "tiling" in the record; the command that
        info gives makes the same image, and an A1111 image made with it asks for it."""
        result = self.txt2img("a fox", "--seed", "4", "--tiling", "-o", "a.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(", RNG: CPU, Tiling: True, Version: ", png_text(self.dir / "a.png")["parameters"])
        self.assertTrue(json.loads(png_text(self.dir / "a.png")["txt2img"])["tiling"])
        self.assertTrue(json.loads(result.stdout.splitlines()[0])["tiling"])
        line = run(["info", "a.png", "--command"], self.dir).stdout.strip()
        self.assertIn("--tiling", shlex.split(line))
        again = run_printed_command(line, self.dir, TINY, "b.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "b.png"))
        self.assertEqual(self.txt2img("a fox", "--seed", "4", "-o", "c.png").returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "c.png"))
        self.assertNotIn("Tiling", png_text(self.dir / "c.png")["parameters"])
        self.assertFalse(json.loads(png_text(self.dir / "c.png")["txt2img"])["tiling"])
        self.assertNotIn("--tiling", run(["info", "c.png", "--command"], self.dir).stdout)
        infotext = "a fox\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32, RNG: CPU, Tiling: True"
        result = a1111_command(self, infotext)
        self.assertIn("--tiling", shlex.split(result.stdout))
        self.assertNotIn("not carried over", result.stderr)

    def test_emphasis_mode_is_recorded_and_reproduced(self):
        """A1111's Emphasis mode: --emphasis-mode (which implies --emphasis) is "emphasis_mode" in the record and, as
        A1111 writes it, "Emphasis: No norm" where it is not Original and a text it read has a bracket; the command
        that info gives makes the same image, and an A1111 image's field asks for the mode."""
        prompt = "a (red:1.5) [fox]"
        result = self.txt2img(prompt, "--seed", "4", "--emphasis-mode", "no-norm", "-o", "a.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        parameters = png_text(self.dir / "a.png")["parameters"]
        self.assertIn(", RNG: CPU, Emphasis: No norm, Version: ", parameters)
        record = json.loads(png_text(self.dir / "a.png")["txt2img"])
        self.assertEqual((record["emphasis"], record["emphasis_mode"]), (True, "no-norm"))
        self.assertCommandRemakes("a.png", " --emphasis-mode no-norm ")
        for mode, name in (("original", "c.png"), ("ignore", "d.png"), ("none", "h.png")):
            self.assertEqual(self.txt2img(prompt, "--seed", "4", "--emphasis-mode", mode, "-o", name).returncode, 0)
            self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / name), mode)
        self.assertNotIn("Emphasis", png_text(self.dir / "c.png")["parameters"])
        self.assertNotIn("--emphasis-mode", run(["info", "c.png", "--command"], self.dir).stdout)
        self.assertIn(", Emphasis: Ignore, ", png_text(self.dir / "d.png")["parameters"])
        # Ignore reads the brackets as no tokens and leaves out the weights.
        self.assertEqual(self.txt2img("a red fox", "--seed", "4", "--emphasis", "-o", "e.png").returncode, 0)
        self.assertEqual(png_pixels(self.dir / "d.png"), png_pixels(self.dir / "e.png"))
        # Without a bracket in what it read A1111 writes no mode.
        self.assertEqual(self.txt2img("a fox", "--emphasis-mode", "no-norm", "-o", "f.png").returncode, 0)
        self.assertNotIn("Emphasis", png_text(self.dir / "f.png")["parameters"])
        self.assertEqual(json.loads(png_text(self.dir / "f.png")["txt2img"])["emphasis_mode"], "no-norm")
        self.assertIn(", Emphasis: None, ", png_text(self.dir / "h.png")["parameters"])
        self.assertExit(self.txt2img("a fox", "--emphasis-mode", "nothing", "-o", "g.png"), EXIT_USAGE,
                        "--emphasis-mode")
        self.assertFalse((self.dir / "g.png").exists())
        infotext = "a (fox)\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32, RNG: CPU, Emphasis: {}"
        for label, mode in (("No norm", "no-norm"), ("Ignore", "ignore"), ("None", "none"), ("Original", None)):
            result = a1111_command(self, infotext.format(label), f"{mode}.png")
            args = shlex.split(result.stdout)
            self.assertEqual(args[args.index("--emphasis-mode") + 1] if "--emphasis-mode" in args else None, mode)
            self.assertNotIn("not carried over", result.stderr)
        result = a1111_command(self, infotext.format("Strong"), "strong.png")
        self.assertNotIn("--emphasis-mode", result.stdout)
        self.assertIn("Emphasis: Strong", result.stderr)

    def test_eta_ancestral_is_recorded_and_reproduced(self):
        """--eta-ancestral (A1111's "Eta for k-diffusion samplers") is written "Eta: 0.5" where it is not 1 and kept
        in the record; the command info gives makes the same image, the default another. An A1111 text's Eta becomes
        the flag where a pass's sampler takes it (its hires pass's too), and is listed as not carried over where
        none does; a sampler without it refuses it before anything is written."""
        result = self.txt2img("a fox", "--seed", "4", "--sampler", "euler_a", "--eta-ancestral", "0.5", "-o", "a.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        parameters = png_text(self.dir / "a.png")["parameters"]
        self.assertIn("Sampler: Euler a,", parameters)
        self.assertIn(", Eta: 0.5,", parameters)
        self.assertEqual(json.loads(png_text(self.dir / "a.png")["txt2img"])["eta_ancestral"], 0.5)
        self.assertCommandRemakes("a.png", " --eta-ancestral 0.5 ")
        self.assertEqual(self.txt2img("a fox", "--seed", "4", "--sampler", "euler_a", "-o", "c.png").returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "c.png"))
        self.assertNotIn("Eta", png_text(self.dir / "c.png")["parameters"])
        self.assertEqual(json.loads(png_text(self.dir / "c.png")["txt2img"])["eta_ancestral"], 1.0)
        self.assertNotIn("--eta-ancestral", run(["info", "c.png", "--command"], self.dir).stdout)

        infotext = ("a fox\nSteps: 20, Sampler: {}, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, "
                    "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent, {}Eta: 0.67, "
                    "Version: v1.10.1")
        for sampler, hires, flag in (("DPM++ 2M", "Hires sampler: Euler a, ", True), ("DPM++ SDE", "", True),
                                     ("DPM++ 2M", "", False)):
            result = a1111_command(self, infotext.format(sampler, hires))
            self.assertEqual(result.returncode, 0, result.stderr)
            args = shlex.split(result.stdout)
            if flag:
                self.assertEqual(args[args.index("--eta-ancestral") + 1], "0.67")
                self.assertNotIn("Eta", result.stderr)
            else:
                self.assertNotIn("--eta-ancestral", args)
                self.assertIn("not carried over (no txt2img equivalent): Eta: 0.67", result.stderr)

        self.assertExit(self.txt2img("a fox", "--sampler", "euler", "--eta-ancestral", "0.5", "-o", "f.png"),
                        EXIT_USAGE, "eta ancestral applies only to the euler_a, dpm2_a, dpmpp_2s_a")
        self.assertExit(self.txt2img("a fox", "--sampler", "euler_a", "--eta-ancestral", "2", "-o", "f.png"),
                        EXIT_USAGE, "eta ancestral must be from 0 to 1")
        self.assertFalse((self.dir / "f.png").exists())

    def test_tcd_gamma_is_recorded_and_reproduced(self):
        """TCD's gamma is --eta: written "Sampler: TCD, ..., Eta: 0.3" (A1111 has no TCD) and in the record; the
        command info gives makes the same image, another gamma another image; TCD runs no hires pass."""
        result = self.txt2img("a fox", "--seed", "4", "--sampler", "tcd", "--steps", "4", "--eta", "0.3",
                              "--cfg-scale", "1", "-o", "a.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        parameters = png_text(self.dir / "a.png")["parameters"]
        self.assertIn("Sampler: TCD,", parameters)
        self.assertIn(", Eta: 0.3,", parameters)
        self.assertNotIn("Eta DDIM", parameters)
        self.assertEqual(json.loads(png_text(self.dir / "a.png")["txt2img"])["eta"], 0.3)
        self.assertCommandRemakes("a.png", " --eta 0.3 ")
        self.assertEqual(self.txt2img("a fox", "--seed", "4", "--sampler", "tcd", "--steps", "4", "--cfg-scale", "1",
                                      "-o", "c.png").returncode, 0)
        self.assertNotEqual(png_pixels(self.dir / "a.png"), png_pixels(self.dir / "c.png"))
        # Its A1111-style text alone reads back too.
        result = a1111_command(self, parameters.replace("Version: txt2img", "Version: other"), "d.png")
        args = shlex.split(result.stdout)
        self.assertEqual((args[args.index("--sampler") + 1], args[args.index("--eta") + 1]), ("tcd", "0.3"))
        self.assertNotIn("not carried over", result.stderr)
        self.assertExit(self.txt2img("a fox", "--sampler", "tcd", "--hires-scale", "2", "-o", "e.png"), EXIT_USAGE,
                        "tcd")
        self.assertExit(self.txt2img("a fox", "--sampler", "euler", "--eta", "0.3", "-o", "f.png"), EXIT_USAGE,
                        "ddim, ddim_a1111 and tcd")

    def test_taesd_needs_a_bundle_with_one(self):
        bundle = without_taesd(self.dir / "b")
        self.assertExit(self.txt2img("a fox", "--decoder", "taesd", "-o", "a.png", model=bundle), EXIT_USAGE,
                        "has no TAESD decoder", "--taesd")
        self.assertIn("  TAESD decoder  none (convert.py --taesd adds one", run(["info", bundle], self.dir).stdout)
        self.assertExit(self.txt2img("a fox", "--decoder", "tiny", "-o", "a.png"), EXIT_USAGE, "--decoder")
        self.assertFalse((self.dir / "a.png").exists())

    def test_merged_loras_are_named_as_a1111_does(self):
        """A1111's "Lora hashes" for the LoRAs merged into the bundle (file name without extension and the list's
        separators: 12-digit hash); bundles converted before the hash was recorded write none."""
        def merged(m):
            m["source"]["loras"] = [
                {"path": "/loras/ink-style.safetensors", "sha256": "0" * 64, "a1111_hash": "0123456789ab",
                 "weight": 0.8, "format": "kohya", "modules": 9},
                {"path": "/loras/old.safetensors", "sha256": "1" * 64, "weight": 1.0, "format": "kohya", "modules": 9},
                {"path": "/loras/lcm-lora-sdv1-5.safetensors", "sha256": "2" * 64, "a1111_hash": "ba9876543210",
                 "weight": 1.0, "format": "peft", "modules": 9},
                {"path": "/loras/a,b:c.safetensors", "sha256": "3" * 64, "a1111_hash": "fedcba987654",
                 "weight": 1.0, "format": "kohya", "modules": 9}]
            return m

        bundle = derived_bundle(self.dir / "b", edit_manifest=merged)
        self.assertEqual(self.txt2img("a fox", "--seed", "4", "-o", "a.png", model=bundle).returncode, 0)
        self.assertIn(', RNG: CPU, Lora hashes: "ink-style: 0123456789ab, lcm-lora-sdv1-5: ba9876543210, '
                      'abc: fedcba987654", Version: ',
                      png_text(self.dir / "a.png")["parameters"])
        self.assertEqual(self.txt2img("a fox", "--seed", "4", "-o", "b.png").returncode, 0)
        self.assertNotIn("Lora hashes", png_text(self.dir / "b.png")["parameters"])

    def test_dtype_is_recorded(self):
        """--dtype bf16 runs in bf16 (the image is close to fp32's but not the same) and says so."""
        for name, dtype in (("a.png", "bf16"), ("b.png", "fp32")):
            self.assertEqual(self.txt2img("a fox", "--seed", "3", "--dtype", dtype, "-o", name).returncode, 0)
        self.assertEqual(json.loads(png_text(self.dir / "a.png")["txt2img"])["dtype"], "bf16")
        low, full = png_pixels(self.dir / "a.png")[2], png_pixels(self.dir / "b.png")[2]
        self.assertNotEqual(low, full)
        self.assertLess(sum(abs(x - y) for x, y in zip(low, full)) / len(full), 2.5)

    def test_unicode_prompt_round_trips(self):
        prompt = "東京の夜景, «neon» — 🌃"
        self.assertEqual(self.txt2img(prompt, "--seed", "3", "-o", "u.png").returncode, 0)
        text = png_text(self.dir / "u.png")
        self.assertTrue(text["parameters"].startswith(prompt + "\n"))
        self.assertEqual(json.loads(text["txt2img"])["prompt"], prompt)

    def test_no_metadata(self):
        self.assertEqual(self.txt2img("a fox", "--no-metadata", "-o", "a.png").returncode, 0)
        self.assertEqual(png_text(self.dir / "a.png"), {})

    def test_info_reads_it_back(self):
        self.assertEqual(self.txt2img("a fox", "-n", "dogs", "--seed", "3", "-o", "a.png").returncode, 0)
        human = run(["info", "a.png"], self.dir)
        self.assertEqual(human.returncode, 0, human.stderr)
        self.assertIn("32x32", human.stdout)
        self.assertIn("a fox\nNegative prompt: dogs\nSteps: 2", human.stdout)
        as_json = run(["info", "a.png", "--json"], self.dir)
        self.assertEqual(as_json.returncode, 0, as_json.stderr)
        info = json.loads(as_json.stdout)
        self.assertEqual(info["parameters"], png_text(self.dir / "a.png")["parameters"])
        self.assertEqual(info["txt2img"]["seed"], 3)
        self.assertEqual((info["width"], info["height"]), (32, 32))

    def test_info_reads_standard_input(self):
        """`-` reads the PNG from standard input, as -f - reads prompts (curl ... | txt2img info -)."""
        self.assertEqual(self.txt2img("a fox", "--seed", "8", "-o", "a.png").returncode, 0)
        png = (self.dir / "a.png").read_bytes()
        result = subprocess.run([BIN, "info", "-", "--json"], input=png, cwd=self.dir, capture_output=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["txt2img"]["seed"], 8)
        result = subprocess.run([BIN, "info", "-", "--command"], input=png, cwd=self.dir, capture_output=True)
        self.assertIn(b" --seed 8 ", result.stdout)
        # Errors and warnings name stdin as prompt files do.
        result = subprocess.run([BIN, "info", "-"], input=png[:100], cwd=self.dir, capture_output=True)
        self.assertEqual(result.returncode, EXIT_IO, result.stderr)
        self.assertIn(b"<stdin>: truncated PNG chunk", result.stderr)

    def test_info_rerun_reproduces(self):
        self.assertEqual(self.txt2img("a fox", "-n", "dogs", "--seed", "8", "-o", "a.png").returncode, 0)
        r = json.loads(run(["info", "a.png", "--json"], self.dir).stdout)["txt2img"]
        again = self.txt2img(r["prompt"], "-n", r["negative_prompt"], "--seed", str(r["seed"]), "--steps",
                             str(r["steps"]), "--sampler", r["sampler"], "--cfg-scale", str(r["cfg_scale"]),
                             "--width", str(r["width"]), "--height", str(r["height"]), "-o", "b.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual((self.dir / "a.png").read_bytes(), (self.dir / "b.png").read_bytes())

    def test_info_command_makes_the_image_again(self):
        made = self.txt2img("it's a (red) fox, \"quoted\" $HOME `x`", "-n", "no 'dogs'", "--seed", "12",
                            "--sampler", "euler", "--cfg-scale", "6.5", "--clip-skip", "2", "--emphasis",
                            "--long-prompts", "--safety", "report", "-o", "a.png")
        self.assertEqual(made.returncode, 0, made.stderr)
        result = run(["info", "a.png", "--command"], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--model DIR", result.stderr)
        line = result.stdout.strip()
        self.assertEqual(len(result.stdout.splitlines()), 1)
        args = shlex.split(line)
        self.assertEqual(args[0], "txt2img")
        for flag in ("--emphasis", "--long-prompts", "--clip-skip", "--safety"):
            self.assertIn(flag, args)
        again = run_printed_command(line, self.dir, TINY, "b.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual((self.dir / "a.png").read_bytes(), (self.dir / "b.png").read_bytes())
        # Nothing to rebuild a command from, or a bundle: errors.
        self.assertEqual(self.txt2img("a fox", "--no-metadata", "-o", "c.png").returncode, 0)
        self.assertExit(run(["info", "c.png", "--command"], self.dir), EXIT_IO, "no txt2img or A1111 metadata")
        self.assertExit(run(["info", TINY, "--command"], self.dir), EXIT_USAGE, "--command")
        self.assertExit(run(["info", "a.png", "--verify"], self.dir), EXIT_USAGE, "--verify applies to a model bundle")

    def test_graph_passes_are_recorded_and_carried_over(self):
        """--graph optimize's fused kernels round differently: the record says so and the command gives it back, and
        makes the same image; a CUDA image made with --no-cuda-graph gets that flag back (one that does not say,
        made before the record held it, ran as the default)."""
        made = self.txt2img("a fox", "--seed", "3", "--graph", "optimize", "--json", "-o", "a.png")
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual((json_lines(made.stdout)[0]["graph"], json_lines(made.stdout)[0]["cuda_graph"]),
                         ("optimize", False))
        line = run(["info", "a.png", "--command"], self.dir).stdout.strip()
        self.assertIn(" --graph optimize", line)
        self.assertNotIn("--no-cuda-graph", line)
        again = run_printed_command(line, self.dir, TINY, "b.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual((self.dir / "a.png").read_bytes(), (self.dir / "b.png").read_bytes())
        self.assertEqual(self.txt2img("a fox", "--no-metadata", "-o", "plain.png").returncode, 0)
        record = json.loads(png_text(self.dir / "a.png")["txt2img"])
        for cuda_graph, expected in ((False, True), (True, False), (None, False)):
            edited = dict(record, device="cuda", dtype="fp16", cuda_graph=cuda_graph)
            if cuda_graph is None:
                del edited["cuda_graph"]
            (self.dir / "cuda.png").write_bytes(with_text_chunk((self.dir / "plain.png").read_bytes(), "txt2img",
                                                               json.dumps(edited)))
            command = run(["info", "cuda.png", "--command"], self.dir)
            self.assertEqual(command.returncode, 0, command.stderr)
            self.assertEqual("--no-cuda-graph" in shlex.split(command.stdout), expected, cuda_graph)

    def test_pad_conds_are_recorded_and_carried_over(self):
        """A1111's Pad prompt/negative prompt options change the image where a long prompt meets a short negative
        prompt; each is recorded as A1111 records it ("Pad conds: True", "Pad conds v0: True") and in the JSON, and
        info --command gives the flag back, from txt2img's metadata and from A1111's."""
        long = "a quiet village beside a wide river, " * 12
        images = {}
        for flags in ([], ["--pad-conds"], ["--pad-conds-v0"]):
            name = (flags[0].lstrip("-") if flags else "apart") + ".png"
            made = self.txt2img(long, "-n", "blurry", "--long-prompts", "--seed", "4", *flags, "-o", name)
            self.assertEqual(made.returncode, 0, made.stderr)
            images[name] = png_pixels(self.dir / name)[2]
            text = png_text(self.dir / name)
            self.assertEqual(json.loads(text["txt2img"])["pad_conds"],
                             {"apart.png": "off", "pad-conds.png": "empty_chunks",
                              "pad-conds-v0.png": "last_vector"}[name])
            self.assertEqual("Pad conds: True" in text["parameters"], name == "pad-conds.png")
            self.assertEqual("Pad conds v0: True" in text["parameters"], name == "pad-conds-v0.png")
            command = run(["info", name, "--command"], self.dir)
            self.assertEqual(command.returncode, 0, command.stderr)
            for flag in ("--pad-conds", "--pad-conds-v0"):
                self.assertEqual(flag in shlex.split(command.stdout), flags == [flag])
            again = run_printed_command(command.stdout, self.dir, TINY, f"again-{name}")
            self.assertEqual(again.returncode, 0, again.stderr)
            self.assertEqual(png_pixels(self.dir / f"again-{name}")[2], images[name])
        self.assertEqual(len({bytes(pixels) for pixels in images.values()}), 3)
        # A1111 writes the key only where its last U-Net call padded: not for texts of one length, nor without
        # guidance. The JSON keeps the setting.
        for args in (["a fox"], [long, "--cfg-scale", "1"]):
            made = self.txt2img(*args, "-n", "blurry", "--long-prompts", "--pad-conds", "-o", "unpadded.png",
                                "--overwrite")
            self.assertEqual(made.returncode, 0, made.stderr)
            text = png_text(self.dir / "unpadded.png")
            self.assertNotIn("Pad conds", text["parameters"])
            self.assertEqual(json.loads(text["txt2img"])["pad_conds"], "empty_chunks")
        # A setting this txt2img does not know is no command.
        record = json.loads(png_text(self.dir / "apart.png")["txt2img"])
        record["pad_conds"] = "sideways"
        plain = self.dir / "plain.png"
        self.assertEqual(self.txt2img("x", "--no-metadata", "-o", "plain.png").returncode, 0)
        (self.dir / "odd.png").write_bytes(with_text_chunk(plain.read_bytes(), "txt2img", json.dumps(record)))
        self.assertExit(run(["info", "odd.png", "--command"], self.dir), EXIT_IO, 'pad_conds of "sideways"')
        self.assertExit(self.txt2img("a fox", "--pad-conds", "--pad-conds-v0", "-o", "x.png"), EXIT_USAGE,
                        "excludes")
        # Without long prompts (the flag's or a line's) there is nothing to pad: said.
        made = self.txt2img("a fox", "--pad-conds-v0", "-o", "short.png")
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertIn('--pad-conds-v0 has no effect without --long-prompts (or a prompt file\'s "long_prompts")',
                      made.stderr)
        self.write("long.jsonl", '{"prompt": "a fox", "long_prompts": true, "output": "line.png"}\n')
        made = self.txt2img("--from-file", "long.jsonl", "--pad-conds")
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertNotIn("has no effect", made.stderr)

        base = "a fox\nNegative prompt: dogs\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32, RNG: CPU"
        for fields, flag in ((", Pad conds: True", "--pad-conds"), (", Pad conds v0: True", "--pad-conds-v0"),
                             (", Pad conds: True, Pad conds v0: True", "--pad-conds-v0")):
            result = a1111_command(self, base + fields)
            self.assertEqual(result.returncode, 0, result.stderr)
            args = shlex.split(result.stdout)
            self.assertIn(flag, args)
            self.assertEqual(len([a for a in args if a.startswith("--pad-conds")]), 1)
            self.assertNotIn("Pad conds", result.stderr)
        odd = a1111_command(self, base + ", Pad conds: False")
        self.assertNotIn("--pad-conds", odd.stdout)
        self.assertIn("not carried over (no txt2img equivalent): Pad conds: False", odd.stderr)

    def test_control_characters_never_reach_the_terminal(self):
        """An image's metadata is someone else's text: its control characters (an escape sequence that would retitle
        the terminal and clear it, a C1 character) are printed as \\xNN, and --command quotes them as bash's $'...'
        escapes, which still give the prompt back exactly, in any locale. What --command says on stderr of the
        settings it reads (the model, a field it leaves out) is printed so too. (Its tEXt chunk is Latin-1, as Pillow
        writes what Latin-1 can hold: "café" is read as such.)"""
        prompt = "a café fox\x1b]0;PWNED\x07\x1b[2J\x85 end"
        command = a1111_command(self, prompt + "\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 32x32, "
                                "Model: bad\x1b[31mmodel, Foo: bar\x1b]0;x\x07baz")
        self.assertEqual(command.returncode, 0, command.stderr)
        shown = run(["info", "a1111.png"], self.dir)
        for output in (command.stdout, command.stderr, shown.stdout):
            self.assertFalse(any(c in output for c in "\x1b\x07\x85"), output)
        self.assertIn("a café fox\\x1B]0;PWNED\\x07\\x1B[2J\\x85 end", shown.stdout)
        self.assertIn("$'a café fox\\x1B]0;PWNED\\x07\\x1B[2J\\xC2\\x85 end'", command.stdout)
        self.assertIn("with the model bad\\x1B[31mmodel", command.stderr)
        self.assertIn("Foo: bar\\x1B]0;x\\x07baz", command.stderr)
        again = run_printed_command(command.stdout, self.dir, TINY, "b.png", shell="bash")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertTrue(png_text(self.dir / "b.png")["parameters"].startswith(prompt + "\n"))
        # A bidirectional override would show a command line in another order than it runs.
        tricky = "a fox \u202egnp.x\u2066 end\u061c"
        self.assertEqual(self.txt2img(tricky, "--seed", "2", "-o", "bidi.png").returncode, 0)
        shown, command = run(["info", "bidi.png"], self.dir), run(["info", "bidi.png", "--command"], self.dir)
        for output in (shown.stdout, command.stdout):
            self.assertFalse(any(c in output for c in "\u202e\u2066\u061c"), output)
        self.assertIn("a fox \\u202Egnp.x\\u2066 end\\u061C", shown.stdout)
        self.assertIn("$'a fox \\xE2\\x80\\xAEgnp.x\\xE2\\x81\\xA6 end\\xD8\\x9C'", command.stdout)
        again = run_printed_command(command.stdout, self.dir, TINY, "bidi2.png", shell="bash")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertEqual((self.dir / "bidi.png").read_bytes(), (self.dir / "bidi2.png").read_bytes())

    def test_rng_nv_is_recorded_and_read_back(self):
        """--rng nv draws A1111's NV noise: another image than the CPU generator's from the same seed, recorded as
        "RNG: NV" and "rng": "nv", and made again by the command info gives back. An A1111 image's RNG field becomes
        --rng: NV, GPU and none (A1111's default, its GPU) are nv, saying what a GPU image is; CPU is the default, with a
        note where the sampler's Brownian trees came from whatever device A1111 ran on."""
        for rng in ["nv", "cpu"]:
            result = self.txt2img("a fox", "--sampler", "euler_a", "--steps", "3", "--rng", rng, "-o", f"{rng}.png",
                                  "--seed", "4", "--json")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(json_lines(result.stdout)[0]["rng"], rng)
        self.assertNotEqual(png_pixels(self.dir / "nv.png"), png_pixels(self.dir / "cpu.png"))
        text = png_text(self.dir / "nv.png")
        self.assertIn(", RNG: NV, ", text["parameters"])
        self.assertEqual(json.loads(text["txt2img"])["rng"], "nv")
        self.assertCommandRemakes("nv.png", " --rng nv ")
        self.assertNotIn("--rng", run(["info", "cpu.png", "--command"], self.dir).stdout)
        base = "a fox\nSteps: 3, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 32x32"
        cases = [(", RNG: NV", "nv", None), (", RNG: GPU", "nv", "drew its noise on the GPU"),
                 ("", "nv", "drew its noise on the GPU"), (", RNG: CPU", None, "Brownian trees")]
        for i, (field, rng, note) in enumerate(cases):
            result = a1111_command(self, base + field + ", Version: v1.10.1", f"a1111-{i}.png")
            self.assertEqual(result.returncode, 0, result.stderr)
            args = shlex.split(result.stdout)
            self.assertEqual(args[args.index("--rng") + 1] if "--rng" in args else None, rng, field)
            for known in ["drew its noise on the GPU", "Brownian trees"]:
                (self.assertIn if known == note else self.assertNotIn)(known, result.stderr)

    def test_info_command_reads_an_a1111_image(self):
        infotext = ('a (red) fox, "quoted"\nby the sea\nNegative prompt: dogs\n'
                    'Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 12, Size: 32x32, '
                    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Hires upscale: 2, '
                    'Lora hashes: "ink: 0123456789ab, sea: ba9876543210", RNG: CPU, Version: v1.10.1')
        result = a1111_command(self, infotext)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(shlex.split(result.stdout.strip()),
                         ["txt2img", 'a (red) fox, "quoted"\nby the sea', "-n", "dogs", "--seed", "12", "--steps",
                          "2", "--sampler", "dpmpp_2m_karras", "--cfg-scale", "6.5", "-W", "32", "-H", "32",
                          "--clip-skip", "2", "--emphasis", "--long-prompts"])
        self.assertIn("AUTOMATIC1111 v1.10.1 with the model v1-5-pruned-emaonly [6ce0161689]", result.stderr)
        self.assertIn("not carried over (no txt2img equivalent): Hires upscale: 2; "
                      "Lora hashes: ink: 0123456789ab, sea: ba9876543210", result.stderr)
        self.assertNotIn("drew its noise on the GPU", result.stderr)
        again = run_printed_command(result.stdout, self.dir, TINY, "b.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 12, Size: 32x32",
                      png_text(self.dir / "b.png")["parameters"])

        # A settings line of any length is read in linear time (std::regex's recursion overflowed the stack).
        for long_line in ("A" * 30000, "Steps: 2, Seed: 3, Size: 32x32, Notes: " + "x" * 40000,
                          'Steps: 2, Seed: 3, Size: 32x32, Template: "' + "y" * 60000 + '"'):
            result = a1111_command(self, "a fox\n" + long_line, "long.png")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertTrue(result.stdout.startswith("txt2img 'a fox"), result.stdout[:80])

        # A sampler without an equivalent is left out (the default runs), and GPU noise is drawn as NV, saying so.
        other = "a fox\nSteps: 20, Sampler: DPM adaptive, CFG scale: 7, Seed: 1, Size: 512x512"
        result = a1111_command(self, other, "adaptive.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("--sampler", result.stdout)
        self.assertIn(" --rng nv ", result.stdout)
        self.assertIn("Sampler: DPM adaptive", result.stderr)
        self.assertIn("A1111 drew its noise on the GPU", result.stderr)

        # A prompt starting with "-" would read as a flag in the positional place.
        dash = "- a fox -\nNegative prompt: -dogs\nSteps: 2, Seed: 3, Size: 32x32, RNG: CPU"
        line = a1111_command(self, dash, "dash.png").stdout.strip()
        self.assertEqual(shlex.split(line)[:4], ["txt2img", "--prompt=- a fox -", "-n", "-dogs"])
        again = run_printed_command(line, self.dir, TINY, "c.png")
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertTrue(png_text(self.dir / "c.png")["parameters"].startswith("- a fox -\nNegative prompt: -dogs\n"))
        # So would a subcommand's name.
        for word in ("info", "tokenize"):
            line = a1111_command(self, f"{word}\nSteps: 2, Seed: 3, Size: 32x32, RNG: CPU", f"{word}.png").stdout
            self.assertEqual(shlex.split(line)[:2], ["txt2img", f"--prompt={word}"])

    def test_info_command_reads_a1111_variation_seeds_and_seed_resize(self):
        infotext = ("a fox\nSteps: 3, Sampler: Euler a, CFG scale: 7, Seed: 12, Size: 32x32, Variation seed: 99, "
                    "Variation seed strength: 0.25, Seed resize from: 64x64, ENSD: 31337, RNG: CPU")
        result = a1111_command(self, infotext, "v.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        args = shlex.split(result.stdout)
        self.assertEqual(args[args.index("--seed"):args.index("--seed") + 8],
                         ["--seed", "12", "--variation-seed", "99", "--variation-strength", "0.25",
                          "--seed-resize-from", "64x64"])
        self.assertEqual(args[args.index("--ensd") + 1], "31337")
        self.assertNotIn("not carried over", result.stderr)

    def test_info_command_reads_a1111_samplers_and_schedule_types(self):
        """A1111's sampler names, old ("LMS Karras") and new ("Euler" with "Schedule type: Karras"), become ours; its
        uniform schedule, also where a sampler's default, is A1111's (heun_uniform; DDIM, PLMS and UniPC run on their
        own timesteps); a schedule type txt2img has no sampler for is left out; DPM++ 2M SDE is A1111's, with its
        Brownian-tree noise (txt2img's own text: diffusers', said), and so is UniPC (before 1.6: said); DPM2 warns of
        A1111's shorter schedule."""
        cases = [("Sampler: Heun", "heun_uniform", None),
                 ("Sampler: Euler, Schedule type: Karras", "euler_karras", None),
                 ("Sampler: Heun, Schedule type: Karras", "heun_karras", None),
                 ("Sampler: LMS Karras", "lms_karras", None),
                 ("Sampler: DPM++ 2M SDE, Schedule type: Karras", "dpmpp_2m_sde_a1111_karras", None),
                 ("Sampler: DPM++ 2M SDE Karras", "dpmpp_2m_sde_a1111_karras", None),
                 ("Sampler: DPM++ 2M SDE", "dpmpp_2m_sde_a1111_uniform", "it names no A1111 version"),
                 ("Sampler: DPM++ 2M SDE, Version: txt2img 0.1.0", "dpmpp_2m_sde", "alike: read as dpmpp_2m_sde"),
                 # A1111's UniPC (bh1, order 3) is unipc_a1111; txt2img's own text names diffusers' too.
                 ("Sampler: UniPC, Version: v1.10.1", "unipc_a1111", None),
                 ("Sampler: UniPC", "unipc_a1111", "it names no A1111 version: before 1.6 A1111's UniPC ran"),
                 ("Sampler: UniPC, Version: v1.5.2", "unipc_a1111", "more where the steps do not divide 1000"),
                 ("Sampler: UniPC, Version: txt2img 0.1.0", "unipc", "for unipc and unipc_a1111 alike: read as unipc"),
                 # A1111's LCM is lcm_a1111 (its own denoiser); txt2img's own text names diffusers' too.
                 ("Sampler: LCM, Version: v1.10.1", "lcm_a1111", None),
                 ("Sampler: LCM, Version: txt2img 0.1.0", "lcm", "for lcm and lcm_a1111 alike: read as lcm"),
                 # Samplers A1111 lacks, by the names txt2img writes in its style.
                 ("Sampler: DDPM", "ddpm", None),
                 ("Sampler: DEIS, Schedule type: Karras", "deis_karras", None),
                 ("Sampler: DEIS Karras", "deis_karras", None),
                 ("Sampler: DPM2 a, Schedule type: Karras", "dpm2_a_karras", "without its next-to-last sigma"),
                 ("Sampler: DPM2 Karras", "dpm2_karras", "without its next-to-last sigma"),
                 ("Sampler: DPM++ 2S a", "dpmpp_2s_a_uniform", "it names no A1111 version"),
                 ("Sampler: DPM++ 2S a, Version: v1.10.1", "dpmpp_2s_a_karras", None),
                 ("Sampler: DPM++ 2S a, Schedule type: Uniform, Version: v1.10.1", "dpmpp_2s_a_uniform", None),
                 ("Sampler: DPM2 a, Version: v1.10.1", "dpm2_a_karras", "next-to-last sigma"),
                 ("Sampler: DPM2, Version: v1.9.0", "dpm2_karras", "next-to-last sigma"),
                 ("Sampler: DPM++ 2S a, Schedule type: Karras", "dpmpp_2s_a_karras", None),
                 ("Sampler: DPM++ 2S a Karras", "dpmpp_2s_a_karras", None),
                 ("Sampler: DPM++ 2S a, Schedule type: Exponential", "dpmpp_2s_a_exponential", None),
                 # DPM++ SDE: A1111's default schedule is Karras too, its Brownian-tree noise txt2img's.
                 ("Sampler: DPM++ SDE, Version: v1.10.1", "dpmpp_sde_karras", None),
                 ("Sampler: DPM++ SDE Karras", "dpmpp_sde_karras", None),
                 ("Sampler: DPM++ SDE", "dpmpp_sde_uniform", "it names no A1111 version"),
                 ("Sampler: DPM++ SDE, Schedule type: Exponential", "dpmpp_sde_exponential", None),
                 ("Sampler: DPM++ SDE, Schedule type: SGM Uniform", "dpmpp_sde_sgm_uniform", None),
                 ("Sampler: Euler a, Schedule type: Karras", "euler_a_karras", None),
                 ("Sampler: Euler a, Schedule type: Exponential", "euler_a_exponential", None),
                 ("Sampler: Euler, Schedule type: Exponential", "euler_exponential", None),
                 ("Sampler: DPM2 a, Schedule type: Exponential", "dpm2_a_exponential", "next-to-last sigma"),
                 ("Sampler: DDIM, Schedule type: Exponential", "ddim", "Schedule type: Exponential"),
                 # A1111's DDIM schedule type is for its k-diffusion samplers; its DDIM sampler runs on timesteps.
                 ("Sampler: DDIM, Schedule type: DDIM, Version: v1.10.1", "ddim_a1111", "Schedule type: DDIM"),
                 # A1111 1.6 and later run their own DDIM; before, the original SD code's, diffusers' where the
                 # steps divide 1000.
                 ("Sampler: DDIM, Version: v1.10.1", "ddim_a1111", None),
                 ("Sampler: DDIM, Version: v1.5.2", "ddim", "A1111 before 1.6 ran the original Stable Diffusion"),
                 ("Sampler: DDIM", "ddim", "it names no A1111 version: DDIM is read as before 1.6"),
                 ("Sampler: PLMS, Version: v1.10.1", "plms_a1111", None),
                 ("Sampler: PLMS, Version: v1.5.2", "pndm", "before 1.6 A1111 ran the original Stable Diffusion code's PLMS"),
                 ("Sampler: PLMS", "pndm", "it names no A1111 version: PLMS is read as before 1.6"),
                 # A1111's own schedule types, by label or name; those txt2img lacks are left out.
                 ("Sampler: DPM++ 2M, Schedule type: Align Your Steps, Version: v1.10.1",
                  "dpmpp_2m_align_your_steps", None),
                 ("Sampler: Euler a, Schedule type: SGM Uniform", "euler_a_sgm_uniform", None),
                 ("Sampler: Euler, Schedule type: sgm_uniform", "euler_sgm_uniform", None),
                 ("Sampler: Heun, Schedule type: Simple", "heun_simple", None),
                 ("Sampler: LMS, Schedule type: Normal", "lms_normal", None),
                 ("Sampler: DPM++ 2S a, Schedule type: Polyexponential", "dpmpp_2s_a_polyexponential", None),
                 ("Sampler: Euler, Schedule type: Beta, Beta schedule alpha: 0.6, Beta schedule beta: 0.6",
                  "euler_beta", None),
                 ("Sampler: DPM++ 2M, Schedule type: Beta, Beta schedule alpha: 0.5, Beta schedule beta: 0.6",
                  "dpmpp_2m_beta", "Beta schedule alpha: 0.5"),
                 ("Sampler: DPM++ 2M, Schedule type: KL Optimal, Version: v1.10.1", "dpmpp_2m_kl_optimal", None),
                 ("Sampler: Euler, Schedule type: Align Your Steps GITS, Version: f2.0.1v1.10.1-previous-669",
                  "euler", "Schedule type: Align Your Steps GITS"),
                 ("Sampler: Euler a, Schedule type: DDIM, Version: v1.10.1", "euler_a_ddim", None),
                 ("Sampler: UniPC, Schedule type: SGM Uniform, Version: v1.10.1", "unipc_a1111",
                  "Schedule type: SGM Uniform"),
                 # A1111 1.9 and later leave out a sampler's default schedule, Karras for DPM++ 2M; before, that
                 # name meant uniform sigmas, which Schedule type: Uniform states.
                 ("Sampler: DPM++ 2M, Version: v1.10.1", "dpmpp_2m_karras", None),
                 ("Sampler: DPM++ 2M, Version: f2.0.1v1.10.1-previous-669", "dpmpp_2m_karras", None),
                 ("Sampler: DPM++ 2M, Version: v1.6.0", "dpmpp_2m_uniform", None),
                 ("Sampler: DPM++ 2M, Version: 1.9.3", "dpmpp_2m_karras", None),  # other tools' version, no "v"
                 ("Sampler: DPM++ 2M, Schedule type: Uniform, Version: v1.10.1", "dpmpp_2m_uniform", None),
                 ("Sampler: DPM++ 2M", "dpmpp_2m_uniform", "it names no A1111 version"),
                 ("Sampler: DPM++ 2M SDE, Version: v1.10.1", "dpmpp_2m_sde_a1111_exponential", None),
                 # DPM++ 2M SDE Heun and DPM++ 3M SDE: exponential by default since 1.9, Brownian-tree noise.
                 ("Sampler: DPM++ 2M SDE Heun, Version: v1.10.1", "dpmpp_2m_sde_heun_exponential", None),
                 ("Sampler: DPM++ 2M SDE Heun Karras", "dpmpp_2m_sde_heun_karras", None),
                 ("Sampler: DPM++ 2M SDE Heun, Schedule type: Align Your Steps", "dpmpp_2m_sde_heun_align_your_steps",
                  None),
                 ("Sampler: DPM++ 3M SDE, Version: v1.10.1", "dpmpp_3m_sde_exponential", None),
                 ("Sampler: DPM++ 3M SDE", "dpmpp_3m_sde_uniform", "it names no A1111 version"),
                 ("Sampler: DPM++ 3M SDE, Schedule type: Karras", "dpmpp_3m_sde_karras", None),
                 # Restart came (1.6) on Karras sigmas, its Automatic before 1.9 too.
                 ("Sampler: Restart, Version: v1.10.1", "restart_karras", None),
                 ("Sampler: Restart, Version: v1.6.0", "restart_karras", None),
                 ("Sampler: Restart", "restart_karras", None),
                 ("Sampler: Restart, Schedule type: Exponential", "restart_exponential", None),
                 ("Sampler: Restart, Schedule type: Uniform, Version: v1.10.1", "restart_uniform", None),
                 ("Sampler: Restart, Schedule type: KL Optimal", "restart_kl_optimal", None),
                 # DPM fast runs over the model's sigma range whatever the schedule (which only its hires pass spans).
                 ("Sampler: DPM fast, Version: v1.10.1", "dpm_fast", None),
                 ("Sampler: DPM fast", "dpm_fast", None)]
        for i, (fields, sampler, note) in enumerate(cases):
            infotext = f"a fox\nSteps: 3, {fields}, CFG scale: 7, Seed: 1, Size: 32x32, RNG: CPU"
            result = a1111_command(self, infotext, f"{i}.png")
            self.assertEqual(result.returncode, 0, result.stderr)
            args = shlex.split(result.stdout)
            self.assertEqual(args[args.index("--sampler") + 1], sampler, fields)
            if note:
                self.assertIn(note, result.stderr)
            else:
                self.assertNotIn("not carried over", result.stderr)
                # The one note of an RNG: CPU image: where its trees came from depends on A1111's device.
                trees = sampler.startswith(("dpmpp_sde", "dpmpp_2m_sde_a1111", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"))
                self.assertEqual("Brownian trees" in result.stderr, trees, fields)
        # On A1111's own schedule types txt2img's DPM2 takes the sigmas A1111 gives it.
        result = a1111_command(self, "a fox\nSteps: 3, Sampler: DPM2 a, Schedule type: SGM Uniform, CFG scale: 7, "
                                     "Seed: 1, Size: 32x32, RNG: CPU", "dpm2.png")
        self.assertIn(" --sampler dpm2_a_sgm_uniform ", result.stdout)
        self.assertNotIn("next-to-last", result.stderr)

    def test_info_command_leaves_out_numbers_the_flags_do_not_take(self):
        """Other tools' seeds (-1, 2^64 - 1) and steps written as 3.0: a whole number a flag takes is given to it
        (3.0 as 3), any other is left out, saying why; a text without a settings line says so."""
        result = a1111_command(self, "a fox\nSteps: 3.0, Sampler: Euler, Seed: 18446744073709551615, ENSD: -1, "
                                     "Size: 32x32, RNG: CPU, Clip skip: 2")
        self.assertEqual(result.returncode, 0, result.stderr)
        args = shlex.split(result.stdout)
        self.assertEqual(args[args.index("--steps") + 1], "3")
        self.assertEqual(args[args.index("--clip-skip") + 1], "2")
        self.assertNotIn("--seed", args)
        self.assertNotIn("--ensd", args)
        self.assertIn("Seed: 18446744073709551615 (--seed takes a whole number from 0 to 9223372036854775807)",
                      result.stderr)
        self.assertIn("ENSD: -1 (--ensd takes a whole number from 0 to 9223372036854775807)", result.stderr)
        result = a1111_command(self, "just a prompt, with: colon", "bare.png")
        self.assertEqual(shlex.split(result.stdout)[:2], ["txt2img", "just a prompt, with: colon"])
        self.assertIn("holds a prompt but no settings line", result.stderr)

    def test_info_command_rounds_an_a1111_size_down_and_names_no_model_it_lacks(self):
        """A1111 makes latents of Size / 8 rounded down: a Size that is no multiple of 8 becomes the size its image
        has, said so; an infotext without Model or Model hash says that it names none."""
        result = a1111_command(self, "a fox\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 515x512, RNG: CPU")
        self.assertEqual(result.returncode, 0, result.stderr)
        args = shlex.split(result.stdout)
        self.assertEqual(args[args.index("-W"):args.index("-W") + 4], ["-W", "512", "-H", "512"])
        self.assertIn("its Size 515x512 is not a multiple of 8", result.stderr)
        self.assertIn("with a model it does not name", result.stderr)
        self.assertNotIn("?", result.stderr)
        # With a hires pass, A1111 scaled the Size as written.
        result = a1111_command(self, "a fox\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 515x512, RNG: CPU, "
                                     "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent", "h.png")
        self.assertIn("hires image may be a few pixels larger", result.stderr)
        # A Size that is no pair of numbers is left out rather than passed on as a flag that fails.
        result = a1111_command(self, "a fox\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x, RNG: CPU", "s.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("-W", shlex.split(result.stdout))
        self.assertIn("not carried over (no txt2img equivalent): Size: 64x", result.stderr)

    def test_info_command_names_stable_diffusion_cpp_and_its_generator(self):
        """stable-diffusion.cpp writes A1111's fields with its own version and generator: named as such, and its
        sampler on its default (discrete) schedule, which is A1111's Uniform; its cuda generator (a float32 port of
        A1111's NV) is --rng nv, its std_default one has no equivalent."""
        result = a1111_command(self, "a fox\nSteps: 3, CFG scale: 7.0, Seed: 42, Size: 32x32, RNG: cuda, "
                                     "Sampler: dpm++2m, Version: stable-diffusion.cpp", "sdcpp.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(" --sampler dpmpp_2m_uniform ", result.stdout)
        self.assertIn(" --rng nv ", result.stdout)
        self.assertIn("made by stable-diffusion.cpp ", result.stderr)
        self.assertNotIn("AUTOMATIC1111", result.stderr)
        self.assertIn("stable-diffusion.cpp's cuda generator is A1111's NV noise", result.stderr)
        result = a1111_command(self, "a fox\nSteps: 3, CFG scale: 7.0, Seed: 42, Size: 32x32, RNG: std_default, "
                                     "Sampler: euler, Version: stable-diffusion.cpp", "sdcpp-std.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("--rng", result.stdout)
        self.assertIn("its noise came from stable-diffusion.cpp's own generator (RNG: std_default)", result.stderr)

    def test_info_command_keeps_a1111_lora_tags(self):
        """A1111's LoRA tags stay in the prompt, which txt2img reads too: its "Lora hashes" then name what the model
        bundle needs rather than something left out."""
        infotext = ("a fox <lora:ink:0.8>, <lora:sea:1:0.5>\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, "
                    'Size: 32x32, Lora hashes: "ink: 0123456789ab, sea: ba9876543210", RNG: CPU, Version: v1.10.1')
        result = a1111_command(self, infotext, "a.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(shlex.split(result.stdout)[1], "a fox <lora:ink:0.8>, <lora:sea:1:0.5>")
        self.assertIn('its prompt adds the LoRAs ink, sea (Lora hashes: ink: 0123456789ab, sea: ba9876543210): the '
                      "model bundle needs them under those names (scripts/add_lora.py MODEL_DIR FILE)", result.stderr)
        self.assertNotIn("not carried over", result.stderr)
        # A tag of named arguments alone (an image made elsewhere, or crafted) has no LoRA name: said, not a crash.
        result = a1111_command(self, "a cat <lora:te=0.5:unet=1>\nSteps: 2, Sampler: Euler, Seed: 1, Size: 32x32, "
                                     "RNG: CPU", "nameless.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(shlex.split(result.stdout)[1], "a cat <lora:te=0.5:unet=1>")
        self.assertExit(self.txt2img("a cat <lora:te=0.5:unet=1>", "-o", "nameless-run.png"), EXIT_USAGE,
                        "LoRA tag <lora:te=0.5:unet=1> has no name (<lora:NAME:WEIGHT>)")

    def test_info_without_metadata_and_on_bad_files(self):
        self.assertEqual(self.txt2img("a fox", "--no-metadata", "-o", "a.png").returncode, 0)
        result = run(["info", "a.png"], self.dir)
        self.assertEqual(result.returncode, 0)
        self.assertIn("no generation parameters", result.stdout)
        # A PNG from a pipe (`curl ... | txt2img info /dev/stdin`) reads as well.
        piped = subprocess.run([BIN, "info", "/dev/stdin"], cwd=self.dir, input=(self.dir / "a.png").read_bytes(),
                               capture_output=True)
        self.assertEqual(piped.returncode, 0, piped.stderr)
        self.assertIn(b"/dev/stdin: 32x32 PNG", piped.stdout)
        self.write("not.png", "hello")
        self.assertEqual(run(["info", "not.png"], self.dir).returncode, EXIT_IO)
        self.assertExit(run(["info", "missing.png"], self.dir), EXIT_IO, "cannot open missing.png: No such file")
        # A folder of images is no model bundle: info says to give it one image.
        (self.dir / "shots").mkdir()
        (self.dir / "shots" / "b.PNG").write_bytes((self.dir / "a.png").read_bytes())
        self.assertExit(run(["info", "shots"], self.dir), EXIT_USAGE,
                        "shots is a folder of images, not a model bundle", "txt2img info shots/b.PNG")
        # A folder named like an image is none.
        (self.dir / "models" / "x.png").mkdir(parents=True)
        result = run(["info", "models"], self.dir)
        self.assertEqual(result.returncode, EXIT_BUNDLE, result.stderr)
        self.assertNotIn("folder of images", result.stderr)


class BundleInfo(CliTestCase):
    def test_manifest_files_sizes_hashes(self):
        result = run(["info", TINY], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        m = manifest()
        self.assertIn(m["model_name"], result.stdout)
        for name, file in m["files"].items():
            self.assertIn(name, result.stdout)
            self.assertIn(file["sha256"], result.stdout)
        as_json = json.loads(run(["info", TINY, "--json"], self.dir).stdout)
        self.assertEqual(as_json["manifest"]["model_hash"], m["model_hash"])
        self.assertEqual({f["name"]: f["bytes"] for f in as_json["files"]},
                         {n: f["bytes"] for n, f in m["files"].items()})

    def test_json_of_a_bundle_whose_path_is_not_utf8(self):
        # JSON holds only Unicode: the byte 0xff (os.fsdecode's surrogate escape here) becomes U+FFFD, as in every
        # other --json output, instead of failing.
        bundle = derived_bundle(self.dir / os.fsdecode(b"m\xff"))
        result = run(["info", bundle, "--json"], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["path"], str(self.dir / "m\ufffd"))

    def test_verify(self):
        result = run(["info", TINY, "--verify", "--json"], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(all(f["verified"] for f in json.loads(result.stdout)["files"]))

    def test_verify_finds_a_corrupt_file(self):
        size = manifest()["files"]["vae_decoder.pt"]["bytes"]
        bundle = derived_bundle(self.dir / "b", replace={"vae_decoder.pt": b"\0" * size})
        result = run(["info", bundle, "--verify"], self.dir)
        self.assertExit(result, EXIT_BUNDLE, "vae_decoder.pt", "sha256")
        self.assertIn("MISMATCH", result.stdout)

    def test_source_loras_and_text_layers(self):
        self.assertRegex(run(["info", TINY], self.dir).stdout, r"text encoder   \d+ layers, --clip-skip 1 to \d+\n")

        def merged(m):
            m["source"] = {"kind": "single_file", "path": "/models/base.safetensors", "sha256": "0" * 64,
                           "loras": [{"path": "/loras/ink-style.safetensors", "weight": 0.75, "modules": 192},
                                     {"path": "/loras/detail.safetensors", "weight": -0.5, "modules": 64}]}
            del m["text_num_layers"]  # a bundle converted before --clip-skip
            return m

        result = run(["info", derived_bundle(self.dir / "b", edit_manifest=merged)], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("source         single_file /models/base.safetensors\n", result.stdout)
        self.assertIn("LoRA merged    ink-style.safetensors (weight 0.75, 192 modules)\n", result.stdout)
        self.assertIn("LoRA merged    detail.safetensors (weight -0.5, 64 modules)\n", result.stdout)
        self.assertIn("text encoder   12 layers (assumed), --clip-skip 1 to 12\n", result.stdout)

        # The record is informative: values of other types (a hand edit) are shown as they are or as "?".
        def odd(m):
            m["source"] = {"kind": "single_file", "path": 7, "ema": "yes",
                           "loras": [{"path": "/loras/a.safetensors", "weight": "strong", "modules": None}, 5]}
            return m

        result = run(["info", derived_bundle(self.dir / "c", edit_manifest=odd)], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("source         single_file 7\n", result.stdout)
        self.assertIn("LoRA merged    a.safetensors (weight strong, ? modules)\n", result.stdout)
        self.assertIn("LoRA merged    ? (weight ?, ? modules)\n", result.stdout)

        def text_borrowed(m):
            m["source"] = {"kind": "single_file", "path": "/models/unet-vae.safetensors", "sha256": "0" * 64,
                           "text_encoder": {"path": "/base/text_encoder/model.safetensors", "sha256": "1" * 64}}
            return m

        result = run(["info", derived_bundle(self.dir / "d", edit_manifest=text_borrowed)], self.dir)
        self.assertIn("source         single_file /models/unet-vae.safetensors (its text encoder from "
                      "/base/text_encoder/model.safetensors)\n", result.stdout)

    def test_missing_bundle_file(self):
        bundle = derived_bundle(self.dir / "b", drop={"unet.pt"})
        self.assertExit(run(["info", bundle], self.dir), EXIT_BUNDLE, "unet.pt")


if __name__ == "__main__":
    unittest.main()
