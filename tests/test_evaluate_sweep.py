"""Sweeps end to end on real media: warp against the still baseline, nested MLflow runs, resume, report."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.jobs import sweep_spec

#: talking videos with visible head motion (MANIFEST.tsv), cut to their first seconds
DRIVERS = ["liveportrait_d20.mp4", "sadtalker_WDA_KatieHill_000.mp4"]


SWEEP_YAML = """
name: warp-vs-still
dataset: {{type: folder, path: {media}, include: {drivers}}}
configs:
  - {{backend: warp}}
  - {{backend: still}}
  - {{backend: warp, pose_multiplier: -1.0}}   # invalid: fails alone
evaluate: {{protocol: self, max_seconds: 2.0, frame_stride: 2, side_by_side: 1, rank_by: apd}}
"""


@pytest.fixture(scope="module")
def sweep_run(media_dir: Path, ray_local, tmp_path_factory):
    """`portraitflow sweep` on two real clips with two configs at once (plus a broken one): half a CPU
    per animation actor, so both actors and the task feeding them fit the 2 CPUs of `ray_local`."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app
    from portraitflow.jobs.sweep_spec import load_sweep

    out = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    sweep_file = out / "sweep.yaml"
    sweep_file.write_text(SWEEP_YAML.format(media=media_dir, drivers=DRIVERS))
    result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--out", str(out / "sweep"), "--max-parallel",
                                      "2", "--set", "animate.cpus_per_actor=0.5", "--mlflow-uri", uri])
    assert result.exit_code == 0, result.output
    assert (out / "mlartifacts").is_dir()  # an sqlite store keeps artifacts beside its database
    parent_id = result.output.split("parent run ")[1].split()[0]
    cfg = load_config(None, [f"mlflow.tracking_uri={uri}"])
    return {"spec": load_sweep(sweep_file), "cfg": cfg, "out": out / "sweep", "uri": uri, "parent_id": parent_id}


def _children(uri: str, parent_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return client, parent, {child.info.run_name: child for child in children if child.info.status == "FINISHED"}


def test_sweep_records_a_parent_with_one_nested_run_per_config(sweep_run) -> None:
    client, parent, children = _children(sweep_run["uri"], sweep_run["parent_id"])
    checkout_commit = ""
    if shutil.which("git"):
        head = subprocess.run(["git", "-C", str(Path(sweep_spec.__file__).parent), "rev-parse", "HEAD"],
                              capture_output=True, text=True)
        checkout_commit = head.stdout.strip() if head.returncode == 0 else ""
    assert parent.info.status == "FINISHED"
    assert set(children) == {"warp", "still"}
    for child in children.values():
        assert child.info.status == "FINISHED"
        metrics = child.data.metrics
        assert metrics["jobs_ok"] == len(DRIVERS) and metrics["jobs_failed"] == 0
        for name in ("psnr", "ssim", "l1", "csim_opencv", "akd", "apd", "aed", "jitter_error", "flicker_error",
                     "detection_rate"):
            assert name in metrics, name
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"per_video.json", "per_video.parquet", "side_by_side", "frames"} <= artifacts
        assert child.data.tags["portraitflow.version"] == parent.data.tags["portraitflow.version"] != ""
        if checkout_commit:  # run from a git checkout: the commit that made the numbers, as MLflow names it
            assert child.data.tags["mlflow.source.git.commit"] == checkout_commit
            assert child.data.tags["portraitflow.git_dirty"] in ("true", "false")
        # the settings that made the videos, beyond the sweep params
        assert {"animate.size", "face.backend", "evaluate.protocol", "evaluate.rank_by"} <= set(child.data.params)
        assert "protocol" not in child.data.params  # each setting under its section, as `-s` names it
    assert "animate.paste_back" in children["still"].data.params
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/index.html" in report and "report/runs" not in report  # child videos are not stored twice
    warp_tags = children["warp"].data.tags
    per_video = pd.read_parquet(sweep_run["out"] / "configs" / warp_tags["portraitflow.generation_hash"] / "scores"
                                / warp_tags["portraitflow.config_hash"] / "per_video.parquet")
    assert len(per_video) == len(DRIVERS) and (per_video["status"] == "ok").all()
    assert all(Path(output).is_file() for output in per_video["output"])  # what a resume checks
    assert (per_video["detection_rate"] > 0.9).all()


def test_warp_ranks_ahead_of_the_still_baseline_on_motion(sweep_run) -> None:
    _, _, children = _children(sweep_run["uri"], sweep_run["parent_id"])
    warp, still = children["warp"].data.metrics, children["still"].data.metrics
    assert warp["apd"] < still["apd"]
    assert warp["akd"] < still["akd"]
    # against the driver's own jitter and flicker: a still output lacks the driver's motion
    assert warp["jitter_error"] < still["jitter_error"] and warp["flicker_error"] < still["flicker_error"]
    summary = pd.read_csv(sweep_run["out"] / "summary.csv")
    assert list(summary["config"]) == ["warp", "still", "warp[pose_multiplier=-1.0]"]  # by APD, lower first
    assert "pose_multiplier" in summary["error"].iloc[2] and summary["error"].iloc[:2].isna().all()


def test_a_broken_config_fails_alone_with_its_reason(sweep_run) -> None:
    client, parent, _ = _children(sweep_run["uri"], sweep_run["parent_id"])
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep_run['parent_id']}'")
    broken = [r for r in runs if r.info.run_name == "warp[pose_multiplier=-1.0]"]
    assert broken and broken[0].info.status == "FAILED"
    assert "pose_multiplier" in broken[0].data.tags["error"]


def test_rerun_resumes_without_redoing_finished_configs(sweep_run) -> None:
    from portraitflow.jobs.sweep import run_sweep

    again = run_sweep(sweep_run["spec"], sweep_run["cfg"], sweep_run["out"])
    assert again == sweep_run["parent_id"]
    _, parent, children = _children(sweep_run["uri"], again)
    assert len(children) == 2 and parent.info.status == "FINISHED"
    summary = pd.read_csv(sweep_run["out"] / "summary.csv").set_index("config")
    assert summary.loc[["warp", "still"], "reused"].all()


def test_report_command_writes_a_static_page(sweep_run, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", sweep_run["parent_id"], "--out", str(out), "--rank-by", "akd",
                                      "--mlflow-uri", sweep_run["uri"]])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "ranked by akd" in page and "metrics.png" in page
    assert (out / "metrics.png").stat().st_size > 10_000
    videos = [line.split("src='")[1].split("'")[0] for line in page.splitlines() if "<video" in line]
    assert len(videos) == 2 and all((out / v).is_file() for v in videos)
    assert "FAILED" in page and "pose_multiplier" in page  # the broken config is listed with its error
    assert "fid skipped" in page  # learned metrics without local weights are named, not silently absent


def test_evaluate_command_scores_existing_outputs_like_the_sweep(sweep_run, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    _, _, children = _children(sweep_run["uri"], sweep_run["parent_id"])
    warp = children["warp"]
    results = sweep_run["out"] / "configs" / warp.data.tags["portraitflow.generation_hash"] / "outputs" / "results.parquet"
    result = CliRunner().invoke(app, ["evaluate", str(results), "--out", str(tmp_path / "eval"), "--mlflow-uri",
                                      sweep_run["uri"], "--set", "evaluate.frame_stride=2", "--set", "evaluate.side_by_side=0"])
    assert result.exit_code == 0, result.output
    run_id = result.output.split("run ")[1].split()[0]
    metrics = MlflowClient(sweep_run["uri"]).get_run(run_id).data.metrics
    for name in ("apd", "akd", "ssim", "csim_opencv"):
        assert metrics[name] == pytest.approx(warp.data.metrics[name], rel=1e-6), name
    assert (tmp_path / "eval" / "report" / "index.html").is_file()


def test_learned_metrics_from_local_weights_score_real_videos(sweep_run, tmp_path: Path) -> None:
    """With (stand-in) local weights LPIPS, FID and FVD are computed; ground truth against itself scores 0."""
    from onnx_nets import channel_means, mean_abs_difference

    from portraitflow.jobs.config.evaluate import EvaluateConfig
    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.operators.evaluate_video import JobEvaluator, learned_aggregates

    cfg = EvaluateConfig(frame_stride=3, fid_frames_per_video=16, fvd_clip_frames=4,
                         lpips_onnx=mean_abs_difference(tmp_path / "l.onnx"), fid_onnx=channel_means(tmp_path / "f.onnx"),
                         fvd_onnx=channel_means(tmp_path / "v.onnx", video=True))
    evaluator = JobEvaluator(create_analyzer(FaceConfig()), cfg)
    _, _, children = _children(sweep_run["uri"], sweep_run["parent_id"])
    still_dir = sweep_run["out"] / "configs" / children["still"].data.tags["portraitflow.generation_hash"] / "outputs"
    clips = sorted((sweep_run["out"] / "dataset").glob("*.ref.png"))
    keys = [ref.name[: -len(".ref.png")] for ref in clips]
    jobs = [{"job_id": key, "ref": str(ref), "driving": str(ref.with_name(f"{key}.mp4"))} for key, ref in zip(keys, clips)]
    identical = [evaluator.evaluate({**job, "output": job["driving"]}, tmp_path / "same") for job in jobs]
    still = [evaluator.evaluate({**job, "output": str(next(still_dir.glob(f"{job['job_id']}-*.mp4")))},
                                tmp_path / "still") for job in jobs]  # named as an animator's: id and inputs' digest
    assert all(row["status"] == "ok" for row in identical + still)
    assert all(row["lpips"] == pytest.approx(0.0, abs=1e-6) for row in identical)
    assert all(row["lpips"] > 0.01 for row in still)
    ids = [job["job_id"] for job in jobs]
    same, moved = learned_aggregates(tmp_path / "same", ids), learned_aggregates(tmp_path / "still", ids)
    assert same["fid"] == pytest.approx(0.0, abs=1e-9) and same["fvd"] == pytest.approx(0.0, abs=1e-9)
    assert moved["fid"] > 1e-6 and moved["fvd"] > 1e-6  # the still video's colours drift from the clip's


def test_cross_reenactment_scores_identity_and_motion_without_ground_truth(sweep_run, media_dir: Path,
                                                                           tmp_path: Path) -> None:
    """A portrait of someone else, shown still against a driver: identity holds, pose error is measured."""
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.config.evaluate import EvaluateConfig
    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.jobs.generation import run_generation
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.operators.evaluate_video import JobEvaluator
    from portraitflow.operators.generation_jobs import Job

    analyzer = create_analyzer(FaceConfig())
    driver = sorted((sweep_run["out"] / "dataset").glob("liveportrait_d20*.mp4"))[0]
    job = {"job_id": "cross", "ref": str(media_dir / "sadtalker_happy.png"), "driving": str(driver)}
    cfg = load_config(None, ["animate.backend=still", "mlflow.enabled=false"])
    [rendered] = run_generation([Job(**job)], tmp_path / "cross", cfg).to_dict("records")
    assert rendered["status"] == "ok"
    row = JobEvaluator(analyzer, EvaluateConfig(protocol="cross", frame_stride=3)).evaluate(
        {**job, "output": rendered["output"]}, tmp_path)
    assert row["status"] == "ok" and "psnr" not in row and "akd" not in row
    assert row["csim_opencv"] > analyzer.same_person_threshold
    assert row["apd"] > 0 and row["aed"] > 0 and row["detection_rate"] == 1.0
