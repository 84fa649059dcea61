"""Progress on a terminal: a redrawn bar with colour, no colour with NO_COLOR; runtime failures."""

import os
import pty
import resource
import subprocess
import unittest

from cli_support import BIN, EXIT_RUNTIME, EXIT_USAGE, FAST, TINY, CliTestCase, failed_json_lines, files_under, json_lines


class Terminal(CliTestCase):
    def run_on_terminal(self, *args, env=None, typed=None, stdout_too=False, generating=True):
        """Runs with stderr (and, with `typed`, stdin: what is typed there; with `stdout_too`, stdout) on a
        pseudo-terminal, with the tiny model and the fast settings where `generating`; returns (exit code, what the
        terminal received)."""
        controller, terminal = pty.openpty()
        full_env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        full_env.update({"TERM": "xterm"}, **(env or {}))
        settings = ["--model", str(TINY), *FAST] if generating else []
        process = subprocess.Popen([BIN, *settings, *args], cwd=self.dir, stdout=terminal if stdout_too else subprocess.DEVNULL,
                                   stderr=terminal, stdin=terminal if typed is not None else None, env=full_env)
        os.close(terminal)
        if typed is not None:
            os.write(controller, typed)
        received = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the process closed its end
                break
            if not chunk:
                break
            received += chunk
        os.close(controller)
        return process.wait(timeout=120), received.decode("utf-8", "replace")

    def test_progress_bar_with_colour(self):
        code, screen = self.run_on_terminal("a fox", "--steps", "4", "-o", "a.png", "--seed", "1")
        self.assertEqual(code, 0, screen)
        self.assertIn("\r\033[K", screen)
        self.assertIn("image 1/1", screen)
        self.assertIn("step 4/4", screen)
        self.assertIn("it/s", screen)
        self.assertIn("\033[32m", screen)

    def test_json_records_at_a_terminal_start_their_own_lines(self):
        """--json to a terminal that also shows the bar: each record starts a line of its own, the bar cleared
        first."""
        code, screen = self.run_on_terminal("a fox", "--steps", "4", "-o", "a.png", "--seed", "1", "--json",
                                            "--json-progress", stdout_too=True)
        self.assertEqual(code, 0, screen)
        self.assertIn("step 4/4", screen)
        starts = [i for i in range(len(screen)) if screen.startswith('{"event"', i)]
        self.assertEqual(len(starts), 6, screen)  # four steps, the image, the summary
        for i in starts:
            self.assertTrue(screen[:i].endswith(("\r\033[K", "\n")), repr(screen[max(0, i - 60):i + 20]))

    def test_no_color(self):
        code, screen = self.run_on_terminal("a fox", "-o", "a.png", "--seed", "1", env={"NO_COLOR": "1"})
        self.assertEqual(code, 0, screen)
        self.assertIn("step", screen)
        self.assertNotIn("\033[32m", screen)
        self.assertNotIn("\033[1;", screen)

    def test_a_dumb_terminal_gets_plain_lines(self):
        code, screen = self.run_on_terminal("a fox", "-o", "a.png", "--seed", "1", env={"TERM": "dumb"})
        self.assertEqual(code, 0, screen)
        self.assertIn("a.png", screen)
        self.assertNotIn("\033[", screen)  # no redrawn bar, no colour
        self.assertNotIn("\r", screen.replace("\r\n", "\n"))

    def test_prompts_typed_at_the_terminal(self):
        """-f - at a terminal says that it reads the prompts typed there, until Ctrl-D."""
        code, screen = self.run_on_terminal("-f", "-", "-o", "{index}.png", "--seed", "1", typed=b"a fox\n\x04")
        self.assertEqual(code, 0, screen)
        self.assertIn("reading prompts from standard input, one a line: end them with Ctrl-D", screen)
        self.assertTrue((self.dir / "0.png").exists())

    def test_info_reads_no_image_typed_at_the_terminal(self):
        """info - at a terminal would wait for a PNG to be typed: it says how to give one instead."""
        code, screen = self.run_on_terminal("info", "-", typed=b"", generating=False)
        self.assertEqual(code, EXIT_USAGE, screen)
        self.assertIn("standard input, which is a terminal; pipe the image into it", screen)

    def test_quiet_draws_nothing(self):
        code, screen = self.run_on_terminal("a fox", "-o", "a.png", "--quiet")
        self.assertEqual((code, screen), (0, ""))


class RuntimeFailure(CliTestCase):
    def test_non_finite_latents(self):
        # Within float32, which a larger scale is refused for before any work.
        result = self.txt2img("a fox", "--cfg-scale", "3e38", "-o", "a.png", "--json")
        self.assertExit(result, EXIT_RUNTIME, "non-finite", "a very large CFG scale")
        summary = failed_json_lines(result.stdout, EXIT_RUNTIME)[-1]
        self.assertEqual((summary["written"], summary["failed"]), (0, 1))
        self.assertEqual(files_under(self.dir), [])

    def test_out_of_memory_is_reported_with_a_hint(self):
        # The tiny U-Net's attention over 512x512 latents needs a 256 GiB score matrix: past any address-space
        # limit, and refused whatever the machine's overcommit policy, once the limit is set.
        def limit_address_space():
            resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

        result = self.txt2img("a fox", "--width", "4096", "--height", "4096", "--steps", "1", "--threads", "1", "-o", "a.png",
                              "--json", preexec_fn=limit_address_space)
        self.assertExit(result, EXIT_RUNTIME, "out of memory (", "can't allocate memory", "--batch-size")
        self.assertNotIn("TorchScript", result.stderr)
        summary = failed_json_lines(result.stdout, EXIT_RUNTIME)[-1]
        self.assertEqual((summary["written"], summary["failed"]), (0, 1))
        self.assertEqual(files_under(self.dir), [])

    def test_an_address_space_limit_too_low_is_said_before_loading(self):
        # Under `ulimit -v` OpenBLAS retried a failed mapping of its buffers for ever: the run spun at full CPU at its
        # first matrix product. 1 GB leaves the process, whose libraries map about 850 MB, too little for the
        # buffers; 4 GB is enough for the tiny model.
        def limit_address_space(limit):
            return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        result = self.txt2img("a fox", "--threads", "1", "-o", "a.png", "--json", timeout=120,
                              preexec_fn=limit_address_space(1000 << 20))
        self.assertExit(result, EXIT_RUNTIME, "the address-space limit (ulimit -v 1024000) leaves ",
                        "MiB a run needs at least (twice the ", "raise it (ulimit -v unlimited)")
        self.assertEqual(files_under(self.dir), [])
        result = self.txt2img("a fox", "--threads", "1", "-o", "a.png", timeout=120,
                              preexec_fn=limit_address_space(4 << 30))
        self.assertEqual(result.returncode, 0, result.stderr)

    def test_summary_reports_peak_memory(self):
        result = self.txt2img("a fox", "-o", "a.png", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        peaks = json_lines(result.stdout)[-1]["peak_memory_mib"]
        self.assertGreater(peaks["host_rss"], 10)
        self.assertEqual((peaks["vram_allocated"], peaks["vram_reserved"]), (None, None))  # the CPU has no VRAM
        self.assertRegex(result.stderr, r"wrote 1 of 1 images in [0-9.]+ s; peak memory [0-9.]+ (MiB|GiB)")


if __name__ == "__main__":
    unittest.main()
