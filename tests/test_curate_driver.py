"""The curate driver (jobs/curate.py) on synthetic inputs, with the curation stage run in-process
instead of on Ray: what the manifest, the clip rows and the corpus decisions say when inputs are odd
or a retry goes wrong."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.operators import ledger

QUIET = ["mlflow.enabled=false", "curate.progress_bars=false"]


def _noise_video(path: Path) -> Path:
    from portraitflow.operators.video_writer import write_h264

    write_h264(path, [np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), np.uint8)], 25)
    return path


def test_a_file_name_that_is_not_utf8_is_a_failed_row_and_the_manifest_is_written(tmp_path: Path, in_process) -> None:
    from portraitflow.jobs.curate import run_curation
    from portraitflow.operators.inputs import NOT_UTF8

    folder = (tmp_path / "in").resolve()
    folder.mkdir()
    video = _noise_video(folder / "ok.mp4")
    try:
        os.link(video, os.path.join(os.fsencode(folder), b"caf\xe9.mp4"))
    except OSError as exc:
        pytest.skip(f"this filesystem refuses names that are not UTF-8: {exc}")
    out = tmp_path / "out"
    metrics = run_curation(load_config(None, QUIET), [str(folder)], out)
    manifest = {row["path"]: row for row in _rows(out / "manifest.parquet")}
    escaped = f"{folder}/caf\\xe9.mp4"
    assert manifest.keys() == {escaped, str(video)} and metrics["inputs_failed"] == 1
    assert manifest[escaped]["status"] == "failed"
    assert manifest[escaped]["error"] == f"UnicodeError: {NOT_UTF8}: {escaped}"
    assert manifest[str(video)]["status"] == "rejected"
    assert run_curation(load_config(None, QUIET), [str(folder)], out)["inputs_failed"] == 1  # and so does a rerun


def test_a_marker_holding_a_surrogate_or_a_bad_field_does_not_stop_the_manifest(tmp_path: Path) -> None:
    """Markers written before inputs were escaped hold the name's bytes as surrogates: they are
    escaped. A marker the tables cannot hold counts as missing (its input is curated again)."""
    def marker(key: str, path: str, **fields) -> None:
        row = {"uri": path, "input_key": key, "status": "scanned", "width": 64, "height": 64}
        ledger.write_marker(tmp_path, dict(ledger.input_row(row, []), **fields), [])

    marker("caf", "/v/caf\udce9.mp4")
    marker("bad", "/v/bad.mp4", width="wide")
    marker("ok", "/v/ok.mp4")
    markers = ledger.load_markers(tmp_path)
    assert sorted(markers) == ["caf", "ok"]
    ledger.write_tables(tmp_path, markers)
    assert [row["path"] for row in _rows(tmp_path / "manifest.parquet")] == ["/v/caf\\xe9.mp4", "/v/ok.mp4"]


def test_a_run_reads_the_markers_once_and_its_tables_equal_the_folders(tmp_path: Path, in_process,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The run follows the markers it writes instead of reading the folder's again at the end
    (~21 kB of RAM and ~0.15 ms a marker, twice, at a million inputs); the tables must not differ."""
    import pyarrow.parquet as pq

    from portraitflow.jobs.curate import run_curation
    from portraitflow.operators.ledger import _tables

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        _noise_video(folder / f"{name}.mp4")
    reads = []
    load = ledger.load_markers
    monkeypatch.setattr(ledger, "load_markers", lambda done: reads.append(done) or load(done))
    out = tmp_path / "out"
    run_curation(load_config(None, QUIET), [str(folder / "b.mp4")], out)  # "a" comes after it in the run
    run_curation(load_config(None, QUIET), [str(folder)], out)
    assert len(reads) == 2  # one a run
    manifest, clips = _tables(load(out / ".state" / "done"))
    assert _rows(out / "manifest.parquet") == manifest.to_pylist() and len(manifest) == 2
    assert pq.read_table(out / "clips.parquet").to_pandas().equals(clips.to_pandas())  # NaN measures alike


def test_finished_work_is_found_past_a_marker_that_holds_no_object(tmp_path: Path) -> None:
    """`null` in a marker (valid JSON) stopped every run, a dry run too, before any shard was packed."""
    (tmp_path / "a.json").write_text("null")
    assert not ledger.any_done(tmp_path)
    row = {"uri": "/v/b.mp4", "input_key": "b", "status": "scanned", "width": 64, "height": 64}
    ledger.write_marker(tmp_path, ledger.input_row(row, []), [])
    assert ledger.any_done(tmp_path)


def test_written_tables_leave_out_a_marker_that_does_not_fit(tmp_path: Path) -> None:
    row = {"uri": "/v/a.mp4", "input_key": "a", "status": "scanned", "width": 64, "height": 64}
    markers = {"a": ledger.write_marker(tmp_path, ledger.input_row(row, []), []),
               "bad": {"input": dict(ledger.input_row(dict(row, input_key="bad"), []), width="wide"), "clips": []}}
    manifest, _ = ledger.write_tables(tmp_path, markers)
    assert manifest.column("input_key").to_pylist() == ["a"] and list(markers) == ["a"]


def _rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


FPS = 25.0
UNREADABLE = {"status": "failed", "error": "cannot open the video: Invalid data found when processing input", "width": 0, "height": 0, "src_fps": 0.0,
              "duration_s": 0.0}
SCANNED = {"status": "scanned", "error": "", "width": 512, "height": 512, "src_fps": FPS, "duration_s": 6.0}


def _stage_results(monkeypatch: pytest.MonkeyPatch, results: dict[str, dict]) -> None:
    """The curation stage's row of each input (by key) is `results[key]`: no Ray, no video read."""
    from portraitflow.pipelines import curate as pipeline

    monkeypatch.setattr(pipeline, "curate_inputs", lambda rows, *_: (
        [dict(row, **results[row["input_key"]], timings="{}", render_errors="{}", rendered=0) for row in rows], ""))
    monkeypatch.setattr("portraitflow.jobs.runtime.init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr("portraitflow.jobs.runtime.require_resource", lambda *args, **kwargs: None)  # no actor to place


def _scan(scans: Path, uri: str, clips: list[tuple]) -> str:
    """Save a scan of `uri` whose clips are (start, end, reason, (embedding, signature[, thumbnails])
    of a kept one)."""
    from portraitflow.operators.face_scan import Candidate
    from portraitflow.operators.inputs import input_key
    from portraitflow.operators.scan_store import save_scan, scan_path

    candidates = [Candidate(start, end, reason, {"face_side_px": 200.0},
                            dict(zip(("embedding", "signature", "thumbnails"), identity)) if identity else {})
                  for start, end, reason, identity in clips]
    meta = {"fingerprint": "", "source": {}, "face_backend": "opencv", "same_person": 0.52}
    save_scan(scan_path(scans, input_key(uri)), meta, candidates)
    return input_key(uri)


def _pack(layout, key: str, start: int, end: int, embedding: np.ndarray, signature: np.ndarray | None) -> None:
    """A sample in a shard as rendering writes it (a sample written before signatures has none)."""
    from portraitflow.operators.shards import pack_shards

    _stage(layout, key, start, end, embedding, signature)
    pack_shards(layout.staging, layout.shards, 100, 1 << 30)


def _stage(layout, key: str, start: int, end: int, embedding: np.ndarray, signature: np.ndarray | None,
           thumbnails: np.ndarray | None = None) -> None:
    """A sample staged as rendering stages it (one written before signatures or thumbnails has none)."""
    from portraitflow.operators.shards import npy_bytes, stage_sample

    meta = {"key": key, "start_s": start / FPS, "end_s": end / FPS, "scores": {"face_side_px": 200.0}}
    members = {"json": json.dumps(meta).encode(), "id.npy": npy_bytes(embedding)}
    if signature is not None:
        members["signature.npy"] = npy_bytes(signature.astype(np.float16))
    if thumbnails is not None:
        members["thumbnails.npy"] = npy_bytes(thumbnails)
    stage_sample(layout.staging, key, members)


@pytest.mark.parametrize("retry", ["unreadable", "unreadable_and_scan_lost", "another_file"])
def test_clips_already_in_shards_stay_in_the_corpus_whatever_the_retry_finds(
        retry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run packed one clip of `talk` and was killed before its marker; `copy` is the same footage
    under another name. The retry of `talk` fails, finds its scan gone too, or finds another file:
    the packed clip keeps its row, its input's row accounts for it, and it counts in the ledger
    (the copy is a duplicate), in this run and in a later one that leaves `talk` out."""
    from portraitflow.jobs.curate import Layout, corpus_settings, run_curation
    from portraitflow.models.face.base import l2_normalise
    from portraitflow.operators.scan_store import scan_path
    from portraitflow.operators.overlap import content_signature
    from portraitflow.operators.inputs import clip_key

    rng = np.random.default_rng(0)
    identities = []
    for _ in range(2):
        embedding = l2_normalise(rng.normal(size=128)).astype(np.float32)
        identities.append((embedding, content_signature(rng.uniform(0, 255, (50, 16, 16)))))
    layout = Layout(tmp_path)
    layout.make()
    layout.settings.write_text(json.dumps(corpus_settings(load_config(None, QUIET))))  # as the first run recorded
    talk, copy, later_copy = (str(tmp_path / name) for name in ("talk.mp4", "copy.mp4", "later_copy.mp4"))
    talk_key = _scan(layout.scans, talk, [(0, 50, None, identities[0][:2]), (50, 100, None, identities[1][:2]),
                                          (100, 150, "too_static", None)])
    packed = clip_key(talk_key, 0, 2.0)
    _pack(layout, packed, 0, 50, *identities[0])
    copies = [_scan(layout.scans, uri, [(0, 50, None, identities[0][:2])]) for uri in (copy, later_copy)]
    if retry == "unreadable_and_scan_lost":
        scan_path(layout.scans, talk_key).unlink()
    if retry == "another_file":
        _scan(layout.scans, talk, [(0, 75, "too_static", None)])
    _stage_results(monkeypatch, {talk_key: SCANNED if retry == "another_file" else UNREADABLE,
                                 copies[0]: SCANNED, copies[1]: SCANNED})
    cfg = load_config(None, QUIET)
    run_curation(cfg, [talk, copy], tmp_path)

    manifest = {row["input_key"]: row for row in _rows(tmp_path / "manifest.parquet")}
    clips = {row["key"]: row for row in _rows(tmp_path / "clips.parquet")}
    assert manifest[talk_key]["clips_accepted"] == 1 and manifest[talk_key]["seconds_accepted"] == 2.0
    assert clips[packed]["decision"] == "accepted" and clips[packed]["face_side_px"] == 200.0
    talk_clips = sorted(key for key, row in clips.items() if row["input_key"] == talk_key)
    if retry == "another_file":
        assert manifest[talk_key]["status"] == "accepted" and talk_clips == sorted([packed, clip_key(talk_key, 0, 3.0)])
    else:
        assert manifest[talk_key]["status"] == "failed" and talk_clips == [packed]
        assert manifest[talk_key]["error"] == (f"cannot open the video: Invalid data found when processing input; its 1 clip(s) already in the shards "
                                               f"stay in the corpus: {packed}")
    assert clips[clip_key(copies[0], 0, 2.0)]["reason"] == "duplicate"

    run_curation(cfg, [later_copy], tmp_path)
    assert {row["key"]: row for row in _rows(tmp_path / "clips.parquet")}[clip_key(copies[1], 0, 2.0)]["reason"] == \
        "duplicate"


def test_a_scan_signature_from_before_footage_signatures_matches_no_duplicate(tmp_path: Path) -> None:
    """A finished input's scan from an earlier version holds a keypoint signature (320 values): it
    must not meet the new ones in a dot product (a ValueError after the whole scan, every rerun)."""
    from portraitflow.jobs.curate import Layout
    from portraitflow.models.face.base import l2_normalise
    from portraitflow.operators.corpus_decisions import Identities
    from portraitflow.operators.overlap import SIGNATURE_SIZE, content_signature
    from portraitflow.operators.corpus_ledger import CorpusLedger

    rng = np.random.default_rng(1)
    layout = Layout(tmp_path)
    layout.make()
    person = l2_normalise(rng.normal(size=128)).astype(np.float32)
    old = _scan(layout.scans, str(tmp_path / "old.mp4"), [(0, 50, None, (person, l2_normalise(rng.normal(size=320))))])
    new = _scan(layout.scans, str(tmp_path / "new.mp4"),
                [(0, 50, None, (person, content_signature(rng.uniform(0, 255, (50, 16, 16)))))])
    identities = Identities(layout.scans)
    kept_embedding, kept_signature, kept_thumbnails = identities(old, {"index": 0})
    new_embedding, new_signature, _ = identities(new, {"index": 0})
    assert kept_signature is None and kept_thumbnails is None and new_signature.size == SIGNATURE_SIZE
    ledger = CorpusLedger(same_person=0.5, max_per_identity=1, duplicate_similarity=0.9)
    ledger.keep("clip1", kept_embedding, kept_signature)
    assert ledger.decide(new_embedding, new_signature).reason == "identity_over_cap"  # counted, compared with nothing


@pytest.mark.parametrize(("sample_has_thumbnails", "ledger_kept"), [(True, False), (False, False), (False, True)])
def test_a_clip_holding_part_of_a_kept_one_is_a_partial_duplicate_in_a_run_and_against_the_shards(
        sample_has_thumbnails: bool, ledger_kept: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`a_long` keeps a 10-s clip; `b_half` holds its first half and is rejected in the same run,
    its row giving the overlap. A later run holds `c_trim` (a re-upload trimmed at both ends) to
    the clip as the corpus ledger kept it, or, its scan and the ledger gone (a folder curated before
    the ledger was kept), as its sample in the shards tells it: rejected too, unless the sample is
    from before thumbnails, which leaves it the whole-clip check only."""
    from synthetic_footage import footage, re_encoded

    from portraitflow.jobs.curate import Layout, run_curation
    from portraitflow.models.face.base import l2_normalise
    from portraitflow.operators.scan_store import scan_path
    from portraitflow.operators.overlap import content_signature
    from portraitflow.operators.inputs import clip_key

    person = l2_normalise(np.random.default_rng(4).normal(size=128)).astype(np.float32)
    long, half, trim = footage(1, 250), footage(1, 250)[:125], re_encoded(footage(1, 250)[37:213])
    layout = Layout(tmp_path)
    layout.make()
    uris = {name: str(tmp_path / f"{name}.mp4") for name in ("a_long", "b_half", "c_trim")}
    keys = {name: _scan(layout.scans, uris[name], [(0, len(thumbnails), None,
                                                    (person, content_signature(thumbnails), thumbnails))])
            for name, thumbnails in (("a_long", long), ("b_half", half), ("c_trim", trim))}
    _stage_results(monkeypatch, dict.fromkeys(keys.values(), SCANNED))
    kept_key = clip_key(keys["a_long"], 0, 10.0)
    _stage(layout, kept_key, 0, 250, person, content_signature(long), long if sample_has_thumbnails else None)
    cfg = load_config(None, QUIET)
    run_curation(cfg, [uris["a_long"], uris["b_half"]], tmp_path)
    clips = {row["key"]: row for row in _rows(tmp_path / "clips.parquet")}
    kept, rejected = clips[kept_key], clips[clip_key(keys["b_half"], 0, 5.0)]
    assert kept["decision"] == "accepted" and np.isnan(kept["overlap_share"])  # nothing kept before it
    assert rejected["reason"] == "partial_duplicate" and rejected["duplicate_similarity"] < 0.9
    assert rejected["overlap_share"] > 0.95 and rejected["overlap_s"] == pytest.approx(5.0, abs=0.2)

    scan_path(layout.scans, keys["a_long"]).unlink()
    if not ledger_kept:
        shutil.rmtree(layout.corpus)
    trim_key = clip_key(keys["c_trim"], 0, 7.04)
    _stage(layout, trim_key, 0, len(trim), person, content_signature(trim), trim)
    run_curation(cfg, [uris["c_trim"]], tmp_path)
    trimmed = {row["key"]: row for row in _rows(tmp_path / "clips.parquet")}[trim_key]
    if sample_has_thumbnails or ledger_kept:
        assert trimmed["reason"] == "partial_duplicate" and trimmed["overlap_share"] > 0.9
    else:
        assert trimmed["decision"] == "accepted" and np.isnan(trimmed["overlap_share"])
        assert trimmed["duplicate_similarity"] < 0.9
