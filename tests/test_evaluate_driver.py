"""The evaluate flow's driver on a small clip made by the test: atomic files, the parent run's
counts, an unknown ranking metric, and `evaluate --jobs` with a jobs file as `animate` takes it."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.jobs.sweep_spec import SweepSpec


class _Warnings(logging.Handler):
    """The messages of the sweep driver's warnings (caplog is per test; the sweep runs once)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def small_sweep(ray_local, tmp_path_factory):
    """A sweep of one clip (the astronaut photo under a moving camera): `still`, plus a config
    that fails, ranked by a metric no config has (a name that is no metric is refused before); os.replace records what was written atomically."""
    from mlflow import MlflowClient

    from portraitflow.jobs.samples import astronaut_pan
    from portraitflow.jobs.sweep import run_sweep
    from portraitflow.operators.video_writer import write_h264

    root = tmp_path_factory.mktemp("small_sweep")
    (root / "data").mkdir()
    write_h264(root / "data" / "astronaut.mp4", [astronaut_pan(seconds=1.2, fps=10.0, size=256)], fps=10.0)
    spec = SweepSpec.model_validate({
        "name": "small", "dataset": {"type": "folder", "path": str(root / "data")},
        "configs": [{"backend": "still"}, {"backend": "warp", "pose_multiplier": -1.0}],
        "evaluate": {"max_seconds": 1.0, "frame_stride": 2, "side_by_side": 0, "rank_by": "lpips"}})  # no weights
    uri = f"sqlite:///{root / 'mlflow.db'}"
    replaced, replace = [], os.replace
    warnings, logger = _Warnings(), logging.getLogger("portraitflow.jobs.sweep")
    logger.addHandler(warnings)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "replace", lambda src, dst: (replaced.append(Path(dst)), replace(src, dst))[1])
            parent_id = run_sweep(spec, load_config(None, [f"mlflow.tracking_uri={uri}"]), root / "sweep")
    finally:
        logger.removeHandler(warnings)
    return {"root": root, "uri": uri, "parent": MlflowClient(uri).get_run(parent_id), "replaced": replaced,
            "warnings": warnings.messages}


def test_sweep_files_are_written_atomically(small_sweep) -> None:
    out = small_sweep["root"] / "sweep"
    per_video = next(out.glob("configs/*/scores/*/per_video.parquet"))
    assert {out / "dataset.parquet", out / "summary.csv", per_video} <= set(small_sweep["replaced"])
    assert not list(out.rglob("*.part"))


def test_the_parent_run_counts_only_finished_configs(small_sweep) -> None:
    assert small_sweep["parent"].info.status == "FINISHED"
    metrics = small_sweep["parent"].data.metrics
    assert (metrics["configs_finished"], metrics["configs_failed"], metrics["videos"]) == (1, 1, 1)


def test_an_unknown_rank_metric_is_warned_about_with_the_metrics_there_are(small_sweep) -> None:
    from portraitflow.operators import metrics

    warned = [m for m in small_sweep["warnings"] if m.startswith("cannot rank by 'lpips'")]
    assert warned, small_sweep["warnings"]
    assert {"psnr", "apd"} <= set(warned[0].split("available: ")[1].split(", ")) <= set(metrics.metric_list()) | {
        "csim_opencv"}  # metrics only: no sweep param, no job count
    summary = pd.read_csv(small_sweep["root"] / "sweep" / "summary.csv")
    assert list(summary["config"]) == ["still", "warp[pose_multiplier=-1.0]"]  # the order they ran in
    page = (small_sweep["root"] / "sweep" / "report" / "index.html").read_text()
    assert "Summary, in run order: no config has lpips" in page  # it said "ranked by lpips" over rows in run order


def test_evaluate_jobs_without_job_id_matches_the_ids_animate_derived(small_sweep, tmp_path: Path) -> None:
    """A results table with ref and driving dropped, and the jobs file `animate` was given (no
    `job_id`, paths relative to it): the rows are found and scored, not a KeyError."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    dataset = small_sweep["root"] / "sweep" / "dataset"
    clip, ref = next(dataset.glob("*.mp4")), next(dataset.glob("*.ref.png"))
    output = next((small_sweep["root"] / "sweep" / "configs").rglob(f"outputs/{clip.stem}-*.mp4"))  # id-digest, as animators name
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"ref,driving\n{os.path.relpath(ref, tmp_path)},{os.path.relpath(clip, tmp_path)}\n")
    results = tmp_path / "results.parquet"
    pd.DataFrame({"job_id": [f"{ref.stem}__{clip.stem}"], "status": ["ok"], "output": [str(output)]}).to_parquet(results)
    args = ["evaluate", str(results), "--out", str(tmp_path / "eval"), "--mlflow-uri", small_sweep["uri"],
            "--set", "evaluate.frame_stride=2", "--set", "evaluate.side_by_side=0"]
    from portraitflow.jobs.runtime import FOLDER_TAG, folder_tag
    from portraitflow.jobs.sweep import GENERATION_RUN_TAG, RESULTS_TAG

    client = MlflowClient(small_sweep["uri"])
    animate_run = client.create_run(client.create_experiment("animate-elsewhere"),  # the run that wrote the results
                                    tags={FOLDER_TAG: folder_tag(tmp_path)}).info.run_id
    client.set_terminated(animate_run, "FINISHED")
    result = CliRunner().invoke(app, [*args, "--jobs", str(jobs)])
    assert result.exit_code == 0, result.output
    run = client.get_run(result.output.split("run ")[1].split()[0])
    assert run.data.metrics["jobs_ok"] == 1 and run.data.metrics["csim_opencv"] > 0.5
    # a score traces back to the table it scored, the animate run that made it, and the code
    assert (run.data.tags[RESULTS_TAG], run.data.tags[GENERATION_RUN_TAG]) == (str(results.resolve()), animate_run)
    assert run.data.tags["portraitflow.version"]

    (tmp_path / "typo.csv").write_text("ref,drivng\na.png,b.mp4\n")
    refused = CliRunner().invoke(app, [*args, "--jobs", str(tmp_path / "typo.csv")])
    assert refused.exit_code == 2 and "drivng" in refused.output and "Traceback" not in refused.output


def test_evaluate_takes_relative_paths_from_the_results_folder_and_fails_when_nothing_is_scored(
        small_sweep, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-written results CSV beside its videos, run from another folder: its paths were taken
    from the current folder, every job was `no_output`, and the command still exited 0."""
    import shutil

    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    dataset = small_sweep["root"] / "sweep" / "dataset"
    clip, ref = next(dataset.glob("*.mp4")), next(dataset.glob("*.ref.png"))
    output = next((small_sweep["root"] / "sweep" / "configs").rglob(f"outputs/{clip.stem}-*.mp4"))  # id-digest, as animators name
    table = tmp_path / "table"
    table.mkdir()
    for source, name in ((clip, "drv.mp4"), (ref, "ref.png"), (output, "out.mp4")):
        shutil.copy(source, table / name)
    (table / "results.csv").write_text("job_id,ref,driving,output\nj,ref.png,drv.mp4,out.mp4\n")
    (table / "lost.csv").write_text("job_id,ref,driving,output\nj,ref.png,drv.mp4,gone.mp4\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["--mlflow-uri", small_sweep["uri"], "--set", "evaluate.frame_stride=2", "--set", "evaluate.side_by_side=0"]
    scored = CliRunner().invoke(app, ["evaluate", str(table / "results.csv"), "--out", str(tmp_path / "eval"), *args])
    assert scored.exit_code == 0, scored.output
    assert pd.read_parquet(tmp_path / "eval" / "per_video.parquet")["status"].tolist() == ["ok"]
    lost = CliRunner().invoke(app, ["evaluate", str(table / "lost.csv"), "--out", str(tmp_path / "lost"), *args])
    assert lost.exit_code == 1 and "could be scored" in lost.output and "1 no_output" in lost.output, lost.output
    assert "Relative ref, driving and output paths" in lost.output and "--protocol cross" not in lost.output
    from mlflow import MlflowClient

    statuses = [MlflowClient(small_sweep["uri"]).get_run(result.output.split("run ")[1].split()[0]).info.status
                for result in (scored, lost)]
    assert statuses == ["FINISHED", "FAILED"]  # the run that scored nothing is no result, as its exit says
    page = (tmp_path / "lost" / "report" / "index.html").read_text()
    assert "no_output" in page  # its report still shows each job's reason
