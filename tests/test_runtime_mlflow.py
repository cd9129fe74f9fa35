from __future__ import annotations

from pathlib import Path

import pytest

from portraitflow.jobs.config.runtime import MLflowConfig
from portraitflow.jobs.runtime import mlflow_run, mlflow_tracking_uri


def test_sqlite_store_keeps_artifacts_beside_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = tmp_path / "store"
    store.mkdir()
    cfg = MLflowConfig(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    with mlflow_run(cfg, "artifact-location") as run:
        note = tmp_path / "note.txt"
        note.write_text("hello")
        mlflow.log_artifact(str(note))
    assert list((store / "mlartifacts").rglob("note.txt"))
    assert not (elsewhere / "mlruns").exists()
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


def test_default_store_is_sqlite_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(MLflowConfig()) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert mlflow_tracking_uri(MLflowConfig()) == "http://tracking:5000"
    assert mlflow_tracking_uri(MLflowConfig(tracking_uri="sqlite:///x.db")) == "sqlite:///x.db"


def test_disabled_tracking_yields_no_run() -> None:
    with mlflow_run(MLflowConfig(enabled=False), "unused") as run:
        assert run is None
