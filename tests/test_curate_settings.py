"""Curate settings: what the config accepts, and which changes an output folder allows on resume."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import typer

from portraitflow.jobs.config import load_config
from portraitflow.jobs.curate import Layout, check_corpus_settings, corpus_settings
from portraitflow.operators.scan_store import scan_fingerprint


def test_an_odd_crop_size_is_refused_with_the_reason() -> None:
    """The encoder cuts an odd side to the even one below, while the sample's coordinates kept the odd one."""
    with pytest.raises(ValueError, match=r"crop_size \(333\) must be even"):
        load_config(None, ["curate.crop_size=333"])
    assert load_config(None, ["curate.crop_size=334"]).curate.crop_size == 334


def _finished_corpus(out: Path, cfg) -> Layout:
    """An output folder curated with `cfg` that holds a finished input."""
    layout = Layout(out)
    layout.make()
    layout.settings.write_text(json.dumps(corpus_settings(cfg)))
    (layout.done / "talk-0123456789.json").write_text(json.dumps({"input": {"status": "accepted"}, "clips": []}))
    return layout


def test_chunk_frames_may_change_when_resuming_and_keeps_scans(tmp_path: Path) -> None:
    """It bounds memory only: the same frames come out in other chunks."""
    layout = _finished_corpus(tmp_path, load_config(None, []))
    check_corpus_settings(load_config(None, ["curate.chunk_frames=8"]), layout)
    assert scan_fingerprint(load_config(None, ["curate.chunk_frames=8"])) == scan_fingerprint(load_config(None, []))
    assert scan_fingerprint(load_config(None, ["curate.detect_every=3"])) != scan_fingerprint(load_config(None, []))


def test_a_scan_is_the_same_whatever_chunk_frames(media_dir: Path, tmp_path: Path) -> None:
    from portraitflow.operators.face_scan import FaceScanStage

    scans = {}
    for chunk in (64, 7):
        folder = tmp_path / str(chunk)
        folder.mkdir()
        cfg = load_config(None, [f"curate.chunk_frames={chunk}"]).model_dump(mode="json")
        video = str(media_dir / "liveportrait_d0.mp4")
        FaceScanStage(cfg, str(folder)).scan({"uri": video, "input_key": "talk"}, video)
        with np.load(folder / "talk.npz") as data:
            scans[chunk] = {name: data[name] for name in data.files}
    assert scans[64].keys() == scans[7].keys() and "c0_embedding" in scans[64]
    assert str(scans[64].pop("meta")) == str(scans[7].pop("meta"))  # clips, decisions, measures, fingerprint
    for name, value in scans[64].items():
        assert np.allclose(value, scans[7][name], atol=1e-4), name


def test_other_settings_are_refused_once_the_folder_holds_finished_work_only(tmp_path: Path) -> None:
    """Before an input is done or a shard written, nothing depends on the recorded settings (a first
    run that died early must not lock the folder to them); from then on only operational ones may change."""
    from portraitflow.operators import ledger
    from portraitflow.operators.shards import pack_shards, stage_sample

    layout = Layout(tmp_path)
    layout.make()
    layout.settings.write_text(json.dumps(corpus_settings(load_config(None, []))))
    other = load_config(None, ["curate.min_face_px=999", "curate.keep_audio=false"])
    assert check_corpus_settings(other, layout) == ["curate.min_face_px: 128 -> 999", "curate.keep_audio: True -> False"]
    ledger.write_marker(layout.done, {"input_key": "gone", "status": "failed"}, [])  # failed: tried again anyway
    assert check_corpus_settings(other, layout)
    ledger.write_marker(layout.done, {"input_key": "talk", "status": "rejected"}, [])
    with pytest.raises(typer.BadParameter, match=r"curate\.min_face_px: 128 -> 999; curate\.keep_audio: True -> False.*"
                       r"recorded settings: --set=curate\.min_face_px=128 --set=curate\.keep_audio=true"):
        check_corpus_settings(other, layout)
    assert check_corpus_settings(load_config(None, ["curate.actor_cpus=3", "curate.shard_max_samples=7",
                                                    "face.num_threads=2"]), layout) == []
    ledger.marker_path(layout.done, "talk").unlink()
    stage_sample(layout.staging, "talk_00000000_00001000", {"json": b"{}"})
    pack_shards(layout.staging, layout.shards, 1, 1 << 20)  # a shard whose marker a kill prevented
    with pytest.raises(typer.BadParameter, match="other settings"):
        check_corpus_settings(other, layout)


def test_a_setting_added_since_a_folder_was_curated_counts_at_its_default(tmp_path: Path) -> None:
    """Folders curated before `min_source_fps` existed resume at its default (any frame rate, as
    they were curated), and refuse another value like any other change."""
    from portraitflow.operators import ledger

    layout = Layout(tmp_path)
    layout.make()
    older = corpus_settings(load_config(None, []))
    del older["curate"]["min_source_fps"]
    layout.settings.write_text(json.dumps(older))
    ledger.write_marker(layout.done, {"input_key": "talk", "status": "rejected"}, [])
    assert check_corpus_settings(load_config(None, []), layout) == []
    with pytest.raises(typer.BadParameter, match=r"curate\.min_source_fps: 0\.0 -> 20\.0"):
        check_corpus_settings(load_config(None, ["curate.min_source_fps=20"]), layout)


def test_settings_taken_anew_discard_the_samples_staged_under_the_old_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from portraitflow.jobs.curate import run_curation
    from portraitflow.operators.shards import stage_sample

    monkeypatch.setattr("portraitflow.jobs.runtime.init_ray", lambda *args, **kwargs: None)
    layout = Layout(tmp_path)
    layout.make()
    layout.settings.write_text(json.dumps(corpus_settings(load_config(None, ["curate.crop_size=256"]))))
    stage_sample(layout.staging, "talk_00000000_00001000", {"json": b"{}"})  # a 256 px sample
    cfg = load_config(None, ["mlflow.enabled=false"])
    run_curation(cfg, [], tmp_path)
    assert not list(layout.staging.iterdir())
    assert json.loads(layout.settings.read_text()) == corpus_settings(cfg) | {"galleries": {}}


@pytest.mark.parametrize("gallery", ["missing", "no_face", "empty"])
def test_a_bad_gallery_stops_the_run_before_anything_is_written(gallery: str, tmp_path: Path) -> None:
    """Found on the driver, with the setting that names it: not in the actors, after the settings
    were recorded, as an ActorDiedError."""
    import cv2
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    (tmp_path / "talk.mp4").write_bytes(b"x")  # an input that is there: only the gallery is wrong
    folder = tmp_path / gallery
    if gallery != "missing":
        folder.mkdir()
    if gallery == "no_face":
        cv2.imwrite(str(folder / "wall.png"), np.full((64, 64, 3), 128, np.uint8))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["curate", str(tmp_path / "talk.mp4"), "--out", str(out), "--set",
                                      f"curate.deny_dir={folder}", "--set", "mlflow.enabled=false"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    reason = {"missing": f"{folder} is not a folder", "no_face": f"no face found in any photo of {folder}",
              "empty": f"{folder} holds no photo (.bmp"}[gallery]  # an empty folder (a wrong mount) said as such
    assert f"curate.deny_dir: {reason}" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_an_identity_switch_similarity_of_zero_is_taken_not_replaced_by_the_backends(tmp_path: Path) -> None:
    from portraitflow.operators.corpus_decisions import corpus_ledger

    zero = corpus_ledger(load_config(None, ["curate.identity_switch_similarity=0"]).curate, 0.5, tmp_path / "a", ())
    assert zero.same_person == 0.0
    assert corpus_ledger(load_config(None, []).curate, 0.5, tmp_path / "b", ()).same_person == 0.5


@pytest.mark.parametrize(("cpus", "memory_gib", "face_actors", "sizes"), [
    (8.0, 64, None, (4, 4)),  # local: one actor per actor_cpus (2) CPUs
    (8.0, 5, None, (2, 2)),  # as many as the local memory holds: more would never start, and the pool waits for them
    (None, None, None, (1, 30)),  # a cluster: grows from one as nodes come
    (None, None, 3, (3, 3)),  # fixed where asked
])
def test_the_curation_actor_pool_grows_on_a_cluster_and_fits_a_local_ray(
        monkeypatch: pytest.MonkeyPatch, cpus: float | None, memory_gib: int | None, face_actors: int | None,
        sizes: tuple[int, int]) -> None:
    from portraitflow.pipelines import curate

    have = {"CPU": cpus, "memory": memory_gib and memory_gib * 1024**3}
    monkeypatch.setattr(curate, "local_resource", lambda _ray, resource: have[resource])
    overrides = ["curate.actor_cpus=2"] + ([f"curate.face_actors={face_actors}"] if face_actors else [])
    pool = curate._actor_pool(load_config(None, overrides), tasks=30)
    assert (pool.min_size, pool.max_size) == sizes


def test_gallery_photos_left_out_are_named(media_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A deny list that silently lost a person's photo would let them through."""
    import shutil

    import cv2

    from portraitflow.operators.face_scan import check_galleries

    folder = tmp_path / "deny"
    folder.mkdir()
    shutil.copy(media_dir / "hallo_6.jpg", folder / "person.jpg")
    cv2.imwrite(str(folder / "wall.png"), np.full((64, 64, 3), 128, np.uint8))
    (folder / "notes.png").write_text("not a picture")
    check_galleries(load_config(None, [f"curate.deny_dir={folder}"]))
    assert "2 photo(s) left out of the gallery: notes.png (not_an_image), wall.png (no face)" in caplog.text


@pytest.mark.parametrize(("setting", "change", "restore"), [
    # a default that splits dim footage into fewer shots; before it, every histogram cut split (0.0)
    ("shot_hash_threshold", "0.0 -> 0.25", "0.0"),
    # mirrored copies were kept before; on, new flipped copies would be rejected while older ones stay
    ("duplicate_mirrored", "False -> True", "false"),
    # a dissolve's frames beside an identity switch were kept before (review s24)
    ("identity_switch_margin_seconds", "0.0 -> 0.5", "0.0"),
])
def test_a_folder_curated_before_a_setting_that_changed_results_resumes_only_with_the_old_behaviour(
        tmp_path: Path, setting: str, change: str, restore: str) -> None:
    """A folder recorded before the setting existed counts it at the value that reproduces what it
    got (`BEHAVIOUR_BEFORE_ADDED`), so resuming with the new default would mix the two."""
    from portraitflow.operators import ledger

    layout = Layout(tmp_path)
    layout.make()
    older = corpus_settings(load_config(None, []))
    del older["curate"][setting]
    layout.settings.write_text(json.dumps(older))
    ledger.write_marker(layout.done, {"input_key": "talk", "status": "rejected"}, [])
    with pytest.raises(typer.BadParameter, match=rf"curate\.{setting}: {re.escape(change)}.*"
                       rf"recorded settings: --set=curate\.{setting}={re.escape(restore)}"):
        check_corpus_settings(load_config(None, []), layout)
    assert check_corpus_settings(load_config(None, [f"curate.{setting}={restore}"]), layout) == []


def test_a_corpus_measured_by_an_older_version_is_not_resumed(tmp_path: Path) -> None:
    """Scan measures 7 changed what samples hold (pose convention, motion, reference frame): a
    resume mixed both in one corpus, and advised `--set curate.min_motion=0.002`, which on the new
    scale rejects real clips."""
    from portraitflow.operators import ledger
    from portraitflow.operators.scan_store import SCAN_MEASURES_VERSION

    layout = Layout(tmp_path)
    layout.make()
    older = corpus_settings(load_config(None, []))
    del older["versions"]  # recorded before versions were
    layout.settings.write_text(json.dumps(older))
    assert check_corpus_settings(load_config(None, []), layout) == [f"versions.scan_measures: 6 -> {SCAN_MEASURES_VERSION}"]
    ledger.write_marker(layout.done, {"input_key": "talk", "status": "rejected"}, [])
    with pytest.raises(typer.BadParameter, match=rf"scan measures 6 or older, now {SCAN_MEASURES_VERSION}: .*"
                                                 r"curate into a new --out"):
        check_corpus_settings(load_config(None, []), layout)
    layout.settings.write_text(json.dumps(corpus_settings(load_config(None, []))))
    assert check_corpus_settings(load_config(None, []), layout) == []
    layout.settings.unlink()  # curated before settings were recorded at all
    with pytest.raises(typer.BadParameter, match="records no settings"):
        check_corpus_settings(load_config(None, []), layout)


def test_other_face_model_files_are_refused_like_other_settings(tmp_path: Path) -> None:
    """Another insightface root, or a pack replaced in place, changes no setting but every embedding:
    a resume mixed two recognisers' vectors, and de-duplication missed a re-encode across them."""
    cfg = load_config(None, [])
    layout = _finished_corpus(tmp_path / "a", cfg)
    recorded = json.loads(layout.settings.read_text())
    assert set(recorded["models"]) == {"sface", "shape_predictor_68", "yunet"}
    recorded["models"]["sface"] = "0" * 64  # curated with another recogniser file
    layout.settings.write_text(json.dumps(recorded))
    with pytest.raises(typer.BadParameter, match=r"models\.sface: '0000.*the face model files it was curated with"):
        check_corpus_settings(cfg, layout)
    del recorded["models"]  # curated before model files were recorded: taken as the same
    layout.settings.write_text(json.dumps(recorded))
    assert check_corpus_settings(cfg, layout) == []


def test_a_scan_is_made_again_for_other_face_model_files(monkeypatch: pytest.MonkeyPatch) -> None:
    from portraitflow.models.face import factory

    cfg = load_config(None, [])
    before = scan_fingerprint(cfg)
    monkeypatch.setattr(factory, "model_digests", lambda face: {"sface": "another recogniser"})
    assert scan_fingerprint(cfg) != before


@pytest.mark.parametrize("damage", ['{"curate": {"fps"', "[]", '{"curate": 5}', "\udcff"])
def test_a_damaged_settings_record_is_named_in_one_line(damage: str, tmp_path: Path) -> None:
    """The repro: a cut, a list or a section that is no mapping crashed curate in a traceback."""
    layout = Layout(tmp_path)
    layout.make()
    layout.settings.write_bytes(damage.encode("utf-8", "surrogateescape"))
    with pytest.raises(typer.BadParameter, match=r"settings\.json is damaged .*restore it"):
        check_corpus_settings(load_config(None, []), layout)
