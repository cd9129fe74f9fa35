"""What the sweep report shows: each config's latest attempt, coverage as ranking counts it, and
intervals a metric can reach; built from an MLflow store made by the test, no Ray, no videos."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from portraitflow.operators import report


def _child(client, experiment_id: str, parent_id: str, params: dict, status: str, start: int, folder: Path,
           metrics: dict[str, float], per_video: pd.DataFrame | None = None, error: str | None = None) -> str:
    from portraitflow.jobs import sweep
    from portraitflow.jobs import sweep_spec

    label = sweep_spec.config_label(params)
    run_id = client.create_run(experiment_id, run_name=label, start_time=start, tags={
        sweep.PARENT_TAG: parent_id, sweep.CONFIG_TAG: label, sweep.PARAMS_TAG: json.dumps(params)}).info.run_id
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    if per_video is not None:
        path = folder / run_id / "per_video.parquet"
        path.parent.mkdir(parents=True)
        per_video.assign(config=label).to_parquet(path)
        client.log_artifact(run_id, str(path))
    if error:
        client.set_tag(run_id, "error", error)
    client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A sweep's parent with warp at scale 1, 2, 3 and still: scale 1 FINISHED on old videos, then
    its rerun FAILED; scale 3 failed one of its two videos. `report_from_run` of it, with what it
    handed to `write_html`."""
    from mlflow import MlflowClient

    from portraitflow.jobs import sweep
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.runtime import ensure_experiment

    root = tmp_path_factory.mktemp("report")
    cfg = load_config(None, [f"mlflow.tracking_uri=sqlite:///{root / 'mlflow.db'}"])
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment_id = ensure_experiment(client, cfg.evaluate.experiment)
    parent = client.create_run(experiment_id, run_name="s").info.run_id
    ok = pd.DataFrame({"job_id": ["x", "y"], "status": "ok", "apd": [2.0, 4.0], "detection_rate": 1.0})
    runs = {"stale": _child(client, experiment_id, parent, {"backend": "warp", "scale": 1.0}, "FINISHED", 1000, root,
                            {"apd": 0.5, "detection_rate": 1.0}, ok.iloc[:1].assign(apd=0.5)),  # one old video
            "two": _child(client, experiment_id, parent, {"backend": "warp", "scale": 2.0}, "FINISHED", 2000, root,
                          {"apd": 3.0, "detection_rate": 1.0}, ok),
            "three": _child(client, experiment_id, parent, {"backend": "warp", "scale": 3.0}, "FINISHED", 2500, root,
                            {"apd": 1.0, "detection_rate": 0.5},  # as score_and_log averages it: the failed video 0
                            ok.assign(status=["ok", "failed"], apd=[1.0, np.nan], detection_rate=[1.0, np.nan])),
            "still": _child(client, experiment_id, parent, {"backend": "still"}, "FINISHED", 3000, root,
                            {"apd": 6.0, "detection_rate": 1.0}, ok.assign(apd=[5.0, 7.0])),
            "failed": _child(client, experiment_id, parent, {"backend": "warp", "scale": 1.0}, "FAILED", 4000, root,
                             {"apd": 0.1}, error="RuntimeError: boom")}  # logged before it failed: partial
    handed = {}

    def write_html(*args, **kwargs):
        handed.update(summary=args[2], per_video=args[7])
        return original(*args, **kwargs)

    original = report.write_html
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "write_html", write_html)
        page = sweep.report_from_run(parent, cfg, root / "out", "apd")
    return {"runs": runs, "page": page.read_text(), **handed}


def test_a_config_whose_latest_attempt_failed_shows_that_attempt_not_an_older_finished_run(sweep_report) -> None:
    """It showed the older FINISHED run, ranked first on one old video, with no error; summary.csv
    had the failure."""
    summary, runs = sweep_report["summary"].set_index("config"), sweep_report["runs"]
    failed = summary.loc["warp[scale=1.0]"]
    assert failed["status"] == "FAILED" and failed["error"] == "RuntimeError: boom"
    assert failed["run_id"] == runs["failed"] and failed["stale_run"] == runs["stale"]
    assert np.isnan(failed["apd"])  # neither the old run's numbers nor the failed attempt's partial ones
    assert list(sweep_report["summary"]["config"])[-1] == "warp[scale=1.0]"
    assert set(summary["stale_run"].drop("warp[scale=1.0]")) == {""}
    assert "warp[scale=1.0]" not in set(sweep_report["per_video"]["config"])  # its old videos are not plotted
    assert "RuntimeError: boom" in sweep_report["page"]


def test_the_plots_count_a_failed_video_as_no_face_as_the_summary_does(sweep_report) -> None:
    """Plotted over ok videos only, scale 3 showed detection 1.0 while its summary (and ranking) had 0.5."""
    per_video, summary = sweep_report["per_video"], sweep_report["summary"].set_index("config")
    plotted = per_video.groupby("config")["detection_rate"].mean()
    assert plotted["warp[scale=3.0]"] == 0.5
    pd.testing.assert_series_equal(plotted, summary.loc[plotted.index, "detection_rate"], check_names=False)
    assert np.isnan(per_video.loc[per_video["status"] == "failed", "apd"]).all()  # other metrics stay undefined


def test_parameter_intervals_stay_within_what_the_metric_can_be_and_the_page_sends_to_the_paired_plot(
        sweep_report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 2 videos the 95% intervals reached SSIM 1.9 and an error below 0."""
    assert set(report.RANGES) == set(report.metrics.METRICS)
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or path)
    summary = pd.DataFrame({"config": ["a", "b"], "backend": "warp", "scale": [1.0, 2.0]})
    per_video = pd.DataFrame({"config": ["a", "a", "b", "b"], "job_id": ["x", "y"] * 2,
                              "ssim": [0.99, 0.6, 0.95, 0.9], "apd": [0.1, 3.0, 0.2, 0.4]})
    report.parameter_plots(summary, per_video, ["backend", "scale"], tmp_path / "parameters.png")
    for ax in figures[0].axes:
        low, high = report.RANGES[ax.get_title().split()[0]]
        ends = np.concatenate([np.asarray(s)[:, 1] for c in ax.containers for s in c.lines[2][0].get_segments()])
        assert len(ends) == 4 and low <= ends.min() and ends.max() <= high, (ax.get_title(), ends)
    page = sweep_report["page"]
    assert "src='parameters.png'" in page and "src='paired.png'" in page
    assert "compare configs on apd video by video below" in page


def test_a_report_folder_reused_keeps_no_plot_of_an_earlier_report(tmp_path: Path) -> None:
    """A second sweep into the same OUT kept the first one's parameters plot (a config it never ran),
    and its parent run uploaded it as its own."""
    from mlflow import MlflowClient

    from portraitflow.jobs import sweep
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.runtime import ensure_experiment

    cfg = load_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment_id = ensure_experiment(client, cfg.evaluate.experiment)
    parent = client.create_run(experiment_id, run_name="one").info.run_id
    ok = pd.DataFrame({"job_id": ["x", "y"], "status": "ok", "apd": [2.0, 4.0], "detection_rate": 1.0})
    _child(client, experiment_id, parent, {"backend": "still"}, "FINISHED", 1000, tmp_path, {"apd": 3.0}, ok)
    out = tmp_path / "report"
    out.mkdir()
    for name in ("parameters.png", "paired.png"):
        (out / name).write_bytes(b"an earlier sweep's plot")
    page = sweep.report_from_run(parent, cfg, out, "apd").read_text()
    assert (out / "metrics.png").is_file() and "metrics.png" in page
    assert not (out / "parameters.png").exists() and not (out / "paired.png").exists()


def test_a_report_made_again_ranks_by_the_metric_the_sweep_ranked_by(tmp_path: Path) -> None:
    """`portraitflow report RUN` ranked a sweep of `rank_by: akd` by the default apd unless told
    `--rank-by akd` again; `--rank-by` still overrides it."""
    from mlflow import MlflowClient

    from portraitflow.jobs import sweep
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.runtime import ensure_experiment

    cfg = load_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment_id = ensure_experiment(client, cfg.evaluate.experiment)
    parent = client.create_run(experiment_id, run_name="s").info.run_id
    for backend, akd, apd in (("warp", 0.02, 5.0), ("still", 0.1, 1.0)):
        child = _child(client, experiment_id, parent, {"backend": backend}, "FINISHED", 1000, tmp_path,
                       {"akd": akd, "apd": apd})
        client.log_param(child, "evaluate.rank_by", "akd")
    page = sweep.report_from_run(parent, cfg, tmp_path / "again").read_text()  # a sweep from before the tag
    assert "ranked by akd (" in page and page.index(">warp<") < page.index(">still<")
    stale = tmp_path / "told" / "runs" / ("0" * 32)  # a run an earlier page in this folder showed
    stale.mkdir(parents=True)
    page = sweep.report_from_run(parent, cfg, tmp_path / "told", "apd").read_text()
    assert "ranked by apd (" in page and page.index(">still<") < page.index(">warp<")
    assert not stale.exists() and len(list((tmp_path / "told" / "runs").iterdir())) == 3  # 2 configs, the parent
    client.delete_run(parent)  # it said nothing of it: the page passed for a live run
    page = sweep.report_from_run(parent, cfg, tmp_path / "told", "apd").read_text()
    assert f"This run is deleted in MLflow (`mlflow runs restore --run-id {parent}`" in page
    client.restore_run(parent)
    client.set_tag(parent, sweep.RANK_BY_TAG, "apd")  # rerun ranking by apd: its configs' runs reused
    page = sweep.report_from_run(parent, cfg, tmp_path / "rerun").read_text()
    assert "ranked by apd (" in page
    client.set_tag(parent, sweep.RANK_BY_TAG, "akd_v0")  # a metric a later release renamed: the default
    page = sweep.report_from_run(parent, load_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                                            "evaluate.rank_by=akd"]), tmp_path / "renamed").read_text()
    assert "ranked by akd (" in page


def test_an_evaluation_run_made_again_ranks_by_its_own_rank_by(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from portraitflow.jobs import sweep
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.runtime import ensure_experiment

    cfg = load_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.create_run(ensure_experiment(client, cfg.evaluate.experiment), run_name="e").info.run_id
    ok = pd.DataFrame({"job_id": ["x"], "status": "ok", "akd": [0.1]})
    (tmp_path / run).mkdir()
    ok.to_parquet(tmp_path / run / "per_video.parquet")
    client.log_artifact(run, str(tmp_path / run / "per_video.parquet"))
    client.log_param(run, "rank_by", "akd")
    client.log_metric(run, "akd", 0.1)
    client.set_terminated(run, "FINISHED")
    assert "ranked by akd (" in sweep.report_from_run(run, cfg, tmp_path / "page").read_text()
