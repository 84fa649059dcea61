"""SIGINT/SIGTERM: stop after the current step, keep finished images, leave no temporary file, report, exit 130;
then --skip-existing finishes the batch with the bytes an uninterrupted run makes."""

import json
import signal
import subprocess
import time
import unittest

from cli_support import BIN, EXIT_INTERRUPTED, FAST, TINY, CliTestCase, failed_json_lines, files_under, json_lines


def wait_until_delivered(pid, sig, timeout=60):
    """Until the process no longer has `sig` pending (Linux's /proc/PID/status lists a process's pending signals)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as status:
            pending = next(int(line.split()[1], 16) for line in status if line.startswith("ShdPnd:"))
        if not pending & (1 << (sig - 1)):
            return
        time.sleep(0.001)
    raise AssertionError(f"signal {sig} still pending after {timeout} s")


def wait_until_polling(pid, timeout=60):
    """Until the process's main thread waits in poll (Linux's /proc/PID/wchan names the kernel function it sleeps in)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/wchan") as wchan:
            if "poll" in wchan.read():
                return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not wait in poll within {timeout} s")


class Interrupt(CliTestCase):
    # Enough steps that an image takes a noticeable time even with the tiny model.
    ARGS = ["--from-file", "prompts.txt", "--seed", "77", "--images-per-prompt", "2", "-o", "out/{index:03}.png",
            "--model", str(TINY), *FAST, "--steps", "200", "--json"]

    def start(self, args):
        process = subprocess.Popen([BIN, *args], cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        self.addCleanup(process.communicate)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process

    def interrupt_after_first_image(self, sig, args=ARGS):
        self.write("prompts.txt", "a fox\na cat\na cow\n")
        process = self.start(args)
        first = json.loads(process.stdout.readline())
        self.assertEqual(first["event"], "image")
        process.send_signal(sig)
        out, err = process.communicate(timeout=120)
        self.assertEqual(process.returncode, EXIT_INTERRUPTED, err)
        records = [first] + failed_json_lines(out, EXIT_INTERRUPTED)
        summary = records[-1]
        self.assertEqual(summary["event"], "summary")
        self.assertTrue(summary["interrupted"])
        self.assertLess(summary["written"], 6)
        self.assertEqual(summary["written"], len(records) - 1)
        self.assertIn("interrupted", err)
        # Only finished images, no temporary files.
        self.assertEqual(files_under(self.dir / "out"), sorted(r["path"][4:] for r in records[:-1]))
        return records, err

    def test_sigint_then_resume_matches_an_uninterrupted_run(self):
        self.interrupt_after_first_image(signal.SIGINT)
        resumed = subprocess.run([BIN, *self.ARGS, "--skip-existing"], cwd=self.dir, capture_output=True, text=True)
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertGreaterEqual(json_lines(resumed.stdout)[-1]["skipped"], 1)
        self.assertEqual(files_under(self.dir / "out"), [f"{i:03}.png" for i in range(6)])

        reference = self.dir / "reference"
        reference.mkdir()
        (reference / "prompts.txt").write_text((self.dir / "prompts.txt").read_text())
        full = subprocess.run([BIN, *self.ARGS], cwd=reference, capture_output=True, text=True)
        self.assertEqual(full.returncode, 0, full.stderr)
        for i in range(6):
            name = f"out/{i:03}.png"
            self.assertEqual((self.dir / name).read_bytes(), (reference / name).read_bytes(), name)

    def test_sigterm(self):
        self.interrupt_after_first_image(signal.SIGTERM)

    def test_sighup_of_a_closed_terminal(self):
        _, err = self.interrupt_after_first_image(signal.SIGHUP)
        self.assertIn("interrupted by SIGHUP (the terminal was closed)", err)

    def test_a_signal_ignored_at_the_start_stays_ignored(self):
        """nohup's SIGHUP, and the SIGINT a non-interactive shell has its background jobs ignore: the run goes on
        to its end; SIGTERM still stops it."""
        def ignoring():
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.write("prompts.txt", "a fox\n")
        process = subprocess.Popen([BIN, *self.ARGS], cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, preexec_fn=ignoring)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.assertEqual(json.loads(process.stdout.readline())["event"], "image")
        for sig in (signal.SIGHUP, signal.SIGINT):
            process.send_signal(sig)
            wait_until_delivered(process.pid, sig)
        out, err = process.communicate(timeout=120)
        self.assertEqual(process.returncode, 0, err)
        self.assertEqual(json_lines(out)[-1]["written"], 2)
        self.assertEqual(files_under(self.dir / "out"), ["000.png", "001.png"])

    def test_a_second_ctrl_c_stops_at_once(self):
        """A second Ctrl-C does not wait for the step to end: the process dies of it. The steps here take about 3 s
        (1024x1024), so the second signal, sent as soon as the first has been delivered, comes while the first waits
        for its step. (Sent before, the two would be one: the kernel keeps one pending SIGINT, which a busy machine
        may leave pending for a while.)"""
        process = self.start(["a fox", "--seed", "1", "-W", "1024", "-H", "1024", "--steps", "50", "--device", "cpu",
                              "--no-safety-checker", "--model", str(TINY), "-o", "a.png", "--json", "--json-progress"])
        self.assertEqual(json.loads(process.stdout.readline())["event"], "step")
        process.send_signal(signal.SIGINT)
        wait_until_delivered(process.pid, signal.SIGINT)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=120)
        self.assertEqual(process.returncode, -signal.SIGINT)
        self.assertNotIn('"summary"', out)
        self.assertEqual(files_under(self.dir), [])

    def test_ctrl_c_while_waiting_for_prompts(self):
        """`-f -` waiting on a terminal or a pipe for its prompts: Ctrl-C stops the run there (exit 130), instead of
        being noticed only once the input ends; tokenize and info keep SIGINT's default and die of it."""
        for args, code in [(["-f", "-", "--model", str(TINY), "-o", "a.png"], EXIT_INTERRUPTED),
                           (["tokenize", "-f", "-", "--model", str(TINY)], -signal.SIGINT)]:
            with self.subTest(args[0]):
                process = subprocess.Popen([BIN, *args], cwd=self.dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
                self.addCleanup(lambda p=process: p.poll() is None and p.kill())
                process.stdin.write("a fox\n")
                process.stdin.flush()
                wait_until_polling(process.pid)
                process.send_signal(signal.SIGINT)
                process.wait(timeout=60)  # stdin still open: only the signal can end it
                err = process.stderr.read()
                process.stdin.close()
                process.stdout.close()
                process.stderr.close()
                self.assertEqual(process.returncode, code, err)
                self.assertEqual(files_under(self.dir), [])

    def test_ctrl_c_that_also_ends_the_prompts_writer(self):
        """`producer | txt2img -f -` at Ctrl-C: the producer dies of it too, so the input may end before the signal
        is handled. The run still stops there, with no summary and no images, as if the input were still open
        (--json's last line says so)."""
        process = subprocess.Popen([BIN, "-f", "-", "--model", str(TINY), "-o", "a.png", "--json"], cwd=self.dir,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        process.stdin.write("a fox\n")
        process.stdin.flush()
        wait_until_polling(process.pid)
        # Stopped, the process sees the input end before the signal: poll returns the ready descriptor, and the
        # signal is handled on the way back, before the read that finds the end.
        process.send_signal(signal.SIGSTOP)
        process.stdin.close()
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGCONT)
        process.wait(timeout=60)
        out, err = process.stdout.read(), process.stderr.read()
        process.stdout.close()
        process.stderr.close()
        self.assertEqual(process.returncode, EXIT_INTERRUPTED, err)
        self.assertEqual(json_lines(out), [{"event": "error", "exit_code": EXIT_INTERRUPTED,
                                            "error": "interrupted by SIGINT"}])
        self.assertEqual(err.strip(), "error: interrupted by SIGINT")
        self.assertEqual(files_under(self.dir), [])

    def test_a_closed_output_pipe_stops_the_run_like_ctrl_c(self):
        """`txt2img --json | head -1`: the run stops after its current step (exit 130), keeping only whole images,
        instead of dying of SIGPIPE at its next message."""
        self.write("prompts.txt", "a fox\na cat\na cow\n")
        process = self.start(self.ARGS)
        self.assertEqual(json.loads(process.stdout.readline())["event"], "image")
        process.stdout.close()
        process.wait(timeout=120)
        err = process.stderr.read()
        self.assertEqual(process.returncode, EXIT_INTERRUPTED, err)
        self.assertIn("interrupted: wrote ", err)
        written = files_under(self.dir / "out")
        self.assertLess(len(written), 6)
        self.assertTrue(all(name.endswith(".png") and not name.startswith(".") for name in written), written)

    def test_the_hint_to_finish_names_the_random_seed(self):
        """Without --seed the run's random seed is part of the command that finishes it (--skip-existing needs it)."""
        args = [a for a in self.ARGS if a not in ("--seed", "77")]
        records, err = self.interrupt_after_first_image(signal.SIGINT, args)
        seed = records[-1]["seed"]
        self.assertIn(f"run the same command with --seed {seed} --skip-existing to finish", err)
        resumed = subprocess.run([BIN, *args, "--seed", str(seed), "--skip-existing"], cwd=self.dir,
                                 capture_output=True, text=True)
        self.assertEqual(resumed.returncode, 0, resumed.stderr)
        self.assertEqual(files_under(self.dir / "out"), [f"{i:03}.png" for i in range(6)])


if __name__ == "__main__":
    unittest.main()
