"""Help, version, and every bad flag value: the documented exit code, one message naming what to fix, nothing
written."""

import json
import subprocess
import unittest

from cli_support import BIN, EXIT_BUNDLE, EXIT_USAGE, FAST, TINY, CliTestCase, json_lines, run


class HelpAndVersion(CliTestCase):
    def test_help_lists_flags_exit_codes_and_defaults(self):
        result = run(["--help"], self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        for text in ["--from-file", "--negative-prompt", "--images-per-prompt", "--batch-size", "--seed", "--sampler",
                     "--steps", "--cfg-scale", "--eta", "--width", "--height", "--model", "TXT2IMG_MODEL",
                     "models/sd15", "--device", "--dtype", "--threads", "--no-safety-checker", "--safety",
                     "--fail-on-nsfw", "--output", "--overwrite", "--skip-existing", "--no-metadata", "--shard",
                     "--json", "--quiet", "outputs/{index:05}-{seed}.png", "info", "tokenize", "ddim"]:
            self.assertIn(text, result.stdout)
        for code in ["0 ", "2 ", "3 ", "4 ", "5 ", "6 ", "130"]:
            self.assertIn("  " + code, result.stdout)
        self.assertNothingWritten()

    def test_subcommand_help(self):
        for sub in ["info", "tokenize"]:
            result = run([sub, "--help"], self.dir)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("Exit codes", result.stdout)

    def test_version(self):
        result = run(["--version"], self.dir)
        self.assertEqual(result.returncode, 0)
        # The build, what it can run on ("CPU only", "CUDA: 2 devices", "CUDA build, no CUDA device visible") and its
        # malloc (tcmalloc where set-up installed it, which CI's does).
        self.assertRegex(result.stdout, r"^txt2img \d+\.\d+\.\d+ \(LibTorch \d+\.\d+\.\d+, "
                                        r"(CPU only|CUDA: \d+ devices?|CUDA build, no CUDA device visible), "
                                        r"(tcmalloc \d+\.\d+\S*|glibc malloc)\)\n$")


class DefaultPlacement(CliTestCase):
    def test_without_device_or_dtype_the_build_chooses(self):
        """The everyday command, with no --device or --dtype: the CPU in fp32 on a build without CUDA, else the first
        CUDA device in fp16."""
        result = self.txt2img("a fox", "-W", "32", "-H", "32", "--steps", "2", "-o", "a.png", "--json", fast=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        record = json_lines(result.stdout)[0]
        if "CUDA: " in run(["--version"], self.dir).stdout:  # "CUDA: 2 devices"
            self.assertEqual((record["device"], record["dtype"]), ("cuda:0", "fp16"))
        else:
            self.assertEqual((record["device"], record["dtype"]), ("cpu", "fp32"))


class BadFlags(CliTestCase):
    """Each case: arguments, then pieces of the one error message."""

    def check(self, args, *message, code=EXIT_USAGE, **kwargs):
        result = self.txt2img(*args, **kwargs)
        self.assertExit(result, code, *message)
        self.assertEqual(result.stdout, "")
        self.assertEqual(len([l for l in result.stderr.splitlines() if l.startswith("error:")]), 1, result.stderr)
        self.assertNothingWritten()

    def test_unknown_flag(self):
        self.check(["a fox", "--no-such-flag"], "--no-such-flag")

    def test_other_tools_flags_and_typos_name_the_flag_to_use(self):
        """stable-diffusion.cpp's and diffusers' scripts' flags, and an option a typo or two away, get txt2img's."""
        self.check(["a fox", "--sampling-method", "euler"], "--sampling-method euler; for --sampling-method use "
                                                           "--sampler (txt2img --help")
        self.check(["a fox", "-b", "4"], "for -b use --images-per-prompt")
        self.check(["a fox", "--guidance-scale=7"], "for --guidance-scale use --cfg-scale")
        # Python's spelling of them, with underscores.
        self.check(["a fox", "--guidance_scale", "7"], "for --guidance_scale use --cfg-scale")
        self.check(["a fox", "--num_inference_steps", "7"], "for --num_inference_steps use --steps")
        self.check(["a fox", "--sampelr", "euler"], "for --sampelr use --sampler")
        self.assertExit(run(["info", "a.png", "--verfy"], self.dir), EXIT_USAGE,
                        "for --verfy use --verify (txt2img info --help")
        # Only a flag the command being read has: info takes no CFG scale.
        result = run(["info", "a.png", "--guidance-scale", "7"], self.dir)
        self.assertExit(result, EXIT_USAGE, "not expected: --guidance-scale 7 (txt2img info --help")
        self.assertNotIn("--cfg-scale", result.stderr)
        self.check(["a fox", "--no-such-flag"], "not expected: --no-such-flag (txt2img --help")

    def test_a_prompt_the_shell_split_into_words_is_shown_quoted(self):
        self.check(["a", "red", "fox"], "arguments were not expected: red fox; a prompt of several words goes in "
                                        "quotes: txt2img 'a red fox'")
        # After "--" every argument is a word of the prompt, even one that looks like an option.
        self.assertExit(run(["--", "a", "red", "--fox"], self.dir), EXIT_USAGE,
                        "a prompt of several words goes in quotes: txt2img 'a red --fox'")
        # Quoted for the shell, and after -- where it starts as an option would.
        self.assertExit(run(["--", "-a", "fox"], self.dir), EXIT_USAGE, "in quotes: txt2img -- '-a fox'")
        self.assertExit(run(["a", 'b"c'], self.dir), EXIT_USAGE, """in quotes: txt2img 'a b"c'""")
        # A newline in it is one in the command too: bash's $'...' where the message shows \x0A.
        self.assertExit(run(["red\nfox", "in", "snow"], self.dir), EXIT_USAGE,
                        "in quotes: txt2img $'red\\x0Afox in snow'")
        # An unknown flag is named, not taken for a prompt before a subcommand.
        self.assertExit(run(["--guidance_scale", "7", "an", "info", "graphic"], self.dir), EXIT_USAGE,
                        "for --guidance_scale use --cfg-scale")

    def test_a_number_flag_given_a_word_says_it_takes_a_number(self):
        self.check(["a fox", "--steps", "many"], '--steps takes a whole number (written without a fraction or '
                                                 'exponent), not "many"')
        self.assertExit(run(["a fox", "--steps=1e2"], self.dir), EXIT_USAGE,
                        '--steps takes a whole number (written without a fraction or exponent), not "1e2"')
        self.check(["a fox", "--cfg-scale", "high"], '--cfg-scale takes a number, not "high"')
        self.check(["a fox", "--low-vram=maybe"], '--low-vram is a switch: give it without a value (not "maybe")')

    def test_unexpected_arguments_are_listed_as_given_with_their_command_s_help(self):
        self.check(["a fox", "a cat", "--bogus", "3"], "arguments were not expected: a cat --bogus 3 (txt2img --help")
        self.assertExit(run(["info", "a.png", "--seed", "5"], self.dir), EXIT_USAGE,
                        "arguments were not expected: --seed 5 (txt2img info --help lists its options)")
        self.assertExit(run(["tokenize", "a fox", "--steps", "2"], self.dir, env={"TXT2IMG_MODEL": str(TINY)}),
                        EXIT_USAGE, "arguments were not expected: --steps 2 (txt2img tokenize --help lists its options)")
        # One before the subcommand's name is the main command's.
        self.assertExit(run(["--bogus", "info", "a.png"], self.dir), EXIT_USAGE,
                        "argument was not expected: --bogus (txt2img --help lists the options)")

    def test_missing_prompt(self):
        self.check([], "no prompt", "--from-file")

    def test_two_prompt_arguments(self):
        self.check(["a fox", "a cat"], "a cat")

    def test_a_second_prompt_or_prompt_file_is_refused(self):
        """A flag given twice takes its last value, but a second prompt or prompt file would drop the first's
        images."""
        self.write("a.txt", "a fox\n")
        self.write("b.txt", "a cat\n")
        self.assertExit(self.txt2img("-f", "a.txt", "-f", "b.txt"), EXIT_USAGE,
                        "--from-file is given twice, and a run reads one prompt file: for several, join them")
        self.assertExit(self.txt2img("-p", "a fox", "--prompt", "a cat", "-p", "a cow"), EXIT_USAGE,
                        "--prompt is given 3 times, and a run reads one prompt: for several, write them to a file")
        self.assertExit(run(["tokenize", "-f", "a.txt", "-f", "b.txt"], self.dir, env={"TXT2IMG_MODEL": str(TINY)}),
                        EXIT_USAGE, "--from-file is given twice", "(cat a.txt b.txt | txt2img tokenize -f -)")
        self.assertNothingWritten("a.txt", "b.txt")
        result = self.txt2img("a fox", "--steps", "1", "--steps", "2", "-o", "x.png", "-o", "y.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual((json_lines(result.stdout)[0]["steps"], json_lines(result.stdout)[0]["path"]), (2, "y.png"))

    def test_prompt_and_from_file_exclude_each_other(self):
        self.write("p.txt", "a fox\n")
        result = self.txt2img("a fox", "--from-file", "p.txt")
        self.assertExit(result, EXIT_USAGE, "--from-file")
        self.assertNothingWritten("p.txt")

    def test_words_and_flags_before_a_subcommand_are_refused(self):
        """An unquoted prompt with the word info in it, or a flag of generating before info or tokenize, would go
        unread: refused, saying how to write it."""
        self.assertExit(run(["an", "info", "graphic"], self.dir), EXIT_USAGE,
                        '"an" before info reads as a prompt, which the info subcommand does not take; quote a whole '
                        "prompt that has the word info in it, so that it is one argument: txt2img 'an info graphic'")
        # Every word of the prompt is in the command the hint gives, wherever the subcommand's name is, and also
        # where the subcommand then lacks its own argument.
        for words in (["a", "photo", "of", "info", "about", "cats"], ["a", "photo", "of", "tokenize", "cats", "now"],
                      ["a", "photo", "info"], ["a", "photo", "tokenize"]):
            self.assertExit(run([*words, "--steps", "2"], self.dir), EXIT_USAGE,
                            "in it, so that it is one argument: txt2img '" + " ".join(words) + "'")
        self.assertExit(run(["--seed", "1", "tokenize", "a fox"], self.dir), EXIT_USAGE,
                        "--seed comes before the tokenize subcommand, which does not read it")
        self.assertExit(run(["-m", TINY, "tokenize", "a fox"], self.dir), EXIT_USAGE,
                        "--model comes before the tokenize subcommand")
        # The model taken from the environment is no mistake.
        self.assertEqual(run(["tokenize", "a fox"], self.dir, env={"TXT2IMG_MODEL": str(TINY)}).returncode, 0)

    def test_width_not_multiple_of_8(self):
        self.check(["a fox", "--width", "36"], "width 36", "multiple of 8")

    def test_an_empty_value_is_no_value(self):
        """`--seed "$SEED"` with SEED unset is an error, not a random seed (nor CFG 0, nor every shard); a prompt and a
        negative prompt may be empty."""
        for flag in ("--seed", "--cfg-scale", "--shard", "--width", "--device", "--preview", "--output",
                     "--threads", "--batch-size", "--hires-scale", "--hires-steps", "--ensd"):  # with range checks
            # After a value too: the last one would otherwise be taken.
            self.assertExit(self.txt2img("a fox", "--seed", "1", flag, ""), EXIT_USAGE,
                            f"{flag} is empty (an unset variable?)")
            self.assertNothingWritten()
        self.assertEqual(self.txt2img("", "-n", "", "--seed", "1", "-o", "a.png").returncode, 0)
        # A value that has no default is not offered one.
        result = run(["info", ""], self.dir)
        self.assertExit(result, EXIT_USAGE, "path is empty (an unset variable?): give it a value")
        self.assertNotIn("default", result.stderr)
        # "--flag=" is the flag with an empty value too, never the flag with the next argument as its value.
        self.assertExit(self.txt2img("a fox", "--seed=", "--json"), EXIT_USAGE, "--seed is empty (an unset variable?)")
        result = self.txt2img("a fox", "--seed", "1", "--negative-prompt=", "--no-safety-checker", "-o", "b.png",
                              "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout.splitlines()[0])["negative_prompt"], "")
        self.assertIn("the safety checker is off", result.stderr)
        # A flag that takes no value is left to CLI11 as written: nothing after it is taken for its value.
        self.assertExit(self.txt2img("a fox", "--quiet=", "--seed", "1"), EXIT_USAGE, "--quiet takes no value")
        # After "--" everything is the prompt, as written.
        result = run(["--seed", "1", "-o", "c.png", "--json", "--model", TINY, *FAST, "--", "--x="], self.dir)
        self.assertEqual(json.loads(result.stdout.splitlines()[0])["prompt"], "--x=")

    def test_a_side_of_zero_is_not_the_default_size(self):
        self.check(["a fox", "--width", "0"], "--width 0 is no image size", "leave --width out")
        self.check(["a fox", "--height", "0"], "--height 0 is no image size")

    def test_height_too_small_and_too_large(self):
        self.check(["a fox", "--width", "4"], "width 4")
        self.check(["a fox", "--height", "8192"], "height 8192", "4096")

    def test_width_not_a_number(self):
        self.check(["a fox", "--width", "wide"], "--width")

    def test_steps_out_of_range(self):
        self.check(["a fox", "--steps", "0"], "steps 0", "1 to 1000")
        self.check(["a fox", "--steps", "1001"], "steps 1001")

    def test_cfg_not_finite(self):
        # Beyond float32 too: the guidance would only make the latents non-finite once the model ran.
        for value in ["nan", "inf", "-inf", "1e39", "-3.5e38"]:
            self.check(["a fox", "--cfg-scale", value], "cfg scale", "finite")

    def test_eta_negative(self):
        self.check(["a fox", "--eta", "-1"], "eta")

    def test_seed_out_of_range_or_not_a_number(self):
        self.check(["a fox", "--seed", "-2"], "--seed", "9223372036854775807")
        self.check(["a fox", "--seed", "9223372036854775808"], "--seed", "9223372036854775807")
        self.check(["a fox", "--seed", "12ab"], "--seed")

    def test_unknown_sampler(self):
        self.check(["a fox", "--sampler", "magic"], "magic", "ddim")

    def test_control_characters_in_messages_never_reach_the_terminal(self):
        """Errors, warnings and notes quote what they were given (a value, a prompt file's text) with its control
        characters as \\xNN: a pasted escape sequence does not clear the screen."""
        result = self.txt2img("a fox", "--sampler", "\x1b[2J\u0085")
        self.assertExit(result, EXIT_USAGE, 'unknown sampler "\\x1B[2J\\x85"')
        self.assertFalse(any(c in result.stderr for c in "\x1b\x85"), result.stderr)
        # A newline too: each message is one line.
        for args, quoted in ((["a fox", "-o", "out/q\n.jpg"], '-o "out/q\\x0A.jpg"'),
                             (["a fox", "--hires-scale", "2", "--hires-upscaler", "x\ny"], '"x\\x0Ay"')):
            result = self.txt2img(*args)
            self.assertExit(result, EXIT_USAGE, quoted)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)

    def test_bad_device_and_dtype(self):
        self.check(["a fox", "--device", "tpu"], 'device "tpu"', "cpu, cuda or cuda:K")
        self.check(["a fox", "--dtype", "fp8"], "--dtype")
        self.check(["a fox", "--dtype", "fp16"], "fp16", "CPU")
        self.check(["a fox", "--graph", "fast"], "--graph")

    def test_cuda_device_beyond_count(self):
        devices = "CUDA: " in run(["--version"], self.dir).stdout  # "CUDA: 2 devices"
        self.check(["a fox", "--device", "cuda:99"], "device cuda:99: this LibTorch sees ",
                   "only" if devices else "no CUDA device")

    def test_bad_counts(self):
        self.check(["a fox", "--images-per-prompt", "0"], "--images-per-prompt")
        self.check(["a fox", "--batch-size", "0"], "--batch-size")
        self.check(["a fox", "--threads", "0"], "--threads")

    def test_bad_shard(self):
        for shard in ["3/3", "1", "a/b", "0/0", "-1/2"]:
            self.check(["a fox", "--seed", "1", "--shard", shard], "--shard")

    def test_shard_and_skip_existing_need_a_seed(self):
        self.check(["a fox", "--shard", "0/2"], "--seed")
        self.check(["a fox", "--skip-existing"], "--skip-existing needs a fixed --seed (the prompt sets none)")

    def test_contradictory_flags(self):
        self.check(["a fox", "--overwrite", "--skip-existing", "--seed", "1"], "--overwrite")
        self.check(["a fox", "--no-safety-checker", "--safety", "report"], "--safety")
        self.check(["a fox", "--no-safety-checker", "--fail-on-nsfw"], "--fail-on-nsfw")
        self.check(["a fox", "--safety", "blur"], "--safety")
        for graph in ["freeze", "optimize"]:
            self.check(["a fox", "--low-vram", "--graph", graph], "--low-vram", "--graph")

    def test_invalid_utf8_prompt(self):
        # Invalid UTF-8 cannot travel in a str argument; subprocess passes bytes through unchanged.
        result = subprocess.run([BIN, b"a \xff fox", "-o", "x.png", "--model", str(TINY), *FAST], cwd=self.dir,
                                capture_output=True)
        self.assertEqual(result.returncode, EXIT_USAGE, result.stderr)
        self.assertIn(b"not valid UTF-8", result.stderr)
        self.assertNothingWritten()

    def test_output_patterns(self):
        self.check(["a fox", "-o", "out.jpg"], ".png")
        self.check(["a fox", "-o", "{nope}.png"], "{nope}")
        self.check(["a fox", "-o", "{index.png"], "unclosed")
        self.check(["a fox", "-o", "{index:x}.png"], "{index:x}")
        self.check(["a fox", "-o", ""], "-o")

    def test_same_name_for_two_images(self):
        self.check(["a fox", "--images-per-prompt", "2", "-o", "fox.png"], "fox.png", "{index}")

    def test_missing_model(self):
        self.check(["a fox"], "models/sd15", "convert", code=EXIT_BUNDLE, model=None)
        self.check(["a fox"], "nowhere", code=EXIT_BUNDLE, model=self.dir / "nowhere")

    def test_model_from_environment(self):
        result = self.txt2img("a fox", model=None, env={"TXT2IMG_MODEL": str(self.dir / "env-model")})
        self.assertExit(result, EXIT_BUNDLE, "env-model")


if __name__ == "__main__":
    unittest.main()
