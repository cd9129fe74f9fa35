"""Curate one input where it is scanned: fetch, probe, scan, then render every clip the scan kept.

The worker that scanned an input renders its clips right away, so no CPU waits for a pass to end
or for the corpus-wide identity decisions: those are taken when samples are packed into shards,
and the staged samples of the clips they reject (near-duplicates: few) are discarded there. With
a cap per identity, which can reject most clips of a prolific speaker, rendering waits for the
decisions instead (`render_decided_clips`, a second pass over the inputs that kept clips).
"""
from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import FaceAnalyzer
from portraitflow.models.face.factory import worker_analyzer
from portraitflow.operators.face_scan import FaceScanStage
from portraitflow.operators.inputs import clip_input_key, is_uri, local_copy
from portraitflow.operators.ledger import FAILED
from portraitflow.operators.probe import error_text, unfetched_input
from portraitflow.operators.ray_rows import batch_rows, rows_batch
from portraitflow.operators.quarantine import crashed_reason, finish_attempt, quarantined_row, start_attempt
from portraitflow.operators.render import render_clip
from portraitflow.operators.scan_store import scan_clips, scan_path
from portraitflow.operators.shards import staged_whole
from portraitflow.operators.timing import Progress, log_progress_to_stderr
from portraitflow.operators.unique_footage import unique_clip


class CurateInputStage:
    """Ray Data callable class (an actor pool): holds the face models; one input per call.

    A row may say which of its input's clips are in the shards already (`packed`, JSON keys: a
    retried input's), which are not rendered again. Each row comes back with `render_errors`
    (JSON: clip key -> error of the clips that could not be rendered), `timings` (seconds per
    stage, scan and renders together) and `rendered` (how many clips were).
    """

    def __init__(self, config: dict[str, Any], scan_dir: str, staging_dir: str, attempts_dir: str,
                 max_attempts: int) -> None:
        self.scanner = FaceScanStage(config, scan_dir)
        self.cfg, self.scan_dir = self.scanner.cfg, self.scanner.scan_dir  # validated once, by the scanner
        self.staging_dir, self.attempts_dir = Path(staging_dir), Path(attempts_dir)
        self.max_attempts = max_attempts
        self.render_now = not renders_after_decisions(self.cfg)
        log_progress_to_stderr()  # a long input's progress, on the driver's console

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return rows_batch([self.curate(row) for row in batch_rows(batch)])

    def curate(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._curate_counted(row)
        except Exception as exc:  # its start count or its fetched copy's clean-up failed: this input fails,
            return dict(unfetched_input(row, exc), render_errors="{}", rendered=0)  # not its task's other inputs

    def _curate_counted(self, row: dict[str, Any]) -> dict[str, Any]:
        if start_attempt(self.attempts_dir, row["input_key"]) > self.max_attempts:
            return quarantined_row(row, self.max_attempts)
        with contextlib.ExitStack() as stack:
            fetch = time.perf_counter()
            try:  # a remote input is fetched once, for the probe, the scan and every clip
                path = stack.enter_context(local_copy(row["uri"]))
            except Exception as exc:  # the remote store refused: this input fails, the run goes on
                result = dict(unfetched_input(row, exc), render_errors="{}", rendered=0)
            else:
                fetch = time.perf_counter() - fetch
                result = self._curate_local(row, path, {"fetch": fetch} if is_uri(row["uri"]) else {})
        finish_attempt(self.attempts_dir, row["input_key"])
        return result

    def _curate_local(self, row: dict[str, Any], path: str, fetch_timing: dict[str, float]) -> dict[str, Any]:
        timings = Counter(fetch_timing)
        errors: dict[str, str] = {}
        rendered = 0
        try:
            scan_file = scan_path(self.scan_dir, row["input_key"])
            scanned_before = _file_version(scan_file)
            row = self.scanner.scan(row, path)
            if _file_version(scan_file) != scanned_before:  # a new scan: the samples of the old one are stale
                _discard_staged(self.staging_dir, row["input_key"])
            timings.update(json.loads(row["timings"]))
            if row["status"] != FAILED and self.render_now:
                packed = set(json.loads(row.get("packed", "[]")))
                rendered = _render_clips(row, path, lambda key: key not in packed, self.cfg, self.scan_dir,
                                         self.staging_dir, timings, errors, lambda: self.scanner.analyzer)
        except Exception as exc:  # a damaged scan file, a bug: this input fails with its error, the run goes on
            probed = row if "width" in row else unfetched_input(row, exc)  # raised inside scan(): sizes unknown
            return dict(probed, status=FAILED, error=error_text(exc), timings=json.dumps(timings), render_errors="{}",
                        rendered=rendered)
        return dict(row, timings=json.dumps(timings), render_errors=json.dumps(errors), rendered=rendered)


def _file_version(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` (atomic writes replace it with another inode), None for none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _discard_staged(staging_dir: Path, input_key: str) -> None:
    """Delete the staged samples of an input, rendered from a scan that was just replaced (its file
    changed): a rerun would otherwise pack them instead of rendering its clips again."""
    for path in staging_dir.glob(f"{input_key}_*.tar"):
        if clip_input_key(path.stem) == input_key:
            path.unlink(missing_ok=True)


def renders_after_decisions(cfg: CurateConfig) -> bool:
    """With a cap per identity, clips are rendered once the corpus decisions kept them."""
    return cfg.max_clips_per_identity > 0


def render_decided_clips(row: dict[str, Any], config: dict[str, Any], scan_dir: str, staging_dir: str,
                         attempts_dir: str, max_attempts: int) -> dict[str, Any]:
    """Ray Data task: render the clips of one input the corpus decisions kept: scan clips
    (`row["keys"]`, JSON) and clips cut out of them (`row["cuts"]`, JSON: key -> [scan clip index,
    first frame, last frame], operators/unique_footage.py).

    Returns `input_key`, `render_errors` (clip key -> error; every clip's, when the input can no
    longer be fetched or crashed its worker on each of `max_attempts` starts: Ray Data would
    retry it forever), `timings` and `rendered`.
    """
    full = PortraitFlowConfig.model_validate(config)
    cfg = full.curate
    cuts = json.loads(row.get("cuts") or "{}")
    keys = set(json.loads(row["keys"])) | cuts.keys()
    timings: Counter = Counter()
    errors: dict[str, str] = {}
    rendered = 0
    if start_attempt(Path(attempts_dir), f"render-{row['input_key']}") > max_attempts:
        errors = dict.fromkeys(keys, crashed_reason("render", max_attempts))
        return {"input_key": row["input_key"], "render_errors": json.dumps(errors), "timings": "{}", "rendered": 0}
    try:
        with local_copy(row["uri"]) as path:
            rendered = _render_clips(row, path, keys.__contains__, cfg, Path(scan_dir), Path(staging_dir), timings,
                                     errors, lambda: worker_analyzer(full.face.model_dump_json(), cfg.actor_cpus), cuts)
    except Exception as exc:  # the input vanished or its store refused since the scan: its clips fail
        errors = {key: error_text(exc) for key in keys}
    finish_attempt(Path(attempts_dir), f"render-{row['input_key']}")
    return {"input_key": row["input_key"], "render_errors": json.dumps(errors), "timings": json.dumps(timings),
            "rendered": rendered}


def _render_clips(row: dict[str, Any], path: str, wanted: Callable[[str], bool], cfg: CurateConfig, scan_dir: Path,
                  staging_dir: Path, timings: Counter, errors: dict[str, str], analyzer: Callable[[], FaceAnalyzer],
                  cuts: dict[str, list[int]] | None = None) -> int:
    """Render and stage the clips the scan kept whose keys are `wanted`, and the `cuts` of them
    (`render_decided_clips`), that are not staged yet; adds to `timings` and `errors`, returns how
    many were rendered (failed renders are in `errors`, not counted)."""
    scan_file = scan_path(scan_dir, row["input_key"])
    source = {"uri": row["uri"], "width": row["width"], "height": row["height"], "src_fps": row["src_fps"],
              "scan_path": str(scan_file)}
    scanned = scan_clips(scan_file, row["input_key"], cfg.fps)
    clips = [clip for clip in scanned if clip["reason"] is None and wanted(clip["key"])]
    clips += [dict(unique_clip(scanned[index], row["input_key"], first, last, cfg.fps), key=key)
              for key, (index, first, last) in (cuts or {}).items()]
    clips = [clip for clip in clips if not staged_whole(staging_dir, clip["key"])]
    progress = Progress(f"{row['uri']}: rendered", len(clips), "clips")  # not in the shards, not staged yet
    for done, clip in enumerate(clips, 1):
        result = render_clip(dict(clip, **source), path, cfg, staging_dir, analyzer)
        timings.update(result["timings"])
        progress(done)
        if result["error"]:
            errors[clip["key"]] = result["error"]
    return len(clips) - sum(clip["key"] in errors for clip in clips)
