"""Curate one input where it is scanned: fetch, probe, scan, then render every clip the scan kept.

The worker that scanned an input renders its clips right away, so no CPU waits for a pass to end
or for the corpus-wide identity decisions: those are taken when samples are packed into shards,
and the staged samples of the clips they reject are discarded there.
"""
from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from portraitflow.operators.face_scan import FaceScanStage, batch_rows, rows_batch, scan_clips, scan_path
from portraitflow.operators.inputs import is_uri, local_copy
from portraitflow.operators.probe import FAILED, error_text, unfetched_input
from portraitflow.operators.quarantine import quarantined_row, start_attempt
from portraitflow.operators.render import render_clip
from portraitflow.operators.shards import staged_path


class CurateInputStage:
    """Ray Data callable class (an actor pool): holds the face models; one input per call.

    Each row comes back with `render_errors` (JSON: clip key -> error of the clips that could not
    be rendered) and `timings` (seconds per stage, scan and renders together).
    """

    def __init__(self, config: dict[str, Any], scan_dir: str, staging_dir: str, attempts_dir: str,
                 max_attempts: int) -> None:
        self.scanner = FaceScanStage(config, scan_dir)
        self.cfg, self.scan_dir = self.scanner.cfg, self.scanner.scan_dir  # validated once, by the scanner
        self.staging_dir, self.attempts_dir = Path(staging_dir), Path(attempts_dir)
        self.max_attempts = max_attempts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return rows_batch([self.curate(row) for row in batch_rows(batch)])

    def curate(self, row: dict[str, Any]) -> dict[str, Any]:
        if start_attempt(self.attempts_dir, row["input_key"]) > self.max_attempts:
            return quarantined_row(row, self.max_attempts)
        with contextlib.ExitStack() as stack:
            fetch = time.perf_counter()
            try:  # a remote input is fetched once, for the probe, the scan and every clip
                path = stack.enter_context(local_copy(row["uri"]))
            except Exception as exc:  # the remote store refused: this input fails, the run goes on
                return dict(unfetched_input(row, exc), render_errors="{}")
            fetch = time.perf_counter() - fetch
            return self._curate_local(row, path, {"fetch": fetch} if is_uri(row["uri"]) else {})

    def _curate_local(self, row: dict[str, Any], path: str, fetch_timing: dict[str, float]) -> dict[str, Any]:
        timings = Counter(fetch_timing)
        errors = {}
        try:
            row = self.scanner.scan(row, path)
            timings.update(json.loads(row["timings"]))
            if row["status"] != FAILED:
                scan_file = scan_path(self.scan_dir, row["input_key"])
                source = {"uri": row["uri"], "width": row["width"], "height": row["height"], "scan_path": str(scan_file)}
                for clip in scan_clips(scan_file, row["input_key"], self.cfg.fps):
                    if clip["reason"] is not None or staged_path(self.staging_dir, clip["key"]).exists():
                        continue  # rejected by the scan, or staged already (an earlier attempt, a killed run)
                    rendered = render_clip(dict(clip, **source), path, self.cfg, self.staging_dir)
                    timings.update(rendered["timings"])
                    if rendered["error"]:
                        errors[clip["key"]] = rendered["error"]
        except Exception as exc:  # a damaged scan file, a bug: this input fails with its error, the run goes on
            probed = row if "width" in row else unfetched_input(row, exc)  # raised inside scan(): sizes unknown
            return dict(probed, status=FAILED, error=error_text(exc), timings=json.dumps(timings), render_errors="{}")
        return dict(row, timings=json.dumps(timings), render_errors=json.dumps(errors))
