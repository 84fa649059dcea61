"""The safety checker: on by default, refused bundles without one, replace/report modes, --fail-on-nsfw."""

import json
import unittest

from cli_support import (EXIT_NSFW, EXIT_USAGE, CliTestCase, derived_bundle, failed_json_lines, files_under, png_pixels,
                         json_lines, png_text, fixture_bundle, without_checker)


class WithoutChecker(CliTestCase):
    def setUp(self):
        super().setUp()
        self.bundle = derived_bundle(self.dir / "nochecker", edit_manifest=without_checker)

    def test_refused_unless_asked(self):
        """Before the model loads: no loading line, and no --json summary (only the error line), as for every other
        usage error."""
        result = self.txt2img("a fox", "-o", "a.png", "--json", model=self.bundle)
        self.assertExit(result, EXIT_USAGE, "no safety checker", "--no-safety-checker")
        self.assertNotIn("loading", result.stderr)
        self.assertEqual(failed_json_lines(result.stdout, EXIT_USAGE), [])
        self.assertTrue(all(f.startswith("nochecker/") for f in files_under(self.dir)), files_under(self.dir))

    def test_no_safety_checker_warns_once_and_records_it(self):
        result = self.txt2img("a fox", "-o", "{n}.png", "--images-per-prompt", "2", "--no-safety-checker", "--json",
                              model=self.bundle)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sum("safety checker is off" in line for line in result.stderr.splitlines()), 1)
        self.assertEqual(json.loads(png_text(self.dir / "0.png")["txt2img"])["safety"], {"mode": "off", "nsfw": False})
        self.assertEqual(json_lines(result.stdout)[0]["safety"], "off")


class FlagsEverything(CliTestCase):
    """A bundle whose checker flags every image."""

    def setUp(self):
        super().setUp()
        self.bundle = fixture_bundle("tiny-flag-all")

    def test_replace_writes_black_and_warns(self):
        result = self.txt2img("a fox", "-o", "{n}.png", "--images-per-prompt", "2", "--json", "--seed", "1",
                              model=self.bundle)
        self.assertEqual(result.returncode, 0, result.stderr)
        for n in range(2):
            _, _, pixels = png_pixels(self.dir / f"{n}.png")
            self.assertEqual(set(pixels), {0})
            self.assertIn(f"{n}.png", result.stderr)
            self.assertEqual(json.loads(png_text(self.dir / f"{n}.png")["txt2img"])["safety"],
                             {"mode": "replace", "nsfw": True})
        self.assertEqual(sum(line.startswith("warning:") and "NSFW" in line for line in result.stderr.splitlines()), 2)
        records = json_lines(result.stdout)
        self.assertTrue(all(r["nsfw"] for r in records[:-1]))
        self.assertEqual(records[-1]["nsfw"], 2)

    def test_report_keeps_the_image(self):
        result = self.txt2img("a fox", "-o", "a.png", "--safety", "report", "--seed", "1", model=self.bundle)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotEqual(set(png_pixels(self.dir / "a.png")[2]), {0})
        self.assertIn("NSFW", result.stderr)
        self.assertEqual(json.loads(png_text(self.dir / "a.png")["txt2img"])["safety"],
                         {"mode": "report", "nsfw": True})

    def test_fail_on_nsfw_exits_6_after_writing_everything(self):
        result = self.txt2img("a fox", "-o", "{n}.png", "--images-per-prompt", "3", "--fail-on-nsfw",
                              model=self.bundle)
        self.assertExit(result, EXIT_NSFW, "--fail-on-nsfw")
        self.assertEqual(files_under(self.dir), ["0.png", "1.png", "2.png"])


    def test_report_with_fail_on_nsfw_keeps_the_images_and_exits_6(self):
        result = self.txt2img("a fox", "-o", "{n}.png", "--images-per-prompt", "2", "--safety", "report",
                              "--fail-on-nsfw", "--json", "--seed", "1", model=self.bundle)
        self.assertExit(result, EXIT_NSFW, "--fail-on-nsfw")
        self.assertEqual(files_under(self.dir), ["0.png", "1.png"])
        self.assertTrue(all(set(png_pixels(self.dir / f"{n}.png")[2]) != {0} for n in range(2)))
        records = failed_json_lines(result.stdout, EXIT_NSFW)
        self.assertEqual([r["nsfw"] for r in records[:-1]], [True, True])
        self.assertEqual((records[-1]["nsfw"], records[-1]["written"]), (2, 2))


    def test_fail_on_nsfw_counts_the_flagged_images_skip_existing_keeps(self):
        """A resumed (or retried) run exits 6 as the whole run would: an image kept whose metadata says it was
        flagged counts as flagged; one without metadata cannot say so."""
        args = ["a fox", "-o", "{index}.png", "--seed", "1", "--fail-on-nsfw", "--json"]
        self.assertExit(self.txt2img(*args, "--images-per-prompt", "2", model=self.bundle), EXIT_NSFW)
        for more, made in (("2", 0), ("3", 1)):
            result = self.txt2img(*args, "--images-per-prompt", more, "--skip-existing", model=self.bundle)
            self.assertExit(result, EXIT_NSFW, "2 of the images --skip-existing keeps were flagged as NSFW when made",
                            f"{2 + made} images were flagged as NSFW (--fail-on-nsfw; 2 of them kept by "
                            "--skip-existing); every image is in place")
            summary = failed_json_lines(result.stdout, EXIT_NSFW)[-1]
            self.assertEqual((summary["written"], summary["skipped"], summary["nsfw"]), (made, 2, 2 + made))
        for name in ("0.png", "1.png", "2.png"):
            (self.dir / name).unlink()
        self.assertEqual(self.txt2img(*args, "--no-metadata", model=self.bundle).returncode, EXIT_NSFW)
        unmarked = self.txt2img(*args, "--skip-existing", model=self.bundle)
        self.assertEqual(unmarked.returncode, 0, unmarked.stderr)
        self.assertEqual(json_lines(unmarked.stdout)[-1]["nsfw"], 0)


class NeverFlags(CliTestCase):
    def test_fail_on_nsfw_passes_clean_images(self):
        result = self.txt2img("a fox", "-o", "a.png", "--fail-on-nsfw", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(json_lines(result.stdout)[0]["nsfw"])


if __name__ == "__main__":
    unittest.main()
