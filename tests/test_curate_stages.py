"""Curation stages on synthetic data: inputs, tracking, motion, identity, filters, shards."""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import Face
from portraitflow.operators import filters
from portraitflow.models.face.base import l2_normalise
from portraitflow.operators.corpus_ledger import CorpusLedger
from portraitflow.operators.identity import identity_link, switch_index
from portraitflow.operators.inputs import (LIST_CYCLE, NO_VIDEO_FILES, NOT_UTF8, _expand_uri, clip_key, expand_inputs,
                                           input_key, local_copy, matching_files)
from portraitflow.operators.motion import motion_intensity, motion_table, window_buckets
from portraitflow.operators.shards import pack_shards, read_staged, shard_keys, shard_paths, stage_sample, write_index
from portraitflow.operators.face_tracking import track_faces


def test_inputs_expand_folders_globs_lists_and_uris(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/one.mp4", "a/deep/two.MOV", "a/notes.txt.bak", "three.mkv", "four.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text(f"# a comment\n{tmp_path / 'three.mkv'}\n\n")
    pq.write_table(pa.table({"path": [str(tmp_path / "four.mp4")]}), tmp_path / "list.parquet")
    found = expand_inputs([str(tmp_path / "a"), str(tmp_path / "list.txt"), str(tmp_path / "list.parquet"),
                           str(tmp_path / "*.mkv"), f"file://{tmp_path / 'four.mp4'}", str(tmp_path / "missing.mp4")])
    names = [Path(p).name for p in found]
    assert names == sorted(names, key=lambda n: found[names.index(n)])  # sorted by path
    assert set(names) == {"one.mp4", "two.MOV", "three.mkv", "four.mp4", "missing.mp4"}
    assert len(found) == len(set(found))


def test_remote_patterns_list_the_folder_before_the_wildcard_and_keep_matching_videos(tmp_path: Path) -> None:
    """A SubTreeFileSystem stands in for a bucket; `file://` URIs go through the same expansion."""
    from pyarrow import fs

    for name in ("bucket/more/a.mp4", "bucket/more/b.MOV", "bucket/more/notes.txt", "bucket/more/deep/c.mp4",
                 "bucket/more/deep/x/d.mkv", "bucket/other/e.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    store = fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem())
    assert matching_files(store, "bucket/more", "*.mp4") == ["a.mp4"]
    assert matching_files(store, "bucket/more", "*") == ["a.mp4", "b.MOV", "notes.txt"]  # one level
    assert matching_files(store, "bucket/more", "*/*.mp4") == ["deep/c.mp4"]
    assert matching_files(store, "bucket/more", "**/*.m[pk][4v]") == ["a.mp4", "deep/c.mp4", "deep/x/d.mkv"]
    assert matching_files(store, "bucket", "**") == ["more/a.mp4", "more/b.MOV", "more/deep/c.mp4",
                                                     "more/deep/x/d.mkv", "more/notes.txt", "other/e.mp4"]
    assert matching_files(store, "bucket/gone", "*.mp4") == []
    base = f"file://{tmp_path}/bucket"
    assert _expand_uri(f"{base}/more/*") == [f"{base}/more/a.mp4", f"{base}/more/b.MOV"]  # not notes.txt
    assert _expand_uri(f"{base}/more/*.mp4") == [f"{base}/more/a.mp4"]
    assert _expand_uri(f"{base}/*/deep/*.mp4") == [f"{base}/more/deep/c.mp4"]
    assert _expand_uri(f"{base}/other/") == [f"{base}/other/e.mp4"]
    assert _expand_uri(f"{base}/more/a.mp4") == [f"{base}/more/a.mp4"]


def test_arguments_naming_no_video_are_kept_and_fail_with_their_reason(tmp_path: Path) -> None:
    """An empty glob or folder and an unknown scheme each stay an input; fetching it gives the reason."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no video here")
    (tmp_path / "clip.mp4").write_bytes(b"x")
    unmatched, unknown = str(tmp_path / "none-*.mp4"), "foo://bucket/x.mp4"
    found = expand_inputs([str(tmp_path / "empty"), unmatched, f"file://{tmp_path}/*.mp4", unknown])
    assert found == sorted([str((tmp_path / "empty").resolve()), unmatched, str((tmp_path / "clip.mp4").resolve()), unknown])
    for kept in (str(tmp_path / "empty"), unmatched):
        with pytest.raises(FileNotFoundError, match=NO_VIDEO_FILES), local_copy(kept):
            pass
    with pytest.raises(Exception, match="foo"), local_copy(unknown):
        pass
    with local_copy(str(tmp_path / "clip.mp4")) as path:
        assert path == str(tmp_path / "clip.mp4")


def test_relative_list_entries_are_taken_from_the_list_folder_not_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lists = tmp_path / "lists"
    (lists / "clips" / "deep").mkdir(parents=True)
    (lists / "more").mkdir()
    for name in ("clips/a.mp4", "clips/deep/b.mkv", "more/c.mp4", "more/d.mp4"):
        (lists / name).write_bytes(b"x")
    (lists / "more" / "nested.lst").write_text("c.mp4\n")  # relative to more/, not to lists/
    pq.write_table(pa.table({"path": ["d.mp4"]}), lists / "more" / "list.parquet")
    (lists / "inputs.txt").write_text("clips/a.mp4\nclips/**/*.mkv\nmore/nested.lst\nmore/list.parquet\n"
                                      "file://gone.mp4\nnone-*.mp4\ns3://bucket/e.mp4\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr("portraitflow.operators.inputs._expand_uri", lambda uri: [uri])  # no store is reached
    found = expand_inputs(["../lists/inputs.txt"])
    resolved = lists.resolve()
    assert found == sorted([str(resolved / "clips/a.mp4"), str(resolved / "clips/deep/b.mkv"),
                            str(resolved / "more/c.mp4"), str(resolved / "more/d.mp4"),
                            str(resolved / "gone.mp4"), str(resolved / "none-*.mp4"), "s3://bucket/e.mp4"])
    with pytest.raises(FileNotFoundError, match=NO_VIDEO_FILES), local_copy(str(resolved / "none-*.mp4")):
        pass


def test_a_list_that_includes_itself_is_a_failed_input_not_a_recursion(tmp_path: Path) -> None:
    """Its videos are still found; the list met again is kept, and fetching it gives the reason.
    Two lists that include the same list (no cycle) are expanded as usual."""
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "self.txt").write_text("a.mp4\n./self.txt\n")
    (tmp_path / "one.txt").write_text("b.mp4\ntwo.lst\n")
    (tmp_path / "two.lst").write_text(f"{tmp_path / 'one.txt'}\nshared.txt\n")
    (tmp_path / "shared.txt").write_text("c.mp4\n")
    (tmp_path / "inner.txt").write_text("shared.txt\n")
    (tmp_path / "diamond.txt").write_text("shared.txt\nshared.txt\ninner.txt\n")
    resolved = tmp_path.resolve()
    assert expand_inputs([str(tmp_path / "self.txt")]) == [str(resolved / "a.mp4"), str(resolved / "self.txt")]
    assert expand_inputs([str(tmp_path / "one.txt")]) == [str(resolved / n) for n in ("b.mp4", "c.mp4", "one.txt")]
    assert expand_inputs([str(tmp_path / "diamond.txt"), str(tmp_path / "inner.txt")]) == [str(resolved / "c.mp4")]
    for kept in ("self.txt", "one.txt"):
        with pytest.raises(ValueError, match=r"includes itself"), local_copy(str(resolved / kept)):
            pass
    assert "includes itself" in LIST_CYCLE


def test_an_unreadable_or_empty_list_is_a_failed_input_not_a_crash(tmp_path: Path) -> None:
    """A list that cannot be read, or names nothing, gets its own row, failed with the reason."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "latin1.txt").write_bytes("caf\xe9.mp4\n".encode("latin-1"))
    pq.write_table(pa.table({"n": [1, 2]}), tmp_path / "numbers.parquet")
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    (tmp_path / "a.mp4").write_bytes(b"x")
    names = ("latin1.txt", "numbers.parquet", "empty.txt")
    found = expand_inputs([str(tmp_path / n) for n in names] + [str(tmp_path / "a.mp4")])
    assert found == sorted(str(tmp_path.resolve() / n) for n in (*names, "a.mp4"))
    for name, reason in zip(names, ("codec can't decode", "string column", "matched no video files")):
        with pytest.raises((ValueError, OSError), match=reason), local_copy(str(tmp_path.resolve() / name)):
            pass


def test_a_remote_input_is_fetched_as_listed_and_a_folder_or_unmatched_pattern_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listed name with `[...]` is a file, not a pattern; a folder or a pattern that matched
    nothing fails with the reason. `store://` stands in for a bucket held in a local folder."""
    from pyarrow import fs

    bucket = tmp_path / "bucket"
    (bucket / "talks").mkdir(parents=True)
    (bucket / "talks" / "clip[1].mp4").write_bytes(b"video bytes")

    class Store:
        @staticmethod
        def from_uri(uri: str):
            return fs.SubTreeFileSystem(str(bucket), fs.LocalFileSystem()), uri.removeprefix("store://")

    monkeypatch.setattr(fs, "FileSystem", Store)
    listed = expand_inputs(["store://talks"])
    assert listed == ["store://talks/clip[1].mp4"]
    with local_copy(listed[0]) as path:
        assert Path(path).read_bytes() == b"video bytes"
        # the object's time, which tells a saved scan whether it was made of this object
        assert os.stat(path).st_mtime_ns == (bucket / "talks" / "clip[1].mp4").stat().st_mtime_ns
    for kept in ("store://talks", "store://talks/*.mkv"):
        with pytest.raises(FileNotFoundError, match=NO_VIDEO_FILES), local_copy(kept):
            pass


def _undecodable(folder: Path, name: bytes, is_folder: bool = False) -> Path:
    """A file or folder named with bytes that are not UTF-8, as Linux allows (Python holds them as
    surrogates); the test is skipped where the filesystem refuses such names."""
    target = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
    try:
        if is_folder:
            target.mkdir()
        else:
            target.touch()
    except OSError as exc:
        pytest.skip(f"this filesystem refuses names that are not UTF-8: {exc}")
    return target


def test_a_file_name_that_is_not_utf8_is_kept_escaped_and_fails_with_the_reason(tmp_path: Path) -> None:
    """No surrogate leaves the expansion (Arrow refuses them, so the manifest could not be written):
    the name comes back with backslash escapes, and fetching it fails with NOT_UTF8."""
    folder = tmp_path.resolve()
    _undecodable(folder, b"caf\xe9.mp4")
    _undecodable(_undecodable(folder, b"d\xff", is_folder=True), b"a.mp4")
    (folder / "ok.mp4").write_bytes(b"x")
    escaped = [f"{folder}/caf\\xe9.mp4", f"{folder}/d\\xff/a.mp4"]
    assert expand_inputs([str(folder)]) == sorted([*escaped, f"{folder}/ok.mp4"])
    assert expand_inputs([f"{folder}/caf\udce9.mp4", f"{folder}/*/*.mp4"]) == escaped  # as argv holds the name
    for path in escaped:
        with pytest.raises(UnicodeError, match=re.escape(f"{NOT_UTF8}: {path}")), local_copy(path):
            pass
    with local_copy(f"{folder}/ok.mp4") as path:
        assert path == f"{folder}/ok.mp4"


def _noise_video(path: Path, frames: int) -> Path:
    from portraitflow.operators.video_writer import write_h264

    write_h264(path, [np.random.default_rng(frames).integers(0, 255, (frames, 64, 64, 3), np.uint8)], 25)
    return path


def test_a_saved_scan_is_reused_only_for_the_file_it_was_made_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another file put at the input's path, or the same one modified, is scanned again."""
    from portraitflow.jobs.config import load_config
    from portraitflow.operators import face_scan, scan_store

    scans = []
    real_scan = face_scan.scan_video
    monkeypatch.setattr(face_scan, "scan_video", lambda *args: scans.append(args[1]) or real_scan(*args))
    stage = face_scan.FaceScanStage(load_config(None, []).model_dump(mode="json"), str(tmp_path))
    video = _noise_video(tmp_path / "talk.mp4", 30)
    row = {"uri": str(video), "input_key": "talk-0123456789"}
    scan_file = scan_store.scan_path(tmp_path, row["input_key"])

    def scan() -> dict:
        assert stage.scan(dict(row), str(video))["status"] == face_scan.SCANNED
        return scan_store.load_scan_meta(scan_file)["source"]

    source = scan()
    assert source == {"size": video.stat().st_size, "mtime_ns": video.stat().st_mtime_ns, "width": 64, "height": 64,
                      "fps": 25.0, "frames": 30}
    assert scan() == source and len(scans) == 1  # the same file: reused
    _noise_video(video, 40)  # replaced by another video
    assert scan()["frames"] == 40 and len(scans) == 2
    later = video.stat().st_mtime_ns + 10**9
    os.utime(video, ns=(later, later))  # written again in place: the same size and frames, another time
    assert scan()["mtime_ns"] == later and len(scans) == 3


def test_a_new_scan_discards_the_staged_samples_of_the_old_one(tmp_path: Path) -> None:
    """They were rendered from the file the old scan was made of; a rerun must render its clips again."""
    from portraitflow.jobs.config import load_config
    from portraitflow.operators.curate_input import CurateInputStage

    dirs = [tmp_path / name for name in ("scans", "staging", "attempts")]
    for folder in dirs:
        folder.mkdir()
    stage = CurateInputStage(load_config(None, []).model_dump(mode="json"), *map(str, dirs), max_attempts=9)
    video = _noise_video(tmp_path / "talk.mp4", 30)
    row = {"uri": str(video), "input_key": "talk-0123456789"}
    stage.curate(dict(row))
    staged = [f"{row['input_key']}_00000000_00001000", "talk-0123456789_x-0123456789_00000000_00001000"]
    for key in staged:  # this input's sample, and one of an input whose key starts alike
        stage_sample(dirs[1], key, _sample(1))
    stage.curate(dict(row))
    assert sorted(p.stem for p in dirs[1].glob("*.tar")) == sorted(staged)  # the scan was reused
    _noise_video(video, 40)
    stage.curate(dict(row))
    assert [p.stem for p in dirs[1].glob("*.tar")] == staged[1:]


def test_keys_are_dot_free_unique_and_stable() -> None:
    a, b = input_key("/data/x/clip.v2.mp4"), input_key("/data/y/clip.v2.mp4")
    assert a != b and a == input_key("/data/x/clip.v2.mp4")
    key = clip_key(a, 1.5, 11.5)
    assert "." not in key and "/" not in key
    assert key == f"{a}_00001500_00011500"
    assert input_key("s3://bucket/../../etc/passwd").replace("-", "").replace("_", "").isalnum()


def _face(x: float, size: float = 100.0) -> Face:
    box = np.array([x, 50, x + size, 50 + size], np.float32)
    kps = np.tile(box[:2], (5, 1)) + 10
    return Face(box=box, score=0.9, kps=kps.astype(np.float32))


def test_tracks_interpolate_between_detections_and_split_faces() -> None:
    step = 2
    detections = [(p, [_face(10 + p), _face(400)]) for p in range(0, 20, step)]
    tracks = track_faces(detections, end=20, step=step)
    assert len(tracks) == 2
    moving = min(tracks, key=lambda t: t.boxes[0, 0])
    assert list(moving.positions) == list(range(20))
    assert moving.boxes[1, 0] == pytest.approx(11.0)  # interpolated halfway between frames 0 and 2
    assert moving.detected.sum() == 10


def test_a_track_ends_after_a_long_gap() -> None:
    detections = [(0, [_face(10)]), (2, [_face(12)]), (20, [_face(14)])]
    tracks = track_faces(detections, end=22, step=2, max_gap=3)
    assert [int(t.positions[0]) for t in tracks] == [0, 20]


def test_motion_is_zero_when_still_and_scale_free() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, (68, 2))
    still = np.repeat(base[None], 10, axis=0)
    assert np.allclose(motion_intensity(still), 0)
    moving = still + rng.normal(0, 1, still.shape)
    assert np.allclose(motion_intensity(moving), motion_intensity(moving * 3), rtol=1e-5)
    kps = np.repeat(rng.uniform(0, 100, (1, 5, 2)), 60, axis=0)
    table = motion_table(moving[np.arange(60) % 10], kps)
    assert table.shape == (60, 3) and np.all(table[:, 1:] == 0)


def test_the_frames_after_the_last_whole_window_take_the_buckets_of_the_last_window() -> None:
    """Buckets measure motion over a window, so 10 frames read as half the motion of 25 at the same
    speed; the clip's tail is measured over its last 25 frames instead."""
    from portraitflow.models.hunyuan.buckets import head_exp_motion_buckets

    rng = np.random.default_rng(3)
    kps = np.cumsum(rng.normal(0, 2.0, (60, 5, 2)), axis=0) + 200  # a face moving at a steady rate
    table = motion_table(np.zeros((60, 68, 2)), kps)
    assert np.array_equal(table[:50, 1:], np.repeat(window_buckets(kps), 25, axis=0)[:50])
    assert np.array_equal(table[50:, 1:], np.tile(head_exp_motion_buckets(kps[35:]), (10, 1)))
    assert not np.array_equal(table[50:, 1:], np.tile(window_buckets(kps)[2], (10, 1)))  # what it was


def test_landmark_jitter_on_a_still_face_is_too_static_and_a_talking_face_is_not() -> None:
    """The landmark fit jitters by about 0.2% of the face size a frame on a still face: raw, that
    read 0.003, above the real clips' slowest (docs/curation.md); smoothed in time it does not."""
    cfg = CurateConfig()
    rng = np.random.default_rng(2)
    base = np.stack(np.meshgrid(np.linspace(0, 140, 17), np.linspace(0, 140, 4)), -1).reshape(-1, 2)[:68]
    diagonal = float(np.hypot(*np.ptp(base, axis=0)))
    still = np.repeat(base[None], 125, axis=0) + rng.normal(0, 0.002 * diagonal, (125, 68, 2))
    seconds = np.arange(125)[:, None] / 25
    talking = still.copy()
    talking[:, :, 0] += 0.01 * diagonal * np.sin(np.pi * seconds)  # a slow head sway
    talking[:, 48:, 1] += 0.03 * diagonal * np.sin(4 * np.pi * seconds)  # the mouth opening and closing
    for face, reason in ((still, filters.TOO_STATIC), (talking, None)):
        assert filters.motion(float(motion_intensity(face)[1:].mean()),
                              float(motion_intensity(face, smooth_frames=0)[1:].mean()), cfg) == reason


def test_a_shaking_camera_is_too_shaky_though_smoothing_hides_it_from_motion() -> None:
    """Smoothing took out the shake `too_shaky` is for: whole-face offsets of 10% of the face per
    frame read 0.016 smoothed, like an expressive real clip; raw they read about 0.17."""
    rng = np.random.default_rng(3)
    base = np.stack(np.meshgrid(np.linspace(0, 140, 17), np.linspace(0, 140, 4)), -1).reshape(-1, 2)[:68]
    diagonal = float(np.hypot(*np.ptp(base, axis=0)))
    shaking = base[None] + rng.normal(0, 0.1 * diagonal / np.sqrt(2), (125, 1, 2))
    smoothed, raw = (float(motion_intensity(shaking, smooth_frames=s)[1:].mean()) for s in (2.0, 0))
    assert smoothed < 0.03 < 0.08 < raw
    assert filters.motion(smoothed, raw, CurateConfig()) == filters.TOO_SHAKY


def test_the_short_rest_of_a_clip_split_at_an_identity_switch_is_too_short_not_no_face() -> None:
    """Samples at 0, 15, ..., 90, 105 and a new face at 105 only split [0, 106) into [0, 91) and
    [105, 106): one undetected frame, which `no_face` (detected ratio 0) named before `too_short`."""
    from portraitflow.operators import face_scan
    from portraitflow.operators.decode import VideoInfo

    frames, cfg = 106, CurateConfig(min_motion=0.0, identity_switch_margin_seconds=0)
    grid = np.stack(np.meshgrid(np.linspace(100, 200, 17), np.linspace(100, 200, 4)), -1).reshape(68, 2)
    samples = np.linspace(0, frames - 1, cfg.identity_samples).round().astype(int)
    arrays = {
        "boxes": np.tile(np.array([90, 90, 210, 210], np.float32), (frames, 1)),
        "kps": np.tile(grid[:5], (frames, 1, 1)).astype(np.float32),
        "landmarks": np.tile(grid, (frames, 1, 1)).astype(np.float32),
        "pose": np.zeros((frames, 3), np.float32),
        "thumbnails": np.zeros((frames, 16, 16), np.float32),
        "sample_index": samples,
        "sample_embedding": np.eye(8, dtype=np.float32)[(samples == frames - 1).astype(int)],
        "measure_sharpness": np.full(frames, 200.0),
        "measure_face_side": np.full(frames, 200.0, np.float32),
        "measure_detected": np.arange(frames) % 2 == 0,
        "measure_keypoint_yaw": np.zeros(frames, np.float32),
        "measure_other_sides": np.zeros((frames, 0), np.float32),
    }
    galleries = face_scan.Galleries(np.zeros((0, 8)), np.zeros((0, 8)), 0.5)
    parts = face_scan._decide(arrays, 0, frames, 0, VideoInfo(300, 300, 25.0, frames), galleries, cfg)
    assert [(c.start, c.end, c.reason) for c in parts] == [(0, 91, None), (91, 105, filters.IDENTITY_SWITCH),
                                                           (105, 106, filters.TOO_SHORT)]


def test_identity_switch_is_located() -> None:
    rng = np.random.default_rng(1)
    a, b = l2_normalise(rng.normal(size=(2, 128)))
    jitter = lambda v, n: l2_normalise(v + rng.normal(0, 0.05, (n, 128)))  # noqa: E731
    assert switch_index(jitter(a, 6), 0.5) is None
    assert switch_index(np.concatenate([jitter(a, 3), jitter(b, 5)]), 0.5) == 3
    # away and back: cut at the first sample not the first person's, each side judged again on its own
    assert switch_index(np.concatenate([jitter(a, 2), jitter(b, 2), jitter(a, 2)]), 0.5) == 2
    assert switch_index(np.concatenate([jitter(b, 2), jitter(a, 2)]), 0.5) == 2
    c = l2_normalise(rng.normal(size=128))
    assert switch_index(np.concatenate([jitter(a, 2), jitter(c, 1), jitter(a, 1), jitter(b, 2)]), 0.5) == 2
    # the last frame looks away: below the threshold against some samples, still matching its neighbour
    frames = jitter(a, 8)
    frames[7] = l2_normalise(frames[6] + 0.9 * b)
    similarities = frames[7] @ frames[:7].T
    assert similarities.min() < 0.5 < similarities.max()
    assert switch_index(frames, 0.5) is None  # one person (requiring every pair to agree rejected the clip)
    assert identity_link(frames) == pytest.approx(similarities.max(), abs=1e-6)  # its best pair joins it
    assert identity_link(np.concatenate([jitter(a, 3), jitter(b, 3)])) < 0.5 <= identity_link(jitter(a, 5))


def test_corpus_ledger_caps_identities_and_drops_duplicates() -> None:
    rng = np.random.default_rng(2)
    person = l2_normalise(rng.normal(size=128))
    ledger = CorpusLedger(same_person=0.5, max_per_identity=2, duplicate_similarity=0.97)
    signatures = l2_normalise(rng.normal(size=(4, 64)))
    assert ledger.decide(person, signatures[0]).reason is None
    ledger.keep("clip1", person, signatures[0])
    assert ledger.decide(person, signatures[0])[:2] == (filters.DUPLICATE, "clip1")
    assert ledger.decide(l2_normalise(rng.normal(size=128)), signatures[0]).reason is None  # another person, same motion
    ledger.keep("clip2", person, signatures[1])
    assert ledger.decide(person, signatures[2])[:2] == (filters.IDENTITY_OVER_CAP, "clip1")  # the identity's first


@pytest.mark.parametrize(("length", "min_frames", "max_frames", "expected"), [
    (78, 20, 26, [(0, 26), (26, 52), (52, 78)]),  # equal pieces when each is long enough
    (176, 50, 75, [(0, 59), (59, 117), (117, 176)]),
    (80, 50, 75, [(0, 75), (75, 80)]),  # 3.2 s, max 3 s, min 2 s: equal halves (1.6 s) would both be too short
    (60, 50, 75, [(0, 60)]),
])
def test_long_stretches_are_cut_so_that_a_piece_is_long_enough(length: int, min_frames: int, max_frames: int,
                                                              expected: list) -> None:
    from portraitflow.operators.face_scan import _split

    assert _split(0, length, min_frames, max_frames) == expected
    assert _split(10, 10 + length, min_frames, max_frames) == [(a + 10, b + 10) for a, b in expected]


@pytest.mark.parametrize(("nose_x", "reason"), [(200.0, None), (230.0, None), (105.0, "extreme_pose"), (290.0, "extreme_pose")])
def test_a_profile_track_is_rejected_by_its_keypoint_yaw(nose_x: float, reason: str | None) -> None:
    """The landmark fit reads profiles as nearly frontal; the track's keypoints do not."""
    from portraitflow.operators.decode import VideoInfo
    from portraitflow.operators.face_scan import _cheap_checks
    from portraitflow.operators.face_tracking import Track

    frames = 100
    kps = np.tile(np.array([[170, 170], [230, 170], [nose_x, 210], [175, 250], [225, 250]], np.float32), (frames, 1, 1))
    track = Track(np.arange(frames), np.tile(np.array([100, 100, 300, 300], np.float32), (frames, 1)), kps,
                  np.ones(frames, bool))
    candidate = _cheap_checks(track, [track], 0, frames, VideoInfo(512, 512, 25.0, frames), np.ones(2, np.float32), 1,
                              CurateConfig())
    assert candidate.reason == reason
    assert candidate.measures["keypoint_yaw"] == pytest.approx(np.degrees(np.arcsin(abs(nose_x - 200) / 100)), abs=1e-3)


def test_a_kept_clip_without_a_signature_counts_for_the_cap_and_matches_no_duplicate() -> None:
    rng = np.random.default_rng(3)
    person, signature = l2_normalise(rng.normal(size=128)), l2_normalise(rng.normal(size=64))
    ledger = CorpusLedger(same_person=0.5, max_per_identity=2, duplicate_similarity=0.9)
    ledger.keep("clip3", person, None)
    assert ledger.decide(person, signature).reason is None
    ledger.keep("clip4", person, signature)
    assert ledger.decide(person, signature).reason == filters.DUPLICATE
    assert ledger.decide(person, l2_normalise(rng.normal(size=64))).reason == filters.IDENTITY_OVER_CAP


def _signature(frames: np.ndarray) -> np.ndarray:
    from portraitflow.operators.overlap import content_signature, frame_thumbnails

    return content_signature(frame_thumbnails(frames))


def _decoded(path: Path, size: int | None = None) -> np.ndarray:
    from portraitflow.operators.decode import iter_frame_chunks

    return np.concatenate([c.frames for c in iter_frame_chunks(str(path), 25.0, size=size and (size, size))])


def test_the_footage_signature_matches_a_smaller_re_encode_and_not_another_take(media_dir: Path, tmp_path: Path) -> None:
    """The same clip at 384² and crf 30 is a duplicate, started two frames later too; another take
    of the same speaker on the same set is not (the keypoint signature scored the re-encode 0.53)."""
    from portraitflow.operators.video_writer import write_h264

    default = CurateConfig().duplicate_similarity
    original = _decoded(media_dir / "liveportrait_d0.mp4")
    write_h264(tmp_path / "small.mp4", [_decoded(media_dir / "liveportrait_d0.mp4", 384)], 25, crf=30)
    small = _decoded(tmp_path / "small.mp4")
    assert float(_signature(original) @ _signature(small)) > 0.97
    assert float(_signature(original[2:]) @ _signature(small[:-2])) > default
    neutral, happy = (_decoded(media_dir / f"dreamtalk_M030_front_{take}_001.mp4") for take in ("neutral_level1", "happy_level3"))
    assert abs(float(_signature(neutral) @ _signature(happy))) < 0.5


def test_filters_return_their_reason_codes() -> None:
    cfg = CurateConfig()
    assert filters.face_size(cfg.min_face_px - 1, cfg) == "face_too_small"
    assert filters.face_size(cfg.min_face_px, cfg) is None
    assert filters.duration(1.0, cfg) == "too_short"
    assert filters.frame_rate(10.0, cfg) is None  # any frame rate by default
    assert filters.frame_rate(10.0, CurateConfig(min_source_fps=20)) == "low_frame_rate"
    assert filters.frame_rate(25.0, CurateConfig(min_source_fps=20)) is None
    assert filters.pose(60.0, 0.0, cfg) == "extreme_pose"
    assert filters.motion(0.0, 0.0, cfg) == "too_static" and filters.motion(0.01, 1.0, cfg) == "too_shaky"
    assert filters.first_reason(None, "a", "b") == "a" and filters.first_reason(None) is None
    sharp = np.zeros((64, 64, 3), np.uint8)
    sharp[::2] = 255
    box = np.array([0, 0, 64, 64])
    assert filters.laplacian_sharpness(sharp, box) > filters.laplacian_sharpness(np.full_like(sharp, 128), box)


def _sample(i: int) -> dict[str, bytes]:
    buffer = io.BytesIO()
    np.save(buffer, np.full((3, 2), i, np.float32), allow_pickle=False)
    return {"json": json.dumps({"i": i}).encode(), "kps.npy": buffer.getvalue(), "mp4": bytes(100 * i)}


def _shard_contents(shard_dir: Path) -> list[tuple[str, list[str], list[bytes]]]:
    out = []
    for path in shard_paths(shard_dir):
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            out.append((path.name, [m.name for m in members], [tar.extractfile(m).read() for m in members]))
    return out


def test_packing_is_ordered_resumable_and_never_duplicates(tmp_path: Path) -> None:
    keys = [f"video-{i:02d}_00000000_00002000" for i in (3, 1, 4, 0, 2)]

    def stage_all(root: Path) -> None:
        for i, key in enumerate(keys):
            stage_sample(root / "staging", key, _sample(i))

    stage_all(tmp_path / "whole")
    pack_shards(tmp_path / "whole" / "staging", tmp_path / "whole" / "shards", max_samples=2, max_bytes=1 << 20)

    stage_all(tmp_path / "killed")

    def crash_after_first(shard_keys_: list[str]) -> None:
        raise KeyboardInterrupt  # killed right after the first shard became durable

    with pytest.raises(KeyboardInterrupt):
        pack_shards(tmp_path / "killed" / "staging", tmp_path / "killed" / "shards", 2, 1 << 20, crash_after_first)
    stage_all(tmp_path / "killed")  # the rerun renders everything again
    pack_shards(tmp_path / "killed" / "staging", tmp_path / "killed" / "shards", 2, 1 << 20)

    whole, resumed = _shard_contents(tmp_path / "whole" / "shards"), _shard_contents(tmp_path / "killed" / "shards")
    assert whole == resumed
    assert [n for n, _, _ in whole] == ["000000.tar", "000001.tar", "000002.tar"]
    all_keys = [k for p in shard_paths(tmp_path / "whole" / "shards") for k in shard_keys(p)]
    assert all_keys == sorted(keys)
    assert not list((tmp_path / "killed" / "staging").glob("*.tar"))
    index = write_index(tmp_path / "whole", tmp_path / "whole" / "shards")
    assert [s["nsamples"] for s in index["shardlist"]] == [2, 2, 1]
    assert index["shardlist"][0]["url"] == "shards/000000.tar"


def test_shards_split_on_bytes_and_reject_dotted_keys(tmp_path: Path) -> None:
    for i in range(4):
        stage_sample(tmp_path / "staging", f"k{i}", _sample(i + 20))
    key, fields = read_staged(tmp_path / "staging" / "k0.tar")
    assert key == "k0" and set(fields) == {"json", "kps.npy", "mp4"}
    two = sum((tmp_path / "staging" / f"k{i}.tar").stat().st_size for i in (0, 1))
    pack_shards(tmp_path / "staging", tmp_path / "shards", max_samples=100, max_bytes=two + 10)
    assert [len(shard_keys(p)) for p in shard_paths(tmp_path / "shards")] == [2, 2]
    with pytest.raises(ValueError):
        stage_sample(tmp_path / "staging", "bad.key", _sample(0))


def test_offline_samples_cover_accept_reject_and_fail(tmp_path: Path) -> None:
    from portraitflow.jobs.samples import make_samples
    from portraitflow.operators.decode import VideoUnreadable, probe_video

    paths = {p.name: p for p in make_samples(tmp_path)}
    assert set(paths) == {"astronaut_pan.mp4", "truncated.mp4", "carphone.mp4", "bikes.mp4"}
    info = probe_video(str(paths["astronaut_pan.mp4"]))
    assert (info.width, info.height, info.num_frames) == (512, 512, 150)
    assert min(probe_video(str(paths["carphone.mp4"])).width, 256) < 256  # the low_resolution sample
    with pytest.raises(VideoUnreadable):
        probe_video(str(paths["truncated.mp4"]))


def test_attempts_are_counted_per_input_on_disk(tmp_path: Path) -> None:
    """A restarted worker reads how often an input was started before: that is what quarantines it.
    An input that finished starts again from one (a retried task of several inputs starts it again)."""
    from portraitflow.operators.quarantine import finish_attempt, start_attempt

    assert [start_attempt(tmp_path, "a-1") for _ in range(3)] == [1, 2, 3]
    assert start_attempt(tmp_path, "b-2") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1", "b-2"]  # no temp files left behind
    finish_attempt(tmp_path, "b-2")
    assert start_attempt(tmp_path, "b-2") == 1 and start_attempt(tmp_path, "a-1") == 4


@pytest.mark.parametrize(("inputs", "per_task", "blocks"), [
    (1, 0, 1), (1000, 0, 1000),  # one input a task: the best balance at the end of a run
    (1001, 0, 1000), (16000, 0, 1000), (16001, 0, 1001), (1_000_000, 0, 62_500),  # at most 16 a task above
    (5, 2, 3), (5, 10, 1),  # as set
])
def test_large_runs_group_inputs_into_tasks(inputs: int, per_task: int, blocks: int) -> None:
    from portraitflow.pipelines.curate import input_blocks

    assert input_blocks(inputs, per_task) == blocks


def test_a_task_of_several_inputs_holds_one_of_the_largest_not_all_of_them(ray_local, tmp_path: Path) -> None:
    """Ray Data cuts a list into consecutive blocks: the largest-first list cut so put the largest
    inputs one after the other in one task. Dealt in turn, each task starts with one of the largest."""
    from portraitflow.jobs.config import load_config
    from portraitflow.pipelines.curate import _inputs_dataset

    sizes = [3, 11, 7, 2, 13, 5, 17, 1, 19, 23]
    rows = []
    for i, size in enumerate(sizes):
        (tmp_path / f"in{i}.mp4").write_bytes(b"x" * size)
        rows.append({"uri": str(tmp_path / f"in{i}.mp4"), "input_key": f"in{i}"})
    ds, blocks = _inputs_dataset(rows, load_config(None, ["curate.inputs_per_task=3"]))
    held = [[int(k[2:]) for k in b["input_key"]] for b in ds.iter_batches(batch_size=None, batch_format="pandas")]
    assert blocks == len(held) == 4 and sorted(i for block in held for i in block) == list(range(10))
    largest_first = sorted(range(10), key=lambda i: -sizes[i])
    assert sorted(block[0] for block in held) == sorted(largest_first[:4])  # each task starts with one of the 4 largest
    assert all(sizes[a] > sizes[b] for block in held for a, b in zip(block, block[1:]))


def test_folders_are_walked_through_links_and_broken_links_fail_with_their_reason(tmp_path: Path) -> None:
    from portraitflow.operators.inputs import BROKEN_LINK, NOT_A_FILE

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "linked.mp4").write_bytes(b"x")
    folder = tmp_path / "in"
    (folder / "named.mp4").mkdir(parents=True)  # a folder named like a video is walked, not an input
    (folder / "named.mp4" / "inside.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "other", folder / "linkdir")
    os.symlink(folder, folder / "linkdir" / "back")  # links that lead back up are walked once
    os.symlink(tmp_path / "gone.mp4", folder / "broken.mp4")
    os.symlink(folder / "loop_b.mp4", folder / "loop_a.mp4")
    os.symlink(folder / "loop_a.mp4", folder / "loop_b.mp4")
    found = expand_inputs([str(folder)])
    resolved = tmp_path.resolve()
    assert found == sorted([str(resolved / "in" / "named.mp4" / "inside.mp4"), str(resolved / "other" / "linked.mp4"),
                            str(folder / "broken.mp4"), str(folder / "loop_a.mp4"), str(folder / "loop_b.mp4")])
    for name in ("broken.mp4", "loop_a.mp4"):
        with pytest.raises(FileNotFoundError, match=BROKEN_LINK), local_copy(str(folder / name)):
            pass
    assert expand_inputs([str(folder / "*.mp4")]) == sorted([  # a pattern takes the same entries a folder does
        str(folder / "broken.mp4"), str(folder / "loop_a.mp4"), str(folder / "loop_b.mp4"),
        str(resolved / "in" / "named.mp4" / "inside.mp4")])  # and walks a folder it matches, as given by name
    os.symlink(tmp_path / "gone.mp4", folder / "broken[1].mp4")  # named like a pattern: still a broken link
    with pytest.raises(FileNotFoundError, match=BROKEN_LINK), local_copy(str(folder / "broken[1].mp4")):
        pass
    os.mkfifo(folder / "pipe.mp4")  # would block the decoder forever
    assert str(folder / "pipe.mp4") in expand_inputs([str(folder)])
    with pytest.raises(ValueError, match=re.escape(NOT_A_FILE)), local_copy(str(folder / "pipe.mp4")):
        pass


def test_a_link_beside_its_target_is_one_input_and_the_log_says_so(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The link got no row and no log line: the user could not tell where their input went."""
    (tmp_path / "talk.mp4").write_bytes(b"x")
    os.symlink(tmp_path / "talk.mp4", tmp_path / "alias.mp4")
    with caplog.at_level("WARNING", logger="portraitflow.operators.inputs"):
        found = expand_inputs([str(tmp_path / "talk.mp4"), str(tmp_path / "alias.mp4"), str(tmp_path / "talk.mp4")])
    assert found == [str(tmp_path.resolve() / "talk.mp4")]
    [warning] = [r.getMessage() for r in caplog.records]  # the same name twice is no second name
    assert f"{tmp_path / 'talk.mp4'} and {tmp_path / 'alias.mp4'} are the same file" in warning


def test_a_file_named_like_a_pattern_is_that_file_and_keys_do_not_depend_on_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("clip[1].mp4", "clip1.mp4"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert expand_inputs(["clip[1].mp4"]) == [str(tmp_path.resolve() / "clip[1].mp4")]
    assert expand_inputs(["clip[0-9].mp4"]) == [str(tmp_path.resolve() / "clip1.mp4")]
    missing = expand_inputs(["gone[1].mp4", "gone.mp4"])
    monkeypatch.chdir(tmp_path.parent)
    assert expand_inputs([f"{tmp_path.name}/gone[1].mp4", f"{tmp_path.name}/gone.mp4"]) == missing
    assert all(os.path.isabs(path) for path in missing)


def test_a_render_decodes_fewer_frames_at_once_of_a_large_source() -> None:
    """A 4K source rendered 64 full frames at a time: 3.6 GB for one chunk."""
    from portraitflow.operators.decode import FULL_RES_CHUNK_BYTES, frames_per_chunk

    assert frames_per_chunk(64, 1920, 1080, FULL_RES_CHUNK_BYTES) == 21
    assert frames_per_chunk(64, 3840, 2160, FULL_RES_CHUNK_BYTES) == 5
    assert frames_per_chunk(64, 7680, 4320, FULL_RES_CHUNK_BYTES) == 1
    assert frames_per_chunk(64, 640, 360, FULL_RES_CHUNK_BYTES) == 64


def test_a_render_reads_in_order_the_frames_decord_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decord holds on to the frames it decodes: rendering one 10-s clip of a 4K source took 15 GB.
    The render reads in order with PyAV, never decord, and gets decord's pixels, so samples of a
    corpus curated before are unchanged."""
    from portraitflow.models.face.align import ARCFACE_TEMPLATE
    from portraitflow.operators import decode
    from portraitflow.operators.render import render_sample
    from portraitflow.operators.timing import StageTimer
    from portraitflow.operators.video_writer import write_h264

    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(128, 40, (240, 320, 3)) + i, 0, 255).astype(np.uint8) for i in range(75)]
    source = tmp_path / "source.mp4"
    write_h264(source, [np.stack(frames)], 25.0, keyframe_interval=10)
    by_decord = np.concatenate([c.frames for c in decode.iter_frame_chunks(str(source), 25.0, 1.0, 2.0, 8)])
    in_order = np.concatenate([c.frames for c in decode.iter_frame_chunks(str(source), 25.0, 1.0, 2.0, 8,
                                                                          in_order=True)])
    assert by_decord.shape == (25, 240, 320, 3) and np.array_equal(by_decord, in_order)

    def no_decord(*_, **__):
        raise AssertionError("the render decoded with decord")

    monkeypatch.setattr(decode, "_decord_frames", no_decord)
    count = 25
    arrays = {"crop_box": np.array([40.0, 0.0, 280.0, 240.0]), "ref_index": np.array(3),
              "kps": np.tile(ARCFACE_TEMPLATE + 100.0, (count, 1, 1)), "landmarks": np.full((count, 68, 2), 120.0),
              "boxes": np.tile([80.0, 40.0, 240.0, 200.0], (count, 1)), "pose": np.zeros((count, 3)),
              "embedding": np.ones(8), "motion": np.zeros((count, 3)), "signature": np.zeros(16),
              "thumbnails": np.zeros((2, 8, 8, 3))}
    clip = {"start": 25, "end": 50, "key": "k", "uri": str(source), "src_fps": 25.0, "width": 320, "height": 240,
            "measures": {}}
    cfg = CurateConfig(crop_size=64, keep_audio=False)
    fields = render_sample(str(source), clip, arrays, cfg, "test", StageTimer())
    assert json.loads(fields["json"])["num_frames"] == count and fields["ref.jpg"][:2] == b"\xff\xd8"


def test_landmarks_are_fitted_again_on_a_crop_finer_than_the_analysis_frame(tmp_path: Path) -> None:
    """The scan fits landmarks on frames at most `analysis_max_side` wide: a phone video's small face
    had 1.48x the landmark jitter of a fit on its 512 crop. Where the crop is finer than the analysis
    frame, the sample's landmarks are the crop's (their pose and intensity too); elsewhere the scan's."""
    from portraitflow.models.face.base import FaceAnalyzer
    from portraitflow.operators.render import REFIT_ABOVE, analysis_gain, render_sample
    from portraitflow.operators.timing import StageTimer
    from portraitflow.operators.video_writer import write_h264

    shape = np.random.default_rng(1).uniform(0.2, 0.8, (68, 2))

    class CropFitter(FaceAnalyzer):
        name, calls, detected = "crop-fitter", [], 0

        def detect(self, frames):  # the tracked face with its keypoints 3 px lower, but on the 4th crop none
            self.detected += len(frames)
            faces = [[Face(np.array(crop_boxes, np.float32), 0.9, crop_kps + [0, 3])] for _ in frames]
            return [[] if self.detected - len(frames) + i == 3 else found for i, found in enumerate(faces)]

        def embed(self, frames, faces):
            raise AssertionError("not embedded again")

        def landmarks(self, frames, boxes):  # moving with the frames' brightness, as a face would
            self.calls.append(([f.shape for f in frames], np.array(boxes)))
            return np.stack([b[:2] + shape * (b[2:] - b[:2]) + f.mean() / 4
                             for f, b in zip(frames, np.asarray(boxes, np.float64))])

    source = tmp_path / "source.mp4"
    write_h264(source, [np.stack([np.full((240, 320, 3), 60 + 2 * i, np.uint8) for i in range(50)])], 25.0)
    count = 25
    arrays = {"crop_box": np.array([40.0, 0.0, 280.0, 240.0]), "ref_index": np.array(3),
              "kps": np.tile([[120.0, 100], [200, 100], [160, 130], [130, 160], [190, 160]], (count, 1, 1)),
              "landmarks": np.full((count, 68, 2), 120.0), "boxes": np.tile([100.0, 60.0, 220.0, 200.0], (count, 1)),
              "pose": np.zeros((count, 3)), "embedding": np.ones(8), "motion": np.zeros((count, 3)),
              "signature": np.zeros(16), "thumbnails": np.zeros((2, 8, 8, 3))}
    clip = {"start": 25, "end": 50, "key": "k", "uri": str(source), "src_fps": 25.0, "width": 320, "height": 240,
            "measures": {}}
    fine = CurateConfig(crop_size=256, analysis_max_side=160, keep_audio=False)  # 240 px of source, 120 analysed
    assert analysis_gain(clip, 256 / 240, fine) == 2.0 > REFIT_ABOVE  # enlarged, but twice the analysed detail
    crop_boxes = (np.array([100.0, 60.0, 220.0, 200.0]) - [40, 0, 40, 0]) * (256 / 240)
    crop_kps = ((arrays["kps"][0] - [40, 0]) * (256 / 240)).astype(np.float32)
    fitter = CropFitter()
    fields = render_sample(str(source), clip, arrays, fine, "test", StageTimer(), lambda: fitter)
    # keypoints detected on the crop where the tracked face is found there (the scan's were 0.15-0.19
    # of the eye distance off on a phone video's small face), the scan's where it is not
    kps = np.load(io.BytesIO(fields["kps.npy"]))
    # the frame without a detection keeps the scan's moved by the others' offset, rather than jump by it
    assert np.allclose(kps, crop_kps + [0, 3], atol=1e-3) and json.loads(fields["json"])["kps_refit"] is True
    assert {s for shapes, _ in fitter.calls for s in shapes} == {(256, 256, 3)}
    assert np.allclose(np.concatenate([b for _, b in fitter.calls]), crop_boxes, atol=1e-3)
    stored = {name: np.load(io.BytesIO(fields[f"{name}.npy"])) for name in ("landmarks", "pose", "motion")}
    assert np.allclose(stored["landmarks"] - stored["landmarks"][:, :1],
                       (shape - shape[0]) * (crop_boxes[2:] - crop_boxes[:2]), atol=1e-3)
    assert np.isfinite(stored["pose"]).all() and np.abs(stored["pose"]).max() > 0  # fitted, not the scan's zeros
    assert stored["motion"].shape == (count, 3) and stored["motion"][1:, 0].min() > 0  # the scan's were 0
    assert json.loads(fields["json"])["landmarks_refit"] is True

    fitter.calls.clear()
    coarse = CurateConfig(crop_size=64, analysis_max_side=160, keep_audio=False)
    fields = render_sample(str(source), clip, arrays, coarse, "test", StageTimer(), lambda: fitter)
    assert not fitter.calls and json.loads(fields["json"])["landmarks_refit"] is False
    assert np.allclose(np.load(io.BytesIO(fields["landmarks.npy"])), (120.0 - np.array([40.0, 0.0])) * 64 / 240)


def test_of_two_copies_of_one_footage_the_larger_sharper_face_is_decided_first() -> None:
    """Copies resample to one length, so the file name used to decide which copy is kept: a 320-px
    re-encode named `d11_*` beat its 512-px original `liveportrait_d11`."""
    from portraitflow.operators.corpus_decisions import decision_order

    def clip(key: str, end: float, side: float, sharpness: float = 100.0) -> dict:
        return {"key": key, "start": 0.0, "end": end, "measures": {"face_side_px": side, "sharpness": sharpness}}

    clips = [clip("a_reencode", 5.0, 154.0), clip("b_original", 5.0, 243.0), clip("c_longer", 6.0, 100.0),
             clip("d_softer", 5.0, 243.0, 50.0), clip("e_unmeasured", 5.0, float("nan"))]
    order = [c["key"] for c in sorted(clips, key=decision_order)]
    assert order == ["c_longer", "b_original", "d_softer", "a_reencode", "e_unmeasured"]


def test_a_long_input_says_how_far_its_scan_and_render_have_got(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    """Ray Data counts whole inputs: a minutes-long 4K input was silent until it ended."""
    import logging

    from portraitflow.operators import timing

    clock = iter([0.0, 10.0, 31.0, 40.0, 62.0])
    monkeypatch.setattr(timing.time, "monotonic", lambda: next(clock))
    progress = timing.Progress("talk.mp4: scanned", 300.0, "s")
    with caplog.at_level(logging.INFO, logger="portraitflow.progress"):
        for done in (20.0, 45.0, 60.0, 90.0):  # at 10, 31, 40 and 62 s of wall time
            progress(done)
    assert [r.getMessage() for r in caplog.records] == ["talk.mp4: scanned 45 of 300 s (15%)",
                                                       "talk.mp4: scanned 90 of 300 s (30%)"]
