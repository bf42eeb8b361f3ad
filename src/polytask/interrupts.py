"""SIGINT/SIGTERM during training as a flag the loop checks after each step (:mod:`polytask.train`):
the step finishes and a checkpoint is written before the run stops."""

from __future__ import annotations

import signal
import sys
import threading


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signum: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:  # a second Ctrl-C: a person wants it to stop now
            print("\nsecond Ctrl-C: stopping now, without the checkpoint of this step; `polytask train --resume` "
                  "continues from the last one written", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        # a repeated SIGTERM (schedulers, parent-death signals) must not cut the checkpoint short

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
