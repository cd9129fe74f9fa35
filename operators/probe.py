"""Probe an input: size, frame rate and length, or the error that makes it a `failed` row."""
from __future__ import annotations

import json
import re
import time
from typing import Any

from portraitflow.operators.decode import VideoUnreadable, probe_video
from portraitflow.operators.job_status import REASON_CHARS, clipped
from portraitflow.operators.ledger import FAILED

_LOG_STAMP = re.compile(r"\[\d{2}:\d{2}:\d{2}\] ")


def error_text(exc: BaseException, known: tuple[type[BaseException], ...] = (VideoUnreadable,),
               limit: int = REASON_CHARS) -> str:
    """A stable error for a manifest or results row: the message of a `known` error (the input's
    fault, which says it all), else the type too; decord's wall-clock stamps dropped, so runs can
    be compared and failures grouped by reason; `clipped` to `limit`."""
    text = str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"
    return clipped(_LOG_STAMP.sub("", text), limit)


def probe_input(row: dict[str, Any], path: str) -> dict[str, Any]:
    """Probe `path`, the local copy of the row's input; never raises for bad input."""
    start = time.perf_counter()
    out = _unprobed(row)
    try:
        info = probe_video(path)
        out.update(width=info.width, height=info.height, src_fps=info.fps, duration_s=info.duration_s)
    except Exception as exc:  # unreadable, missing, odd streams: the row says so and the run goes on
        out.update(status=FAILED, error=error_text(exc))
    out["timings"] = json.dumps({"probe": time.perf_counter() - start})
    return out


def unfetched_input(row: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """The `failed` row of an input whose local copy could not be made (a remote error)."""
    return dict(_unprobed(row), status=FAILED, error=error_text(exc), timings=json.dumps({}))


def _unprobed(row: dict[str, Any]) -> dict[str, Any]:
    return dict(row, status="", error="", width=0, height=0, src_fps=0.0, duration_s=0.0)
