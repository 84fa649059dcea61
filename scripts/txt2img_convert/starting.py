"""How a command-line script takes interrupts from its first line until report_errors takes them over: importing
this module costs nothing, so a script calls take_interrupts before its own imports and torch's (a second or two)."""

import os
import signal
import sys

INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def take_interrupts(prog: str) -> frozenset:
    """SIGINT, SIGTERM and SIGHUP end the process at once with exit 130 and one line, as later ones do, since nothing
    is written yet (without this an interrupt among the imports printed their traceback and exit 1, and torch's
    initialisation turns a KeyboardInterrupt into a RuntimeError). Those the process was started ignoring (nohup's
    SIGHUP, a background job's SIGINT) stay ignored, as the user asked; returns them."""
    def interrupted(signum, frame):
        print(f"{prog}: error: interrupted", file=sys.stderr, flush=True)
        os._exit(130)

    ignoring = frozenset(sig for sig in INTERRUPTS if signal.getsignal(sig) == signal.SIG_IGN)
    for sig in INTERRUPTS:
        if sig not in ignoring:
            signal.signal(sig, interrupted)
    return ignoring
