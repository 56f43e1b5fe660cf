"""A dependency-free progress line for long passes (stderr, process 0 only)."""
import sys
import time

import jax

_unfinished_line = None   # the stream whose last progress line has no newline yet


def end_line():
    """Ends an unfinished progress line, so that what is printed next (e.g. an error) starts a line."""
    global _unfinished_line
    if _unfinished_line is not None:
        _unfinished_line.write("\n")
        _unfinished_line.flush()
        _unfinished_line = None


class Progress:
    """Prints `label [####    ] done/total unit, rate, eta`, at most every `interval` seconds.

    The rate counts from the first update, so a first step that also
    compiles does not make the eta of the rest look long. A pass resumed at
    `start` says so first.
    """

    def __init__(self, label, total, unit="samples", start=0, interval=1.0, stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.start_count, self.done = start, start
        self.interval = interval
        self.stream = stream or sys.stderr
        self.started = self.last_print = time.time()
        self.first = None          # (count, time) at the first update
        self.enabled = jax.process_index() == 0
        if start and self.enabled:
            self.stream.write(f"{label}: resuming at {unit.rstrip('s')} {start} of {total}\n")

    def update(self, done):
        self.done = done
        now = time.time()
        if self.first is None:
            self.first = (done, now)
        if now - self.last_print >= self.interval or done >= self.total:
            self.last_print = now
            self._print(now, final=done >= self.total)

    def _print(self, now, final):
        global _unfinished_line
        if not self.enabled:
            return
        elapsed = max(now - self.started, 1e-9)
        first_count, first_time = self.first or (self.done, now)
        if self.done > first_count:
            rate = (self.done - first_count) / max(now - first_time, 1e-9)
        else:                      # one update so far: all we have is the whole elapsed time
            rate = (self.done - self.start_count) / elapsed
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        eta = f"eta {(self.total - self.done) / rate:.0f}s" if rate > 0 else "eta ?"
        tail = f"{elapsed:.0f}s" if final else eta
        self.stream.write(f"\r{self.label} [{'#' * filled}{' ' * (width - filled)}] "
                          f"{self.done}/{self.total} {self.unit} {rate:.1f}/s {tail}  ")
        if final:
            self.stream.write("\n")
        _unfinished_line = None if final else self.stream
        self.stream.flush()
