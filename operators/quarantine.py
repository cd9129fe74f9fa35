"""Quarantine of inputs that crash their worker, counted in the output folder.

A worker that dies on an input (segfault, OOM kill) is restarted and the input retried, however
often the executor is willing to; each start of an input is recorded in a file named after it
first, so the start after the last allowed attempt gives up with a `failed` row instead of
crashing again. An input that finishes clears its count: a task holds several inputs in a large
run, and when another of them crashes its worker, the retried task starts the finished ones again
without their counting towards a quarantine. The crash is laid at the input running when the worker
died: one that damages the process and crashes it during the next input's work gets that input
quarantined. The counts belong to one invocation: the driver clears the folder when it starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from portraitflow.operators.atomic import atomic_write
from portraitflow.operators.ledger import FAILED

# Ray Data retries a dead worker's task forever and, since Ray 2.60, takes no retry limit but
# through the deprecated `ray_remote_args`, so stages count the starts themselves: an input whose
# worker dies (segfault, OOM kill, lost node) is started this many times (two retries), then it is
# a failed row.
MAX_ATTEMPTS = 3


def start_attempt(folder: Path, key: str) -> int:
    """Record one more start of the input `key`; returns the number of starts, this one included."""
    path = folder / key
    count = int(path.read_text()) + 1 if path.exists() else 1
    atomic_write(path, str(count))
    return count


def finish_attempt(folder: Path, key: str) -> None:
    """Clear the starts of the input `key`, which finished without crashing its worker."""
    (folder / key).unlink(missing_ok=True)


def crashed_reason(stage: str, attempts: int) -> str:
    """The reason of a job given up on after `attempts` starts that each crashed their worker."""
    return f"{stage}: quarantined: the worker processing this job crashed on each of its {attempts} attempts"


def quarantined_row(row: dict[str, Any], attempts: int) -> dict[str, Any]:
    """The `failed` result of an input given up on after `attempts` crashed starts (or whose
    result never came back): nothing probed, scanned or rendered."""
    return dict(row, status=FAILED, error=f"quarantined: the worker processing this input crashed on each of its "
                f"{attempts} attempts", width=0, height=0, src_fps=0.0, duration_s=0.0, timings="{}", render_errors="{}",
                rendered=0)
