"""Batch generation: many (reference portrait, driving video) jobs to finished videos with audio.

    jobs -> plan (resume, params) -> prepare_job (CPU tasks) -> AnimateJobs (actor pool) -> results
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.jobs.runtime import init_ray, mlflow_run, require_resource
from portraitflow.models.animators.registry import check_backend, resolve_backend
from portraitflow.operators.animate import AnimateJobs, prepare_job
from portraitflow.operators.atomic import exclusive_folder, write_parquet
from portraitflow.operators.generation_jobs import Job, load_jobs
from portraitflow.operators.generation_results import (
    RESULTS_FILE, log_to_mlflow, merged_with_earlier, plan_rows, records_dir, results_table, save_preview,
)
from portraitflow.operators.quarantine import MAX_ATTEMPTS

#: a preparation task holds the face models and one chunk of full-resolution frames. Declaring
#: it also keeps Ray Data from fusing the tasks into the animation actors (different resources).
PREP_MEMORY = 768 * 1024**2
#: the reason of a job whose result never came back from Ray (its worker died, its block was
#: dropped): like curation's lost inputs (jobs/curate.py) it still gets its `failed` row.
LOST_REASON = "animation: the worker processing this job crashed; its result never came back"


def animation_pool(backend: str, cfg: AnimateConfig) -> tuple[int, int]:
    """(most actors, GPUs per actor): hunyuan holds one GPU per actor, unless `gpus` is 0 (CPU).

    The pool starts with one actor and grows while resources are free: a fixed pool as large as
    the CPUs would hold them all and starve the preparation tasks that feed it.
    """
    if backend == "hunyuan" and cfg.gpus > 0:
        return cfg.gpus, 1
    return cfg.actors, 0


def _fresh(folder: Path) -> Path:
    """`folder`, emptied: crash counts belong to one invocation."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run_generation(
    jobs: list[Job] | str | Path, out_dir: str | Path, cfg: PortraitFlowConfig | None = None, resume: bool = True
) -> pd.DataFrame:
    """Animate every job and return the results table (also written to `out_dir/results.parquet`).

    jobs: `Job(job_id, ref, driving, params)` objects, or a CSV / JSONL / parquet file with columns
        `ref`, `driving`, optional `job_id` and per-job overrides of `motion`, `pose_multiplier`,
        `expression_multiplier`, `paste_back`, `seed`, `num_steps`, `appearance_scale`,
        `motion_scale` (`PER_JOB_FIELDS`, jobs/config/animate.py).
    cfg: the whole config; `cfg.animate` picks the backend and defaults, `cfg.face` the face models,
        `cfg.ray` / `cfg.mlflow` where it runs and is recorded (one MLflow run per call).
    resume: skip jobs whose output (named by job id + a digest of what the inputs hold and the
        settings) exists; a skipped job's row keeps what the run that made its video recorded
        (model, frames, timings: from the previous `results.parquet`, when it has the output).
        False redoes every job from its inputs, the drivers' cached motion included (an edit the
        cache's key cannot see is what a user reruns without resume for).

    One row per job, in input order: job_id, status (`ok`, `skipped`, `failed`), reason, output
    (mp4 path), ref, driving, backend, params (JSON), model (JSON), frames, fps, seconds, has_audio,
    and timings prep_s, animate_s, encode_s, total_s. A bad job never stops the others.
    FolderBusy while another run writes `out_dir`.
    """
    import ray
    from ray.data import ActorPoolStrategy

    cfg = cfg or PortraitFlowConfig()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = load_jobs(jobs) if isinstance(jobs, (str, Path)) else jobs
    backend = resolve_backend(cfg.animate)
    check_backend(backend, cfg.animate)  # what would fail every actor fails here, before Ray starts
    with exclusive_folder(out_dir):  # FolderBusy while another run writes it
        rows = plan_rows(jobs, out_dir, backend, cfg.animate, resume, cfg.face)
        motion_dir = out_dir / ".state" / "motion"
        if not resume:
            shutil.rmtree(motion_dir, ignore_errors=True)
        started = time.perf_counter()
        init_ray(cfg.ray, cfg.mlflow)
        needed = cfg.animate.cpus_per_actor + 1  # else an actor holds every CPU and starves the tasks feeding it
        require_resource(cfg.ray, "CPU", needed, lambda cpus: (
            f"the generation flow needs {needed:g} CPUs (a preparation task beside an animation actor); Ray has "
            f"{cpus:g}: lower animate.cpus_per_actor or give Ray more CPUs (ray.num_cpus)"))
        actors, gpus_per_actor = animation_pool(backend, cfg.animate)
        if gpus_per_actor:
            require_resource(cfg.ray, "GPU", 1, lambda gpus: (
                f"hunyuan with animate.gpus={cfg.animate.gpus} needs a GPU for each animation actor; Ray has "
                f"{gpus:g}: pass --gpus 0 to animate on CPU actors (float32, slow)"))
        with mlflow_run(cfg.mlflow, cfg.animate.experiment, out_dir) as run:
            pending = [row for row in rows if row["status"] == "pending"]
            if pending:
                crashes = {"attempts_dir": str(_fresh(out_dir / ".state" / "attempts")),
                           "max_attempts": MAX_ATTEMPTS}  # a job that kills its worker is given up on
                jobs_ds = ray.data.from_items(pending, override_num_blocks=len(pending))
                jobs_ds.context.max_errored_blocks = -1  # a job whose block is lost still gets its row (below)
                finished = (
                    jobs_ds
                    .map(prepare_job, fn_kwargs={"face_cfg_json": cfg.face.model_dump_json(),
                                                 "animate_cfg_json": cfg.animate.model_dump_json(), **crashes,
                                                 "motion_dir": str(motion_dir)},
                         num_cpus=1, memory=PREP_MEMORY)
                    .map_batches(AnimateJobs, fn_constructor_kwargs={"backend": backend, **crashes,
                                                                     "records_dir": str(records_dir(out_dir)),
                                                                     "animate_cfg_json": cfg.animate.model_dump_json()},
                                 batch_size=1, compute=ActorPoolStrategy(min_size=1, max_size=actors),
                                 num_cpus=cfg.animate.cpus_per_actor, num_gpus=gpus_per_actor)
                    .take_all()
                )
                by_output = {row["output"]: row for row in finished}
                rows = [by_output.get(row["output"], {**row, "status": "failed", "reason": LOST_REASON})
                        if row["status"] == "pending" else row for row in rows]
            table = results_table(rows)
            write_parquet(out_dir / RESULTS_FILE, merged_with_earlier(table, out_dir / RESULTS_FILE))
            preview = save_preview(table, cfg.animate, out_dir)
            if run is not None:
                log_to_mlflow(table, cfg.animate, backend, time.perf_counter() - started, preview)
        return table
