"""Curate settings: what the config accepts, and which changes an output folder allows on resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.jobs.curate import Layout, check_corpus_settings, corpus_settings
from portraitflow.operators.face_scan import scan_fingerprint


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
        FaceScanStage(cfg, str(folder)).scan({"uri": "talk", "input_key": "talk"}, str(media_dir / "liveportrait_d0.mp4"))
        with np.load(folder / "talk.npz") as data:
            scans[chunk] = {name: data[name] for name in data.files}
    assert scans[64].keys() == scans[7].keys() and "c0_embedding" in scans[64]
    assert str(scans[64].pop("meta")) == str(scans[7].pop("meta"))  # clips, decisions, measures, fingerprint
    for name, value in scans[64].items():
        assert np.allclose(value, scans[7][name], atol=1e-4), name
