"""Seconds spent per stage, accumulated inside a stage so Ray and a plain loop report alike."""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


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
