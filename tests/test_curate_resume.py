"""An output folder holds one corpus: resuming it with other settings, or curating into it twice
at once, is refused instead of mixing old and new decisions."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from portraitflow.jobs.config import load_config
from portraitflow.jobs.curate import Layout, check_corpus_settings, corpus_settings, exclusive


def test_a_fresh_output_folder_accepts_any_settings(tmp_path: Path) -> None:
    assert check_corpus_settings(load_config(None, ["curate.min_face_px=999"]), Layout(tmp_path / "new")) == []  # nothing changed


def test_one_curation_at_a_time_per_output_folder(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    with exclusive(layout):
        with pytest.raises(typer.BadParameter, match="another run is writing"):
            with exclusive(Layout(tmp_path)):
                pass
    with exclusive(layout):  # released when the first one ends
        pass


def test_a_shard_is_on_disk_before_its_samples_are_marked_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from portraitflow.operators.shards import pack_shards, stage_sample

    for key in ("a", "b", "c"):
        stage_sample(tmp_path / "staging", key, {"json": b"{}"})
    synced, events = {}, []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced[os.readlink(f"/proc/self/fd/{fd}")] = True
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    shards = tmp_path / "shards"

    def on_shard(keys: list[str]) -> None:
        events.append((keys, {Path(p).name for p in synced}, str(shards) in synced))
        synced.clear()

    pack_shards(tmp_path / "staging", shards, 2, 1 << 20, on_shard)
    assert [keys for keys, _, _ in events] == [["a", "b"], ["c"]]
    for index, (_, files, folder) in enumerate(events):  # each shard's data and its rename before its marker
        assert folder and any(name.startswith(f".{index:06d}.tar.") for name in files)


def test_scans_are_redone_for_settings_they_depend_on_only() -> None:
    from portraitflow.operators.scan_store import scan_fingerprint

    base = scan_fingerprint(load_config(None, []))
    assert scan_fingerprint(load_config(None, ["face.num_threads=3", "curate.crf=30", "curate.actor_cpus=2"])) == base
    assert scan_fingerprint(load_config(None, ["curate.keyframe_interval=25", "curate.shard_max_samples=7"])) == base
    assert scan_fingerprint(load_config(None, ["curate.min_face_px=200"])) != base


def test_an_unreadable_marker_counts_as_not_done(tmp_path: Path) -> None:
    from portraitflow.operators import ledger

    ledger.write_marker(tmp_path, {"input_key": "good", "status": "accepted"}, [])
    (tmp_path / "torn.json").write_text("")  # what a rename without a flush can leave after a power loss
    assert set(ledger.load_markers(tmp_path)) == {"good"}


def test_atomic_writes_reach_the_disk_before_they_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from portraitflow.operators.atomic import atomic_write

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                  real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    atomic_write(tmp_path / "marker.json", "{}")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).name.startswith(".marker.json.") and events[2][1] == str(tmp_path)


def test_an_input_with_a_clip_that_failed_to_render_is_failed_so_the_next_run_retries_it() -> None:
    from portraitflow.operators import ledger

    row = {"uri": "/v/a.mp4", "input_key": "a", "status": "scanned", "duration_s": 4.0}
    clips = [ledger.clip_row("a_1", row, {"start": 0, "end": 50, "reason": None}, 25.0),
             ledger.clip_row("a_2", row, {"start": 50, "end": 100, "reason": "render_failed",
                                          "error": "No space left on device"}, 25.0)]
    manifest_row = ledger.input_row(row, clips)
    assert manifest_row["status"] == ledger.FAILED and manifest_row["clips_accepted"] == 1
    assert "a_2" in manifest_row["error"] and "No space left" in manifest_row["error"]
    assert ledger.input_row(row, clips[:1])["status"] == ledger.ACCEPTED


def test_kept_clips_whose_render_never_comes_back_fail_their_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a cap, kept clips render in a second pass; a result Ray loses fails those clips (the
    input is retried next run), and the clips already in shards are not asked for again."""
    from portraitflow.jobs import curate
    from portraitflow.pipelines import curate as pipeline

    asked = []
    monkeypatch.setattr(pipeline, "render_decided", lambda rows, *_: asked.extend(rows) or [])
    row = {"input_key": "a", "uri": "/v/a.mp4", "width": 64, "height": 64, "src_fps": 25.0, "render_errors": "{}",
           "timings": json.dumps({"scan": 1.0}), "rendered": 0}
    clips = {"a": [{"key": "a_1", "reason": None}, {"key": "a_2", "reason": None}, {"key": "a_3", "reason": "duplicate"},
                   {"key": "a_4", "reason": None, "index": 2, "cut": [60, 120], "cut_from": "a_3"}]}
    cfg = load_config(None, ["curate.max_clips_per_identity=1"])
    curate._render_kept(cfg, Layout(tmp_path), [row], clips, in_shards={"a_1"}, cut_only=False)
    assert [(json.loads(r["keys"]), json.loads(r["cuts"])) for r in asked] == [(["a_2"], {"a_4": [2, 60, 120]})]
    assert json.loads(row["render_errors"]) == {"a_2": curate.RENDER_LOST, "a_4": curate.RENDER_LOST}
    assert json.loads(row["timings"]) == {"scan": 1.0} and row["rendered"] == 0


def test_a_clip_that_runs_to_the_end_of_its_input_accounts_for_no_more_than_the_input() -> None:
    from portraitflow.operators import ledger

    row = {"uri": "/v/a.mp4", "input_key": "a", "status": "scanned", "duration_s": 3.03}
    # 3.03 s at 25 fps is 76 output frames (the last shows the input's last frame): 3.04 s of them
    clip = ledger.clip_row("a_1", row, {"start": 0, "end": 76, "reason": None}, 25.0)
    assert clip["duration_s"] == pytest.approx(3.04)  # what its 76 frames last, as its shard says
    assert ledger.input_row(row, [clip])["seconds_accepted"] == pytest.approx(3.03)
    inside = ledger.clip_row("a_2", row, {"start": 25, "end": 50, "reason": None}, 25.0)
    assert ledger.input_row(row, [inside])["seconds_accepted"] == pytest.approx(1.0)


def test_holding_a_folder_clears_the_writes_a_killed_run_left_unfinished(tmp_path: Path) -> None:
    import os
    import tempfile

    from portraitflow.operators.atomic import ABANDONED_AFTER_S, atomic_write, exclusive_folder

    (tmp_path / "deep").mkdir()
    parts = [tempfile.mkstemp(prefix=".talk.mp4.", suffix=".part", dir=folder)  # as atomic_target names them
             for folder in (tmp_path, tmp_path / "deep", tmp_path / "deep")]
    for fd, _ in parts:
        os.close(fd)
    old = os.stat(parts[0][1]).st_mtime - ABANDONED_AFTER_S - 60
    for _, path in parts[:2]:
        os.utime(path, (old, old))
    atomic_write(tmp_path / "deep" / "talk.mp4", b"video")
    (tmp_path / ".notes.part").write_text("not ours")
    os.utime(tmp_path / ".notes.part", (old, old))
    with exclusive_folder(tmp_path):
        left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.part"))
        # the recent one may still be written by a killed run's worker; the other file is not ours
        assert left == sorted([".notes.part", str(Path(parts[2][1]).relative_to(tmp_path))])
        assert (tmp_path / "deep" / "talk.mp4").read_bytes() == b"video"


def test_a_done_input_replaced_under_its_name_is_named_not_silently_kept(tmp_path: Path, capsys,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A re-exported video at the same path used to be skipped as done without a word, the manifest
    describing the earlier file; it is named, in the log and by `--dry-run`."""
    import os

    from portraitflow.jobs.curate import run_curation
    from portraitflow.operators import ledger
    from portraitflow.operators.inputs import input_key

    video = tmp_path / "talk.mp4"
    video.write_bytes(b"first take")
    untouched = tmp_path / "other.mp4"
    untouched.write_bytes(b"other")
    layout = Layout(tmp_path / "out")
    layout.make()
    cfg = load_config(None, ["mlflow.enabled=false"])
    layout.settings.write_text(json.dumps(corpus_settings(cfg)))
    rows = [{"uri": str(p), "input_key": input_key(str(p))} for p in (video, untouched)]
    for row in rows:
        ledger.write_marker(layout.done, {"input_key": row["input_key"], "status": "rejected"}, [],
                            ledger.source_stat(row["uri"]))
    assert ledger.changed_since_curated(rows, ledger.load_markers(layout.done)) == []
    video.write_bytes(b"second take, longer")
    os.utime(untouched)  # touched only: the same size, another time
    markers = ledger.load_markers(layout.done)
    assert ledger.changed_since_curated(rows, markers) == [str(video), str(untouched)]
    del markers[rows[0]["input_key"]]["source"]  # a marker written before sources were recorded
    assert ledger.changed_since_curated(rows, markers) == [str(untouched)]
    assert ledger.source_stat("s3://bucket/talk.mp4") is None

    run_curation(cfg, [str(video)], layout.out, dry_run=True)
    assert capsys.readouterr().out.startswith(f"changed  {rows[0]['input_key']}  {video}")
    assert "changed since they were curated" in caplog.text and str(video) in caplog.text


def test_a_marker_records_the_file_its_scan_was_made_of(tmp_path: Path) -> None:
    """Not the file at the path when the input finishes: one replaced during its own run is named next time."""
    from portraitflow.jobs.curate import _scanned_file
    from portraitflow.operators.scan_store import save_scan, scan_path

    layout = Layout(tmp_path)
    layout.make()
    save_scan(scan_path(layout.scans, "talk"), {"source": {"size": 5, "mtime_ns": 7, "width": 64, "height": 64}}, [])
    assert _scanned_file(layout, {"input_key": "talk", "uri": str(tmp_path / "talk.mp4")}) == {"size": 5, "mtime_ns": 7}
    assert _scanned_file(layout, {"input_key": "talk", "uri": "s3://bucket/talk.mp4"}) is None
    assert _scanned_file(layout, {"input_key": "gone", "uri": str(tmp_path / "gone.mp4")}) is None


def test_an_input_moved_since_it_was_curated_keeps_its_rows_at_the_new_path(tmp_path: Path, capsys) -> None:
    """A renamed or moved corpus folder used to be curated again, every input rejected as a duplicate
    of itself; an input is recognised by its size and modification time where its old file is gone."""
    import os

    from portraitflow.jobs.curate import _follow_moves, run_curation
    from portraitflow.operators import ledger
    from portraitflow.operators.inputs import input_key

    layout = Layout(tmp_path / "out")
    layout.make()
    cfg = load_config(None, ["mlflow.enabled=false"])
    layout.settings.write_text(json.dumps(corpus_settings(cfg)))
    old, kept = tmp_path / "raw" / "talk.mp4", tmp_path / "raw" / "other.mp4"
    old.parent.mkdir()
    old.write_bytes(b"a take")
    kept.write_bytes(b"a take")  # the same size, its own file
    os.utime(kept, ns=(1, 1))
    for path in (old, kept):
        row = {"uri": str(path), "input_key": input_key(str(path)), "status": "scanned", "width": 64, "height": 64}
        clips = [ledger.clip_row(f"{row['input_key']}_00000000_00002000", row, {"start": 0, "end": 50, "reason": "too_static"},
                                 25.0)]  # rejected: no sample in the shards to check
        ledger.write_marker(layout.done, ledger.input_row(row, clips), clips, ledger.source_stat(str(path)))
    new = tmp_path / "renamed" / "talk take 1.mp4"
    new.parent.mkdir()
    os.rename(old, new)
    copy = tmp_path / "renamed" / "copy.mp4"
    copy.write_bytes(b"a take")  # the same bytes, a newer time: another file, curated on its own
    uris = [str(new), str(kept), str(copy)]

    run_curation(cfg, uris, layout.out, dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    assert f"moved    {input_key(str(old))}  {new}  (curated as {old})" in lines
    assert any(line.split()[0] == "fails" and f"  {copy}  (" in line for line in lines)  # to curate: not a video here
    assert not list(layout.done.glob(f"{input_key(str(new))}*"))  # a dry run writes nothing
    assert ledger.load_markers(layout.done)[input_key(str(old))]["input"]["path"] == str(old)

    rows = [{"uri": u, "input_key": input_key(u)} for u in uris]
    rows, was = _follow_moves(rows, ledger.load_markers(layout.done), layout.done)
    assert was == {str(new): str(old)}
    assert {r["uri"]: r["input_key"] for r in rows}[str(new)] == input_key(str(old))
    marker = ledger.load_markers(layout.done)[input_key(str(old))]
    assert marker["input"]["path"] == str(new) and [c["path"] for c in marker["clips"]] == [str(new)]
    # the next run keys the new path afresh: still the key it was curated as, done, not moved again
    fresh = [{"uri": u, "input_key": input_key(u)} for u in uris]
    rows, was = _follow_moves(fresh, ledger.load_markers(layout.done), layout.done)
    assert was == {} and {r["uri"]: r["input_key"] for r in rows}[str(new)] == input_key(str(old))
    run_curation(cfg, uris, layout.out, dry_run=True)
    assert f"done     {input_key(str(old))}  {new}" in capsys.readouterr().out.splitlines()


def test_two_moved_files_of_one_size_and_time_each_take_a_marker(tmp_path: Path) -> None:
    """A folder of copies made with `cp -p` and then moved: each marker goes to one file."""
    import os

    from portraitflow.operators import ledger
    from portraitflow.operators.inputs import input_key

    done = tmp_path / "done"
    olds = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    for old in olds:
        old.write_bytes(b"same")
        os.utime(old, ns=(5, 5))
        row = {"uri": str(old), "input_key": input_key(str(old)), "status": "scanned"}
        ledger.write_marker(done, ledger.input_row(row, []), [], ledger.source_stat(str(old)))
    news = [tmp_path / "moved" / "a.mp4", tmp_path / "moved" / "b.mp4"]
    news[0].parent.mkdir()
    for old, new in zip(olds, news):
        os.rename(old, new)
    rows = [{"uri": str(n), "input_key": input_key(str(n))} for n in news]
    moved = ledger.moved_inputs(rows, ledger.load_markers(done))
    assert sorted(moved) == sorted(map(str, news)) and len(set(moved.values())) == 2


def test_a_damaged_scan_file_counts_as_no_scan(tmp_path: Path, media_dir: Path) -> None:
    """A scan cut short (an interrupted copy, a full disk) stopped every later run of the folder in
    a traceback, the healthy inputs without rows too, until someone found and deleted it."""
    from portraitflow.jobs.curate import _scanned_file
    from portraitflow.operators.face_scan import FaceScanStage
    from portraitflow.operators.scan_store import load_scan_meta, scan_path

    layout = Layout(tmp_path)
    layout.make()
    scan_file = scan_path(layout.scans, "talk")
    scan_file.write_bytes(b"PK\x03\x04 cut short")
    assert _scanned_file(layout, {"input_key": "talk", "uri": str(tmp_path / "talk.mp4")}) is None
    video = media_dir / "dreamtalk_M030_front_neutral_level1_001.mp4"
    stage = FaceScanStage(load_config(None, []).model_dump(mode="json"), str(layout.scans))
    row = stage.scan({"uri": str(video), "input_key": "talk"}, str(video))
    assert row["status"] == "scanned" and "fingerprint" in load_scan_meta(scan_file)  # scanned again


def test_a_bug_reading_a_scan_is_raised_not_taken_for_a_damaged_file(tmp_path: Path, monkeypatch) -> None:
    """Every read of a scan caught any exception as damage: a bug in reading it rescanned every
    input on every resume without a word. Damage (missing, cut short, not the JSON written) is
    `UnreadableFile`, naming the file; a TypeError is a bug, and is raised."""
    import numpy as np

    from portraitflow.operators import scan_store
    from portraitflow.operators.atomic import UnreadableFile
    from portraitflow.operators.driving_motion import DrivingMotion

    scan_file = tmp_path / "talk.npz"
    for damage in (None, b"PK\x03\x04 cut short", b"not a zip"):
        scan_file.unlink(missing_ok=True)
        if damage:
            scan_file.write_bytes(damage)
        with pytest.raises(UnreadableFile, match=str(scan_file)):
            scan_store.scan_clips(scan_file, "talk", 25.0)
    np.savez(scan_file, meta=np.array(json.dumps({"clips": [{"start": 0, "end": 5}]})))  # no face_backend
    with pytest.raises(UnreadableFile, match="KeyError"):
        scan_store.scan_clips(scan_file, "talk", 25.0)
    with pytest.raises(UnreadableFile, match="driving motion"):
        DrivingMotion.from_bytes(b"PK\x03\x04")
    from types import SimpleNamespace

    monkeypatch.setattr(scan_store, "json", SimpleNamespace(loads=lambda text: None + 1))  # not the json module
    with pytest.raises(TypeError):
        scan_store.load_scan_meta(scan_file)


def test_a_damaged_staged_sample_is_deleted_so_it_is_rendered_again(tmp_path: Path) -> None:
    """Packing stopped on a staged sample cut short on every run, until someone deleted it."""
    from portraitflow.operators.shards import stage_sample, staged_path, staged_whole

    whole, cut, foreign = "a_00000000_00002000", "b_00000000_00002000", "c_00000000_00002000"
    for key in (whole, cut, foreign):
        stage_sample(tmp_path, key, {"mp4": bytes(200_000), "json": b"{}"})
    data = staged_path(tmp_path, cut).read_bytes()
    staged_path(tmp_path, cut).write_bytes(data[: len(data) // 2])
    staged_path(tmp_path, foreign).write_bytes(staged_path(tmp_path, whole).read_bytes())  # another sample's members
    assert [staged_whole(tmp_path, key) for key in (whole, cut, foreign, "never_00000000_00002000")] == [True] + [False] * 3
    assert staged_path(tmp_path, whole).exists() and not staged_path(tmp_path, cut).exists()
    assert not staged_path(tmp_path, foreign).exists()


def test_a_resumed_run_counts_throughput_over_the_video_it_scanned() -> None:
    """A resume that reused every scan reported 0.83 video-s/s, as much as a whole curation."""
    import pyarrow as pa

    from portraitflow.jobs.curate import _metrics

    manifest = pa.table({"input_key": ["a", "b"], "status": ["accepted", "accepted"],
                         "seconds_in": [10.0, 30.0], "seconds_accepted": [10.0, 30.0]})
    clips = pa.table({"input_key": ["a", "b"], "decision": ["accepted", "accepted"], "reason": [None, None]})
    scanned = [{"status": "scanned", "duration_s": 10.0, "timings": json.dumps({"probe": 0.1, "decode": 1.0,
                                                                               "detect": 4.0, "worker_cpu": 5.0})},
               {"status": "scanned", "duration_s": 30.0,  # reused, its clips rendered now
                "timings": json.dumps({"probe": 0.1, "render_decode": 2.0, "encode": 1.0, "worker_cpu": 3.0})}]
    metrics = _metrics(manifest, clips, scanned, 5.0, {"a", "b"}, {"shardlist": []}, 25.0)
    assert metrics["video_seconds_per_s"] == 2.0 and metrics["frames_per_s"] == 50.0 and metrics["inputs"] == 2
