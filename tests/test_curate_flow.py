"""The curate flow end to end on real media: decisions, manifest, shards, MLflow, resume."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.operators.video_writer import has_audio

TALKING = ["skyreels_driving_4.mp4", "megactor_audio_CHTF_2.mp4"]
NEGATIVES = {
    "upscaleavideo_old_video_1.mp4": "no_face",
    "liveportrait_s13.mp4": "face_too_small",
    "upscaleavideo_old_movie_2.mp4": "multiple_faces",
}
SCENE_CUT = ("derived_scenecut_liveportrait_d18_to_d19.mp4", 3.5)
OVERRIDES = ["ray.num_cpus=2", "ray.object_store_memory_mb=256", "curate.progress_bars=false"]


def _corrupt_inputs(folder: Path) -> dict[str, str]:
    """Inputs that must end as `failed` rows: empty, truncated, not a video, audio only."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "not_a_video.mp4").write_text("this is text, not a video\n" * 50)
    from portraitflow.operators.video_writer import write_h264

    whole = folder / "whole.tmp"
    write_h264(whole.with_suffix(".mp4"), [np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), np.uint8)], 25,
               faststart=False)  # the index at the end, lost with the cut
    data = whole.with_suffix(".mp4").read_bytes()
    whole.with_suffix(".mp4").unlink()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    with av.open(str(folder / "audio_only.mp4"), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = np.zeros((1, 16000), np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.rate = 16000
        frame.pts = 0
        frame.time_base = Fraction(1, 16000)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return {str(folder / n): "failed" for n in ("empty.mp4", "not_a_video.mp4", "truncated.mp4", "audio_only.mp4")}


def _unmatched_inputs(folder: Path) -> dict[str, str]:
    """Arguments that name no video, each its own `failed` row: a glob and a folder without one, an unknown scheme."""
    (folder / "no_video").mkdir(parents=True)
    (folder / "no_video" / "notes.txt").write_text("no video here\n")
    return {str(folder / "nothing-*.mp4"): "failed", str((folder / "no_video").resolve()): "failed",
            "foo://bucket/clip.mp4": "failed"}


@pytest.fixture(scope="module")
def flow_inputs(media_dir: Path, tmp_path_factory) -> dict[str, str]:
    """Input path -> expected status."""
    expected = {str(media_dir / n): "accepted" for n in TALKING}
    expected |= {str(media_dir / n): "rejected" for n in NEGATIVES}
    expected[str(media_dir / SCENE_CUT[0])] = "any"
    expected |= _corrupt_inputs(tmp_path_factory.mktemp("corrupt"))
    expected |= _unmatched_inputs(tmp_path_factory.mktemp("unmatched"))
    return expected


def _failed(flow_inputs: dict[str, str]) -> int:
    return sum(status == "failed" for status in flow_inputs.values())


@pytest.fixture(scope="module")
def curated(flow_inputs, ray_local, tmp_path_factory) -> tuple[Path, dict, str]:
    from portraitflow.jobs.curate import run_curation

    out = tmp_path_factory.mktemp("curated")
    uri = f"sqlite:///{out.parent / 'curate_mlflow.db'}"
    cfg = load_config(None, OVERRIDES + [f"mlflow.tracking_uri={uri}"])
    metrics = run_curation(cfg, sorted(flow_inputs), out)
    return out, metrics, uri


def test_curation_leaves_the_process_wide_ray_data_settings_as_they_were(curated) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()  # curation set its own on its datasets' contexts
    assert context.max_errored_blocks == ray.data.DataContext().max_errored_blocks != -1


def test_manifest_has_one_row_per_input_with_its_decision(curated, flow_inputs, media_dir: Path) -> None:
    import pandas as pd

    out, metrics, _ = curated
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert sorted(manifest.path) == sorted(flow_inputs)
    status = dict(zip(manifest.path, manifest.status))
    for path, expected in flow_inputs.items():
        if expected != "any":
            assert status[path] == expected, (path, manifest[manifest.path == path].to_dict("records"))
    failed = manifest[manifest.status == "failed"]
    assert (failed.error.str.len() > 0).all() and (failed.clips_accepted == 0).all()
    errors = dict(zip(manifest.path, manifest.error))
    assert [p for p, e in errors.items() if "matched no video files" in e] == sorted(
        p for p in flow_inputs if "nothing-*" in p or p.endswith("no_video"))
    assert "foo" in errors["foo://bucket/clip.mp4"]
    reasons = dict(zip(manifest.path, manifest.reasons))
    for name, reason in NEGATIVES.items():
        assert reason in list(reasons[str(media_dir / name)])
    accepted = manifest[manifest.status == "accepted"]
    assert (accepted.clips_accepted > 0).all()
    assert metrics["inputs"] == len(flow_inputs) and metrics["inputs_failed"] == _failed(flow_inputs)
    clips = pd.read_parquet(out / "clips.parquet")
    assert set(clips.input_key) <= set(manifest.input_key)
    assert (clips[clips.decision == "rejected"].reason != "").all()
    assert clips.key.is_unique and not clips.key.str.contains(r"\.").any()


def test_no_clip_spans_the_scene_cut(curated, media_dir: Path) -> None:
    import pandas as pd

    out, _, _ = curated
    clips = pd.read_parquet(out / "clips.parquet")
    cut = clips[clips.path == str(media_dir / SCENE_CUT[0])]
    assert len(cut) >= 2
    cut_s = SCENE_CUT[1]
    assert not ((cut.start_s < cut_s - 0.1) & (cut.end_s > cut_s + 0.1)).any(), cut[["start_s", "end_s", "reason"]]


def test_shards_read_back_with_webdataset(curated) -> None:
    import av
    import webdataset as wds
    from PIL import Image

    out, metrics, _ = curated
    index = json.loads((out / "index.wids.json").read_text())
    urls = [str(out / s["url"]) for s in index["shardlist"]]
    assert urls and all(Path(u).name.endswith(".tar") and len(Path(u).stem) == 6 for u in urls)
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    manifest = pq.read_table(out / "manifest.parquet", columns=["path", "fps"]).to_pydict()
    source_rates = dict(zip(manifest["path"], manifest["fps"]))
    assert len(samples) == metrics["clips_accepted"] == sum(s["nsamples"] for s in index["shardlist"])
    for sample in samples:
        assert {"mp4", "ref.jpg", "json", "landmarks.npy", "kps.npy", "pose.npy", "id.npy", "motion.npy",
                "signature.npy", "thumbnails.npy"} <= set(sample)
        assert "." not in sample["__key__"]
        meta = json.loads(sample["json"])
        assert meta["sha256"] == {name: hashlib.sha256(sample[name]).hexdigest() for name in sample
                                  if not name.startswith("__") and name != "json"}  # every other member's
        arrays = {k: np.load(io.BytesIO(sample[k]), allow_pickle=False) for k in sample if k.endswith(".npy")}
        frames = meta["num_frames"]
        assert arrays["landmarks.npy"].shape == (frames, 68, 2)
        assert arrays["kps.npy"].shape == (frames, 5, 2)
        assert arrays["boxes.npy"].shape == (frames, 4)
        assert arrays["pose.npy"].shape == (frames, 3)
        assert arrays["motion.npy"].shape == (frames, 3)
        assert arrays["id.npy"].shape == (meta["embedding_dim"],)
        assert np.linalg.norm(arrays["id.npy"]) == pytest.approx(1.0, abs=1e-3)
        assert arrays["signature.npy"].dtype == np.float16
        assert np.linalg.norm(arrays["signature.npy"].astype(np.float32)) == pytest.approx(1.0, abs=1e-2)
        assert arrays["thumbnails.npy"].dtype == np.uint8 and arrays["thumbnails.npy"].shape == (frames, 16, 16)
        assert frames == round((meta["end_s"] - meta["start_s"]) * meta["fps"])
        assert meta["source"] and meta["face_backend"] == "opencv" and len(meta["crop_box"]) == 4
        box_side = meta["crop_box"][2] - meta["crop_box"][0]  # a box wider than the source is zero-padded
        assert meta["crop_scale"] == pytest.approx(meta["crop_size"] / box_side, rel=1e-3)
        assert meta["source_fps"] == pytest.approx(source_rates[meta["source"]], abs=1e-3)
        inside = (arrays["kps.npy"] >= 0) & (arrays["kps.npy"] <= meta["crop_size"])
        assert inside.mean() > 0.95  # keypoints are in crop pixels
        boxes = arrays["boxes.npy"][:, None]
        in_face = (arrays["kps.npy"] >= boxes[..., :2]) & (arrays["kps.npy"] <= boxes[..., 2:])
        assert in_face.all(axis=(1, 2)).mean() > 0.95  # the tracked face box, in the same crop pixels
        assert 0 <= arrays["motion.npy"][:, 1:].min() and arrays["motion.npy"][:, 1:].max() <= 127
        with av.open(io.BytesIO(sample["mp4"])) as container:
            assert bool(container.streams.audio) == has_audio(meta["source"])  # the source's sound, if it has any
            assert (meta["audio_s"] > 0) == bool(container.streams.audio) and meta["audio_s"] <= meta["end_s"] - meta["start_s"] + 0.05
            decoded = [f for f in container.decode(video=0)]
        assert len(decoded) == frames and (decoded[0].width, decoded[0].height) == (512, 512)
        assert Image.open(io.BytesIO(sample["ref.jpg"])).size == (512, 512)
        assert Image.open(io.BytesIO(sample["ref_face.jpg"])).size == (112, 112)
    for path in urls:  # no pickle payloads anywhere in the shards
        with tarfile.open(path) as tar:
            assert not [n for n in tar.getnames() if n.endswith((".pyd", ".pickle", ".pkl"))]


def test_mlflow_run_has_params_metrics_and_artifacts(curated) -> None:
    from mlflow.tracking import MlflowClient

    _, metrics, uri = curated
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(metrics["mlflow_run_id"])  # this run's: later tests add runs to the store
    assert client.get_experiment(run.info.experiment_id).name == "portraitflow-curate"
    assert run.data.params["curate.fps"] == "25.0"
    for metric in ("inputs", "inputs_failed", "clips_accepted", "hours_in", "video_seconds_per_s", "time_detect_s",
                   "rejected_no_face"):
        assert metric in run.data.metrics, metric
    assert run.data.tags["portraitflow.version"]  # which code made the shards
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"manifest.parquet", "clips.parquet", "contact_sheet.png", "histograms.png", "ray_data_stats.txt"} <= artifacts


def test_rerun_skips_finished_inputs_and_adds_nothing(curated, flow_inputs, capsys) -> None:
    from portraitflow.jobs.curate import run_curation
    from portraitflow.jobs.inspect_cmd import summarise

    out, _, uri = curated
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")}
    manifest_before = (out / "manifest.parquet").read_bytes()
    cfg = load_config(None, OVERRIDES + [f"mlflow.tracking_uri={uri}"])
    dry = run_curation(cfg, sorted(flow_inputs), out, dry_run=True)
    # only the failed inputs are retried, and the dry run says why each fails (a URI's store is resolved, not fetched)
    assert dry == {"inputs": len(flow_inputs), "pending": _failed(flow_inputs), "unreadable": _failed(flow_inputs)}
    listed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("fails") for line in listed) == _failed(flow_inputs)
    assert any(line.startswith("fails") and "matched no video files" in line for line in listed)
    assert any(line.startswith("fails") and "foo://bucket/clip.mp4  (ArrowInvalid" in line for line in listed)
    run_curation(cfg, sorted(flow_inputs), out)
    assert {p.name: p.read_bytes() for p in (out / "shards").glob("*.tar")} == before
    import pandas as pd

    assert pd.read_parquet(out / "manifest.parquet").equals(pd.read_parquet(io.BytesIO(manifest_before)))
    summary = summarise(out)
    assert summary["inputs"]["failed"] == _failed(flow_inputs) and summary["sample_keys"]
    assert summary["failed_shown"] == f"{min(5, _failed(flow_inputs))} of {_failed(flow_inputs)}"
    assert sum(s["samples"] for s in summary["shards"]) == summary["clips"]["accepted"]


def test_a_run_logs_the_rows_of_the_inputs_it_curated(curated, flow_inputs, tmp_path: Path) -> None:
    """A rerun given a finished input and a failed one curates the failed one again and logs its
    manifest and clip rows alone: the whole corpus's tables were copied into every run, resumes
    included (about 1 GB at a million inputs)."""
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from portraitflow.jobs.curate import run_curation

    out, _, uri = curated
    done, failed = (next(path for path, expected in sorted(flow_inputs.items()) if expected == status)
                    for status in ("accepted", "failed"))
    metrics = run_curation(load_config(None, OVERRIDES + [f"mlflow.tracking_uri={uri}"]), [done, failed], out)
    logged = Path(MlflowClient(tracking_uri=uri).download_artifacts(metrics["mlflow_run_id"], "", str(tmp_path)))
    manifest, clips = (pq.read_table(logged / name).to_pydict() for name in ("manifest.parquet", "clips.parquet"))
    assert manifest["path"] == [failed] and manifest["status"] == ["failed"] and metrics["inputs"] == 2
    assert set(clips["input_key"]) <= set(manifest["input_key"])
    assert len(pq.read_table(out / "manifest.parquet")) == len(flow_inputs)  # the folder's stay whole


def _shard_members(out: Path) -> dict[str, bytes]:
    members = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                members[f"{path.name}/{member.name}"] = tar.extractfile(member).read()
    return members


def _descendants(pid: int) -> list[int]:
    """Process ids below `pid` (Ray's GCS, raylet and workers of a killed driver), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _run_until(args: list[str], out: Path, kill_when: str | None, timeout: float = 500,
               terminate: bool = False) -> None:
    """Run the CLI; with `kill_when` (a glob under `out`), SIGKILL it and its children once it
    matches, or with `terminate` send it SIGTERM, as a scheduler would, and expect it to stop itself."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if kill_when and list(out.glob(kill_when)) and terminate:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=120) == 128 + signal.SIGTERM  # Ray's own handler aborted: 134
                return
            if kill_when and list(out.glob(kill_when)):
                family = _descendants(proc.pid)
                proc.send_signal(signal.SIGKILL)
                for child in family:
                    try:
                        os.kill(child, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait()
                return
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert kill_when is None and proc.returncode == 0, f"curate exited with {proc.returncode}"


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_output(curated, flow_inputs, tmp_path: Path) -> None:
    """Killed once while scanning and terminated (SIGTERM) once while rendering, the rerun equals the
    uninterrupted run; the terminated run's MLflow run ends KILLED, not left RUNNING."""
    import mlflow
    import pandas as pd

    reference, _, _ = curated
    out, uri = tmp_path / "resumed", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-m", "portraitflow.jobs.cli", "curate", *sorted(flow_inputs), "--out", str(out),
            "--mlflow-uri", uri] + [a for o in OVERRIDES for a in ("--set", o)]
    _run_until(args, out, ".state/scan/*.npz")
    _run_until(args, out, ".state/staging/*.tar", terminate=True)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time"])
    assert runs[-1].info.status == "KILLED"
    _run_until(args, out, None)
    columns = ["path", "status", "clips_accepted", "seconds_accepted"]
    assert pd.read_parquet(out / "manifest.parquet")[columns].equals(pd.read_parquet(reference / "manifest.parquet")[columns])
    clip_columns = ["key", "decision", "reason", "start_s", "end_s"]
    assert pd.read_parquet(out / "clips.parquet")[clip_columns].equals(pd.read_parquet(reference / "clips.parquet")[clip_columns])
    resumed, whole = _shard_members(out), _shard_members(reference)
    assert sorted(resumed) == sorted(whole)
    for name, data in whole.items():  # byte for byte, the H.264 streams included
        assert resumed[name] == data, name


def test_corpus_decisions_leave_rejected_clips_out_of_the_shards(media_dir: Path, ray_local, tmp_path: Path) -> None:
    """A copy of a video is a `duplicate` and another take of its speaker is over a cap of one clip:
    with a cap, only the clips the decisions keep are rendered; the tables keep the others."""
    import pandas as pd

    from portraitflow.jobs.curate import run_curation
    from portraitflow.operators.shards import shard_keys, shard_paths

    sources = {"a.mp4": "dreamtalk_M030_front_neutral_level1_001.mp4", "b.mp4": "dreamtalk_M030_front_neutral_level1_001.mp4",
               "c.mp4": "dreamtalk_M030_front_happy_level3_001.mp4", "d.mp4": "dreamtalk_W009_front_neutral_level1_001.mp4"}
    (tmp_path / "in").mkdir()
    for name, source in sources.items():
        shutil.copy(media_dir / source, tmp_path / "in" / name)
    # the other take cut shorter than a's 3.76 s: of clips of one length the larger face would go first
    from portraitflow.operators.decode import iter_frame_chunks
    from portraitflow.operators.video_writer import write_h264
    write_h264(tmp_path / "in" / "c.mp4", (c.frames for c in iter_frame_chunks(str(media_dir / sources["c.mp4"]), 25.0,
                                                                            0.0, 3.0)), 25.0)
    out = tmp_path / "out"
    cfg = load_config(None, OVERRIDES + ["mlflow.enabled=false", "curate.max_clips_per_identity=1"])
    metrics = run_curation(cfg, [str(tmp_path / "in")], out)

    clips = pd.read_parquet(out / "clips.parquet")
    clips["name"] = clips.path.map(lambda p: Path(p).name)
    decided = clips[clips.reason.isin(["", "duplicate", "identity_over_cap"])]
    assert dict(zip(decided.name, decided.reason)) == {"a.mp4": "", "b.mp4": "duplicate", "c.mp4": "identity_over_cap", "d.mp4": ""}
    assert decided.name.is_unique
    packed = [key for shard in shard_paths(out / "shards") for key in shard_keys(shard)]
    assert sorted(packed) == sorted(clips[clips.decision == "accepted"].key)
    assert metrics["clips_rendered"] == len(packed)  # with a cap, only the clips the decisions kept are rendered
    assert not list((out / ".state" / "staging").glob("*.tar"))  # the rejected clips' samples are gone
    manifest = pd.read_parquet(out / "manifest.parquet")
    status = dict(zip(manifest.path.map(lambda p: Path(p).name), manifest.status))
    assert status == {"a.mp4": "accepted", "b.mp4": "rejected", "c.mp4": "rejected", "d.mp4": "accepted"}

    # An input added later whose key sorts first is held to the clips already in the corpus, also
    # to those a killed run packed before it could mark their input done (a's marker is gone).
    a_key = manifest.input_key[manifest.path.map(lambda p: Path(p).name) == "a.mp4"].item()
    (out / ".state" / "done" / f"{a_key}.json").unlink()
    (tmp_path / "added").mkdir()
    shutil.copy(media_dir / sources["c.mp4"], tmp_path / "added" / "0.mp4")
    run_curation(cfg, [str(tmp_path / "in"), str(tmp_path / "added")], out)
    clips = pd.read_parquet(out / "clips.parquet")
    added = clips[clips.path.map(lambda p: Path(p).name) == "0.mp4"]
    assert set(added.reason) >= {"identity_over_cap"} and not (added.decision == "accepted").any()
    assert clips[clips.path.map(lambda p: Path(p).name) == "a.mp4"].decision.tolist().count("accepted") == 1
    assert sorted(key for shard in shard_paths(out / "shards") for key in shard_keys(shard)) == sorted(packed)


def test_allow_and_deny_galleries_decide_identity(media_dir: Path, tmp_path: Path) -> None:
    """A deny photo of the speaker rejects the clip; an allow list of someone else does too."""
    import cv2

    from portraitflow.operators.decode import iter_frame_chunks
    from portraitflow.operators.face_scan import FaceScanStage
    from portraitflow.operators.inputs import input_key
    from portraitflow.operators.scan_store import load_scan_meta

    speaker, other = media_dir / TALKING[0], media_dir / TALKING[1]
    for folder, source in (("deny", speaker), ("allow", other)):
        frame = next(iter_frame_chunks(str(source), 25.0, start_s=1.0, end_s=1.1)).frames[0]
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "photo.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    row = {"uri": str(speaker), "input_key": input_key(str(speaker))}
    reasons = {}
    for gallery, expected in (("deny_dir", "identity_denied"), ("allow_dir", "identity_not_allowed")):
        cfg = load_config(None, [f"curate.{gallery}={tmp_path / gallery.split('_')[0]}"])
        out = tmp_path / gallery
        out.mkdir()
        scanned = FaceScanStage(cfg.model_dump(mode="json"), str(out)).scan(dict(row), row["uri"])
        clips = load_scan_meta(out / f"{row['input_key']}.npz")["clips"]
        reasons[gallery] = {c["reason"] for c in clips}
        assert scanned["status"] == "scanned" and reasons[gallery] == {expected}, reasons
    cfg = load_config(None, [f"curate.allow_dir={tmp_path / 'deny'}"])  # the speaker is allowed
    (tmp_path / "allowed").mkdir()
    FaceScanStage(cfg.model_dump(mode="json"), str(tmp_path / "allowed")).scan(dict(row), row["uri"])
    assert {c["reason"] for c in load_scan_meta(tmp_path / "allowed" / f"{row['input_key']}.npz")["clips"]} == {None}


def test_a_remote_input_is_fetched_once_for_its_probe_scan_and_every_clip(
        media_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the stage makes the local copy: probe, scan and renders read it (a scheme pyarrow does
    not know would fail any of them that fetched on its own)."""
    import contextlib

    from portraitflow.operators import curate_input
    from portraitflow.operators.inputs import input_key

    fetched = []

    @contextlib.contextmanager
    def fake_remote(uri: str):
        fetched.append(uri)
        yield str(media_dir / uri.removeprefix("unknown://bucket/"))

    monkeypatch.setattr(curate_input, "local_copy", fake_remote)
    cfg = load_config(None, OVERRIDES + ["mlflow.enabled=false"])
    dirs = [tmp_path / name for name in ("scans", "staging", "attempts")]
    for folder in dirs:
        folder.mkdir()
    stage = curate_input.CurateInputStage(cfg.model_dump(mode="json"), *map(str, dirs), max_attempts=2)
    uri = f"unknown://bucket/{TALKING[0]}"
    row = stage.curate({"uri": uri, "input_key": input_key(uri)})
    staged = list(dirs[1].glob("*.tar"))
    assert row["status"] == "scanned" and json.loads(row["render_errors"]) == {} and staged
    assert fetched == [uri] and "fetch" in json.loads(row["timings"])
    monkeypatch.undo()  # the real fetch of an unknown scheme: a failed row with the store's error
    missing = stage.curate({"uri": "unknown://bucket/missing.mp4", "input_key": "missing"})
    assert missing["status"] == "failed" and missing["error"] and missing["render_errors"] == "{}"


def test_an_unexpected_error_while_curating_gives_a_failed_row_with_its_text(tmp_path: Path) -> None:
    """An error the scan raises outside its own guards (a bug): the input fails with that error
    (before, the worker raised and the input ended `quarantined` with the error lost). A damaged
    scan file, which raised so, is now scanned again (test_curate_resume.py)."""
    from portraitflow.operators import curate_input
    from portraitflow.operators.inputs import input_key
    from portraitflow.operators.video_writer import write_h264

    video = tmp_path / "clip.mp4"
    write_h264(video, [np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), np.uint8)], 25)
    cfg = load_config(None, OVERRIDES + ["mlflow.enabled=false"])
    dirs = [tmp_path / name for name in ("scans", "staging", "attempts")]
    for folder in dirs:
        folder.mkdir()
    stage = curate_input.CurateInputStage(cfg.model_dump(mode="json"), *map(str, dirs), max_attempts=2)
    row = {"uri": str(video), "input_key": input_key(str(video))}
    scan = stage.scanner.scan

    def unexpected(row: dict, path: str) -> dict:
        raise ValueError("an error no guard expected")

    stage.scanner.scan = unexpected
    failed = stage.curate(dict(row))
    stage.scanner.scan = scan
    assert failed["status"] == "failed" and failed["error"] == "ValueError: an error no guard expected"
    assert failed["render_errors"] == "{}" and isinstance(json.loads(failed["timings"]), dict)
    unmatched = stage.curate({"uri": str(tmp_path / "nothing-*.mp4"), "input_key": "unmatched"})
    assert unmatched["status"] == "failed" and unmatched["error"] == "FileNotFoundError: matched no video files"
    assert set(failed) == set(unmatched)  # the same fields as every other row
    stage.attempts_dir = tmp_path / "clip.mp4" / "attempts"  # its start cannot be counted: a file in the way
    uncounted = stage.curate(dict(row))  # a failed row, not an error that would fail its whole task's inputs
    assert uncounted["status"] == "failed" and "NotADirectoryError" in uncounted["error"]
    assert set(uncounted) == set(failed)


def test_an_input_that_crashes_its_render_worker_is_given_up_on(tmp_path: Path) -> None:
    """The second render pass (a cap per identity) counts starts as the first pass does: Ray Data
    retries a task whose worker died forever, so the start after the last allowed one fails its
    clips; a start that finishes clears the count (its task may be retried for another input)."""
    from portraitflow.operators.curate_input import render_decided_clips
    from portraitflow.operators.quarantine import start_attempt

    cfg = load_config(None, OVERRIDES + ["mlflow.enabled=false"])
    row = {"input_key": "talk-0123456789", "uri": str(tmp_path / "talk.mp4"), "width": 64, "height": 64,
           "keys": json.dumps(["talk-0123456789_00000000_00002000"])}
    args = (cfg.model_dump(mode="json"), str(tmp_path), str(tmp_path), str(tmp_path), 2)
    for _ in range(3):  # the file is gone: each start fails its clip with why, and finishes
        assert "FileNotFoundError" in render_decided_clips(dict(row), *args)["render_errors"]
    assert not (tmp_path / "render-talk-0123456789").exists()
    for _ in range(2):  # two starts whose worker died before they finished
        start_attempt(tmp_path, "render-talk-0123456789")
    given_up = render_decided_clips(dict(row), *args)
    assert json.loads(given_up["render_errors"]) == {
        "talk-0123456789_00000000_00002000": "render: quarantined: the worker processing this job crashed on each of "
                                             "its 2 attempts"}


def test_ctrl_c_says_the_finished_work_is_kept(media_dir: Path, tmp_path: Path) -> None:
    """SIGTERM said so in one line; Ctrl-C ended silently after Ray's "execution failed"."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "portraitflow.jobs.cli", "curate", str(media_dir / "liveportrait_d6.mp4"), "--out",
            str(out)] + [a for o in OVERRIDES + ["mlflow.enabled=false"] for a in ("--set", o)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's job
    deadline = time.monotonic() + 300
    while not list(out.glob(".state/attempts/*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == "Interrupted (Ctrl-C): finished work is kept; rerun the same command to resume"
