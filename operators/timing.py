"""Seconds spent per stage, accumulated inside a stage so Ray and a plain loop report alike, and
word of how far a long piece of work has got."""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

#: a long piece of work says how far it has got at most this often (wall seconds)
PROGRESS_EVERY_S = 30.0
progress_log = logging.getLogger("portraitflow.progress")


def log_progress_to_stderr() -> None:
    """Send `progress_log` to stderr at INFO, where Ray shows a worker's output on the driver's
    console (a worker's logging is otherwise unconfigured, and INFO dropped)."""
    if not progress_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress_log.addHandler(handler)
        progress_log.setLevel(logging.INFO)


class Progress:
    """Logs how much of `total` `unit` `what` (`talk.mp4: scanned`) has done, at most every
    `every_s` seconds and first after `every_s`: Ray Data counts whole inputs, so a minutes-long
    4K input was silent until it ended."""

    def __init__(self, what: str, total: float, unit: str, every_s: float = PROGRESS_EVERY_S) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self._said = time.monotonic()

    def __call__(self, done: float) -> None:
        now = time.monotonic()
        if now - self._said >= self.every_s:
            self._said = now
            share = f" ({100 * done / self.total:.0f}%)" if self.total else ""
            progress_log.info("%s %.0f of %.0f %s%s", self.what, done, self.total, self.unit, share)


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def time(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    def iterate(self, stage: str, items: Iterable[T]) -> Iterator[T]:
        """Yield from `items`, charging the time spent producing each one (decoding) to `stage`."""
        iterator = iter(items)
        while True:
            with self.time(stage):
                item = next(iterator, StopIteration)
            if item is StopIteration:
                return
            yield item
