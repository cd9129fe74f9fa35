"""Evaluation datasets: cross pairing never uses a clip's own source, prepared clips are named by
their cut length, a folder's globs skip the sweep's own files, and shards are read up to
`max_videos` with a corrupt one a failed row."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from synthetic_shards import write_shard

from portraitflow.operators import eval_dataset
from portraitflow.operators.eval_dataset import DatasetSpec, dataset_jobs
from portraitflow.operators.inputs import input_key

NO_PARTNER = "no_cross_portrait"  # the reason of a cross job with no clip of another source to pair with


def _clip(path: Path, frames: int = 10, shade: int = 0) -> bytes:
    from portraitflow.operators.video_writer import write_h264

    ramp = np.linspace(0, 200, 64, dtype=np.uint8)[None, :, None]
    video = np.stack([np.broadcast_to(ramp, (64, 64, 3)) // 2 + shade + 5 * i for i in range(frames)]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_h264(path, [video], fps=10)
    return path.read_bytes()


def _sample(video: bytes, source: str | None = None) -> dict[str, bytes]:
    return {"mp4": video, "json": json.dumps({"source": source} if source else {}).encode()}


def _fake_prepare(video, folder, max_seconds, reference=True, name=None, curated=False):
    key = Path(video).stem
    return {"job_id": key, "source": video, "ref": f"{key}.ref.png", "driving": f"{key}.mp4",
            "status": "failed" if key == "B" else "ok", "reason": "unreadable" if key == "B" else None}


def _cross_folder(videos: list[str], tmp_path: Path) -> list[dict]:
    """Cross jobs of a folder without portraits, with clip preparation stubbed out."""
    def matches(folder, patterns, suffixes, skip=()):
        return [] if suffixes == eval_dataset.IMAGE_SUFFIXES else videos

    with mock.patch.object(eval_dataset, "prepare_clip", _fake_prepare), \
            mock.patch.object(eval_dataset, "_matches", matches):
        return dataset_jobs(DatasetSpec(path=str(tmp_path)), "cross", tmp_path / "prepared")


def test_cross_jobs_pair_ok_clips_with_another_clip_and_keep_failed_ones(tmp_path: Path) -> None:
    jobs = {Path(j["driving"]).stem: j for j in _cross_folder(["A.mp4", "B.mp4", "C.mp4"], tmp_path)}
    assert set(jobs) == {"A", "B", "C"}
    assert (jobs["A"]["status"], jobs["A"]["ref"]) == ("ok", "C.ref.png")  # B failed: the next ok clip is C
    assert (jobs["C"]["status"], jobs["C"]["ref"]) == ("ok", "A.ref.png")
    assert (jobs["B"]["status"], jobs["B"]["reason"]) == ("failed", "unreadable")
    assert all(j["ref"] != f"{stem}.ref.png" for stem, j in jobs.items())
    assert len({j["job_id"] for j in jobs.values()}) == 3


def test_a_single_clip_cross_job_is_a_failed_row_not_paired_with_itself(tmp_path: Path) -> None:
    jobs = _cross_folder(["A.mp4"], tmp_path)
    assert len(jobs) == 1
    assert (jobs[0]["status"], jobs[0]["reason"]) == ("failed", NO_PARTNER)
    assert jobs[0]["ref"] != "A.ref.png" and jobs[0]["error"]


def test_a_file_both_globs_match_is_a_driver_never_its_own_portrait(tmp_path: Path) -> None:
    for name in ("talk.gif", "face.png"):
        (tmp_path / name).write_bytes(b"x")
    spec = DatasetSpec(path=str(tmp_path), include=["*"], refs=["*.png", "*.gif"])
    with mock.patch.object(eval_dataset, "prepare_clip", _fake_prepare):
        jobs = dataset_jobs(spec, "cross", tmp_path / "prepared")
    assert [(Path(j["source"]).name, Path(j["ref"]).name) for j in jobs] == [("talk.gif", "face.png")]


def test_portraits_no_clip_is_paired_with_are_named_in_a_warning(tmp_path: Path, caplog) -> None:
    """A third portrait beside two clips was in no job, and nothing said so."""
    for name in ("talk.mp4", "face_a.png", "face_b.png", "face_c.png"):
        (tmp_path / name).write_bytes(b"x")
    with mock.patch.object(eval_dataset, "prepare_clip", _fake_prepare), caplog.at_level("WARNING"):
        jobs = dataset_jobs(DatasetSpec(path=str(tmp_path)), "cross", tmp_path / "prepared")
    assert len(jobs) == 1 and "2 of the 3 portraits in" in caplog.text and "there are 1 clips" in caplog.text


def test_a_sample_damaged_since_curation_is_a_failed_row_not_decoded(tmp_path: Path) -> None:
    """Its json's digests say so before the sweep's own process decodes it (a flipped mp4 byte can crash decord)."""
    import hashlib

    video = _clip(tmp_path / "a.mp4")
    digests = {"sha256": {"mp4": hashlib.sha256(video).hexdigest()}}
    damaged = video[:-9] + bytes([video[-9] ^ 1]) + video[-8:]
    write_shard(tmp_path / "shards" / "000000.tar", {"good": {"mp4": video, "json": json.dumps(digests).encode()},
                                                     "bad": {"mp4": damaged, "json": json.dumps(digests).encode()},
                                                     "foreign": {"mp4": video, "json": b'{"sha256": "ab12"}'},
                                                     "caption": {"mp4": video, "json": b"a caption"}})
    jobs = {job["job_id"].split("-")[0]: job for job in
            dataset_jobs(DatasetSpec(type="shards", path=str(tmp_path / "shards")), "self", tmp_path / "prepared")}
    assert jobs["good"]["status"] == jobs["foreign"]["status"] == jobs["caption"]["status"] == "ok"  # other tools' json
    assert (jobs["bad"]["status"], jobs["bad"]["reason"]) == ("failed", "damaged_sample")


def test_a_key_repeated_in_another_shard_is_a_job_of_its_own(tmp_path: Path) -> None:
    shards = tmp_path / "foreign"
    write_shard(shards / "000000.tar", {"sample0": _sample(_clip(tmp_path / "a.mp4", shade=0))})
    write_shard(shards / "000001.tar", {"sample0": _sample(_clip(tmp_path / "b.mp4", shade=60))})
    jobs = dataset_jobs(DatasetSpec(type="shards", path=str(shards)), "self", tmp_path / "prepared")
    assert [j["status"] for j in jobs] == ["ok", "ok"] and len({j["job_id"] for j in jobs}) == 2
    assert len({Path(j["source"]).read_bytes() for j in jobs}) == 2  # both clips written, neither lost


def test_shard_jobs_are_named_by_their_sample_key_wherever_they_are_prepared(tmp_path: Path) -> None:
    """A job id was the prepared file's name, cut to 48 characters and hashed with its path under the
    sweep's folder: the clip's end time was lost and two sweeps of one corpus could not be joined.
    A clip no longer than the cut is taken as curated, not encoded a second time."""
    key = f"{input_key('/videos/one.mp4')}_00000000_00001000"
    ours = {"mp4": _clip(tmp_path / "a.mp4"), "json": json.dumps({"format_version": 1}).encode()}
    write_shard(tmp_path / "curated" / "shards" / "000000.tar", {key: ours, "foreign": _sample(_clip(tmp_path / "b.mp4"))})
    spec = DatasetSpec(type="shards", path=str(tmp_path / "curated"))
    first, second = (dataset_jobs(spec, "self", tmp_path / out, max_seconds=3.0) for out in ("sweep_a", "sweep_b"))
    assert [j["job_id"] for j in first] == [j["job_id"] for j in second] == [f"{key}-3000ms", "foreign-3000ms"]
    assert Path(first[0]["driving"]).read_bytes() == (tmp_path / "a.mp4").read_bytes()  # 1 s, under the 3-s cut
    assert Path(first[1]["driving"]).read_bytes() != (tmp_path / "b.mp4").read_bytes()  # not ours: encoded anew
    [cut, _] = dataset_jobs(spec, "self", tmp_path / "sweep_a", max_seconds=0.5)
    assert cut["job_id"] == f"{key}-500ms" and Path(cut["driving"]).read_bytes() != (tmp_path / "a.mp4").read_bytes()


def test_shard_cross_jobs_never_take_a_portrait_from_the_same_source_video(tmp_path: Path) -> None:
    one, two = input_key("/videos/one.mp4"), input_key("/videos/two.mp4")
    a, b = _clip(tmp_path / "a.mp4"), _clip(tmp_path / "b.mp4", shade=40)
    # clip keys are {input_key}_{start_ms}_{end_ms}: two clips of `one` sort next to each other
    write_shard(tmp_path / "curated" / "shards" / "000000.tar", {
        f"{one}_00000000_00001000": _sample(a), f"{one}_00001000_00002000": _sample(a),
        f"{two}_00000000_00001000": _sample(b)})
    jobs = dataset_jobs(DatasetSpec(type="shards", path=str(tmp_path / "curated")), "cross", tmp_path / "prepared")
    assert [j["status"] for j in jobs] == ["ok"] * 3
    refs = [j["ref"] for j in jobs]
    assert refs[0] == refs[1] == jobs[2]["driving"].replace(".mp4", ".ref.png")  # both clips of `one` get `two`'s
    assert refs[2] == jobs[0]["driving"].replace(".mp4", ".ref.png")

    # the json's `source` names the video too; every clip from one video: failed rows, none dropped
    write_shard(tmp_path / "same" / "000000.tar", {"x": _sample(a, "/videos/one.mp4"), "y": _sample(b, "/videos/one.mp4")})
    same = dataset_jobs(DatasetSpec(type="shards", path=str(tmp_path / "same")), "cross", tmp_path / "prepared")
    assert [(j["status"], j["reason"]) for j in same] == [("failed", NO_PARTNER)] * 2


def test_prepared_clips_are_named_by_their_cut_length(tmp_path: Path) -> None:
    from portraitflow.operators.decode import probe_video

    videos = tmp_path / "videos"
    _clip(videos / "talk.mp4")  # 1 s at 10 fps
    spec, prepared = DatasetSpec(path=str(videos)), tmp_path / "prepared"
    frames = {}
    for max_seconds in (0.5, 0.3, None, 0.5):
        [job] = dataset_jobs(spec, "self", prepared, max_seconds=max_seconds)
        assert job["status"] == "ok" and "." not in job["job_id"]
        assert Path(job["driving"]).stem == job["job_id"] == Path(job["ref"]).name[: -len(".ref.png")]
        frames.setdefault(job["driving"], set()).add(probe_video(job["driving"]).num_frames)
    assert sorted(frames.values(), key=min) == [{3}, {5}, {10}]  # a rerun at 0.5 s reuses its own clip
    assert sorted(Path(p).stem.rsplit("-", 1)[1] for p in frames) == ["300ms", "500ms", "full"]


def test_shards_stop_at_max_videos_and_a_corrupt_shard_is_a_failed_row(tmp_path: Path) -> None:
    a, b = _clip(tmp_path / "a.mp4"), _clip(tmp_path / "b.mp4", shade=40)
    shards = tmp_path / "curated" / "shards"
    write_shard(shards / "000000.tar", {"s0_a": _sample(a), "s0_b": _sample(b)})
    write_shard(shards / "000002.tar", {"s2_a": _sample(b), "s2_nomp4": {"json": b"{}"}})
    spec = DatasetSpec(type="shards", path=str(tmp_path / "curated"))

    first = dataset_jobs(spec, "self", tmp_path / "one", max_seconds=0.5, max_videos=1)
    assert [j["status"] for j in first] == ["ok"]
    assert len(list((tmp_path / "one").glob("*.source.mp4"))) == 1  # nothing past max_videos is written

    (shards / "000001.tar").write_bytes(b"this is not a tar archive" * 100)

    jobs = dataset_jobs(spec, "self", tmp_path / "all", max_seconds=0.5)
    assert [(j["status"], j["reason"]) for j in jobs] == [
        ("ok", None), ("ok", None), ("failed", "unreadable_shard"), ("ok", None), ("failed", "no_video")]
    assert jobs[2]["source"].endswith("000001.tar") and jobs[2]["error"]
    assert len({j["job_id"] for j in jobs}) == 5

    cross = dataset_jobs(spec, "cross", tmp_path / "all", max_seconds=0.5, max_videos=4)
    assert [j["status"] for j in cross] == ["ok", "ok", "failed", "ok"]
    assert all(j["ref"] != j["driving"].replace(".mp4", ".ref.png") for j in cross if j["status"] == "ok")



def test_a_folder_dataset_never_takes_the_sweeps_own_files_for_inputs(tmp_path: Path) -> None:
    """A sweep whose --out lies inside its dataset: its prepared clips, references and outputs match
    the dataset's globs, and would be new inputs (and portraits) on every rerun."""
    from PIL import Image

    data = tmp_path / "data"
    _clip(data / "talk.mp4")
    Image.new("RGB", (64, 64), (120, 100, 90)).save(data / "portrait.png")
    out = data / "runs" / "first"
    spec = DatasetSpec(path=str(data), include=["*.mp4"], refs=["*.png"])
    for protocol in ("self", "cross", "self"):  # the first run writes OUT/dataset; the others rerun over it
        _clip(out / "configs" / "0123abcd" / "outputs" / "talk-1000ms-0123456789.mp4")
        jobs = dataset_jobs(spec, protocol, out / "dataset", max_seconds=1.0, exclude=out)
        assert [Path(j["source"]).name for j in jobs] == ["talk.mp4"]
        assert protocol == "self" or jobs[0]["ref"] == str(data / "portrait.png")
    assert list((out / "dataset").glob("*.ref.png")) and list((out / "dataset").glob("*.mp4"))  # there to be found


def test_a_shard_named_like_a_pipe_url_is_read_as_a_file_and_runs_nothing(tmp_path: Path, monkeypatch) -> None:
    """A folder's or glob's shard names are data: `pipe:touch MARK;cat good.tar;.tar` ran its command
    through webdataset's opener when listed bare from `path: "."`; now every shard is read as a file."""
    tars = tmp_path / "tars"
    write_shard(tars / "good.tar", {"s0": _sample(_clip(tmp_path / "a.mp4"))})
    (tars / "pipe:touch MARK;cat good.tar;.tar").write_bytes((tars / "good.tar").read_bytes())
    monkeypatch.chdir(tars)
    for path in (".", "*.tar"):
        assert all(name.startswith("/") for name in eval_dataset._shard_files(path))
        jobs = dataset_jobs(DatasetSpec(type="shards", path=path), "self", tmp_path / "prepared", max_seconds=0.5)
        assert [j["status"] for j in jobs] == ["ok", "ok"]  # the odd name's copy of good.tar, read as a tar
    assert not (tars / "MARK").exists()


def test_files_include_matches_that_are_no_video_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A portrait a folder dataset's `include` matched was passed over without a word (no row, no
    log), and a dataset of pictures was only "no video file matches include"."""
    for name in ("talk.mp4", "face.png", "face.bmp", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        eval_dataset.check_dataset(DatasetSpec(path=str(tmp_path), include=["*"]))
    # face.png is a portrait `refs` reads: not named
    assert "matches 2 files that are no video (face.bmp, notes.txt)" in caplog.text
    assert "not read as drivers" in caplog.text
    with pytest.raises(ValueError, match=r"no video file under it matches include \['\*.bmp'\] \(in any case\); "
                                         r"it matches 1 files that are no video \(face.bmp\).*portraits are matched by `refs`"):
        eval_dataset.check_dataset(DatasetSpec(path=str(tmp_path), include=["*.bmp"]))


def test_a_dataset_folder_that_cannot_be_listed_is_warned_of(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`rglob` passes over a folder it cannot list (no permission): its videos left the evaluation unseen."""
    locked = tmp_path / "locked"
    locked.mkdir()
    for video in (tmp_path / "a.mp4", locked / "b.mp4"):
        video.write_bytes(b"")
    scandir = os.scandir

    def refused(path: str = ".") -> object:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
    with caplog.at_level(logging.WARNING):
        eval_dataset.check_dataset(DatasetSpec(path=str(tmp_path)))
    assert f"1 folder(s) in it cannot be listed, so no video in them is read: {locked}: Permission denied" in caplog.text
    monkeypatch.setattr(os, "listdir", refused)  # the dataset's own folder
    with pytest.raises(ValueError, match=r"dataset '.*locked' cannot be listed \(Permission denied\)"):
        eval_dataset.check_dataset(DatasetSpec(path=str(locked)))


def test_a_folder_takes_camera_names_in_any_case_and_never_macos_forks(tmp_path: Path) -> None:
    """`TALK.MP4` and `IMG_0001.MOV` were left out silently (`rglob` is case-sensitive), and each `._`
    fork a Mac leaves on other disks was a failed input; a folder with no video is refused."""
    for name in ("TALK.MP4", "sub/IMG_0001.MOV", "clip.mp4", "._TALK.MP4", "sub/._IMG_0001.MOV", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = eval_dataset._matches(tmp_path, ["**/*.mp4", "sub/*.mov"], eval_dataset.VIDEO_SUFFIXES)
    assert found == [str(tmp_path / name) for name in ("TALK.MP4", "clip.mp4", "sub/IMG_0001.MOV")]
    nested = eval_dataset._matches(tmp_path, ["sub/**/*.MOV", "[c]lip.*"], eval_dataset.VIDEO_SUFFIXES)
    assert nested == [str(tmp_path / "clip.mp4"), str(tmp_path / "sub/IMG_0001.MOV")]  # `**` inside a pattern too
    eval_dataset.check_dataset(DatasetSpec(path=str(tmp_path)))
    with pytest.raises(ValueError, match=r"dataset '.*' matched no videos: no video file under it matches include"):
        eval_dataset.check_dataset(DatasetSpec(path=str(tmp_path), include=["*.mkv", "*.txt"]))
    with pytest.raises(ValueError, match="matched no videos: every video file .* lies in the output folder"):
        # the sweep's own outputs are not the dataset's, and the message says why the videos there were passed over
        eval_dataset.check_dataset(DatasetSpec(path=str(tmp_path / "sub"), include=["*.mov"]), exclude=tmp_path)
