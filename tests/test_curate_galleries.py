"""Allow and deny galleries in a curated folder: what they hold, not their path, is what a folder's
record and a scan's fingerprint keep, so a changed gallery never decides some inputs while the old
one decided others. And a retried input renders only its clips the shards do not hold already."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer

from portraitflow.jobs.config import PortraitFlowConfig, load_config
from portraitflow.jobs.curate import Layout, check_corpus_settings, corpus_settings
from portraitflow.operators.scan_store import gallery_listing
from portraitflow.operators import ledger
from portraitflow.operators.scan_store import scan_fingerprint
from test_curate_driver import QUIET, SCANNED, _rows, _scan


def _gallery(folder: Path, *photos: str) -> Path:
    """A gallery folder holding a photo file per name (its bytes: the name; no face is read here)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in photos:
        (folder / name).write_bytes(name.encode())
    return folder


def _finished(out: Path, settings: dict) -> Layout:
    """An output folder recorded with `settings` that holds a finished input."""
    layout = Layout(out)
    layout.make()
    layout.settings.write_text(json.dumps(settings))
    ledger.write_marker(layout.done, {"input_key": "talk", "status": "rejected"}, [])
    return layout


def test_a_gallery_whose_photos_changed_refuses_the_rerun(tmp_path: Path) -> None:
    """Adding a person's photo to the deny folder would keep their finished clips and reject a copy."""
    deny = _gallery(tmp_path / "deny", "anna.jpg")
    cfg = load_config(None, [f"curate.deny_dir={deny}"])
    layout = _finished(tmp_path / "out", corpus_settings(cfg))
    assert check_corpus_settings(cfg, layout) == []  # unchanged: resumes
    moved = shutil.copytree(deny, tmp_path / "elsewhere" / "renamed")
    assert check_corpus_settings(load_config(None, [f"curate.deny_dir={moved}"]), layout) == []  # the same photos

    _gallery(deny, "ben.png")
    with pytest.raises(typer.BadParameter, match=r"other settings \(curate\.deny_dir: 'sha256:\w+' -> 'sha256:\w+'\); "
                       r"curate into a new --out, or run with the recorded settings: curate\.deny_dir holding the "
                       r"photos it held"):
        check_corpus_settings(cfg, layout)
    recorded = json.loads(layout.settings.read_text()) | {"galleries": gallery_listing(cfg.curate)}
    recorded["galleries"]["deny_dir"]["photos"].remove("ben.png")  # as the run recorded it, before ben was added
    layout.settings.write_text(json.dumps(recorded))
    with pytest.raises(typer.BadParameter, match=rf"curate\.deny_dir holding the photos it held \({deny.resolve()}: "
                       r"anna\.jpg\)"):  # a team keeping several versions of a deny list knows which
        check_corpus_settings(cfg, layout)
    (deny / "ben.png").unlink()
    with pytest.raises(typer.BadParameter, match=r"curate\.allow_dir: None -> 'sha256:\w+'.*"
                       r"recorded settings: --set=curate\.allow_dir=null"):
        check_corpus_settings(load_config(None, [f"curate.deny_dir={deny}", f"curate.allow_dir={deny}"]), layout)


def test_a_relative_gallery_is_the_folder_where_the_config_was_read(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker, in another working directory, loads the folder the driver checked; a rerun from
    another working directory names another folder, refused when its photos differ."""
    for place, photo in (("a", "anna.jpg"), ("b", "ben.jpg")):
        _gallery(tmp_path / place / "gallery", photo)
    monkeypatch.chdir(tmp_path / "a")
    cfg = load_config(None, ["curate.deny_dir=gallery"])
    assert cfg.curate.deny_dir == str(tmp_path / "a" / "gallery")
    layout = _finished(tmp_path / "out", corpus_settings(cfg))
    monkeypatch.chdir(tmp_path / "b")
    assert PortraitFlowConfig.model_validate(cfg.model_dump(mode="json")).curate.deny_dir == cfg.curate.deny_dir
    with pytest.raises(typer.BadParameter, match=r"curate\.deny_dir: 'sha256:\w+' -> 'sha256:\w+'"):
        check_corpus_settings(load_config(None, ["curate.deny_dir=gallery"]), layout)


def test_a_folder_recorded_before_gallery_digests_resumes_with_its_gallery_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its record holds the folder's path as given (what the folder held then is unknown): the same
    folder, or no gallery as before, resumes; another folder, or dropping the gallery, is refused."""
    monkeypatch.chdir(tmp_path)
    _gallery(tmp_path / "gallery", "anna.jpg")
    _gallery(tmp_path / "other", "ben.jpg")
    older = corpus_settings(load_config(None, []))
    assert check_corpus_settings(load_config(None, []), _finished(tmp_path / "plain", older)) == []
    older["curate"]["deny_dir"] = "gallery"
    layout = _finished(tmp_path / "out", older)
    assert check_corpus_settings(load_config(None, ["curate.deny_dir=gallery"]), layout) == []
    assert check_corpus_settings(load_config(None, [f"curate.deny_dir={tmp_path / 'gallery'}"]), layout) == []
    with pytest.raises(typer.BadParameter, match=r"curate\.deny_dir: 'gallery' -> 'sha256:\w+'.*"
                       r"recorded settings: '--set=curate\.deny_dir=\"gallery\"'"):
        check_corpus_settings(load_config(None, ["curate.deny_dir=other"]), layout)
    with pytest.raises(typer.BadParameter, match=r"curate\.deny_dir: 'gallery' -> None"):
        check_corpus_settings(load_config(None, []), layout)


def test_a_scan_made_with_other_gallery_photos_is_not_reused(media_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A pending input's scan left by a killed run holds the old gallery's decisions."""
    from portraitflow.operators import face_scan
    from portraitflow.operators.video_writer import write_h264

    deny = tmp_path / "deny"
    deny.mkdir()
    shutil.copy(media_dir / "hallo_6.jpg", deny / "first.jpg")
    cfg = load_config(None, [f"curate.deny_dir={deny}"])
    assert scan_fingerprint(cfg) == scan_fingerprint(load_config(None, [f"curate.deny_dir={deny}"]))
    scans = []
    real_scan = face_scan.scan_video
    monkeypatch.setattr(face_scan, "scan_video", lambda *args: scans.append(args[1]) or real_scan(*args))
    video = tmp_path / "talk.mp4"
    write_h264(video, [np.random.default_rng(0).integers(0, 255, (30, 64, 64, 3), np.uint8)], 25)
    row = {"uri": str(video), "input_key": "talk-0123456789"}

    def scan() -> None:  # as a run's actor does: it is made with the galleries as they are then
        stage = face_scan.FaceScanStage(cfg.model_dump(mode="json"), str(tmp_path))
        assert stage.scan(dict(row), str(video))["status"] == face_scan.SCANNED

    scan()
    scan()
    assert len(scans) == 1  # the same photos: reused
    shutil.copy(media_dir / "hallo_3.jpg", deny / "second.jpg")
    scan()
    assert len(scans) == 2


def test_a_retried_input_renders_only_its_clips_not_in_the_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   in_process: None) -> None:
    """A run packed one of `talk`'s two kept clips and was killed before its marker: the retry
    renders the other one only, and counts that one."""
    from portraitflow.jobs.curate import run_curation
    from portraitflow.models.face.base import l2_normalise
    from portraitflow.operators import curate_input
    from portraitflow.operators.overlap import content_signature
    from portraitflow.operators.inputs import clip_key
    from portraitflow.operators.shards import npy_bytes, pack_shards, stage_sample

    rng = np.random.default_rng(0)
    people = [(l2_normalise(rng.normal(size=128)).astype(np.float32),
               content_signature(rng.uniform(0, 255, (50, 16, 16)))) for _ in range(2)]
    layout = Layout(tmp_path / "out")
    layout.make()
    layout.settings.write_text(json.dumps(corpus_settings(load_config(None, QUIET))))  # as the first run recorded
    video = tmp_path / "talk.mp4"
    video.write_bytes(b"the scan is reused; never decoded")
    key = _scan(layout.scans, str(video), [(0, 50, None, people[0]), (50, 100, None, people[1])])
    packed, missing = clip_key(key, 0, 2.0), clip_key(key, 2.0, 4.0)

    def stage(clip_key: str, embedding: np.ndarray) -> None:
        stage_sample(layout.staging, clip_key, {"json": b"{}", "id.npy": npy_bytes(embedding)})

    stage(packed, people[0][0])
    pack_shards(layout.staging, layout.shards, 100, 1 << 30)

    class Scanner:  # the saved scan is this file's
        def __init__(self, config: dict, scan_dir: str) -> None:
            self.cfg, self.scan_dir = PortraitFlowConfig.model_validate(config).curate, Path(scan_dir)
            self.analyzer = None  # renders are faked below

        def scan(self, row: dict, path: str) -> dict:
            return dict(row, **SCANNED, timings="{}")

    rendered = []

    def render_clip(clip: dict, path: str, cfg, staging_dir: Path, analyzer) -> dict:
        rendered.append(clip["key"])
        stage(clip["key"], people[1][0])
        return {"timings": {}, "error": ""}

    monkeypatch.setattr(curate_input, "FaceScanStage", Scanner)
    monkeypatch.setattr(curate_input, "render_clip", render_clip)
    metrics = run_curation(load_config(None, QUIET), [str(video)], layout.out)
    assert rendered == [missing] and metrics["clips_rendered"] == 1
    [talk] = _rows(layout.out / "manifest.parquet")
    assert talk["status"] == "accepted" and talk["clips_accepted"] == 2
