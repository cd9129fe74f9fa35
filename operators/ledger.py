"""What the output folder knows about its inputs: completion markers, the manifest, clip rows.

An input's marker (`.state/done/{input_key}.json`) holds its manifest row and its clip rows; it is
written only once every sample of the input is inside a durable shard. The manifest and the clip
table are rebuilt from the markers, so they hold exactly one row per input ever curated into the
folder. A `failed` marker is recorded but does not count as done: a rerun tries the input again.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from portraitflow.operators.atomic import atomic_target, atomic_write
from portraitflow.operators.inputs import is_uri
from portraitflow.operators.paths import escape_undecodable

log = logging.getLogger(__name__)

ACCEPTED, REJECTED, FAILED = "accepted", "rejected", "failed"
MEASURES = ("face_side_px", "detected_ratio", "secondary_faces", "keypoint_yaw", "profile_share", "sharpness",
            "identity_link", "face_outside_crop", "yaw", "pitch", "motion", "shake", "duplicate_similarity",
            "overlap_s", "overlap_share")


def marker_path(done_dir: Path, input_key: str) -> Path:
    return done_dir / f"{input_key}.json"


def write_marker(done_dir: Path, input_row: dict[str, Any], clip_rows: list[dict[str, Any]],
                 source: dict[str, int] | None = None) -> dict[str, Any]:
    """The input's rows, and `source`, if local: the `file_stat` of the file its scan was made of.
    Returns the marker as `load_markers` reads it back, so a run keeps its markers without reading
    the folder's again."""
    marker = {"input": input_row, "clips": clip_rows, **({"source": source} if source else {})}
    atomic_write(marker_path(done_dir, input_row["input_key"]), json.dumps(marker))
    return marker


def file_stat(path: str) -> dict[str, int]:
    """A file's size and modification time, which tell a file replaced under the same name (the
    scan records them, `scan_store.source_identity`; its input's marker keeps them)."""
    stat = os.stat(path)
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def source_stat(uri: str) -> dict[str, int] | None:
    """A local input's `file_stat` now; None for a remote input or a file that is gone."""
    if is_uri(uri):
        return None
    try:
        return file_stat(uri)
    except OSError:
        return None


def changed_since_curated(rows: list[dict[str, Any]], markers: dict[str, dict[str, Any]]) -> list[str]:
    """The inputs of `rows` done in `markers` whose file is no longer the one curated (its size or
    time differ): their rows and clips describe the earlier file."""
    return [row["uri"] for row in rows if is_done(marker := markers.get(row["input_key"], {}))
            and "source" in marker and source_stat(row["uri"]) not in (None, marker["source"])]


def moved_inputs(rows: list[dict[str, Any]], markers: dict[str, dict[str, Any]]) -> dict[str, str]:
    """uri -> input key, for the inputs of `rows` not done under their own key that were curated
    under another: at this path by an earlier run that followed their move (their marker holds the
    path), or, local and moved or renamed since (`mv` and `rsync -a` keep a file's modification
    time), from a file that is gone, is not among `rows`, and had the input's size and modification
    time to the nanosecond. Markers of equal size and time go to such inputs in order."""
    given = {row["uri"] for row in rows}
    followed = {marker["input"].get("path"): key for key, marker in markers.items() if is_done(marker)}
    gone: dict[tuple[int, int], list[str]] = {}
    for key, marker in markers.items():
        path, source = marker.get("input", {}).get("path", ""), marker.get("source")
        if is_done(marker) and source and path not in given and not is_uri(path) and not os.path.lexists(path):
            gone.setdefault((source["size"], source["mtime_ns"]), []).append(key)
    moved = {}
    for row in rows:
        if is_done(markers.get(row["input_key"], {})):
            continue
        if row["uri"] in followed:
            moved[row["uri"]] = followed[row["uri"]]
            continue
        stat = source_stat(row["uri"]) if gone else None
        keys = gone.get((stat["size"], stat["mtime_ns"])) if stat else None
        if keys:
            moved[row["uri"]] = keys.pop(0)
    return moved


def moved_marker(marker: dict[str, Any], uri: str) -> dict[str, Any]:
    """A done input's marker with its rows at the file's new path `uri` (its key, which names its
    clips in the shards, stays)."""
    return dict(marker, input=dict(marker["input"], path=uri), clips=[dict(c, path=uri) for c in marker["clips"]])


def is_done(marker: dict[str, Any]) -> bool:
    """Whether a marker's input is done: a `failed` one is recorded, but a rerun tries it again."""
    return marker.get("input", {}).get("status", FAILED) != FAILED


def any_done(done_dir: Path) -> bool:
    """Whether some marker in the folder is done, reading markers only until one is."""
    for path in done_dir.glob("*.json") if done_dir.is_dir() else []:
        try:
            marker = json.loads(path.read_text())
            if isinstance(marker, dict) and is_done(marker):
                return True
        except (OSError, ValueError):  # `load_markers` ignores it too
            continue
    return False


def load_markers(done_dir: Path) -> dict[str, dict[str, Any]]:
    """input_key -> marker, for every usable marker in the folder. One that cannot be read (a
    damaged disk) or whose rows do not fit the tables counts as missing, so its input is curated
    again instead of every run stopping on it. Text that is not valid UTF-8 (a file name's bytes,
    in markers written before inputs were escaped) is escaped as `escape_undecodable` does."""
    markers = {}
    for path in sorted(done_dir.glob("*.json")) if done_dir.is_dir() else []:
        try:
            text = path.read_text()
            marker = json.loads(text)
            markers[path.stem] = _escaped(marker) if _SURROGATE_ESCAPE.search(text) else marker
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable marker %s, its input is curated again: %s", path, exc)
    _fitting_tables(markers)
    return markers


def _fitting_tables(markers: dict[str, dict[str, Any]]) -> tuple[Any, Any]:
    """The tables of `markers`, less (removed from `markers`) each marker whose rows do not fit them:
    its input is curated again instead of every run stopping on it."""
    try:
        return _tables(markers)
    except Exception:  # some marker holds what the tables cannot: find it, so the others are kept
        for key, marker in list(markers.items()):
            try:
                _tables({key: marker})
            except Exception as exc:  # any field a damaged marker holds wrongly
                log.warning("ignoring the marker of %s, its rows do not fit the tables; its input is curated "
                            "again: %s", key, exc)
                del markers[key]
    return _tables(markers)


#: how JSON writes a UTF-16 surrogate (`\udce9`): only a marker with one can hold text to escape.
#: Escaping every string of every marker was 37% of reading 100,000 of them (9.4 of 25 s)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _escaped(value: Any) -> Any:
    """A parsed JSON value with every string in it escaped by `escape_undecodable`."""
    if isinstance(value, str):
        return escape_undecodable(value)
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    if isinstance(value, dict):
        return {escape_undecodable(k): _escaped(v) for k, v in value.items()}
    return value


def clip_row(key: str, input_row: dict[str, Any], clip: dict[str, Any], fps: float) -> dict[str, Any]:
    """One row of clips.parquet: where the clip is, its decision and reason, its measures."""
    reason = clip.get("reason")
    decision = ACCEPTED if reason is None else (FAILED if clip.get("error") else REJECTED)
    row = {
        "key": key,
        "input_key": input_row["input_key"],
        "path": input_row["uri"],
        "start_s": clip["start"] / fps,
        "end_s": clip["end"] / fps,
        "duration_s": (clip["end"] - clip["start"]) / fps,
        "decision": decision,
        "reason": reason or "",
        "error": clip.get("error", ""),
        "matched_key": (clip.get("matched_key") or "") if reason else "",
        "cut_from": clip.get("cut_from") or "",
    }
    row.update({m: float(clip.get("measures", {}).get(m, np.nan)) for m in MEASURES})
    return row


def input_row(row: dict[str, Any], clip_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of manifest.parquet, from the probed/scanned row and the input's clip rows.

    A clip that failed to render (a full disk, an encoder crash) fails its input, so the next run
    tries it again; the clips it already has in shards are not rendered twice into the corpus.
    Those stay accepted whatever a retry finds, so a failed row's `error` names them.
    """
    rejected = Counter(c["reason"] for c in clip_rows if c["decision"] != ACCEPTED)
    accepted = [c for c in clip_rows if c["decision"] == ACCEPTED]
    failed_clips = [c for c in clip_rows if c["decision"] == FAILED]
    error = row.get("error") or ""
    if row.get("status") == FAILED:
        status = FAILED
    elif failed_clips:
        status = FAILED
        error = f"{len(failed_clips)} clip(s) failed to render, first {failed_clips[0]['key']}: {failed_clips[0]['error']}"
    else:
        status = ACCEPTED if accepted else REJECTED
    seconds_in, seconds_accepted = float(row.get("duration_s") or 0.0), float(sum(c["duration_s"] for c in accepted))
    if status == FAILED and accepted:
        keys = ", ".join(c["key"] for c in accepted)
        error += f"; its {len(accepted)} clip(s) already in the shards stay in the corpus: {keys}"
    return {
        "path": row["uri"],
        "input_key": row["input_key"],
        "status": status,
        "reasons": sorted(rejected),
        "clips_accepted": len(accepted),
        "clips_rejected": dict(sorted(rejected.items())),
        "seconds_in": seconds_in,
        # a clip's frames reach up to a frame past the input's end (its last shows the input's last);
        # an input that failed this time (length unknown) keeps the seconds its earlier clips hold
        "seconds_accepted": min(seconds_accepted, seconds_in) if seconds_in > 0 else seconds_accepted,
        "width": int(row.get("width") or 0),
        "height": int(row.get("height") or 0),
        "fps": float(row.get("src_fps") or 0.0),
        "error": error,
    }


def lost_from_shards(marker: dict[str, Any], lost: list[str], reason: str) -> dict[str, Any]:
    """The marker of an input some of whose accepted clips are no longer in the shards (a shard
    that could not be read whole was rewritten without them, or removed): `failed`, so a run given
    the input curates it again instead of the manifest counting clips nobody can read. Its lost
    clips fail with `reason`; those still in the shards stay accepted, and its error names both."""
    gone = set(lost)
    error = f"{len(lost)} clip(s) no longer in the shards (a shard that is missing or damaged lost them): {', '.join(lost)}"
    clips = [dict(c, decision=FAILED, reason=reason, error="no longer in the shards (a damaged shard lost it)")
             if c["key"] in gone else c for c in marker["clips"]]
    prior = marker["input"]
    row = {"uri": prior["path"], "input_key": prior["input_key"], "status": FAILED, "error": error,
           "duration_s": prior["seconds_in"], "width": prior["width"], "height": prior["height"], "src_fps": prior["fps"]}
    return {"input": input_row(row, clips), "clips": clips}


def write_tables(out_dir: Path, markers: dict[str, dict[str, Any]]) -> tuple[Any, Any]:
    """manifest.parquet and clips.parquet from every marker (as `load_markers` gives them), written atomically."""
    import pyarrow.parquet as pq

    manifest, clips = _fitting_tables(markers)
    for name, table in (("manifest.parquet", manifest), ("clips.parquet", clips)):
        with atomic_target(out_dir / name) as tmp:
            pq.write_table(table, tmp)
    return manifest, clips


def _tables(markers: dict[str, dict[str, Any]]) -> tuple[Any, Any]:
    """The manifest and clip tables (pyarrow) of the markers' rows."""
    import pyarrow as pa

    manifest_schema = pa.schema([
        ("path", pa.string()), ("input_key", pa.string()), ("status", pa.string()),
        ("reasons", pa.list_(pa.string())), ("clips_accepted", pa.int32()),
        ("clips_rejected", pa.map_(pa.string(), pa.int32())), ("seconds_in", pa.float64()),
        ("seconds_accepted", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
        ("fps", pa.float64()), ("error", pa.string()),
    ])
    clip_schema = pa.schema([
        ("key", pa.string()), ("input_key", pa.string()), ("path", pa.string()), ("start_s", pa.float64()),
        ("end_s", pa.float64()), ("duration_s", pa.float64()), ("decision", pa.string()), ("reason", pa.string()),
        ("error", pa.string()), ("matched_key", pa.string()), ("cut_from", pa.string()),
        *[(m, pa.float64()) for m in MEASURES],
    ])
    ordered = [markers[key] for key in sorted(markers)]  # by input key, whatever order a run added them in
    inputs = [dict(m["input"], clips_rejected=list(m["input"].get("clips_rejected", {}).items())) for m in ordered]
    manifest = pa.Table.from_pylist(inputs, schema=manifest_schema)
    clips = pa.Table.from_pylist([c for m in ordered for c in m["clips"]], schema=clip_schema)
    return manifest, clips
