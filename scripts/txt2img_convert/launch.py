"""Starting the command-line scripts under a Python that has torch (imports nothing heavy itself), and how they
report a failure."""

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import sys

from .starting import INTERRUPTS, take_interrupts

_program = "convert.py"  # the script whose messages these are; report_errors names it


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, saying a usage error in one line instead of its usage block."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def progress(message: str) -> None:
    """One line on stderr, "PROG: message", for progress, notes and warnings."""
    print(f"{_program}: {message}", file=sys.stderr, flush=True)


def _is_this_interpreter(python: str) -> bool:
    """Whether `python` (a path, or a name looked up on PATH) is the running interpreter's file."""
    found = shutil.which(python) or python
    try:
        return os.path.samefile(found, sys.executable)
    except OSError:
        return False


def reexec_if_needed(prog: str, script: str) -> None:
    """Re-run `script` under the Python that scripts/with-torch-python finds when this one lacks torch or
    TXT2IMG_PYTHON is set (so `scripts/<script> ...` works whatever `python3` is first on PATH, and TXT2IMG_PYTHON
    can choose a newer PyTorch than that one's), else under this one where it has randomised string hashing:
    TorchScript writes each module's constants in set order, so only a fixed PYTHONHASHSEED makes the same weights
    give byte-identical files."""
    has_torch = importlib.util.find_spec("torch") is not None
    if os.environ.get("TXT2IMG_CONVERT_REEXEC"):
        if not has_torch:
            print(f"{prog}: error: no Python with torch found (set TXT2IMG_PYTHON)", file=sys.stderr)
            sys.exit(1)
        return  # PYTHONHASHSEED could not be set: go on, only less reproducibly
    chosen = os.environ.get("TXT2IMG_PYTHON")
    if chosen and _is_this_interpreter(chosen):
        chosen = None  # already running under it
    if has_torch and not chosen and os.environ.get("PYTHONHASHSEED") == "0":
        return
    os.environ["TXT2IMG_CONVERT_REEXEC"] = "1"
    os.environ["PYTHONHASHSEED"] = "0"
    script = os.path.abspath(script)
    if has_torch and not chosen:
        os.execv(sys.executable, [sys.executable, script, *sys.argv[1:]])
    launcher = os.path.join(os.path.dirname(script), "with-torch-python")
    os.execv(launcher, [launcher, script, *sys.argv[1:]])


_as_script = False  # run_main's: the process ends when the conversion does
_bundle_in_place = False
_held = False  # interrupts_held's
_held_back = False  # an interrupt came while they were held
# run_main's: the interrupts the process was started ignoring (nohup's SIGHUP, a background job's SIGINT), which it
# keeps ignoring, as the user asked.
_started_ignoring = frozenset()


def _on_interrupts(handler) -> None:
    for sig in INTERRUPTS:
        if sig not in _started_ignoring:
            signal.signal(sig, handler)


def bundle_in_place() -> None:
    """The bundle is complete at --out (or add_lora.py's change to it is made): where this process is the script, an
    interrupt from here to its end (torch's teardown takes a moment) is ignored, since reporting it would say exit
    130, "nothing is left at --out", over a complete bundle. Ignored by the OS (SIG_IGN), not by a Python handler:
    Python's shutdown resets its handlers to the default action, which would kill the process by the signal."""
    global _bundle_in_place
    _bundle_in_place = True
    if _as_script:
        _on_interrupts(signal.SIG_IGN)


@contextlib.contextmanager
def interrupts_held():
    """SIGINT, SIGTERM and SIGHUP held back to the block's end, so that renames and the record that they happened are
    not parted by an interrupt: one that came meanwhile then interrupts, unless the block put the bundle in place.
    Held by report_errors' handler, not by the signal mask, which is the main thread's: the kernel gives a signal sent
    to the process to any thread that does not block it (torch's workers), and Python then runs the handler at once."""
    global _held, _held_back
    _held, _held_back = True, False
    try:
        yield
    finally:
        _held = False
    if _held_back and not (_as_script and _bundle_in_place):
        raise KeyboardInterrupt


def run_main(prog: str, main) -> int:
    """main()'s exit status, with interrupts taken as starting.take_interrupts takes them (the script took them so
    at its first line) until report_errors takes them over."""
    global _as_script, _started_ignoring
    _as_script = True
    _started_ignoring = take_interrupts(prog)
    return main()


def report_errors(prog: str, action) -> int:
    """Runs `action()` and turns what it raises into one "PROG: error: ..." line and an exit status: 1 for a
    ConversionError or any other exception (TXT2IMG_DEBUG=1 shows the traceback instead), 130 for an interrupt
    (SIGINT, SIGTERM or SIGHUP); 0 when it returns."""
    from .checkpoints import ConversionError

    global _program, _bundle_in_place
    _program = prog
    _bundle_in_place = False

    def interrupt(signum, frame):
        global _held_back
        if _held:
            _held_back = True
        # Python runs a handler some bytecodes after its signal came: one that came just before bundle_in_place
        # ignored interrupts can run after it.
        elif not (_as_script and _bundle_in_place):
            raise KeyboardInterrupt

    # A kill (or a closed terminal) unwinds as Ctrl-C does, so that a half-written bundle is removed.
    _on_interrupts(interrupt)
    try:
        action()
    except ConversionError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for users; TXT2IMG_DEBUG=1 shows the traceback
        if os.environ.get("TXT2IMG_DEBUG"):
            raise
        message = str(e).strip().splitlines()
        print(f"{prog}: error: {type(e).__name__}: {message[0] if message else ''} "
              "(set TXT2IMG_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    return 0
