"""A dependency-free progress bar for long loops (evaluation, prediction, data checks)."""

import sys
import time


class ProgressBar:
    """Text progress bar written to stderr, redrawn at most every `interval` seconds.

    Args:
        total: number of steps, or None when unknown (then a counter is shown).
        desc: label printed before the bar.
        stream: where to write (default `sys.stderr`).
        interval: minimum seconds between redraws.
        width: characters of the bar itself.
    """

    def __init__(self, total=None, desc="", stream=None, interval=0.2, width=30):
        self.total = total
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.width = width
        self.count = 0
        self._start = time.monotonic()
        self._last_draw = 0.0

    def update(self, n=1):
        self.count += n
        now = time.monotonic()
        if now - self._last_draw >= self.interval or self.count == self.total:
            self._last_draw = now
            self._draw(now)

    def close(self):
        self._draw(time.monotonic())
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, now):
        elapsed = now - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(self.count / self.total, 1.0)
            filled = int(round(frac * self.width))
            bar = "#" * filled + "-" * (self.width - filled)
            eta = (self.total - self.count) / rate if rate > 0 else 0.0
            line = f"{self.desc} [{bar}] {self.count}/{self.total} {rate:.1f} it/s eta {eta:.0f}s"
        else:
            line = f"{self.desc} {self.count} {rate:.1f} it/s"
        self.stream.write("\r" + line)
        self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable, total=None, desc=""):
    """Yields from `iterable` while drawing a `ProgressBar`."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with ProgressBar(total=total, desc=desc) as bar:
        for item in iterable:
            yield item
            bar.update()
