"""The generation flow's bookkeeping: one row per job from the start (planned, skipped or invalid),
the results table written atomically, a preview strip of finished outputs, and the MLflow record.
"""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from portraitflow.jobs.config.animate import PER_JOB_FIELDS, AnimateConfig
from portraitflow.jobs.config.face import FaceConfig
from portraitflow.models.animators.registry import check_settings
from portraitflow.models.face.images import long_side
from portraitflow.operators.atomic import atomic_write
from portraitflow.operators.decode import VideoUnreadable, probe_video, read_frames
from portraitflow.operators.generation_jobs import (Job, effective_params, id_forms, input_fingerprint, output_name,
                                                   output_settings)
from portraitflow.operators.job_status import DONE, FAILED, SKIPPED, clipped
from portraitflow.operators.paste_back import exceeds
from portraitflow.operators.paths import confined
from portraitflow.operators.video_writer import has_audio

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.parquet"
PREVIEW_FILE = "preview.png"
#: every row has every column, so Ray Data batches and the parquet schema never vary.
RESULT_DEFAULTS: dict[str, Any] = {
    "job_id": "", "status": "pending", "reason": "", "output": "", "ref": "", "driving": "", "backend": "",
    "params": "{}", "model": "{}", "frames": 0, "fps": 0.0, "seconds": 0.0, "has_audio": False,
    "prep_s": 0.0, "animate_s": 0.0, "encode_s": 0.0, "total_s": 0.0,
}
#: what a skipped job's row keeps from the run that made its video (`previous_records`): how the
#: video was made and what it is. Its job_id, paths, backend and params are this run's (the same
#: output name means the same inputs' content and settings), its status and reason say it was skipped.
KEPT_FIELDS = ("model", "frames", "fps", "seconds", "has_audio", "prep_s", "animate_s", "encode_s", "total_s")


def failed_row(row: dict[str, Any], reason: str) -> dict[str, Any]:
    """`row` as `failed` with `reason`, whatever failed it (planning, preparation, animation, a
    crash, a lost result): its `output` blank, as no video was written for it, so a script that
    copies `results.output` never meets a path that does not exist."""
    return {**row, "status": FAILED, "reason": clipped(reason), "output": ""}


def plan_rows(jobs: list[Job], out_dir: Path, backend: str, cfg: AnimateConfig, resume: bool,
              face: FaceConfig | None = None) -> list[dict[str, Any]]:
    """A row per job: `pending`, `skipped` (its complete output exists) or `failed` (bad params, a
    param `backend` does not read, or the same output as an earlier job). Output names cover the
    face settings too: the face layer finds the crop and the motion, and what the inputs hold
    (`input_fingerprint`, read once per file). A skipped row keeps what the run that made its
    video recorded of it (`previous_records`). `max_output_side` is in a job's name only where it
    scales the job's output (pasted back onto a portrait larger than it): the names of every other
    output are those they had before the setting existed.

    A job's complete output is looked for under each id the job can have (`id_forms`): a derived
    id takes a hash where another job of the list shares it, so adding `fr/anna.jpg` beside
    `en/anna.jpg` renames both jobs, yet their videos, same content digest, are done. A video
    found under another form is recorded as this job's output where it is, neither renamed (the
    earlier rows, records and any reader name it; planning writes nothing) nor linked (one video
    listed, previewed and copied twice)."""
    rows, planned = [], {}
    settings = output_settings(backend, cfg)  # once: a weights fingerprint reads files
    shared = {name: value for name, value in settings.items() if name not in (*PER_JOB_FIELDS, "max_output_side")}
    shared["face"] = (face or FaceConfig()).result_settings()
    fingerprints: dict[str, str] = {}  # a file shared by many jobs (--refs x --drivers) is read once
    long_sides: dict[str, int] = {}  # likewise each portrait's header
    previous = previous_records(out_dir) if resume else {}
    for job in jobs:
        row = {**RESULT_DEFAULTS, "job_id": job.job_id, "ref": job.ref, "driving": job.driving, "backend": backend}
        try:
            params = effective_params(job, cfg)
            check_settings(backend, job.params)
        except ValueError as exc:  # the params as the job gave them: the row says what was refused
            rows.append(failed_row({**row, "params": json.dumps(job.params, sort_keys=True, default=str)}, str(exc)))
            continue
        read = {name: value for name, value in params.items() if name in settings}  # what the backend uses
        if params["paste_back"]:
            if job.ref not in long_sides:
                long_sides[job.ref] = long_side(job.ref)
            if exceeds(long_sides[job.ref], cfg.max_output_side):
                read["max_output_side"] = cfg.max_output_side
        for path in (job.ref, job.driving):
            if path not in fingerprints:
                fingerprints[path] = input_fingerprint(path)
        inputs = {"ref": fingerprints[job.ref], "driving": fingerprints[job.driving]}
        outputs = [confined(out_dir, output_name(replace(job, job_id=form), backend, read, shared, inputs))
                 for form in id_forms(job)]  # its own first
        output = outputs[0]
        row.update(params=json.dumps(params, sort_keys=True), output=str(output))
        if str(output) in planned:
            row = failed_row(row, f"duplicate of job {planned[str(output)]}: the same files and settings, one video")
        elif resume and (done := _finished(outputs, previous)):
            path, finished = done
            record = previous.get(path.name, {})
            kept = {k: record[k] for k in KEPT_FIELDS} if record.get("frames") == finished["frames"] else finished
            row.update(status=SKIPPED, reason="complete output exists", output=str(path), **kept)
        planned.setdefault(str(output), job.job_id)
        rows.append(row)
    return rows


def records_dir(out_dir: Path) -> Path:
    """Where each finished job's record is written as it finishes (`write_record`)."""
    return out_dir / ".state" / "records"


def write_record(folder: Path, row: dict[str, Any]) -> None:
    """The record of a job that made its output, named after the output: a run killed before it
    writes `results.parquet` (or a later run into the folder with other jobs) keeps it."""
    stat = Path(row["output"]).stat()  # which file it describes: a resume trusts it without probing
    record = {**{k: _plain(row[k]) for k in KEPT_FIELDS}, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    atomic_write(folder / f"{Path(row['output']).stem}.json", json.dumps(record, sort_keys=True))


def previous_records(out_dir: Path) -> dict[str, dict[str, Any]]:
    """What the runs that made each finished output recorded (model, timings, frames, ...), by
    output file name (so a moved `out` folder keeps them): each job's record (`write_record`), and
    `out_dir/results.parquet`'s `ok` rows and `skipped` rows carrying an earlier record (folders
    from before records). Missing or unreadable ones are left out: skipped rows then describe the
    video alone; a video whose frame count differs from its record's is made again (`_finished`)."""
    found: dict[str, dict[str, Any]] = {}
    path = out_dir / RESULTS_FILE
    try:
        table = pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=["status", "output", *KEPT_FIELDS])
        table = table[table.status.isin(DONE)]
        found.update((Path(str(row["output"])).name, {k: _plain(row[k]) for k in KEPT_FIELDS})
                     for row in table[["output", *KEPT_FIELDS]].to_dict("records"))
    except (OSError, ValueError, KeyError, AttributeError, TypeError):  # not parquet, an older schema
        pass
    for record in sorted(records_dir(out_dir).glob("*.json")):
        try:
            saved = json.loads(record.read_text())
            found[f"{record.stem}.mp4"] = {k: saved[k] for k in (*KEPT_FIELDS, "bytes", "mtime_ns") if k in saved}
        except (OSError, ValueError, KeyError, TypeError, RecursionError):  # written atomically: a foreign file
            continue
    return found


def merged_with_earlier(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """This invocation's rows, then the rows `path` holds of other jobs: a job list run in parts
    into one folder keeps every part's rows. An earlier row is replaced by this invocation's row of
    the same job_id (job ids stay unique, as `evaluate` and every per-job file need: a job whose
    ref was corrected replaces its row, and of two parts that derive one id from different inputs
    the later's row stands, the earlier's video staying in the folder) or of the same output (a
    video made under another id, found by resume). An unreadable earlier file is replaced."""
    try:
        earlier = pd.read_parquet(path) if path.is_file() else None
    except (OSError, ValueError):
        earlier = None
    if earlier is None or list(earlier.columns) != list(table.columns):
        return table
    same_output = earlier.output.isin(table.output[table.output != ""])
    others = earlier[~(earlier.job_id.isin(table.job_id) | same_output)]
    return pd.concat([table, others], ignore_index=True).astype(table.dtypes.to_dict()) if len(others) else table


def _finished(paths: list[Path], previous: dict[str, dict[str, Any]]) -> tuple[Path, dict[str, Any]] | None:
    """The first of `paths` that is a finished output (outputs are written whole, `atomic_target`;
    one that cannot be read, or holds other frames than its record says, is redone), with what
    `_probe` tells of it, taken from its record in `previous` when the file is the one the record
    describes (same size and modification time): a resume of thousands of jobs then opens none of
    their videos."""
    for path in paths:
        if not path.is_file():
            continue
        stat, record = path.stat(), previous.get(path.name, {})
        if (record.get("bytes"), record.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
            return path, {k: record[k] for k in ("frames", "fps", "seconds", "has_audio")}
        probed = _probe(path)
        if probed and record and record.get("frames") != probed["frames"]:
            continue  # not the video its record describes (cut short by a copy, say): redone
        if probed:
            return path, probed
    return None


def _probe(path: Path) -> dict[str, Any] | None:
    """Frames, rate and audio of a finished output; None when it cannot be read (it is redone)."""
    try:
        info = probe_video(str(path))
    except VideoUnreadable:
        return None
    return {"frames": info.num_frames, "fps": info.fps, "seconds": info.duration_s, "has_audio": has_audio(path)}


def results_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows in the order the jobs were given, with the documented columns and types."""
    table = pd.DataFrame([{k: _plain(row.get(k, v)) for k, v in RESULT_DEFAULTS.items()} for row in rows],
                         columns=list(RESULT_DEFAULTS))
    return table.astype({"frames": "int64", "has_audio": "bool", **{k: "float64" for k in
                         ("fps", "seconds", "prep_s", "animate_s", "encode_s", "total_s")}})


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def preview_strip(outputs: list[str], frames_per_output: int, height: int = 160) -> np.ndarray | None:
    """One row per output of `frames_per_output` evenly spaced frames, as an RGB image."""
    rows = []
    for path in outputs:
        try:
            picks = np.linspace(0, probe_video(path).num_frames - 1, frames_per_output).round().astype(int)
            frames, _ = read_frames(path, picks)
        except VideoUnreadable as exc:  # damaged since it was made: a preview is no reason to fail the run
            logger.warning("preview leaves out %s: %s", path, exc)
            continue
        width = round(frames.shape[2] * height / frames.shape[1])
        rows.append(np.concatenate([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames], axis=1))
    if not rows:
        return None
    widest = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, widest - r.shape[1]), (0, 0))) for r in rows], axis=0)


def save_preview(table: pd.DataFrame, cfg: AnimateConfig, out_dir: Path) -> Path | None:
    """`out_dir/preview.png` from the first finished outputs; None when nothing finished, or when it
    cannot be written (a full disk): a warning, since the videos and results.parquet are written
    already, and a traceback here hid the run's summary and ended its MLflow run FAILED."""
    done = table[table.status.isin(DONE)].output.tolist()[: cfg.preview_jobs]
    strip = preview_strip(done, cfg.preview_frames)
    if strip is None:
        return None
    path = out_dir / PREVIEW_FILE
    try:
        atomic_write(path, cv2.imencode(".png", np.ascontiguousarray(strip[:, :, ::-1]))[1].tobytes())
    except OSError as exc:
        logger.warning("the preview strip %s was not written: %s", path, exc)
        return None
    return path


def pasted_back_side(pending: list[dict[str, Any]], max_output_side: int) -> int:
    """The longer side of the largest output frame a job of `pending` pastes back onto its portrait:
    the portrait's own, read from its header (each portrait once), at most `max_output_side` (0:
    uncapped; `fit_within`); 0 where no job pastes back (crop-only outputs) or no portrait opens."""
    portraits = {row["ref"] for row in pending if json.loads(row["params"]).get("paste_back")}
    side = max((long_side(path) for path in portraits), default=0)
    return min(side, max_output_side) if max_output_side else side
