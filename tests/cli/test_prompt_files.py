"""--from-file: plain text and JSON Lines, per-line overrides, seeds, and malformed files reported by line before any
image is made."""

import json
import os
import subprocess
import threading
import unittest

from cli_support import (BIN, EXIT_IO, EXIT_USAGE, FAST, TINY, CliTestCase, files_under, json_lines, png_pixels,
                         png_text, run)


class PlainText(CliTestCase):
    def test_one_prompt_per_line_comments_and_blanks_skipped(self):
        # Two files joined (cat) bring the second's byte order mark to a later line.
        self.write("p.txt", "\ufeffa red fox\n\n# a comment\n   \n  a blue whale  \r\n#another\n\ufeffa green frog")
        result = self.txt2img("--from-file", "p.txt", "--seed", "10", "--json", "-o", "{index}-{prompt}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        records = json_lines(result.stdout)[:-1]
        self.assertEqual([r["prompt"] for r in records], ["a red fox", "a blue whale", "a green frog"])
        self.assertEqual([r["seed"] for r in records], [10, 11, 12])
        self.assertEqual(files_under(self.dir),
                         ["0-a-red-fox.png", "1-a-blue-whale.png", "2-a-green-frog.png", "p.txt"])

    def test_a_json_line_in_a_plain_text_file_is_refused(self):
        """A file is JSON Lines when its first prompt line is an object; a later one in a plain-text file would be
        made as a prompt of its JSON text, with the run's settings instead of its own."""
        self.write("p.txt", 'a cat\n{red|blue} fox\n{"prompt": "a dog", "seed": 5}\n')
        result = self.txt2img("--from-file", "p.txt", "--seed", "1", "-o", "{index}.png")
        self.assertExit(result, EXIT_USAGE, "p.txt:3: a JSON object, in a file read as one prompt a line")
        self.assertNothingWritten("p.txt")

    def test_classic_mac_line_ends_separate_prompts(self):
        """A lone CR ends a line, as in Python's universal newlines: a file saved with classic Mac line ends is not one
        prompt made of all of them, and its lines are counted in messages."""
        self.write("p.txt", "a red fox\r# a comment\ra blue whale\r\r\na green frog\r")
        result = self.txt2img("--from-file", "p.txt", "--seed", "10", "--json", "-o", "{index}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([(r["prompt"], r["seed"]) for r in json_lines(result.stdout)[:-1]],
                         [("a red fox", 10), ("a blue whale", 11), ("a green frog", 12)])
        self.write("p.jsonl", '{"prompt": "a"}\r{"prompt": "b"}\r{"prompt": "c", "steps": "x"}\r')
        result = self.txt2img("--from-file", "p.jsonl", "--seed", "1", "-o", "j{index}.png")
        self.assertExit(result, EXIT_USAGE, "p.jsonl:3:")

    def test_seeds_count_every_earlier_image(self):
        self.write("p.txt", "a\nb\nc\n")
        result = self.txt2img("--from-file", "p.txt", "--seed", "50", "--images-per-prompt", "2", "--json",
                              "-o", "{index}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([(r["prompt"], r["n"], r["seed"]) for r in json_lines(result.stdout)[:-1]],
                         [("a", 0, 50), ("a", 1, 51), ("b", 0, 52), ("b", 1, 53), ("c", 0, 54), ("c", 1, 55)])

    def test_standard_input(self):
        result = self.txt2img("--from-file", "-", "--seed", "1", "-o", "{index}.png", input="a fox\na cat\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["0.png", "1.png"])

    def test_a_closed_standard_input_is_an_error_not_an_empty_file(self):
        for args in [["--from-file", "-", "-o", "{index}.png"], ["tokenize", "--from-file", "-"]]:
            with self.subTest(args[0]):
                result = run([*args, "--model", TINY], self.dir, preexec_fn=lambda: os.close(0))
                self.assertExit(result, EXIT_IO, "cannot read the prompts from <stdin>: standard input is closed")

    def test_pipes_and_a_file_that_grows_are_read_once(self):
        """A named pipe, /dev/stdin or a process substitution can be read only once, and a file may grow while the run
        works: the prompts are the ones read when the run starts, all of them checked and all of them made."""
        os.mkfifo(self.dir / "fifo")
        writer = threading.Thread(target=lambda: (self.dir / "fifo").write_text("a fox\na cat\n"))
        writer.start()
        result = self.txt2img("--from-file", "fifo", "--seed", "1", "-o", "f{index}.png", timeout=120)
        writer.join()
        self.assertEqual(result.returncode, 0, result.stderr)
        result = self.txt2img("--from-file", "/dev/stdin", "--seed", "1", "-o", "s{index}.png", input="a fox\na cat\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(files_under(self.dir), ["f0.png", "f1.png", "s0.png", "s1.png"])

        self.write("grows.txt", "a fox\n")
        process = subprocess.Popen([BIN, "--from-file", "grows.txt", "--seed", "1", "-o", "g{index}.png", "--json",
                                    "--json-progress", "--model", TINY, *FAST], cwd=self.dir, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        for line in process.stdout:  # denoising has begun: the file was read
            if '"step"' in line:
                with open(self.dir / "grows.txt", "ab") as f:
                    f.write(b"a cat\n\xff\n")
                break
        process.communicate(timeout=120)
        self.assertEqual(process.returncode, 0)
        self.assertEqual([f for f in files_under(self.dir) if f.startswith("g")], ["g0.png", "grows.txt"])

    def test_standard_input_malformed_line(self):
        result = self.txt2img("--from-file", "-", "-o", "{index}.png", input='{"prompt": "a"}\n{"prompt": 3}\n')
        self.assertExit(result, EXIT_USAGE, "<stdin>:2", "prompt")
        self.assertNothingWritten()

    def test_plain_line_with_a_brace_later_is_a_prompt(self):
        self.write("p.txt", "a fox\n{not json}\n")
        result = self.txt2img("--from-file", "p.txt", "--seed", "1", "-o", "{index}.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[1]["prompt"], "{not json}")

    def test_invalid_utf8_line(self):
        (self.dir / "p.txt").write_bytes(b"a fox\na \xc3\x28 cat\n")
        result = self.txt2img("--from-file", "p.txt", "-o", "{index}.png")
        self.assertExit(result, EXIT_USAGE, "p.txt:2", "UTF-8")
        self.assertNothingWritten("p.txt")
        # The column counts the blanks the line starts with, as an editor does.
        (self.dir / "p.txt").write_bytes(b"a fox\n      ab\xffc\n")
        self.assertExit(self.txt2img("--from-file", "p.txt", "-o", "{index}.png"), EXIT_USAGE,
                        "p.txt:2: not valid UTF-8 (byte 0xff at column 9)")

    def test_a_nul_character_is_refused(self):
        """No command line can carry a NUL, so info --command could not give such a prompt back."""
        (self.dir / "p.txt").write_bytes(b"a fox\na\0b\n")
        self.assertExit(self.txt2img("--from-file", "p.txt", "-o", "{index}.png"), EXIT_USAGE,
                        "p.txt:2: a NUL character at column 2")
        self.write("p.jsonl", '{"prompt": "a fox"}\n{"prompt": "a", "negative_prompt": "b\\u0000c"}\n')
        self.assertExit(self.txt2img("--from-file", "p.jsonl", "-o", "{index}.png"), EXIT_USAGE,
                        'p.jsonl:2: "negative_prompt" contains a NUL character')
        self.assertNothingWritten("p.txt", "p.jsonl")

    def test_unreadable_file(self):
        result = self.txt2img("--from-file", "missing.txt")
        self.assertExit(result, EXIT_IO, "missing.txt")
        self.assertNothingWritten()

    def test_directory_as_prompt_file(self):
        (self.dir / "d").mkdir()
        result = self.txt2img("--from-file", "d")
        self.assertExit(result, EXIT_IO, "d")

    def test_empty_file_makes_nothing_and_says_so(self):
        self.write("p.txt", "# nothing\n\n")
        result = self.txt2img("--from-file", "p.txt", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("warning: p.txt has no prompts (every line is blank or a comment)", result.stderr)
        self.assertEqual(json_lines(result.stdout)[-1]["written"], 0)
        self.assertEqual(files_under(self.dir), ["p.txt"])


class JsonLines(CliTestCase):
    def test_overrides(self):
        self.write("p.jsonl", "\n".join([
            '{"prompt": "a fox"}',
            # Whole numbers as pandas and NumPy write them (1000.0, 3e0) are the integers they are.
            '{"prompt": "a cat", "negative_prompt": "dogs", "seed": 1000.0, "steps": 3e0, "cfg_scale": 5,'
            ' "width": 40, "height": 24.0, "sampler": "euler", "images": 2.0, "output": "cats/{n}.png"}',
            '{"prompt": "a cow", "seed": null}',
        ]))
        result = self.txt2img("--from-file", "p.jsonl", "--seed", "7", "-n", "ugly", "--json", "-o", "{index}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        records = json_lines(result.stdout)[:-1]
        summary = [(r["path"], r["prompt"], r["negative_prompt"], r["seed"], r["steps"], r["cfg_scale"], r["width"],
                    r["height"], r["sampler"]) for r in records]
        self.assertEqual(summary, [
            ("0.png", "a fox", "ugly", 7, 2, 7.5, 32, 32, "ddim"),
            ("cats/0.png", "a cat", "dogs", 1000, 3, 5, 40, 24, "euler"),
            ("cats/1.png", "a cat", "dogs", 1001, 3, 5, 40, 24, "euler"),
            ("3.png", "a cow", "ugly", 10, 2, 7.5, 32, 32, "ddim"),
        ])
        self.assertIn("Size: 40x24", png_text(self.dir / "cats/1.png")["parameters"])

    def test_long_prompts_and_emphasis_per_line(self):
        self.write("p.jsonl", "\n".join([
            '{"prompt": "a \\\\(red\\\\) fox", "emphasis": true, "seed": 4}',
            '{"prompt": "a (red) fox", "seed": 4}',
            '{"prompt": "a (red) fox", "seed": 4, "long_prompts": true, "emphasis": false}',
        ]))
        result = self.txt2img("--from-file", "p.jsonl", "-o", "{index}.png", "--batch-size", "3")
        self.assertEqual(result.returncode, 0, result.stderr)
        flags = [(r["emphasis"], r["long_prompts"])
                 for r in (json.loads(png_text(self.dir / f"{i}.png")["txt2img"]) for i in range(3))]
        self.assertEqual(flags, [(True, False), (False, False), (False, True)])
        # An escaped bracket read with emphasis is the bracket as text: the same image as the second line's.
        pixels = [png_pixels(self.dir / f"{i}.png")[2] for i in range(3)]
        self.assertEqual(pixels[0], pixels[1])
        self.assertEqual(pixels[1], pixels[2])  # a prompt that fits is the same with long prompts

    def test_hires_fix_per_line(self):
        """A line turns the hires fix on, sets its strength, or turns --hires-scale off; each image is what the flags
        alone make."""
        self.write("p.jsonl", "\n".join([
            '{"prompt": "a fox", "seed": 4, "hires_scale": 2, "hires_denoise": 0.6}',
            '{"prompt": "a fox", "seed": 4}',
        ]))
        result = self.txt2img("--from-file", "p.jsonl", "-o", "{index}.png", "--batch-size", "2")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([png_pixels(self.dir / f"{i}.png")[:2] for i in range(2)], [(64, 64), (32, 32)])
        alone = self.txt2img("a fox", "--seed", "4", "--hires-scale", "2", "--hires-denoise", "0.6", "-o", "a.png")
        self.assertEqual(alone.returncode, 0, alone.stderr)
        self.assertEqual(png_pixels(self.dir / "0.png"), png_pixels(self.dir / "a.png"))

        self.write("q.jsonl", '{"prompt": "a fox", "seed": 4, "hires_scale": 0}\n')
        result = self.txt2img("--from-file", "q.jsonl", "--hires-scale", "2", "-o", "q.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(png_pixels(self.dir / "q.png"), png_pixels(self.dir / "1.png"))

    def test_a_prompt_without_words_is_made_with_a_warning(self):
        """An empty prompt is a valid request (the unconditional image), but an unset shell variable looks the same:
        it is made, and said."""
        self.write("p.jsonl", '{"prompt": "a fox"}\n{"prompt": " "}\n{"prompt": ""}\n')
        result = self.txt2img("--from-file", "p.jsonl", "--seed", "1", "-o", "{index}.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("warning: 2 prompts have no words (the first: p.jsonl:2): their images are unconditional",
                      result.stderr)
        self.assertEqual(files_under(self.dir), ["0.png", "1.png", "2.png", "p.jsonl"])
        result = self.txt2img("", "--seed", "1", "-o", "e.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("warning: the prompt has no words: its images are unconditional", result.stderr)
        self.assertNotIn("no words", self.txt2img("a fox", "--seed", "1", "-o", "f.png").stderr)

    def test_detected_by_first_line(self):
        self.write("prompts.txt", '# JSON Lines without the extension\n{"prompt": "a fox", "seed": 3}\n')
        result = self.txt2img("--from-file", "prompts.txt", "--json", "-o", "x.png")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json_lines(result.stdout)[0]["seed"], 3)
        # The summary names no base seed that no image used, nor does stderr draw one.
        self.assertIsNone(json_lines(result.stdout)[-1]["seed"])
        self.assertNotIn("(random;", result.stderr)
        # A prompt in Dynamic Prompts' {a|b} syntax opens no JSON object: the file is one prompt a line.
        self.write("dynamic.txt", "{red|blue} car\n{ } a fox\n")
        result = self.txt2img("--from-file", "dynamic.txt", "--json", "-o", "{index}.png", "--seed", "1")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual([r["prompt"] for r in json_lines(result.stdout)[:-1]], ["{red|blue} car", "{ } a fox"])

    def bad(self, lines, *message):
        self.write("p.jsonl", "\n".join(lines) + "\n")
        result = self.txt2img("--from-file", "p.jsonl", "-o", "{index}.png")
        self.assertExit(result, EXIT_USAGE, *message)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertNothingWritten("p.jsonl")

    def test_errors_name_the_line_and_come_before_any_image(self):
        good = '{"prompt": "fine"}'
        self.bad([good, good, '{"prompt": "x", "negative": "y"}'], "p.jsonl:3", 'unknown key "negative"')
        self.bad([good, '{"prompt": "x"'], "p.jsonl:2", "not a JSON object (parse error at column 15:")
        self.bad([good, '{"prompt": "x", "seed": 1, "prompt": "y"}'], "p.jsonl:2", '"prompt" is set twice')
        self.bad([good, '{"prompt": "x", "cfg_scale": 1e999}'], "p.jsonl:2", "number overflow")
        self.bad([good, '{"prompt": "x", "images": 1000001}'], "p.jsonl:2", '"images" must be from 1 to 1000000')
        self.bad([good, '["a list"]'], "p.jsonl:2", "JSON object")
        self.bad(['{"negative_prompt": "x"}'], "p.jsonl:1", '"prompt"')
        self.bad([good, '{"prompt": "x", "steps": "many"}'], "p.jsonl:2", '"steps"', "whole number")
        self.bad([good, '{"prompt": "x", "steps": 2.5}'], "p.jsonl:2", '"steps"')
        # A value too deep or too long to echo is named by its kind.
        self.bad(['{"prompt": "x", "seed": ' + "[" * 100000 + "]" * 100000 + "}"], "p.jsonl:1",
                 '"seed" must be a whole number, not an array')
        self.bad(['{"prompt": "x", "steps": "' + "9" * 1000 + '"}'], "p.jsonl:1",
                 '"steps" must be a whole number, not "' + "9" * 39 + "...")
        self.bad(['{"prompt": "x", "seed": -5}'], "p.jsonl:1", "seed")
        self.bad(['{"prompt": "x", "seed": -5.0}'], "p.jsonl:1", '"seed" "-5" must be a whole number from 0')
        self.bad(['{"prompt": "x", "seed": -1}'], "p.jsonl:1", '"seed" -1: leave "seed" out (or null)')
        self.bad(['{"prompt": "x", "steps": 1e10}'], "p.jsonl:1", '"steps" 10000000000.0 is out of range')
        # Beyond 2^53 a float skips whole numbers: 9007199254740993.0 would be read as ...992.
        for big in ("9007199254740993.0", "1e300", "-1e19"):
            self.bad(['{"prompt": "x", "seed": ' + big + '}'], "p.jsonl:1",
                     "is a float of 2^53 or more, where floats skip whole numbers; write it as an integer")
        self.bad(['{"prompt": "x", "seed": 9223372036854775808}'], "p.jsonl:1", "seed")
        self.bad(['{"prompt": "x", "width": 33}'], "p.jsonl:1", "width 33")
        self.bad(['{"prompt": "x", "height": 0}'], "p.jsonl:1", '"height" 0 is no image size')
        self.bad(['{"prompt": "x", "steps": 0}'], "p.jsonl:1", "steps 0")
        self.bad(['{"prompt": "x", "sampler": "nope"}'], "p.jsonl:1", "nope")
        self.bad(['{"prompt": "x", "images": 0}'], "p.jsonl:1", "images")
        self.bad(['{"prompt": "x", "cfg_scale": "high"}'], "p.jsonl:1", "cfg_scale")
        self.bad(['{"prompt": "x", "output": "x.gif"}'], "p.jsonl:1", ".png")
        self.bad(['{"prompt": 5}'], "p.jsonl:1", '"prompt"', "string")
        self.bad(['{"prompt": "x", "emphasis": "yes"}'], "p.jsonl:1", '"emphasis"', "true or false")
        self.bad(['{"prompt": "x", "hires_denoise": 0.5}'], "p.jsonl:1", '"hires_scale"')
        self.bad(['{"prompt": "x", "hires_scale": 0, "hires_steps": 3}'], "p.jsonl:1",
                 '"hires_scale": 0 turns the hires pass off')
        self.bad(['{"prompt": "x", "hires_scale": "2x"}'], "p.jsonl:1", '"hires_scale"', "number")
        self.bad(['{"prompt": "x", "hires_scale": 2, "sampler": "pndm"}'], "p.jsonl:1", "hires fix: ", "pndm")

    def test_late_error_stops_the_run_before_the_first_image(self):
        lines = ['{"prompt": "p%d"}' % i for i in range(50)] + ['{"prompt": "last", "height": 7}']
        self.bad(lines, "p.jsonl:51", "height 7")

    def test_two_lines_writing_one_file(self):
        self.bad(['{"prompt": "a", "output": "same.png"}', '{"prompt": "b"}', '{"prompt": "c", "output": "same.png"}'],
                 "p.jsonl:1 and p.jsonl:3", "same.png")

    def test_line_without_seed_in_a_sharded_run(self):
        self.write("p.jsonl", '{"prompt": "a", "seed": 1}\n{"prompt": "b"}\n')
        result = self.txt2img("--from-file", "p.jsonl", "--shard", "0/2")
        self.assertExit(result, EXIT_USAGE, "p.jsonl:2", "--seed")
        self.assertNothingWritten("p.jsonl")


if __name__ == "__main__":
    unittest.main()
