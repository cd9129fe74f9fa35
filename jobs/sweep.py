"""The evaluate flow's driver: MLflow runs of sweeps and evaluations, and the report read back.

One sweep = one parent MLflow run (tagged with the sweep's hash and its output folder, so a rerun
into the same folder resumes it) and one child run per config (tagged `mlflow.parentRunId` and the
config's hash; a FINISHED child is not redone while it scored exactly the dataset's usable jobs on
the same input contents and their outputs are all there, a config another sweep into
the same folder scored takes that run's metrics, and a config its params refuse is recorded FAILED
once, not per rerun). A config whose
child ended FAILED or KILLED is tried again in a new child (tagged `portraitflow.attempt`, and
`portraitflow.previous_error` after a failure); once that attempt ends, however it ends, the
config's earlier FAILED and KILLED children in the parent are soft-deleted (`mlflow runs restore`
brings one back), so a config keeps one record of its retries rather than a list of dead attempts.
A sweep holds its folder alone; resuming, it marks KILLED the children a sweep killed outright
left RUNNING. Children are created with MlflowClient rather than the fluent API because up to
`max_parallel` configs run at once in threads, and the fluent active-run stack is per thread.
An interrupted sweep (Ctrl-C) starts no queued config, ends the children in flight and the parent
KILLED, and re-raises; a config in the middle of a stage (generation, scoring) stops when it ends.
Scoring outputs that already exist is one such run on its own. A config's outputs are made by the
generation job (jobs/generation.py) inside its child run; the Ray Data wiring that scores them is
pipelines/evaluate.py.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from portraitflow.jobs.config import PortraitFlowConfig, nearest_field, validation_problems
from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.jobs.generation import run_generation
from portraitflow.jobs.runtime import (
    FOLDER_TAG, GIT_TAGS, claim_folder, code_tags, end_abandoned_runs, ensure_experiment, folder_tag, init_ray,
    latest_run_into, log_values, mlflow_client, mlflow_tracking_uri, require_resource, search_all_runs,
    sqlite_store_path, terminated_on_raise, without_credentials,
)
from portraitflow.jobs import sweep_spec
from portraitflow.operators import metrics, metrics_learned, report
from portraitflow.operators.atomic import atomic_target, atomic_write, exclusive_folder, write_parquet
from portraitflow.operators.eval_dataset import check_dataset, dataset_jobs
from portraitflow.operators.evaluate_video import learned_aggregates
from portraitflow.operators.generation_jobs import Job, input_fingerprint
from portraitflow.operators.generation_results import records_dir
from portraitflow.operators.job_status import FAILED, OK, SKIPPED, clipped
from portraitflow.operators.probe import error_text
from portraitflow.pipelines.evaluate import EVALUATOR_MEMORY, evaluate_outputs

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

SWEEP_TAG, CONFIG_TAG, PARENT_TAG = "portraitflow.sweep_hash", "portraitflow.config_hash", "mlflow.parentRunId"
GENERATION_TAG = "portraitflow.generation_hash"  # names the folder of a config's videos, OUT/configs/<hash>/
SCORES_FROM_TAG = "portraitflow.scores_from"  # the run of another sweep whose scores (metrics) a child took
PARAMS_TAG = "portraitflow.config_params"  # the config's sweep params as JSON, for the report's columns
ATTEMPT_TAG = "portraitflow.attempt"  # n for the n-th child of its config in the parent
PREVIOUS_ERROR_TAG = "portraitflow.previous_error"  # the `error` of the attempt a child retries, if that one failed
#: on an evaluation run that scored every job and scored none: FAILED, its tables whole (what the report shows)
NOTHING_SCORED_TAG = "portraitflow.nothing_scored"
RANK_BY_TAG = "portraitflow.rank_by"  # the metric a sweep's latest run ranked its configs by
#: how much of a failure the `error` and `previous_error` tags keep
ERROR_CHARS = 5000
_RUN_ID = re.compile(r"[0-9a-f]{32}")  # an MLflow run id: the report's copies of a run's files are in runs/<id>/

log = logging.getLogger(__name__)


class InvalidSweep(ValueError):
    """The sweep as a whole is wrong (`check_sweep`): raised before any MLflow run or Ray starts."""


class SweepInterrupted(BaseException):
    """Raised in a config's thread at its next stage once the sweep is interrupted; a BaseException,
    like KeyboardInterrupt, so it is never taken for the config's own failure."""


class ChildRuns:
    """The child runs in flight, so an interrupted sweep can end them KILLED at once. After `stop`,
    no config starts a run, and none ends FINISHED or FAILED: what it was doing was cut short. A
    run's earlier attempts are deleted when it ends, not before: one cut short (SIGKILL) loses no record."""

    def __init__(self, client: MlflowClient) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._running: dict[str, list[str]] = {}  # run id: the earlier attempts it supersedes
        self._stopped = False

    def start(self, experiment_id: str, run_name: str, tags: dict[str, str], supersedes: list[str]) -> str:
        """A new run, whose end soft-deletes the runs `supersedes` names."""
        with self._lock:
            self.check()
            run_id = self._client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
            self._running[run_id] = supersedes
            return run_id

    def check(self) -> None:
        """SweepInterrupted once the sweep is stopped: called between a config's stages."""
        if self._stopped:
            raise SweepInterrupted

    def end(self, run_id: str, status: str) -> bool:
        """Terminate a run this sweep started, unless `stop` ended it first (then False)."""
        with self._lock:
            if run_id not in self._running:
                return False
            self._terminate(run_id, status)
            return True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for run_id in list(self._running):
                self._terminate(run_id, "KILLED")

    def _terminate(self, run_id: str, status: str) -> None:
        self._client.set_terminated(run_id, status)
        for earlier in self._running.pop(run_id):
            self._client.delete_run(earlier)


#: in a config's scores folder, OUT/configs/<generation hash>/scores/<config hash>/: the FINISHED run
#: whose scores per_video.parquet holds (written when its scoring finished, removed when another
#: starts, so a scoring that failed half way is never taken)
SCORED_BY = "scored_by.txt"
#: bumped when a metric is computed otherwise, so scores made before are made again (not the
#: videos: the config's hashes, its folders, stay). 2: pose is fitted centred in the face's crop and
#: profile frames are left out of APD; 3: jitter_error compares windowed means, and an output one
#: frame longer or shorter than its driver is aligned (`frame_offset`), and `detection_rate` counts
#: the frames where the driver shows a face; 4: outputs and drivers are paired at the driver's own
#: rate (`VideoInfo.output_fps`: a driver that dropped frames, Matroska's millisecond times)
SCORING_VERSION = 4
#: what per_video.parquet keeps of each job's reference and driving video (`input_fingerprint`), so
#: a resume takes a config's scores only for the same jobs on the same contents
INPUT_FINGERPRINTS = ("ref_fingerprint", "driving_fingerprint")


def _job_inputs(jobs: list[dict]) -> pd.DataFrame:
    """job_id, ref, driving and INPUT_FINGERPRINTS of `jobs`: the config hash covers the dataset's
    spec, not its files, and a job id names a path, not what it holds (a jobs file edited in place)."""
    table = pd.DataFrame(jobs, columns=["job_id", "ref", "driving"])
    return table.assign(ref_fingerprint=table["ref"].map(input_fingerprint),
                        driving_fingerprint=table["driving"].map(input_fingerprint))


def _scoring_run(client: MlflowClient, config_hash: str, work_dir: Path, inputs: pd.DataFrame,
                 retry_failed: bool = False) -> Run | None:
    """The FINISHED run that made the scores `work_dir` holds, while they still stand: they cover
    exactly the jobs of `inputs` (`_job_inputs`) on the same contents (the dataset gained or lost
    clips, a job's reference or driver holds something else, a missing file was put in place: a
    job that failed on it is tried again) and every output they scored is there. Otherwise None,
    and the config runs again: generation makes only what is missing. A job that failed on inputs
    that are unchanged would fail again: it is not retried, so one faceless reference does not
    rescore every config on every rerun; `retry_failed` runs a config with any failed job again
    (a worker out of memory). Scores that do not record their inputs' fingerprints (made before they did) cannot be
    checked, so they do not stand, and nor do scores without SCORED_BY (a scoring that did not finish)."""
    from mlflow.exceptions import MlflowException

    record = work_dir / SCORED_BY
    if not record.is_file():
        return None
    try:
        run = client.get_run(record.read_text().strip())
    except MlflowException:  # recorded in another store: nothing here to reuse
        return None
    if run.info.status != "FINISHED" or run.data.tags.get(CONFIG_TAG) != config_hash:
        return None
    scored = work_dir / "per_video.parquet"
    if not scored.is_file():
        log.warning("%s: its scores are gone from %s; running it again", run.info.run_name, work_dir)
        return None
    table = pd.read_parquet(scored)
    if not {"job_id", "status", "output", *INPUT_FINGERPRINTS} <= set(table.columns):
        log.warning("%s: its scores do not record what each job's inputs held (scored by an older version); "
                    "running it again", run.info.run_name)
        return None
    if table.get("scoring_version", pd.Series([1])).ne(SCORING_VERSION).any():
        log.warning("%s: scored by an older version of the metrics; scoring it again", run.info.run_name)
        return None
    columns = ["job_id", *INPUT_FINGERPRINTS]
    had, has = (set(t[columns].astype(str).itertuples(index=False, name=None)) for t in (table, inputs))
    if had != has:
        scored_ids, job_ids = {job[0] for job in had}, {job[0] for job in has}
        log.warning("%s: scored %d job(s), the dataset now has %d usable (%d new, %d gone, %d with other inputs); "
                    "running it again", run.info.run_name, len(scored_ids), len(job_ids), len(job_ids - scored_ids),
                    len(scored_ids - job_ids), len({job[0] for job in had - has} & job_ids))
        return None
    failed = int((table["status"] != OK).sum())
    if retry_failed and failed:
        log.warning("%s: %d job(s) failed; running it again (--retry-failed)", run.info.run_name, failed)
        return None
    missing = [out for out in table.loc[table["status"] == OK, "output"] if not Path(out).is_file()]
    if missing:
        log.warning("%s: %d output(s) it scored are gone (%s); running it again", run.info.run_name,
                    len(missing), missing[0])
        return None
    return run


def _children(client: MlflowClient, experiment_id: str, parent_id: str, config_hash: str,
              scores_from: str | None = None, status: str | None = "FINISHED") -> list[Run]:
    """The parent's children of the config in `status` (in any, if None; that logged `scores_from`'s
    scores, if given), latest first. Deleted ones, attempts superseded by a retry, are not searched."""
    query = f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{CONFIG_TAG}` = '{config_hash}'"
    if status:
        query += f" and attributes.status = '{status}'"
    if scores_from:
        query += f" and tags.`{SCORES_FROM_TAG}` = '{scores_from}'"
    return list(client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"]))


def _attempt_tags(earlier: list[Run]) -> dict[str, str]:
    """The tags of the next attempt at a config whose children in the parent are `earlier` (latest
    first): its number (the latest carries the count, the runs it superseded being deleted; a run
    recorded before the tag counts one) and, when the latest failed, the error it retries."""
    tags = {ATTEMPT_TAG: str(1 + max([len(earlier), *(int(r.data.tags.get(ATTEMPT_TAG, 0)) for r in earlier)]))}
    if earlier and earlier[0].info.status == "FAILED" and "error" in earlier[0].data.tags:
        tags[PREVIOUS_ERROR_TAG] = clipped(earlier[0].data.tags["error"], ERROR_CHARS)
    return tags


def _settings_params(params: dict[str, Any], cfg: PortraitFlowConfig) -> dict[str, Any]:
    """What else made a config's numbers, as `animate.*` and `face.*` params: the sweep params alone
    do not tell a 256-px sweep from a 512-px one (`-s animate.size=256`)."""
    generation = sweep_spec.generation_settings(params, cfg) or {}
    return {**{f"animate.{key}": value for key, value in generation.items()},
            **{f"face.{key}": value for key, value in cfg.face.result_settings().items()}}


def _error_tag(exc: BaseException) -> str:
    """How a config's failure is recorded (its run's `error` tag): longer than a table's reason."""
    return error_text(exc, known=(), limit=ERROR_CHARS)


def _refusal(params: dict[str, Any], cfg: PortraitFlowConfig) -> ValueError | None:
    """Why `config_settings` refuses these params, or None: such a config fails before anything runs,
    the same way on every rerun."""
    try:
        sweep_spec.config_settings(params, cfg)
    except ValueError as exc:
        return exc
    return None


def _refused_child(client: MlflowClient, experiment_id: str, parent_id: str, config_hash: str,
                   error: str) -> Run | None:
    """The config's latest FAILED child if it failed with `error`: a rerun records a refused config
    once, rather than one more identical FAILED child per rerun."""
    failed = _children(client, experiment_id, parent_id, config_hash, status="FAILED")
    return failed[0] if failed and failed[0].data.tags.get("error") == error else None


def _clear_metric_files(work_dir: Path, job_ids: set[str]) -> None:
    """Remove the per-frame tables and features left in `work_dir/metrics` by an earlier scoring of
    these jobs: a job that now fails, or is scored without FID/FVD weights, writes none, and a stale
    file would be uploaded (and pooled into FID/FVD) as if it were this scoring's."""
    folder = work_dir / "metrics"
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.split(".", 1)[0] in job_ids:  # job ids are dot-free (safe_stem, clip names)
                path.unlink()


def score_and_log(client: MlflowClient, run_id: str, jobs: pd.DataFrame, label: str, work_dir: Path,
                  evaluate: EvaluateConfig, cfg: PortraitFlowConfig) -> pd.DataFrame:
    """Score generated jobs (job_id, ref, driving, status, reason, output[, INPUT_FINGERPRINTS]) into
    run `run_id`: per-video table artifact, aggregate metrics, per-frame tables, side-by-side videos.
    Only these jobs' files under `work_dir` are logged: it may hold an earlier scoring's (an
    `evaluate` into the same OUT)."""
    _clear_metric_files(work_dir, set(jobs["job_id"].astype(str)))
    table = evaluate_outputs(jobs, work_dir, cfg, evaluate)
    table.insert(0, "config", label)
    table["scoring_version"] = SCORING_VERSION
    carried = [c for c in ("output", *INPUT_FINGERPRINTS) if c in jobs and c not in table]
    if carried:  # where each scored video is and what its inputs held (what a resume checks, `_scoring_run`)
        table = table.merge(jobs[["job_id", *carried]], on="job_id", how="left", validate="one_to_one")
    table = report.failed_as_undetected(table)  # the table says what the config's metric and the report do
    write_parquet(work_dir / "per_video.parquet", table)
    client.log_table(run_id, data=table, artifact_file="per_video.json")
    client.log_artifact(run_id, str(work_dir / "per_video.parquet"))
    ok = table[table["status"] == OK]
    aggregates = {m: float(ok[m].mean()) for m in report.metric_columns(ok) if ok[m].notna().any()}
    if len(table):  # over every job: a video that failed shows no face (what ranking compares, report.rank)
        rates = table["detection_rate"] if "detection_rate" in table else pd.Series(float("nan"), index=table.index)
        rates = rates.where(table["status"] == OK, 0.0)  # NaN stays only where a driver showed no face
        aggregates["detection_rate"] = float(rates.mean())  # NaN where no driver shows a face: nothing to keep
    aggregates.update(learned_aggregates(work_dir, list(ok["job_id"])))
    aggregates.update(jobs_ok=len(ok), jobs_failed=len(table) - len(ok))
    log_values(client, run_id, metrics=aggregates)
    client.log_text(run_id, "\n".join(metrics_learned.skip_notes(evaluate).values()), "notes.txt")
    offsets = ok.set_index("job_id")["frame_offset"] if "frame_offset" in ok else pd.Series(dtype=float)
    shown = jobs[jobs["job_id"].isin(ok["job_id"])]
    shown = shown.assign(frame_offset=shown["job_id"].map(offsets).fillna(0).astype(int))
    _log_side_by_side(client, run_id, shown, work_dir, evaluate.side_by_side)
    ok_ids, folder = set(ok["job_id"].astype(str)), work_dir / "metrics"
    _log_files(client, run_id, [path for path in sorted(folder.iterdir()) if path.name.split(".", 1)[0] in ok_ids]
               if folder.is_dir() else [], "frames")
    return table


def _log_files(client: MlflowClient, run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Log just `paths` under `artifact_path` in one upload (a tracking server is a round trip per
    call), however many other files their folder holds."""
    import tempfile

    if not paths:
        return
    with tempfile.TemporaryDirectory(prefix="portraitflow-artifacts-") as staging:
        for path in paths:
            _link(path, Path(staging) / path.name)
        client.log_artifacts(run_id, staging, artifact_path)


def _failed_jobs(work_dir: Path) -> str:
    """The ids of the jobs a config's scores hold as failed (in generation or scoring), as a JSON
    list (a `summary.csv` column): the parent counts the videos some config failed."""
    table = pd.read_parquet(work_dir / "per_video.parquet", columns=["job_id", "status"])
    return json.dumps(sorted(table.loc[table["status"] != OK, "job_id"].astype(str)))


def generate_outputs(params: dict[str, Any], jobs: list[dict], out_dir: Path, cfg: PortraitFlowConfig) -> pd.DataFrame:
    """A row per job for one config, at least (job_id, status, reason, output): the generation job
    with the config's params as its animate settings (validated first, `config_settings`, before
    anything is written or run), without an MLflow run of its own (the config's child run records it)."""
    animate = sweep_spec.config_settings(params, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not jobs:
        return pd.DataFrame(columns=["job_id", "status", "reason", "output"])
    table = run_generation(_generation_jobs(jobs), out_dir, cfg.model_copy(update={"animate": animate}), log_run=False)
    return table.assign(status=table["status"].replace({SKIPPED: OK}))  # skipped = finished before


def _generation_jobs(jobs: list[dict]) -> list[Job]:
    """A sweep's dataset jobs as the generation flow takes them."""
    return [Job(j["job_id"], j["ref"], j["driving"]) for j in jobs]


def _finished_scores(client: MlflowClient, experiment_id: str, parent_id: str, config_hash: str, work_dir: Path,
                     inputs: pd.DataFrame, retry_failed: bool) -> tuple[Run | None, Run | None]:
    """(this sweep's finished child of the config, to reuse as it is; or the run of another sweep
    into this folder that scored it, a grid since extended, whose scores stand), at most one of them."""
    scored = _scoring_run(client, config_hash, work_dir, inputs, retry_failed)
    if scored is None or scored.data.tags.get(PARENT_TAG) == parent_id:
        return scored, None
    logged = _children(client, experiment_id, parent_id, config_hash, scored.info.run_id)  # by an earlier run
    return (logged[0], None) if logged else (None, scored)


def _code_tags(scored_before: Run | None) -> dict[str, str]:
    """The code tags of a child run: today's, or, logging again the scores of `scored_before`, that
    run's commit and id (the code that made the scores)."""
    code = code_tags()
    if scored_before is not None:
        code = {key: value for key, value in code.items() if key not in GIT_TAGS}
        code.update((key, scored_before.data.tags[key]) for key in GIT_TAGS if key in scored_before.data.tags)
        code[SCORES_FROM_TAG] = scored_before.info.run_id
    return code


def _generate_and_score(client: MlflowClient, run_id: str, params: dict[str, Any], jobs: list[dict],
                        inputs: pd.DataFrame, label: str, out_dir: Path, outputs_dir: Path, work_dir: Path,
                        evaluate: EvaluateConfig, cfg: PortraitFlowConfig, children: ChildRuns) -> None:
    """Make a config's videos (adopting those an earlier folder layout made) and score them into `run_id`."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in (SCORED_BY, "per_video.parquet"):  # until this scoring finishes, nothing here stands
        (work_dir / stale).unlink(missing_ok=True)
    if earlier := _earlier_layout(out_dir / "configs"):
        _adopt_earlier_videos(earlier, outputs_dir, _planned_names(params, jobs, outputs_dir, cfg))
    generated = generate_outputs(params, jobs, outputs_dir, cfg)
    children.check()
    outcome = generated[[c for c in ("job_id", "status", "reason", "output") if c in generated]]
    merged = inputs.merge(outcome, on="job_id", how="left", validate="one_to_one")  # ids unique (dataset_jobs)
    merged = merged.fillna({"status": FAILED, "reason": "not_generated"}).assign(
        paste_back=sweep_spec.config_settings(params, cfg).paste_back)  # how the evaluator frames the truth
    score_and_log(client, run_id, merged, label, work_dir, evaluate, cfg)


def run_config(params: dict[str, Any], jobs: list[dict], spec: sweep_spec.SweepSpec, evaluate: EvaluateConfig,
               cfg: PortraitFlowConfig, out_dir: Path, parent_id: str, experiment_id: str,
               children: ChildRuns | None = None, inputs: pd.DataFrame | None = None,
               retry_failed: bool = False) -> dict[str, Any]:
    """Generate and score one config in its own child run (or reuse a finished one, or log again the
    scores another sweep into this folder finished, or reuse the failed run of a config refused the
    same way before); a summary row. Its videos go to OUT/configs/<generation hash>/outputs/, shared
    with configs that differ only in scoring, and its scores to `scores/<config hash>/` there, so
    changing a scoring setting scores the same videos again. `children` tracks the sweep's
    runs in flight: once it is stopped, this config stops at its next stage. `inputs` is
    `_job_inputs(jobs)`, read once for all the configs of a sweep (None: read here). `retry_failed`
    runs again a config whose scores hold a failed job, where unchanged inputs would reuse them."""
    client = mlflow_client(cfg.mlflow)
    children = children or ChildRuns(client)
    config_hash = sweep_spec.config_hash(params, spec.dataset, evaluate, cfg)
    generation_hash = sweep_spec.generation_hash(params, spec.dataset, evaluate, cfg)
    label = sweep_spec.config_label(params)
    outputs_dir = out_dir / "configs" / generation_hash / "outputs"
    work_dir = out_dir / "configs" / generation_hash / "scores" / config_hash
    hashes = {"config_hash": config_hash, "generation_hash": generation_hash}
    refused = _refusal(params, cfg)
    row = {"config": label, "backend": params["backend"], **{k: v for k, v in params.items() if k != "backend"}}
    if inputs is None:  # read before generation: a file changed while it runs is caught by the next rerun
        inputs = _job_inputs(jobs)
    if refused is not None:
        earlier = _refused_child(client, experiment_id, parent_id, config_hash, _error_tag(refused))
        if earlier is not None:
            return {**row, **hashes, "run_id": earlier.info.run_id, "reused": True, "error": error_text(refused, known=())}
        done = scored_before = None
    else:
        done, scored_before = _finished_scores(client, experiment_id, parent_id, config_hash, work_dir, inputs,
                                               retry_failed)
    if done is None:
        attempts = _children(client, experiment_id, parent_id, config_hash, status=None)
        tags = {PARENT_TAG: parent_id, CONFIG_TAG: config_hash, GENERATION_TAG: generation_hash,
                PARAMS_TAG: json.dumps(params, sort_keys=True), **_attempt_tags(attempts), **_code_tags(scored_before)}
        run_id = children.start(experiment_id, label, tags, [r.info.run_id for r in attempts
                                                             if r.info.status in ("FAILED", "KILLED")])
        try:
            log_values(client, run_id, params={**params, **_settings_params(params, cfg),
                                               **{f"evaluate.{k}": v for k, v in evaluate.model_dump().items()}})
            if refused is not None:
                raise refused
            if scored_before is not None:  # its metrics; the tables and videos stay in that run (the report reads them there)
                log_values(client, run_id, metrics=scored_before.data.metrics)
            else:
                _generate_and_score(client, run_id, params, jobs, inputs, label, out_dir, outputs_dir, work_dir,
                                    evaluate, cfg, children)
            # a run the sweep's stop ended KILLED does not vouch for its scores, however far they got
            if children.end(run_id, "FINISHED") and scored_before is None:
                atomic_write(work_dir / SCORED_BY, run_id)
        except Exception as exc:  # one broken config must not stop the others; its run says why
            children.check()  # unless the sweep was stopped under it: then it was killed, not broken
            client.set_tag(run_id, "error", _error_tag(exc))
            children.end(run_id, "FAILED")
            return {**row, **hashes, "run_id": run_id, "reused": False, "error": error_text(exc, known=())}
        except BaseException:
            children.end(run_id, "KILLED")
            raise
    else:
        run_id = done.info.run_id
    metrics = client.get_run(run_id).data.metrics
    return {**row, **metrics, "failed_jobs": _failed_jobs(work_dir), **hashes, "run_id": run_id,
            "reused": done is not None or scored_before is not None}


#: tags tracing a score back to what it scored: the results table, the animate run that made it,
#: a sweep's dataset by absolute path and the curation run of its shards (runs looked up by the
#: folder each wrote, `latest_run_into`)
RESULTS_TAG, GENERATION_RUN_TAG, DATASET_TAG, CURATION_RUN_TAG = (
    "portraitflow.results", "portraitflow.generation_run_id", "portraitflow.dataset", "portraitflow.curation_run_id")


def evaluate_results(jobs: pd.DataFrame, cfg: PortraitFlowConfig, out_dir: str | Path, name: str = "evaluate",
                     results: Path | None = None) -> str:
    """Score outputs that already exist (job_id, ref, driving, output[, status, reason]) in one MLflow
    run; `results`, the table they were read from, is named in its tags with the run that made it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    claim_folder(out_dir, "evaluate")
    client = mlflow_client(cfg.mlflow)
    source = {}
    if results is not None:
        source[RESULTS_TAG] = str(Path(results).resolve())
        if generation_run := latest_run_into(client, Path(results).parent):
            source[GENERATION_RUN_TAG] = generation_run
    run_id = client.create_run(ensure_experiment(client, cfg.evaluate.experiment), run_name=name,
                               tags={**code_tags(), **source}).info.run_id
    with terminated_on_raise(client, run_id):
        init_ray(cfg.ray)
        _check_evaluator_memory(cfg)
        log_values(client, run_id, params=cfg.evaluate.model_dump())
        jobs = jobs.assign(status=jobs["status"] if "status" in jobs else OK,
                           reason=jobs["reason"] if "reason" in jobs else "")  # a plain table of outputs has neither
        table = score_and_log(client, run_id, jobs, name, out_dir, cfg.evaluate, cfg)
        if (table["status"] == OK).any():
            client.set_terminated(run_id, "FINISHED")
        else:  # no result: FAILED, as its exit status says (the CLI's 1), its per-video reasons kept for the report
            client.set_tag(run_id, NOTHING_SCORED_TAG, "true")
            client.set_terminated(run_id, "FAILED")
    return run_id


def _log_side_by_side(client: MlflowClient, run_id: str, rows: pd.DataFrame, work_dir: Path, count: int) -> None:
    """Render (reference | driver | output) for the first `count` rows and log those videos only,
    the frames paired as they were scored (`frame_offset`). A video already in
    `work_dir/side_by_side` is reused only while its inputs and pairing are unchanged
    (`input_fingerprint` of each): new outputs with the same job ids must not be shown beside old videos."""
    folder, videos = work_dir / "side_by_side", []
    for row in rows.head(count).itertuples():
        path = folder / f"{row.job_id}.mp4"
        digest = "\n".join([*(input_fingerprint(str(p)) for p in (row.ref, row.driving, row.output)),
                            *([f"offset {row.frame_offset}"] if row.frame_offset else [])])
        stamp = folder / f"{row.job_id}.inputs"  # not logged: only `videos` are
        if not (path.is_file() and stamp.is_file() and stamp.read_text() == digest):
            report.side_by_side(row.ref, row.driving, row.output, path, frame_offset=row.frame_offset)
            atomic_write(stamp, digest)
        videos.append(path)
    _log_files(client, run_id, videos, "side_by_side")


def check_sweep(spec: sweep_spec.SweepSpec, cfg: PortraitFlowConfig,
                out_dir: str | Path | None = None) -> tuple[EvaluateConfig, list[dict[str, Any]]]:
    """The effective evaluate settings and the configs of `spec`, or ValueError (one line) saying
    what the sweep gets wrong as a whole: a dataset path that is not there, evaluate overrides that
    are unknown or invalid, a config without `backend`, no config at all, a dataset that names no
    video outside `out_dir` (`check_dataset`; last, as it lists the dataset), as `InvalidSweep`.
    Nothing is started: `run_sweep` calls it first. A config whose params its backend refuses
    is not an error here: it fails alone (`run_config`)."""
    try:
        return _checked_sweep(spec, cfg, out_dir)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise InvalidSweep(str(exc)) from exc


def _checked_sweep(spec: sweep_spec.SweepSpec, cfg: PortraitFlowConfig,
                   out_dir: str | Path | None) -> tuple[EvaluateConfig, list[dict[str, Any]]]:
    from pydantic import ValidationError

    dataset, where = spec.dataset, Path(spec.dataset.path)
    wanted = {"folder": ("a folder", where.is_dir), "jobs": ("a jobs file", where.is_file),
              "shards": ("a folder or .tar file", where.exists)}[dataset.type]
    if not any(c in dataset.path for c in "*?[") and not wanted[1]():  # a shards glob is matched when read
        raise ValueError(f"dataset.path {dataset.path!r} is not {wanted[0]} (from {Path.cwd()})")
    try:
        evaluate = sweep_spec.effective_evaluate(cfg.evaluate, spec)
    except ValidationError as exc:
        raise ValueError(validation_problems(exc, "evaluate")) from exc
    check_rank_by(evaluate.rank_by, "evaluate.rank_by")
    expanded = sweep_spec.expand_configs(spec, warn_repeats=True)
    _check_param_names(expanded)
    configs = _distinct_configs(expanded, cfg)
    check_dataset(dataset, out_dir)
    return evaluate, configs


def _check_param_names(configs: list[dict[str, Any]]) -> None:
    """ValueError for a param that is no animate setting at all (a typo in `grid:` failed every
    config after each had started a run); one its config's backend does not read fails that config
    alone (`config_settings`)."""
    unknown = sorted({name for params in configs for name in params} - set(AnimateConfig.model_fields))
    if unknown:
        near = {name: nearest_field(AnimateConfig, (name,)) for name in unknown}
        named = ", ".join(f"{name!r}" + (f" (did you mean {near[name]!r}?)" if near[name] else "") for name in unknown)
        raise ValueError(f"{named}: no animate setting has that name (docs/config.md lists them)")


def _distinct_configs(configs: list[dict[str, Any]], cfg: PortraitFlowConfig) -> list[dict[str, Any]]:
    """`configs` less each that makes the same videos as one before it (so the same scores), with a
    warning naming both: `{backend: warp}` beside `{backend: warp, pose_multiplier: 1.0}`, or 1 beside
    1.0, would each be generated, scored and ranked. A config its backend refuses stays: it fails alone."""
    kept: dict[str, dict[str, Any]] = {}
    distinct = []
    for params in configs:
        settings = sweep_spec.generation_settings(params, cfg)
        key = json.dumps(settings, sort_keys=True, default=str)
        if settings is not None and key in kept:
            log.warning("sweep config %s makes the same videos as %s: left out", sweep_spec.config_label(params),
                        sweep_spec.config_label(kept[key]))
            continue
        kept.setdefault(key, params)
        distinct.append(params)
    return distinct


def failed_configs(summary: pd.DataFrame) -> pd.Series:
    """Which configs of a sweep's summary failed whole: only those have an `error`."""
    return summary["error"].notna() if "error" in summary else pd.Series(False, index=summary.index)


def scored_any(summary: pd.DataFrame) -> bool:
    """Whether a config of a sweep's summary scored a video: one that failed whole has an `error`;
    one that finished with every job failed (a dataset whose clips show no face) has `jobs_ok` 0.
    A sweep that scored none is no result: its parent run ends FAILED and the CLI exits 1."""
    scored = summary["jobs_ok"].fillna(0) > 0 if "jobs_ok" in summary else ~failed_configs(summary)
    return bool(scored.any())


def check_rank_by(rank_by: str, setting: str) -> None:
    """ValueError unless `rank_by` is a metric (`metrics.METRICS`): a sweep param or a typo is not
    one, and would be ranked with a made-up direction or warned about only at the end."""
    if metrics.metric_kind(rank_by) is None:
        raise ValueError(f"{setting} {rank_by!r} is not a metric; the metrics are {', '.join(metrics.metric_list())}")


def run_sweep(spec: sweep_spec.SweepSpec, cfg: PortraitFlowConfig, out_dir: str | Path,
              retry_failed: bool = False) -> str:
    """Run (or resume) a sweep; returns the parent run id. The report lands in `out_dir/report`.
    `retry_failed`: configs with a failed job run again (`run_config`).
    InvalidSweep (`check_sweep`) before any run or Ray starts when the sweep itself is wrong;
    FolderBusy while another sweep writes `out_dir`."""
    out_dir = Path(out_dir).resolve()  # output paths recorded absolute: a resume from elsewhere finds them
    evaluate, configs = check_sweep(spec, cfg, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_folder(out_dir):
        claim_folder(out_dir, "sweep")
        return _sweep_holding(spec, cfg, out_dir, evaluate, configs, retry_failed)


def _sweep_holding(spec: sweep_spec.SweepSpec, cfg: PortraitFlowConfig, out_dir: Path, evaluate: EvaluateConfig,
                   configs: list[dict[str, Any]], retry_failed: bool) -> str:
    init_ray(cfg.ray)
    _check_cpus(configs, evaluate.max_parallel, cfg)
    _check_evaluator_memory(cfg)
    client = mlflow_client(cfg.mlflow)
    _note_tracking_store(out_dir, mlflow_tracking_uri(cfg.mlflow))
    experiment_id = ensure_experiment(client, evaluate.experiment)
    tags = {SWEEP_TAG: sweep_spec.sweep_hash(spec, evaluate, cfg), FOLDER_TAG: folder_tag(out_dir),
            **code_tags()}
    # any sweep into this folder killed outright (this one, or one of other settings) left its runs
    # RUNNING: ended before this sweep's parent is found or made (a new run is RUNNING)
    in_folder = f"tags.`{FOLDER_TAG}` = '{tags[FOLDER_TAG]}'"
    for abandoned in search_all_runs(client, [experiment_id], f"{in_folder} and attributes.status = 'RUNNING'"):
        end_abandoned_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = '{abandoned.info.run_id}'")
    end_abandoned_runs(client, experiment_id, in_folder)
    parent_id = _parent(client, experiment_id, spec.name, tags)
    end_abandoned_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}'")  # one recorded without its folder
    client.update_run(parent_id, status="RUNNING")
    with terminated_on_raise(client, parent_id):
        jobs = dataset_jobs(spec.dataset, evaluate.protocol, out_dir / "dataset", evaluate.max_seconds,
                         evaluate.max_videos, exclude=out_dir)  # an OUT inside the dataset holds no inputs
        write_parquet(out_dir / "dataset.parquet", pd.DataFrame(jobs).astype(str))  # failed inputs too
        usable = [j for j in jobs if j.get("status", OK) == OK]
        log_values(client, parent_id, params={"configs": len(configs), "protocol": evaluate.protocol,
                                              "dataset": spec.dataset.path})  # as written: a param never changes
        client.set_tag(parent_id, DATASET_TAG, os.path.abspath(spec.dataset.path))
        if spec.dataset.type == "shards" and Path(spec.dataset.path, "shards").is_dir():  # a curated output folder
            if curation_run := latest_run_into(client, Path(spec.dataset.path)):
                client.set_tag(parent_id, CURATION_RUN_TAG, curation_run)
        client.set_tag(parent_id, RANK_BY_TAG, evaluate.rank_by)  # a rerun may rank by another
        client.log_text(parent_id, spec.model_dump_json(indent=2), "sweep.json")
        client.log_text(parent_id, "\n".join(metrics_learned.skip_notes(evaluate).values()), "notes.txt")
        client.log_artifact(parent_id, str(out_dir / "dataset.parquet"))
        _warn_of_earlier_layout(out_dir)
        summary = _ranked(_run_configs(configs, usable, spec, evaluate, cfg, out_dir, parent_id, experiment_id,
                                       retry_failed), evaluate.rank_by)
        atomic_write(out_dir / "summary.csv", summary.to_csv(index=False))
        client.log_artifact(parent_id, str(out_dir / "summary.csv"))
        failed = int(failed_configs(summary).sum())
        # only finished configs have failed_jobs: a config that failed whole is in configs_failed
        finished_failures = summary["failed_jobs"].dropna() if "failed_jobs" in summary else []
        failed_anywhere = set().union(*map(json.loads, finished_failures))
        log_values(client, parent_id, metrics={"configs_finished": len(summary) - failed, "configs_failed": failed,
                                               "videos": len(usable), "videos_failed": len(jobs) - len(usable),
                                               "videos_failed_any_config": len(failed_anywhere)})
        report = out_dir / "report"
        report_from_run(parent_id, cfg, report, evaluate.rank_by)
        # the page, plot and tables; the children's videos and tables stay in their own runs (the
        # local report holds copies of them under runs/, which would store each video twice)
        _log_files(client, parent_id, sorted(p for p in report.glob("*") if p.is_file()), "report")
        client.set_terminated(parent_id, "FINISHED" if scored_any(summary) else "FAILED")
    return parent_id


def _earlier_layout(configs: Path) -> list[Path]:
    """The config folders of the layout before videos and scores were kept apart: one folder per
    config and scoring, its videos in `outputs/` with no `scores/` beside them (this layout makes
    `scores/` before any video)."""
    return sorted(folder.parent for folder in configs.glob("*/outputs") if not (folder.parent / "scores").exists())


def _warn_of_earlier_layout(out_dir: Path) -> None:
    """Name the earlier layout's folders: their scores are not read (their configs are scored again),
    their videos are taken where they fit (`_adopt_earlier_videos`), and only a person can tell when
    to delete them."""
    earlier = _earlier_layout(out_dir / "configs")
    if earlier:
        log.warning("%s/configs holds %d folder(s) of an earlier layout (%s): their videos are taken into "
                    "configs/<generation hash>/outputs/ where a config makes the same ones, their scores are not read "
                    "(its configs are scored again); delete those folders once this sweep has finished",
                    out_dir, len(earlier), ", ".join(folder.name for folder in earlier))


def _planned_names(params: dict[str, Any], jobs: list[dict], outputs_dir: Path, cfg: PortraitFlowConfig) -> set[str]:
    """The file names generation gives this config's videos (`plan_rows`: they digest each job's
    inputs and every setting that makes its video)."""
    from portraitflow.models.animators.registry import resolve_backend
    from portraitflow.operators.generation_results import plan_rows

    animate = sweep_spec.config_settings(params, cfg)
    rows = plan_rows(_generation_jobs(jobs), outputs_dir, resolve_backend(animate), animate, resume=False,
                     face=cfg.face)
    return {Path(row["output"]).name for row in rows if row["output"]}


def _adopt_earlier_videos(earlier: list[Path], outputs_dir: Path, names: set[str]) -> None:
    """Link into `outputs_dir` the videos named in `names` that it lacks from the `earlier` layout's
    config folders, with their generation records, so generation's resume skips them (a name
    digests a video's inputs and settings: another config's never matches)."""
    for folder in earlier:
        for name in sorted(names):
            video, target = folder / "outputs" / name, outputs_dir / name
            if not video.is_file() or target.exists():
                continue
            record = records_dir(folder / "outputs") / f"{video.stem}.json"
            if record.is_file():
                _link(record, records_dir(outputs_dir) / record.name)  # first: it vouches for the video
            _link(video, target)


def _link(source: Path, target: Path) -> None:
    """A hard link (no space taken twice), else an atomic copy keeping the modification time: a
    generation record names its video's size and time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except OSError:
        with atomic_target(target) as tmp:
            shutil.copy2(source, tmp)


#: the MLflow store a sweep into OUT recorded its runs in (credentials removed)
TRACKING_STORE_FILE = "tracking_store.txt"


def store_of_earlier_sweep(out_dir: Path) -> str | None:
    """The sqlite store an earlier sweep into `out_dir` recorded (`_note_tracking_store`), which a
    rerun given no store resumes from, wherever it runs; None for none, or for a server (its URI
    was recorded without credentials)."""
    record = Path(out_dir) / TRACKING_STORE_FILE
    store = record.read_text().strip() if record.is_file() else ""
    return store if sqlite_store_path(store) is not None else None


def _note_tracking_store(out_dir: Path, uri: str) -> None:
    """Record the store this sweep uses in OUT, warning when an earlier sweep into OUT used another:
    a resume is looked up in the store, and the default one is ./mlflow.db of the current folder,
    so a rerun from elsewhere starts a new parent and redoes every config."""
    store = without_credentials(uri)
    record = out_dir / TRACKING_STORE_FILE
    earlier = record.read_text().strip() if record.is_file() else None
    if earlier and earlier != store:
        log.warning("%s was swept with the MLflow store %s; this sweep uses %s, so it resumes nothing recorded "
                    "there (the default store is mlflow.db in the current folder: run from the first sweep's "
                    "folder, or give --mlflow-uri %s)", out_dir, earlier, store, earlier)
    if earlier != store:
        atomic_write(record, store + "\n")


def _parent(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str]) -> str:
    """The parent run this sweep into this folder resumes: the latest with both tags, else the
    latest of the same sweep recorded before parents carried their folder (it takes the folder's
    tag now), else a new one."""
    previous = client.search_runs([experiment_id], f"tags.`{SWEEP_TAG}` = '{tags[SWEEP_TAG]}'",
                                  order_by=["attributes.start_time DESC"])
    ours = [r for r in previous if r.data.tags.get(FOLDER_TAG) == tags[FOLDER_TAG]]
    untagged = [r for r in previous if FOLDER_TAG not in r.data.tags]
    if ours or untagged:
        parent_id = (ours or untagged)[0].info.run_id
        for key, value in tags.items():  # its folder, and the code this run of it uses
            client.set_tag(parent_id, key, value)
        return parent_id
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def _check_evaluator_memory(cfg: PortraitFlowConfig) -> None:
    """NotEnoughResources when a local Ray has less memory than one evaluator declares: its pool
    would wait for ever."""
    require_resource(cfg.ray, "memory", EVALUATOR_MEMORY, lambda have: (
        f"an evaluator declares {EVALUATOR_MEMORY / 1024**3:.2f} GiB of memory; Ray has {have / 1024**3:.1f} GiB: "
        "free memory, or give Ray a smaller object store (ray.object_store_memory_mb)"))


def _check_cpus(configs: list[dict[str, Any]], max_parallel: int, cfg: PortraitFlowConfig) -> None:
    """Configs running at once each hold an animation actor; with no CPU left for the preparation
    tasks that feed them, the sweep would wait forever. (The evaluators and a config its params
    refuse need no feeding.)"""
    animating = []
    for params in configs:
        try:
            animating.append(sweep_spec.config_settings(params, cfg).cpus_per_actor)
        except ValueError:  # fails alone, before generating
            continue
    at_once = sorted(animating, reverse=True)[:max_parallel]
    if at_once:
        needed = sum(at_once) + 1
        require_resource(cfg.ray, "CPU", needed, lambda cpus: (
            f"{len(at_once)} animating configs at once need {needed:g} CPUs (an animation actor each and one for "
            f"the tasks that feed them); Ray has {cpus:g}: lower --max-parallel (evaluate.max_parallel) to "
            f"{max(int((cpus - 1) // max(at_once)), 1)}"))


def _run_configs(configs: list[dict[str, Any]], jobs: list[dict], spec: sweep_spec.SweepSpec, evaluate: EvaluateConfig,
                 cfg: PortraitFlowConfig, out_dir: Path, parent_id: str, experiment_id: str,
                 retry_failed: bool) -> pd.DataFrame:
    """`run_config` of every config, `max_parallel` at a time: one summary row each. Anything that
    stops the wait (Ctrl-C) cancels the queued configs and ends the children in flight KILLED
    before it propagates; their threads stop at their next stage rather than run on unrecorded."""
    children = ChildRuns(mlflow_client(cfg.mlflow))
    inputs = _job_inputs(jobs)  # what every config's jobs hold, read once
    pool = ThreadPoolExecutor(max_workers=evaluate.max_parallel, thread_name_prefix="sweep-config")
    try:
        futures = [pool.submit(run_config, params, jobs, spec, evaluate, cfg, out_dir, parent_id, experiment_id,
                               children, inputs, retry_failed) for params in configs]
        summary = pd.DataFrame([f.result() for f in futures])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        children.stop()
        raise
    pool.shutdown()
    return summary


def report_from_run(run_id: str, cfg: PortraitFlowConfig, out_dir: str | Path, rank_by: str | None = None) -> Path:
    """A static HTML report of a sweep's parent run (or of a single evaluation run) from MLflow;
    ValueError, before anything is written, when `rank_by` is no metric or the run is neither (a
    curation run made a page of its own metrics titled as an evaluation). Without `rank_by`, the
    run's own, so a page made again ranks as the run's did: a sweep's latest (RANK_BY_TAG; for a
    sweep from before it, its latest config's logged `evaluate.rank_by`), an evaluation's `rank_by`
    param; `cfg.evaluate.rank_by` for a run that recorded none or one that is no metric now."""
    if rank_by is not None:
        check_rank_by(rank_by, "rank_by")
    client = mlflow_client(cfg.mlflow, writing=False)  # a report reads: an archived store will do
    parent = client.get_run(run_id)  # an unknown run fails here, before anything is written
    children = search_all_runs(client, [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run_id}'",
                               order_by=["attributes.start_time ASC"])
    scored = children or {SWEEP_TAG, PARENT_TAG, SCORES_FROM_TAG} & set(parent.data.tags) or any(
        artifact.path == "per_video.parquet" for artifact in client.list_artifacts(run_id))
    if not scored:
        experiment = client.get_experiment(parent.info.experiment_id).name
        raise ValueError(f"run {run_id} (experiment {experiment!r}) is neither a sweep nor an evaluation: "
                         "give a sweep's parent run id or an `evaluate` run id")
    children = children or [parent]
    rank_by = rank_by or _recorded_rank_by(parent, children) or cfg.evaluate.rank_by
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = [json.loads(child.data.tags.get(PARAMS_TAG, "{}")) for child in children]
    # a run that did not finish shows no numbers, as in summary.csv: what it logged is partial (one that
    # scored every job and none of them logged whole tables, which say why)
    whole = {child.info.run_id for child in children
             if child.info.status == "FINISHED" or child.data.tags.get(NOTHING_SCORED_TAG) == "true"}
    rows = [{"config": child.info.run_name or child.info.run_id, **values, "status": child.info.status,
             **(child.data.metrics if child.info.run_id in whole else {}),
             "error": child.data.tags.get("error", ""), "run_id": child.info.run_id}
            for child, values in zip(children, params)]
    summary = _latest_per_config(pd.DataFrame(rows))
    # a child that logged another sweep's scores has its tables and videos in that sweep's run
    sources = {child.info.run_id: child.data.tags.get(SCORES_FROM_TAG, child.info.run_id) for child in children}
    for earlier in (out_dir / "runs").glob("*"):  # a page made again here kept the videos of runs it no longer shows
        if _RUN_ID.fullmatch(earlier.name) and earlier.name not in {run_id, *sources.values()}:
            shutil.rmtree(earlier)
    tables, videos = [], []
    finished = summary[summary["run_id"].isin(whole)]
    for label, run in zip(finished["config"], finished["run_id"]):
        local = _download(client, sources[run], ("per_video.parquet", "side_by_side"), out_dir / "runs" / sources[run])
        if (local / "per_video.parquet").is_file():
            tables.append(pd.read_parquet(local / "per_video.parquet").assign(config=label))
        for video in sorted((local / "side_by_side").glob("*.mp4")):
            videos.append((f"{label}: {video.stem}", video))
    per_video = report.failed_as_undetected(pd.concat(tables, ignore_index=True) if tables
                                            else pd.DataFrame(columns=["config"]))
    summary = _ranked(summary, rank_by)
    order = list(summary["config"])
    plots, captions = [], {}
    files = {name: out_dir / f"{name}.png" for name in ("metrics", "parameters", "paired")}
    for path in files.values():  # a plot this report has not must not be left from an earlier one
        path.unlink(missing_ok=True)
    if len(per_video):
        plots.append(("Metrics across configs", report.metric_plots(per_video, files["metrics"], order)))
        swept = report.parameter_plots(summary, per_video, list(dict.fromkeys(k for p in params for k in p)),
                                       files["parameters"])
        paired = report.paired_plot(per_video, rank_by, order, files["paired"])
        swept_heading, paired_heading = "Metrics against the swept parameters", f"{rank_by} per video across configs"
        plots += [(heading, plot) for heading, plot in ((swept_heading, swept), (paired_heading, paired)) if plot]
        captions = {swept_heading: "Bars: 95% intervals of each config's mean on its own, cut to the values the metric "
                    "can take. The configs are scored on the same videos, so overlapping bars do not make them equal"
                    + (f": compare configs on {rank_by} video by video below." if paired else "."),
                    paired_heading: "One line per video, across the configs: a config better on nearly every line is "
                    "better whatever the intervals say; a mean carried by one or two videos shows here."}
    notes_file = _download(client, run_id, ("notes.txt",), out_dir / "runs" / run_id) / "notes.txt"
    notes = [n for n in notes_file.read_text().splitlines() if n] if notes_file.is_file() else []
    notes += _sweep_notes(parent, len(summary))
    return report.write_html(out_dir, f"PortraitFlow evaluation: {parent.info.run_name or run_id}", summary, rank_by,
                             plots, videos, notes, per_video, captions)


def _sweep_notes(parent: Run, configs_run: int) -> list[str]:
    """What the page must say of the sweep as a whole: that it was stopped before every config ran
    (the page would pass for the whole sweep), and how many of the dataset's videos could not be used."""
    notes = []
    if parent.info.lifecycle_stage == "deleted":
        notes.append(f"This run is deleted in MLflow (`mlflow runs restore --run-id {parent.info.run_id}` brings it "
                     "back); a sweep deletes a config's attempts once it has tried the config again.")
    planned = parent.data.params.get("configs")
    if parent.info.status == "KILLED" and planned is not None:
        notes.append(f"The sweep was interrupted (its run ended KILLED): {configs_run} of its {planned} configs "
                     "ran; rerun the same `portraitflow sweep` command to run the others.")
    elif parent.info.status == "RUNNING" and planned is not None and configs_run < int(planned):
        notes.append(f"The sweep's run is still RUNNING, and {configs_run} of its {planned} configs have runs (those "
                     "shown RUNNING have no final numbers): it is in progress, or was killed outright (SIGKILL, a "
                     "lost node); rerun the same `portraitflow sweep` command to finish it.")
    unusable = int(parent.data.metrics.get("videos_failed", 0))
    if unusable:
        notes.append(f"{unusable} video(s) of the dataset could not be used and are in no config's numbers: "
                     "dataset.parquet (in the sweep's folder and its run) says why.")
    return notes


def _recorded_rank_by(parent, children: list) -> str | None:
    """The metric a sweep or an evaluation run recorded ranking by (`report_from_run`); None, with a
    warning, where it is no metric now (renamed by a later release)."""
    recorded = parent.data.tags.get(RANK_BY_TAG) or parent.data.params.get("rank_by") or next(
        (child.data.params["evaluate.rank_by"] for child in reversed(children) if "evaluate.rank_by" in child.data.params),
        None)
    if recorded is not None:
        try:
            check_rank_by(recorded, "recorded rank_by")
        except ValueError:
            log.warning("run %s was ranked by %r, which is no metric now: ranking by the default", parent.info.run_id,
                        recorded)
            return None
    return recorded


def _ranked(summary: pd.DataFrame, rank_by: str) -> pd.DataFrame:
    """`summary` best first on `rank_by`; left in its order, with a warning naming the metrics there
    are, when no config has that metric (a misspelt name would otherwise go unnoticed)."""
    if rank_by in summary.columns:
        return report.rank(summary, rank_by)
    if not scored_any(summary):  # nothing to rank: the run's end says why, this would mislead
        return summary
    log.warning("cannot rank by %r: no config has that metric; available: %s", rank_by,
                ", ".join(report.metric_columns(summary)) or "none")
    return summary


def _latest_per_config(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per config, its latest attempt (runs come oldest first), as `summary.csv` has it. A
    config runs again only once its scores no longer stand (`_scoring_run`: other jobs or inputs,
    outputs gone, videos that failed), so when that attempt failed or was killed, an older FINISHED
    run's numbers are the ones it was to replace: only that run's id is shown, as `stale_run`."""
    latest = summary.drop_duplicates("config", keep="last")
    finished = summary[summary["status"] == "FINISHED"].drop_duplicates("config", keep="last")
    stale = latest["config"].map(finished.set_index("config")["run_id"]).where(latest["status"] != "FINISHED")
    if stale.notna().any():
        latest = latest.assign(stale_run=stale.fillna(""))
    return latest.reset_index(drop=True)


def _download(client: MlflowClient, run_id: str, names: tuple[str, ...], folder: Path) -> Path:
    """The named artifacts of a run that exist, downloaded under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    present = {a.path for a in client.list_artifacts(run_id)}
    for name in names:
        if name in present:
            client.download_artifacts(run_id, name, str(folder))
    return folder
