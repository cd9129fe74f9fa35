"""Probe an input: size, frame rate and length, or the error that makes it a `failed` row."""
from __future__ import annotations

import json
import re
import time
from typing import Any

from portraitflow.operators.decode import VideoUnreadable, probe_video
from portraitflow.operators.inputs import local_copy

FAILED = "failed"
_LOG_STAMP = re.compile(r"\[\d{2}:\d{2}:\d{2}\] ")


def error_text(exc: BaseException) -> str:
    """A stable one-line error for the manifest (decord prefixes a wall-clock time; drop it)."""
    text = str(exc) if isinstance(exc, VideoUnreadable) else f"{type(exc).__name__}: {exc}"
    return _LOG_STAMP.sub("", text)[:500]


def probe_input(row: dict[str, Any]) -> dict[str, Any]:
    """Ray Data map function (a CPU task); never raises for bad input."""
    start = time.perf_counter()
    out = dict(row, status="", error="", width=0, height=0, src_fps=0.0, duration_s=0.0)
    try:
        with local_copy(row["uri"]) as path:
            info = probe_video(path)
        out.update(width=info.width, height=info.height, src_fps=info.fps, duration_s=info.duration_s)
    except Exception as exc:  # unreadable, missing, a remote error: the row says so and the run goes on
        out.update(status=FAILED, error=error_text(exc))
    out["timings"] = json.dumps({"probe": time.perf_counter() - start})
    return out
