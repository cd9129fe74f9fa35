"""The sweep driver around its configs, with Ray, generation and scoring replaced by fakes: what a
rerun takes for its dataset, and what Ctrl-C leaves behind in MLflow."""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.jobs.sweep_spec import SweepSpec


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """jobs.sweep with no Ray and no report, a tracking store in tmp_path, and a one-clip dataset."""
    from portraitflow.jobs import sweep
    from portraitflow.operators.video_writer import write_h264

    monkeypatch.setattr(sweep, "init_ray", lambda *_, **__: None)
    monkeypatch.setattr("ray.cluster_resources", lambda: {"CPU": 8.0, "memory": 16.0 * 1024**3})
    monkeypatch.setattr(sweep, "report_from_run", lambda _run, _cfg, folder, *_: Path(folder).mkdir(parents=True,
                                                                                                     exist_ok=True))
    data = tmp_path / "data"
    data.mkdir()
    ramp = np.linspace(0, 200, 64, dtype=np.uint8)[None, None, :, None]
    frames = np.broadcast_to(ramp, (8, 64, 64, 3)) + np.arange(8, dtype=np.uint8)[:, None, None, None]
    write_h264(data / "talk.mp4", [frames], fps=8.0)
    cfg = load_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    return sweep, cfg, data


def _spec(data: Path, configs: list[dict], **evaluate) -> SweepSpec:
    return SweepSpec.model_validate({"name": "s", "dataset": {"type": "folder", "path": str(data)},
                                     "configs": configs, "evaluate": {"max_seconds": 0.5, **evaluate}})


def test_a_sweep_writing_inside_its_dataset_reads_the_same_inputs_on_a_rerun(driver, monkeypatch) -> None:
    sweep, cfg, data = driver
    out = data / "runs" / "s"

    def generate(params, jobs, folder, _cfg):  # an output per job, where generation writes it
        folder.mkdir(parents=True, exist_ok=True)
        for job in jobs:
            (folder / f"{job['job_id']}-0123456789.mp4").write_bytes(Path(job["driving"]).read_bytes())
        return pd.DataFrame([{"job_id": j["job_id"], "status": "ok", "reason": "", "output": ""} for j in jobs])

    _fake_generation(sweep, monkeypatch)
    monkeypatch.setattr(sweep, "generate_outputs", generate)
    spec = _spec(data, [{"backend": "still"}, {"backend": "still", "size": 256}])
    for _ in range(2):
        sweep.run_sweep(spec, cfg, out)
        dataset = pd.read_parquet(out / "dataset.parquet")
        assert [Path(source).name for source in dataset["source"]] == ["talk.mp4"]
        assert dataset["status"].tolist() == ["ok"]
    assert len(list((out / "configs").glob("*/outputs/*.mp4"))) == 2  # there to be found


def test_ctrl_c_starts_no_queued_config_and_ends_the_runs_in_flight_killed(driver, monkeypatch) -> None:
    """Two configs run (max_parallel 2) when SIGINT arrives: the two queued never start, the children
    in flight and the parent end KILLED, and KeyboardInterrupt reaches the caller at once; the
    threads then stop at their next stage instead of scoring and finishing their runs."""
    from mlflow import MlflowClient

    sweep, cfg, data = driver
    both_running, release, started, scored = threading.Barrier(2), threading.Event(), [], []

    def generate(params, *_):
        started.append(params["size"])
        if both_running.wait(timeout=30) == 0:
            os.kill(os.getpid(), signal.SIGINT)
        release.wait(timeout=30)
        return pd.DataFrame(columns=["job_id", "status", "reason", "output"])

    monkeypatch.setattr(sweep, "generate_outputs", generate)
    monkeypatch.setattr(sweep, "score_and_log", lambda *args: scored.append(args))
    spec = _spec(data, [{"backend": "still", "size": size} for size in (128, 160, 192, 224)], max_parallel=2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep.run_sweep(spec, cfg, data / "out")
        client = MlflowClient(cfg.mlflow.tracking_uri)
        [parent] = client.search_runs([client.get_experiment_by_name(cfg.evaluate.experiment).experiment_id],
                                      "tags.`portraitflow.sweep_hash` != ''")
        children = client.search_runs([parent.info.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert parent.info.status == "KILLED"
        assert sorted(started) == [128, 160] and [c.info.status for c in children] == ["KILLED", "KILLED"]
    finally:
        release.set()
        for thread in threading.enumerate():
            if thread.name.startswith("sweep-config"):
                thread.join(timeout=30)
    assert sorted(started) == [128, 160] and not scored
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert {c.info.status for c in children} == {"KILLED"}
    monkeypatch.undo()  # the sweep's own report, not the fixture's stand-in
    page = sweep.report_from_run(parent.info.run_id, cfg, data / "page").read_text()  # it passed for the whole sweep
    assert "The sweep was interrupted (its run ended KILLED): 2 of its 4 configs ran" in page


def test_a_config_stopped_while_scoring_leaves_no_record_that_its_scores_stand(driver, monkeypatch) -> None:
    """Ctrl-C while a config scored: its run ended KILLED, yet scored_by.txt named it (review s23)."""
    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    stopped = threading.Event()

    def score(*_args):  # the sweep is stopped under it; it finishes its stage as scoring does
        os.kill(os.getpid(), signal.SIGINT)
        stopped.wait(timeout=30)

    monkeypatch.setattr(sweep, "score_and_log", score)
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep.run_sweep(_spec(data, [{"backend": "still"}]), cfg, data / "out")
    finally:
        stopped.set()
        for thread in threading.enumerate():
            if thread.name.startswith("sweep-config"):
                thread.join(timeout=30)
    assert list((data / "out" / "configs").glob("*/scores/*/")) and not list((data / "out").rglob(sweep.SCORED_BY))


@pytest.mark.parametrize(("cpus", "configs", "refused"), [
    (2.0, [{"backend": "warp"}, {"backend": "warp", "pose_multiplier": 0.5}], True),  # two actors, nothing feeds them
    (3.0, [{"backend": "warp"}, {"backend": "warp", "pose_multiplier": 0.5}], False),
    (2.0, [{"backend": "warp"}, {"backend": "still"}], True),  # still is an animator too: its actor is fed alike
    (2.0, [{"backend": "warp"}, {"backend": "warp", "pose_multiplier": -1.0}], False),  # refused: fails alone
    (None, [{"backend": "warp"}, {"backend": "warp", "pose_multiplier": 0.5}], False),  # a cluster: it autoscales
])
def test_a_sweep_refuses_more_animating_configs_at_once_than_its_cpus_can_feed(
        driver, monkeypatch: pytest.MonkeyPatch, cpus: float | None, configs: list[dict], refused: bool) -> None:
    """Each animating config holds an actor; with no CPU left for the tasks that feed them, the
    sweep would wait forever (2 warp configs at --max-parallel 2 on 2 CPUs did)."""

    import ray

    from portraitflow.jobs.runtime import NotEnoughResources

    sweep, cfg, data = driver
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": cpus or 2.0, "memory": 16.0 * 1024**3})
    if cpus is None:  # a cluster: only warned, an autoscaler may add CPUs
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": "10.0.0.1:6379"})})
    monkeypatch.setattr(sweep, "_run_configs", lambda *_: pd.DataFrame({"config": ["c"], "apd": [0.1]}))
    spec = _spec(data, configs, max_parallel=2)
    if not refused:
        sweep.run_sweep(spec, cfg, data.parent / "out")
        return
    with pytest.raises(NotEnoughResources, match="lower --max-parallel .* to 1"):
        sweep.run_sweep(spec, cfg, data.parent / "out")
    assert not Path(cfg.mlflow.tracking_uri.removeprefix("sqlite:///")).exists()  # the store never touched


@pytest.mark.parametrize(("text", "says"), [
    ("name: s\ndataset: {type: folder, path: DATA\ngrid: [\n", "not valid YAML"),  # yaml.scanner/parser error
    ("name: s\ndataset: {type: folder, path: DATA}\n", "the sweep has no configs"),
    ("name: s\ndataset: {type: folder, path: DATA}\nconfigs: [{pose_multiplier: 1.0}]\n",
     "sweep config {'pose_multiplier': 1.0} has no `backend`"),
    ("name: s\ndataset: {type: folder, path: DATA}\nconfigs: [{backend: still}]\nevaluate: {protocol: foo}\n",
     "evaluate.protocol: Input should be 'self' or 'cross' (got 'foo')"),
    ("name: s\ndataset: {type: folder, path: DATA}\nconfigs: [{backend: still}]\nevaluate: {nosuch: 1}\n",
     "evaluate.nosuch: no such setting"),
    ("name: s\ndataset: {type: folder, path: DATA}\ngrids: {backend: [warp]}\n", "grids: no such setting"),
    ("name: s\ndataset: {type: folder, path: DATA}\ngrid: {backend: [warp], pose_multipler: [1.0]}\n",
     "'pose_multipler' (did you mean 'pose_multiplier'?): no animate setting has that name"),
    ("name: s\ndataset: {type: folder, path: DATA/nowhere}\nconfigs: [{backend: still}]\n",
     "dataset.path 'DATA/nowhere' is not a folder"),
    ("- just\n- a list\n", "a sweep file is a mapping"),
    # PyYAML keeps the last of a repeated key: the first list of values vanished
    ("name: s\ndataset: {type: folder, path: DATA}\ngrid:\n  backend: [warp]\n  pose_multiplier: [0.5]\n"
     "  pose_multiplier: [1.0]\n", "not valid YAML: the key 'pose_multiplier' is given twice (line 6, column 3)"),
    # an empty axis made the product empty: the grid's configs vanished beside `configs`
    ("name: s\ndataset: {type: folder, path: DATA}\ngrid: {backend: [warp], pose_multiplier: []}\n"
     "configs: [{backend: still}]\n", "grid: pose_multiplier: an empty list makes no config of the grid"),
])
def test_a_sweep_file_mistake_is_a_usage_error_before_any_run_or_ray(
        driver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, says: str) -> None:
    """Invalid YAML, no configs, a config without backend or invalid evaluate overrides: exit 2 with
    one line naming the file, not a traceback (exit 1) after the parent run was made RUNNING."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    sweep, cfg, data = driver

    def no_ray(*_, **__):
        raise AssertionError("Ray started for a sweep file that is wrong")

    monkeypatch.setattr(sweep, "init_ray", no_ray)
    path = tmp_path / "sweep.yaml"
    path.write_text(text.replace("DATA", str(data)))
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out"),
                                      "--mlflow-uri", cfg.mlflow.tracking_uri], env={"COLUMNS": "1000"})
    message = " ".join(result.output.replace("│", " ").split())  # the one line, whatever the box does
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and f"sweep.yaml: {says.replace('DATA', str(data))}" in message, message
    assert not Path(cfg.mlflow.tracking_uri.removeprefix("sqlite:///")).exists()  # the store never touched


@pytest.mark.parametrize("verb", ["sweep", "evaluate"])
@pytest.mark.parametrize("under", ["", "sub"])
def test_an_out_that_is_a_file_is_refused_before_any_run(driver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          verb: str, under: str) -> None:
    """`--out AFILE` (or a folder under it) gave NotADirectoryError after the parent run was made
    RUNNING, and left it FAILED; now exit 2 and nothing in MLflow."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    sweep, cfg, data = driver

    def no_ray(*_, **__):
        raise AssertionError("Ray started for an --out that cannot be a folder")

    monkeypatch.setattr(sweep, "init_ray", no_ray)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"name: s\ndataset: {{type: folder, path: {data}}}\nconfigs: [{{backend: still}}]\n")
    results = tmp_path / "results.csv"
    results.write_text(f"job_id,ref,driving,output\na,{data / 'talk.mp4'},{data / 'talk.mp4'},{data / 'talk.mp4'}\n")
    out = afile / under if under else afile
    result = CliRunner().invoke(app, [verb, str(spec if verb == "sweep" else results), "--out", str(out),
                                      "--mlflow-uri", cfg.mlflow.tracking_uri], env={"COLUMNS": "1000"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and f"{afile} is a file, not a folder" in result.output
    assert not Path(cfg.mlflow.tracking_uri.removeprefix("sqlite:///")).exists()  # the store never touched


def test_a_rerun_remakes_what_is_gone_ends_what_a_kill_left_running_and_keeps_to_its_folder(
        driver, monkeypatch) -> None:
    from mlflow import MlflowClient

    from portraitflow.operators.atomic import FolderBusy, exclusive_folder

    sweep, cfg, data = driver
    generated = _fake_generation(sweep, monkeypatch)
    spec, out = _spec(data, [{"backend": "still"}]), data.parent / "out"
    parent = sweep.run_sweep(spec, cfg, out)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    assert len(_child_runs(client, parent)) == 1
    assert len(generated) == 1 and sweep.run_sweep(spec, cfg, out) == parent and len(generated) == 1  # reused
    next(out.glob("configs/*/outputs/*.mp4")).unlink()
    assert sweep.run_sweep(spec, cfg, out) == parent
    assert len(generated) == 2 and next(out.glob("configs/*/outputs/*.mp4")).is_file()  # made again
    assert [r.info.status for r in _child_runs(client, parent)] == ["FINISHED", "FINISHED"]
    assert pd.read_csv(out / "summary.csv")["reused"].tolist() == [False]
    assert sweep.run_sweep(spec, cfg, out) == parent and len(generated) == 2  # the second, complete, is reused
    assert pd.read_csv(out / "summary.csv")["reused"].tolist() == [True]
    killed = _child_runs(client, parent)[1].info.run_id
    client.update_run(killed, status="RUNNING")  # as a sweep killed outright leaves it
    assert sweep.run_sweep(spec, cfg, out) == parent and len(generated) == 2
    # the scores on disk are the killed run's: scored again (not the first run's, which scored other files),
    # in a run that supersedes the killed one
    assert [r.info.status for r in _child_runs(client, parent)] == ["FINISHED", "FINISHED"]
    assert [(r.info.run_id, r.info.status) for r in _child_runs(client, parent, deleted=True)] == [(killed, "KILLED")]
    assert pd.read_csv(out / "summary.csv")["reused"].tolist() == [False]

    elsewhere = sweep.run_sweep(spec, cfg, data.parent / "elsewhere")  # another folder: another sweep
    assert elsewhere != parent and len(generated) == 3
    with exclusive_folder(out), pytest.raises(FolderBusy, match="another run is writing"):
        sweep.run_sweep(spec, cfg, out)


def test_a_failed_video_counts_as_no_face_in_its_configs_detection_rate(driver, monkeypatch, tmp_path: Path) -> None:
    """Face metrics skip what a config failed on; its detection rate must not, or ranking favours it."""
    from mlflow import MlflowClient

    from portraitflow.jobs.runtime import ensure_experiment

    sweep, cfg, _ = driver
    scored = pd.DataFrame({"job_id": ["x", "y", "z"], "status": ["ok", "ok", "failed"],
                           "apd": [1.0, 2.0, np.nan], "detection_rate": [1.0, 0.5, np.nan]})
    monkeypatch.setattr(sweep, "evaluate_outputs", lambda *_: scored.copy())
    monkeypatch.setattr(sweep, "learned_aggregates", lambda *_: {})
    monkeypatch.setattr(sweep, "_log_side_by_side", lambda *_: None)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run_id = client.create_run(ensure_experiment(client, "coverage")).info.run_id
    jobs = pd.DataFrame({"job_id": ["x", "y", "z"], "output": ["x.mp4", "y.mp4", ""]})
    sweep.score_and_log(client, run_id, jobs, "c", tmp_path, cfg.evaluate, cfg)
    logged = client.get_run(run_id).data.metrics
    assert logged["apd"] == 1.5 and logged["detection_rate"] == 0.5 and logged["jobs_failed"] == 1


def test_a_sweep_recorded_before_parents_carried_their_folder_is_resumed(driver, monkeypatch) -> None:
    from mlflow import MlflowClient

    from portraitflow.jobs.runtime import ensure_experiment
    from portraitflow.jobs import sweep_spec

    sweep, cfg, data = driver
    monkeypatch.setattr(sweep, "_run_configs", lambda *_: pd.DataFrame({"config": ["c"], "apd": [0.1]}))
    spec = _spec(data, [{"backend": "still"}])
    evaluate, _ = sweep.check_sweep(spec, cfg)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    old = client.create_run(ensure_experiment(client, evaluate.experiment), run_name="s",
                            tags={sweep.SWEEP_TAG: sweep_spec.sweep_hash(spec, evaluate, cfg)}).info.run_id
    assert sweep.run_sweep(spec, cfg, data.parent / "out") == old
    assert sweep.run_sweep(spec, cfg, data.parent / "other") != old  # it belongs to the first folder now


def test_the_report_keeps_one_row_per_config() -> None:
    from portraitflow.jobs.sweep import _latest_per_config

    runs = pd.DataFrame({"config": ["a", "a", "b", "b", "c"], "status": ["FINISHED", "FINISHED", "FAILED", "KILLED",
                                                                           "FINISHED"],
                         "run_id": ["a1", "a2", "b1", "b2", "c1"]})
    assert sorted(_latest_per_config(runs)["run_id"]) == ["a2", "b2", "c1"]


def _child_runs(client, parent_id: str, deleted: bool = False) -> list:
    """The parent's active children, or its deleted ones (superseded attempts), oldest first."""
    from mlflow.entities import ViewType

    return client.search_runs([client.get_run(parent_id).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent_id}'",
                              ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY,
                              order_by=["attributes.start_time ASC"])


def test_a_failing_config_keeps_one_child_across_reruns_each_attempt_deleting_the_last(driver, monkeypatch) -> None:
    """A config whose generation broke got one more FAILED child per rerun: its history was a list of
    dead attempts. Each attempt (tagged with its number and the error it retries) now soft-deletes
    the config's earlier FAILED and KILLED children of this parent once it ends; a config that
    finished, and another parent's child of the same config, are left alone."""
    from mlflow import MlflowClient

    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    fake_generate, errors = sweep.generate_outputs, ["a", "b", "c"]

    def generate(params, *rest):  # `still` breaks three times, then works
        if "size" not in params and errors:
            raise RuntimeError(f"the disk is full ({errors.pop(0)})")
        return fake_generate(params, *rest)

    monkeypatch.setattr(sweep, "generate_outputs", generate)
    spec, out = _spec(data, [{"backend": "still"}, {"backend": "still", "size": 128}]), data.parent / "out"
    client = MlflowClient(cfg.mlflow.tracking_uri)
    elsewhere = sweep.run_sweep(spec, cfg, data.parent / "elsewhere")  # another parent, failing with (a)
    for attempt, status, previous in ((1, "FAILED", None), (2, "FAILED", "b"), (3, "FINISHED", "c")):
        parent = sweep.run_sweep(spec, cfg, out)
        [child, other] = sorted(_child_runs(client, parent), key=lambda run: run.info.run_name)
        assert (child.info.run_name, child.info.status, child.data.tags["portraitflow.attempt"]) == (
            "still", status, str(attempt))
        assert child.data.tags.get("portraitflow.previous_error") == (
            previous and f"RuntimeError: the disk is full ({previous})")
        deleted = _child_runs(client, parent, deleted=True)
        assert [(r.info.run_name, r.info.status) for r in deleted] == [("still", "FAILED")] * (attempt - 1)
        assert (other.info.status, other.data.tags["portraitflow.attempt"]) == ("FINISHED", "1")
    assert sorted(r.info.status for r in _child_runs(client, elsewhere)) == ["FAILED", "FINISHED"]
    summary = pd.read_csv(out / "summary.csv").set_index("config")
    assert summary.loc["still", "run_id"] == child.info.run_id and "error" not in summary


def test_a_child_killed_by_ctrl_c_is_superseded_by_the_reruns(driver, monkeypatch) -> None:
    """Ctrl-C during a retry ends it KILLED and deletes the failed attempt it retried; the next rerun's
    child, once it finishes, deletes the killed one: the config keeps one child throughout."""
    from mlflow import MlflowClient

    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    fake_generate, release, calls = sweep.generate_outputs, threading.Event(), []

    def generate(*args):  # fails, then is interrupted, then works
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("the disk is full")
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            release.wait(timeout=30)
        return fake_generate(*args)

    monkeypatch.setattr(sweep, "generate_outputs", generate)
    spec, out = _spec(data, [{"backend": "still"}]), data.parent / "out"
    client = MlflowClient(cfg.mlflow.tracking_uri)
    parent = sweep.run_sweep(spec, cfg, out)
    [failed] = _child_runs(client, parent)
    try:
        with pytest.raises(KeyboardInterrupt):
            sweep.run_sweep(spec, cfg, out)
    finally:
        release.set()
        for thread in threading.enumerate():
            if thread.name.startswith("sweep-config"):
                thread.join(timeout=30)
    [killed] = _child_runs(client, parent)
    assert (killed.info.status, killed.data.tags["portraitflow.attempt"]) == ("KILLED", "2")
    assert killed.data.tags["portraitflow.previous_error"] == "RuntimeError: the disk is full"
    assert [r.info.run_id for r in _child_runs(client, parent, deleted=True)] == [failed.info.run_id]
    assert sweep.run_sweep(spec, cfg, out) == parent
    [child] = _child_runs(client, parent)
    assert (child.info.status, child.data.tags["portraitflow.attempt"]) == ("FINISHED", "3")
    assert "portraitflow.previous_error" not in child.data.tags  # the attempt it retries was killed, not broken
    assert [r.info.run_id for r in _child_runs(client, parent, deleted=True)] == [failed.info.run_id,
                                                                                   killed.info.run_id]


def _write_clip(path: Path, shade: int = 0) -> None:
    """An 8-frame 64² clip of a moving ramp, as the `driver` fixture's."""
    from portraitflow.operators.video_writer import write_h264

    ramp = np.linspace(0, 200, 64, dtype=np.uint8)[None, None, :, None]
    frames = np.broadcast_to(ramp, (8, 64, 64, 3)) + np.arange(shade, shade + 8, dtype=np.uint8)[:, None, None, None]
    write_h264(path, [frames], fps=8.0)


def _fake_generation(sweep, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Generation that copies each job's driver as its output (made once, as generation skips what
    exists) and scoring that records the jobs as scored; returns the outputs made, in order."""
    made: list[str] = []

    def generate(params, jobs, folder, _cfg):
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for job in jobs:
            output = folder / f"{job['job_id']}.mp4"
            if not output.is_file():
                made.append(job["job_id"])
                output.write_bytes(Path(job["driving"]).read_bytes())
            rows.append({"job_id": job["job_id"], "status": "ok", "reason": "", "output": str(output)})
        return pd.DataFrame(rows)

    def score(client, run_id, jobs, label, work_dir, *_):
        jobs.assign(scoring_version=sweep.SCORING_VERSION).to_parquet(work_dir / "per_video.parquet")
        client.log_metric(run_id, "jobs_ok", float((jobs["status"] == "ok").sum()))

    monkeypatch.setattr(sweep, "generate_outputs", generate)
    monkeypatch.setattr(sweep, "score_and_log", score)
    return made


def test_a_rerun_after_the_dataset_gained_a_clip_scores_it_instead_of_reusing_the_finished_config(
        driver, monkeypatch) -> None:
    """The config hash covers the dataset's spec (path, globs), not its files: a finished child was
    reused and the new clip never generated nor scored."""
    sweep, cfg, data = driver
    made = _fake_generation(sweep, monkeypatch)
    spec, out = _spec(data, [{"backend": "still"}]), data.parent / "out"
    sweep.run_sweep(spec, cfg, out)
    _write_clip(data / "more.mp4", shade=40)
    sweep.run_sweep(spec, cfg, out)
    summary = pd.read_csv(out / "summary.csv")
    assert summary["reused"].tolist() == [False] and summary["jobs_ok"].tolist() == [2]
    assert len(made) == 2 and made[1].startswith("more")  # only the new clip generated
    [scored] = out.glob("configs/*/scores/*/per_video.parquet")
    assert len(pd.read_parquet(scored)) == 2
    sweep.run_sweep(spec, cfg, out)  # nothing changed since: reused
    assert pd.read_csv(out / "summary.csv")["reused"].tolist() == [True] and len(made) == 2


def test_a_refused_config_is_recorded_failed_once_with_its_params_but_a_failure_while_running_is_retried(
        driver, monkeypatch) -> None:
    """A config its params refuse fails the same way on every rerun: it got one more FAILED child
    each time, and its summary row had no params. A config failing while running is tried again
    on every rerun, in a child that supersedes the last (`test_a_failing_config_keeps_one_child...`)."""
    from mlflow import MlflowClient

    from portraitflow.jobs import sweep_spec

    sweep, cfg, data = driver

    def generate(params, jobs, folder, cfg):  # as generation: params validated first, then it breaks
        sweep_spec.config_settings(params, cfg)
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(sweep, "generate_outputs", generate)
    spec, out = _spec(data, [{"backend": "warp", "seed": 3}, {"backend": "still", "size": 128}]), data.parent / "out"
    parents = {sweep.run_sweep(spec, cfg, out) for _ in range(3)}
    client = MlflowClient(cfg.mlflow.tracking_uri)
    [parent] = parents
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}'")
    names = [c.info.run_name for c in children]
    assert {c.info.status for c in children} == {"FAILED"}
    assert names.count("warp[seed=3]") == 1  # one run, not three
    assert names.count("still[size=128]") == 1  # it may not fail next time: tried again, in one child
    assert [c.data.tags["portraitflow.attempt"] for c in children if c.info.run_name == "still[size=128]"] == ["3"]
    summary = pd.read_csv(out / "summary.csv").set_index("config")
    assert summary.loc["warp[seed=3]", "seed"] == 3 and summary.loc["still[size=128]", "size"] == 128
    assert "does not use seed" in summary.loc["warp[seed=3]", "error"]
    assert summary.loc["warp[seed=3]", "reused"] and not summary.loc["still[size=128]", "reused"]


def test_scoring_new_outputs_with_the_same_job_ids_logs_new_side_by_sides_and_only_this_tables_frames(
        driver, monkeypatch, tmp_path: Path) -> None:
    """`evaluate` into an existing OUT: side-by-side videos were rendered only when missing (so the
    old outputs were shown beside the new numbers) and every file in OUT/metrics was uploaded."""
    from mlflow import MlflowClient

    from portraitflow.jobs.runtime import ensure_experiment

    sweep, cfg, data = driver
    out = tmp_path / "eval"
    (out / "metrics").mkdir(parents=True)
    (out / "metrics" / "gone.frames.parquet").write_bytes(b"a job of an earlier table")
    (out / "metrics" / "a.fid_real.npy").write_bytes(b"features of an earlier scoring")
    rendered: list[bytes] = []

    def render(ref, driving, output, path, frame_offset=0):
        rendered.append(Path(output).read_bytes())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rendered[-1])

    def evaluate_outputs(jobs, work_dir, *_):  # as the evaluator: a per-frame table for each scored job
        (work_dir / "metrics" / "a.frames.parquet").write_bytes(b"frames")
        return pd.DataFrame({"job_id": ["a"], "status": ["ok"], "apd": [1.0]})

    monkeypatch.setattr(sweep, "evaluate_outputs", evaluate_outputs)
    monkeypatch.setattr(sweep, "learned_aggregates", lambda *_: {})
    monkeypatch.setattr(sweep.report, "side_by_side", render)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = ensure_experiment(client, "rescore")
    evaluate = cfg.evaluate.model_copy(update={"side_by_side": 1})

    def score(output: Path) -> tuple[bytes, list[str]]:
        run_id = client.create_run(experiment).info.run_id
        jobs = pd.DataFrame({"job_id": ["a"], "ref": [str(data / "talk.mp4")], "driving": [str(data / "talk.mp4")],
                             "output": [str(output)], "status": ["ok"], "reason": [""]})
        sweep.score_and_log(client, run_id, jobs, "c", out, evaluate, cfg)
        video = Path(client.download_artifacts(run_id, "side_by_side/a.mp4", str(tmp_path / run_id))).read_bytes()
        return video, sorted(Path(a.path).name for a in client.list_artifacts(run_id, "frames"))

    crop, pasted = tmp_path / "anim_crop" / "a.mp4", tmp_path / "anim_pb" / "a.mp4"
    for path, content in ((crop, b"crop"), (pasted, b"pasted back")):
        path.parent.mkdir()
        path.write_bytes(content)
    assert score(crop) == (b"crop", ["a.frames.parquet"])
    assert score(crop) == (b"crop", ["a.frames.parquet"]) and len(rendered) == 1  # unchanged inputs: reused
    assert score(pasted) == (b"pasted back", ["a.frames.parquet"]) and len(rendered) == 2
    crop.write_bytes(b"crop, animated again")  # the same path rewritten
    assert score(crop)[0] == b"crop, animated again" and len(rendered) == 3


def test_a_sweep_into_an_out_recorded_in_another_mlflow_store_is_warned_about(
        driver, monkeypatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The default store is ./mlflow.db of the current folder: a rerun from elsewhere silently
    started a new parent and redid every config."""
    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    spec, out = _spec(data, [{"backend": "still"}]), data.parent / "out"
    first = cfg.mlflow.tracking_uri
    other = cfg.model_copy(update={"mlflow": cfg.mlflow.model_copy(
        update={"tracking_uri": f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"})})
    (tmp_path / "elsewhere").mkdir()
    with caplog.at_level(logging.WARNING, logger="portraitflow.jobs.sweep"):
        sweep.run_sweep(spec, cfg, out)
        sweep.run_sweep(spec, cfg, out)
        assert not [r for r in caplog.records if "MLflow store" in r.getMessage()]
        sweep.run_sweep(spec, other, out)
    [warned] = [r.getMessage() for r in caplog.records if "MLflow store" in r.getMessage()]
    assert f"--mlflow-uri {first}" in warned
    assert (out / sweep.TRACKING_STORE_FILE).read_text().strip() == other.mlflow.tracking_uri


def test_extending_the_grid_scores_only_the_new_config_and_logs_the_others_scores_again(
        driver, monkeypatch) -> None:
    """A grid with one more value is another sweep (a new parent), but a config it shares with the
    first sweep into the same folder was scored there: its child logs those scores, names the run
    they come from, and nothing is generated or scored again."""
    sweep, cfg, data = driver
    made = _fake_generation(sweep, monkeypatch)
    scored: list[str] = []
    fake_score = sweep.score_and_log

    def score(client, run_id, jobs, label, work_dir, *rest):
        scored.append(label)
        fake_score(client, run_id, jobs, label, work_dir, *rest)

    monkeypatch.setattr(sweep, "score_and_log", score)
    out = data.parent / "out"
    first = sweep.run_sweep(_spec(data, [{"backend": "still"}], side_by_side=0), cfg, out)
    second = sweep.run_sweep(_spec(data, [{"backend": "still"}, {"backend": "still", "size": 128}], side_by_side=0),
                             cfg, out)
    assert first != second and scored == ["still", "still[size=128]"] and len(made) == 2
    summary = pd.read_csv(out / "summary.csv").set_index("config")
    assert summary["reused"].to_dict() == {"still": True, "still[size=128]": False}
    from mlflow import MlflowClient

    client = MlflowClient(cfg.mlflow.tracking_uri)
    child = client.get_run(summary.loc["still", "run_id"])
    assert child.data.tags["mlflow.parentRunId"] == second and child.info.status == "FINISHED"
    earlier = client.get_run(child.data.tags["portraitflow.scores_from"])
    assert earlier.data.tags["mlflow.parentRunId"] == first and child.data.metrics == earlier.data.metrics
    assert sweep.run_sweep(_spec(data, [{"backend": "still"}, {"backend": "still", "size": 128}], side_by_side=0),
                           cfg, out) == second
    assert scored == ["still", "still[size=128]"] and len(client.search_runs(  # rerun: the same child, not another
        [child.info.experiment_id], f"tags.`mlflow.parentRunId` = '{second}'")) == 2


def test_scores_left_by_a_scoring_that_did_not_finish_are_never_taken(driver, monkeypatch) -> None:
    """A config scored by a first sweep loses its output; a wider sweep makes it again, and its
    scoring fails: a third sweep must score it, not take the first sweep's numbers for the new video."""
    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    fake_score, scored = sweep.score_and_log, []

    def score(client, run_id, jobs, label, work_dir, *rest):
        scored.append(label)
        if len(scored) == 2:
            raise RuntimeError("scoring broke")
        fake_score(client, run_id, jobs, label, work_dir, *rest)

    monkeypatch.setattr(sweep, "score_and_log", score)
    out, still = data.parent / "out", {"backend": "still"}
    sweep.run_sweep(_spec(data, [still], side_by_side=0), cfg, out)
    next(out.glob("configs/*/outputs/*.mp4")).unlink()
    sweep.run_sweep(_spec(data, [still, {"backend": "still", "size": 128}], side_by_side=0), cfg, out)
    assert scored == ["still", "still", "still[size=128]"]
    sweep.run_sweep(_spec(data, [still, {"backend": "still", "size": 96}], side_by_side=0), cfg, out)
    assert scored[3:] == ["still", "still[size=96]"]


def test_a_sweep_where_no_config_finished_exits_1_naming_the_errors(driver, monkeypatch) -> None:
    """It exited 0 with every config FAILED, so CI took a sweep with no result for a success."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    fake_score = sweep.score_and_log

    def broken(*_):
        raise RuntimeError("scoring broke")

    monkeypatch.setattr(sweep, "score_and_log", broken)
    spec, out = data.parent / "sweep.yaml", data.parent / "out"
    spec.write_text(f"name: s\ndataset: {{type: folder, path: {data}}}\nconfigs: [{{backend: still}}]\n"
                    "evaluate: {max_seconds: 0.5, side_by_side: 0}\n")
    args = ["sweep", str(spec), "--out", str(out), "--mlflow-uri", cfg.mlflow.tracking_uri]
    failed = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    assert failed.exit_code == 1, failed.output
    assert "no config of" in failed.output and "1 x RuntimeError: scoring broke" in failed.output, failed.output
    assert (out / "summary.csv").is_file() and "report" in failed.output  # still written
    from mlflow import MlflowClient

    parent = failed.output.split("parent run ")[1].split()[0]
    assert MlflowClient(cfg.mlflow.tracking_uri).get_run(parent).info.status == "FAILED"  # no result, as exit 1 says
    monkeypatch.setattr(sweep, "score_and_log", fake_score)
    finished = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})
    assert finished.exit_code == 0, finished.output
    assert MlflowClient(cfg.mlflow.tracking_uri).get_run(parent).info.status == "FINISHED"  # the same parent, resumed


def test_scores_of_an_older_metrics_version_are_made_again_from_the_same_videos(driver, monkeypatch) -> None:
    """APD changed meaning (profile frames left out): a resumed sweep reused the animators' old
    scores beside a still config scored anew, and ranked them together."""
    sweep, cfg, data = driver
    made = _fake_generation(sweep, monkeypatch)
    scored = []
    fake_score = sweep.score_and_log

    def score(client, run_id, jobs, label, work_dir, *rest):
        scored.append(label)
        fake_score(client, run_id, jobs, label, work_dir, *rest)

    monkeypatch.setattr(sweep, "score_and_log", score)
    spec, out = _spec(data, [{"backend": "warp"}]), data.parent / "out"
    sweep.run_sweep(spec, cfg, out)
    sweep.run_sweep(spec, cfg, out)
    assert len(scored) == 1 and len(made) == 1  # reused
    [table] = out.glob("configs/*/scores/*/per_video.parquet")
    pd.read_parquet(table).assign(scoring_version=1).to_parquet(table)
    sweep.run_sweep(spec, cfg, out)
    assert len(scored) == 2 and len(made) == 1  # scored again, from the videos it had


def test_a_scoring_setting_changed_scores_the_same_videos_again_instead_of_making_them_again(driver, monkeypatch) -> None:
    """A scoring-only setting (here `evaluate.pixel_size`) was part of the hash that named a config's
    folder, videos included: changing it made every video again (hours of GPU with hunyuan). The
    videos now live under the generation hash, and each scoring of them in its own folder there."""
    sweep, cfg, data = driver
    made, fake_score, scored_in = _fake_generation(sweep, monkeypatch), sweep.score_and_log, []

    def score(client, run_id, jobs, label, work_dir, *rest):
        scored_in.append(work_dir)
        fake_score(client, run_id, jobs, label, work_dir, *rest)

    monkeypatch.setattr(sweep, "score_and_log", score)
    out = data.parent / "out"
    for pixel_size in (256, 128, 256):
        sweep.run_sweep(_spec(data, [{"backend": "still"}], pixel_size=pixel_size), cfg, out)
    assert len(made) == 1  # one video, made once
    [videos] = (out / "configs").iterdir()
    assert len(scored_in) == 2 and {folder.parent for folder in scored_in} == {videos / "scores"}
    assert scored_in[0] != scored_in[1]  # the two scorings kept apart
    assert pd.read_csv(out / "summary.csv")["reused"].tolist() == [True]  # the first sweep, rerun: nothing redone
    assert pd.read_csv(out / "summary.csv", dtype={"generation_hash": str})["generation_hash"].tolist() == [videos.name]


def test_a_config_folder_of_the_earlier_layout_gives_its_videos_but_not_its_scores(driver, monkeypatch, caplog) -> None:
    """Before videos and scores were kept apart, OUT/configs/<config hash>/ held both: such a folder's
    scores are not taken (its configs are scored again), its videos are (they were made whole; with
    hunyuan, hours of GPU), another config's stray video is not left in this one's folder, and a
    warning names the folder so it can be deleted."""
    import shutil

    sweep, cfg, data = driver
    made = _fake_generation(sweep, monkeypatch)
    # the fake generation names each video by its job (the real one as `plan_rows` plans)
    monkeypatch.setattr(sweep, "_planned_names", lambda params, jobs, *_: {f"{job['job_id']}.mp4" for job in jobs})
    spec, out = _spec(data, [{"backend": "still"}]), data.parent / "out"
    sweep.run_sweep(spec, cfg, out)
    [scores] = out.glob("configs/*/scores/*")
    earlier = out / "configs" / scores.name  # as the earlier layout left it: named by the config hash
    shutil.copytree(scores, earlier)
    shutil.copytree(scores.parent.parent / "outputs", earlier / "outputs")
    (earlier / "outputs" / "another-config.mp4").write_bytes(b"a video no job of this config makes")
    shutil.rmtree(scores.parent.parent)
    with caplog.at_level(logging.WARNING, logger="portraitflow.jobs.sweep"):
        sweep.run_sweep(spec, cfg, out)
    [warned] = [r.getMessage() for r in caplog.records if "earlier layout" in r.getMessage()]
    assert earlier.name in warned
    assert pd.read_csv(out / "summary.csv")["reused"].tolist() == [False] and len(made) == 1  # scored, not made
    assert (earlier / sweep.SCORED_BY).is_file() and len(list(out.glob("configs/*/scores/*/per_video.parquet"))) == 1
    [outputs] = [folder for folder in out.glob("configs/*/outputs") if folder.parent != earlier]
    assert sorted(p.name for p in outputs.glob("*.mp4")) == sorted(p.name for p in (earlier / "outputs").glob("*.mp4")
                                                                   if p.name != "another-config.mp4")


def test_the_parent_counts_the_videos_that_failed_in_any_config(driver, monkeypatch) -> None:
    """The parent's `videos_failed` counts only inputs the dataset could not prepare: a video that
    failed in generation or scoring, even in every config, read `videos_failed 0` there."""
    from mlflow import MlflowClient

    sweep, cfg, data = driver
    _write_clip(data / "more.mp4", shade=40)
    _fake_generation(sweep, monkeypatch)
    generate = sweep.generate_outputs

    def loses_one_clip(params, jobs, folder, cfg):  # still loses `more`, still[size=128] loses `talk`
        lost = [job for job in jobs if job["job_id"].startswith("talk" if "size" in params else "more")]
        made = generate(params, [job for job in jobs if job not in lost], folder, cfg)
        return pd.concat([made, pd.DataFrame([{"job_id": job["job_id"], "status": "failed",
                                               "reason": "worker out of memory", "output": None} for job in lost])])

    monkeypatch.setattr(sweep, "generate_outputs", loses_one_clip)
    spec = _spec(data, [{"backend": "still"}, {"backend": "still", "size": 128}, {"backend": "warp", "seed": 3}])
    out, client = data.parent / "out", MlflowClient(cfg.mlflow.tracking_uri)
    for _ in range(2):  # and the same when the configs are reused
        metrics = client.get_run(sweep.run_sweep(spec, cfg, out)).data.metrics
        assert (metrics["videos"], metrics["videos_failed"], metrics["videos_failed_any_config"]) == (2, 0, 2)
        assert metrics["configs_failed"] == 1  # warp[seed=3] is refused: counted there, not per video
    summary = pd.read_csv(out / "summary.csv").set_index("config")
    assert [len(json.loads(summary.loc[config, "failed_jobs"])) for config in ("still", "still[size=128]")] == [1, 1]


def test_the_cli_checks_a_sweep_once(driver, monkeypatch, caplog) -> None:
    """The CLI checked the sweep, then `run_sweep` checked it again: each warning (here a config
    that makes the same videos as another) was printed twice."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    spec, out = data.parent / "sweep.yaml", data.parent / "out"
    spec.write_text(f"name: s\ndataset: {{type: folder, path: {data}}}\n"
                    "configs: [{backend: still}, {backend: still, size: 512}]\n"
                    "evaluate: {max_seconds: 0.5, side_by_side: 0}\n")
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out), "--mlflow-uri", cfg.mlflow.tracking_uri])
    assert result.exit_code == 0, result.output
    assert caplog.text.count("makes the same videos as") == 1, caplog.text


@pytest.mark.parametrize("relative", [False, True])
def test_a_rerun_given_no_store_resumes_from_the_store_the_sweep_used(driver, monkeypatch, tmp_path: Path,
                                                                     relative: bool) -> None:
    """Rerun from another folder with the default store, a sweep started over in a new mlflow.db
    there and redid every config; OUT records its store, and a rerun given none takes it (a
    relative sqlite:/// store was recorded as given, and named a new store from elsewhere)."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec, out = data.parent / "sweep.yaml", data.parent / "out"
    spec.write_text(f"name: s\ndataset: {{type: folder, path: {data}}}\nconfigs: [{{backend: still}}]\n"
                    "evaluate: {max_seconds: 0.5, side_by_side: 0}\n")
    given = cfg.mlflow.tracking_uri
    if relative:
        database = Path(given.removeprefix("sqlite:///"))
        monkeypatch.chdir(database.parent)
        given = f"sqlite:///{database.name}"
    first = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out), "--mlflow-uri", given])
    assert first.exit_code == 0, first.output
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri set it: a new process has none
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert f"resuming with the MLflow store the sweep into {out} used: {cfg.mlflow.tracking_uri}" in again.output
    assert first.output.split("parent run ")[1].split()[0] == again.output.split("parent run ")[1].split()[0]
    assert not (tmp_path / "elsewhere" / "mlflow.db").exists()


def test_an_evaluate_setting_on_the_command_line_wins_over_the_sweep_files(driver, monkeypatch) -> None:
    """`-s evaluate.max_seconds=0.25` lost to the file's 0.5 without a word, where --max-parallel won."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    spec, out = data.parent / "sweep.yaml", data.parent / "out"
    spec.write_text(f"name: s\ndataset: {{type: folder, path: {data}}}\nconfigs: [{{backend: still}}]\n"
                    "evaluate: {max_seconds: 0.5, side_by_side: 0}\n")
    result = CliRunner().invoke(app, ["sweep", str(spec), "--out", str(out), "--mlflow-uri", cfg.mlflow.tracking_uri,
                                      "-s", "evaluate.max_seconds=0.25"])
    assert result.exit_code == 0, result.output
    assert [path.name.split("-")[-1] for path in (out / "dataset").glob("*.mp4")] == ["250ms.mp4"]


def test_a_sweep_killed_outright_is_ended_by_the_next_sweep_of_other_settings(driver, monkeypatch, caplog) -> None:
    """A parent and child a SIGKILLed sweep left RUNNING stayed so for ever when the next sweep into
    the folder had other settings (another parent): only that parent's own children were ended."""
    from mlflow import MlflowClient

    from portraitflow.jobs.runtime import FOLDER_TAG, ensure_experiment, folder_tag

    sweep, cfg, data = driver
    out = data.parent / "out"
    out.mkdir()
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = ensure_experiment(client, cfg.evaluate.experiment)
    killed = client.create_run(experiment, run_name="s", tags={FOLDER_TAG: folder_tag(out),
                                                               sweep.SWEEP_TAG: "other-settings"}).info.run_id
    child = client.create_run(experiment, run_name="still", tags={sweep.PARENT_TAG: killed}).info.run_id
    _fake_generation(sweep, monkeypatch)
    with caplog.at_level(logging.WARNING):
        parent = sweep.run_sweep(_spec(data, [{"backend": "still"}]), cfg, out)
    assert parent != killed and client.get_run(parent).info.status == "FINISHED"
    assert [client.get_run(run).info.status for run in (killed, child)] == ["KILLED", "KILLED"]
    assert killed in caplog.text and parent not in caplog.text  # its own new run is not called abandoned


def test_a_local_ray_without_an_evaluators_memory_is_refused_before_any_run(driver, monkeypatch) -> None:
    """Evaluators declare their memory now: a Ray without it would wait for ever (review s24)."""
    import ray

    from portraitflow.jobs.runtime import NotEnoughResources

    sweep, cfg, data = driver
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "memory": 1.0 * 1024**3})
    with pytest.raises(NotEnoughResources, match="an evaluator declares 1.86 GiB of memory; Ray has 1.0 GiB"):
        sweep.run_sweep(_spec(data, [{"backend": "still"}]), cfg, data.parent / "out")
