"""Quarantine of inputs that crash their worker, counted in the output folder.

A worker that dies on an input (segfault, OOM kill) is restarted and the input retried, however
often the executor is willing to; each start of an input is recorded in a file named after it
first, so the start after the last allowed attempt gives up with a `failed` row instead of
crashing again. The counts belong to one invocation: the driver clears the folder when it starts.
"""
from __future__ import annotations

from pathlib import Path

from portraitflow.operators.atomic import atomic_write

QUARANTINED = "quarantined: the worker {} crashed on each of its {} attempts"


def start_attempt(folder: Path, key: str) -> int:
    """Record one more start of the input `key`; returns the number of starts, this one included."""
    path = folder / key
    count = int(path.read_text()) + 1 if path.exists() else 1
    atomic_write(path, str(count))
    return count
