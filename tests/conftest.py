"""Shared fixtures: the read-only reference material in ../shared and a small local Ray."""
from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PORTRAITFLOW_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def _sigterm_kept() -> Iterator[None]:
    """The CLI and `init_ray` take SIGTERM over (`Terminated`); the test session keeps its own."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def _shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared test material is not on this machine)")
    return path


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """Real videos and photos of faces, described by MANIFEST.tsv."""
    return _shared("media")


@pytest.fixture(scope="session")
def media_manifest(media_dir: Path):
    import pandas as pd

    return pd.read_csv(media_dir / "MANIFEST.tsv", sep="\t")


@pytest.fixture(scope="session")
def insightface_root() -> Path:
    """A small real insightface pack: FaceAnalysis(name="pack", root=<this>)."""
    return _shared("models/insightface")


@pytest.fixture(scope="session")
def hunyuan_reference() -> Path:
    """state_dicts.json, SPEC.md and golden fixtures of the official HunyuanPortrait release."""
    return _shared("reference/hunyuan")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One small local Ray for the whole session (2 CPUs, as on CI)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024 * 1024,
                 log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """An isolated sqlite MLflow store per test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def torch_two_threads() -> Iterator[None]:
    """At most 2 torch threads, as on CI, so golden tolerances are checked as CI computes them."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    yield
    torch.set_num_threads(previous)


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
    monkeypatch.setattr("portraitflow.jobs.runtime.require_resource", lambda *args, **kwargs: None)  # no actor to place
