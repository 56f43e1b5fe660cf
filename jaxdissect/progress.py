"""A dependency-free progress line for long passes (stderr, process 0 only)."""
import sys
import time

import jax


class Progress:
    """Prints `label [####    ] done/total unit, rate, eta`, at most every `interval` seconds."""

    def __init__(self, label, total, unit="samples", start=0, interval=1.0, stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.start_count, self.done = start, start
        self.interval = interval
        self.stream = stream or sys.stderr
        self.started = self.last_print = time.time()
        self.enabled = jax.process_index() == 0

    def update(self, done):
        self.done = done
        now = time.time()
        if now - self.last_print >= self.interval or done >= self.total:
            self.last_print = now
            self._print(now, final=done >= self.total)

    def _print(self, now, final):
        if not self.enabled:
            return
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.start_count) / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        tail = f"{elapsed:.0f}s" if final else f"eta {eta:.0f}s"
        self.stream.write(f"\r{self.label} [{'#' * filled}{' ' * (width - filled)}] "
                          f"{self.done}/{self.total} {self.unit} {rate:.1f}/s {tail}  ")
        if final:
            self.stream.write("\n")
        self.stream.flush()
