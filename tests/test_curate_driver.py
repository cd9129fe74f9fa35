"""The curate driver (jobs/curate.py) on synthetic inputs, with the curation stage run in-process
instead of on Ray: what the manifest, the clip rows and the corpus decisions say when inputs are odd
or a retry goes wrong."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.operators import ledger

QUIET = ["mlflow.enabled=false", "curate.progress_bars=false"]


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The curation stage runs here, one input after another: no Ray."""
    from portraitflow.operators.curate_input import CurateInputStage
    from portraitflow.pipelines import curate as pipeline

    def curate_inputs(rows, cfg, scan_dir, staging_dir, attempts_dir):
        stage = CurateInputStage(cfg.model_dump(mode="json"), str(scan_dir), str(staging_dir), str(attempts_dir), 3)
        return [stage.curate(dict(row)) for row in rows], ""

    monkeypatch.setattr(pipeline, "curate_inputs", curate_inputs)
    monkeypatch.setattr("portraitflow.jobs.runtime.init_ray", lambda *args, **kwargs: None)


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


def _rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
