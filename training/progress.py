"""Progress a person can follow: a tqdm bar on a terminal, plain lines in a log.

A bar redraws itself with carriage returns, which a redirected log keeps as one long line of
junk; so when stderr is not a terminal, ``bar`` prints a plain line now and then instead (or
nothing, for bars that only fill in time between lines the caller prints anyway).
"""

from __future__ import annotations

import sys
import time

shown = True  # False: no progress at all (cardcam-train --quiet)


class Lines:
    """tqdm's update / set_postfix_str / close, as plain lines on stderr: one at the start, then
    at most one every ``every`` seconds, and one at the end:
    'preparing inputs: 2400/9057 pictures (26%), 12 s'."""

    def __init__(self, total: int, desc: str, unit: str, every: float = 10.0, file=None):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.file = file or sys.stderr
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()
        self._line()  # at once: the wait has begun, and how long it is

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            self._line()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def _line(self) -> None:
        share = f" ({100 * self.n // self.total}%)" if self.total else ""  # 99.7 % is not done
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s{share}, {time.monotonic() - self.start:.0f} s{extra}",
              file=self.file, flush=True)

    def close(self) -> None:
        if self.n and self.total:
            self._line()
        self.total = 0


class Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, unit: str, disable: bool = False, lines: bool = True, every: float = 10.0,
        **tqdm_options):
    """A tqdm bar on a terminal; elsewhere plain lines (``lines``, at most one per ``every``
    seconds) or nothing. Disabled, or with ``shown`` False: nothing."""
    if disable or not shown:
        return Silent()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **tqdm_options)
    return Lines(total, desc, unit, every) if lines else Silent()
