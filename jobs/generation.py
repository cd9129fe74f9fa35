"""The generation job: many (reference portrait, driving video) jobs into one output folder.

It holds the folder, plans resume, starts Ray, records the MLflow run and writes results.parquet
and preview.png; the Ray Data wiring it runs is pipelines/generate.py (docs/generation.md).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.jobs.runtime import claim_folder, init_ray, mlflow_run, recorded_after_the_work, require_resource
from portraitflow.models.animators.registry import (
    backend_settings,
    check_backend,
    identity_notice,
    model_host_bytes,
    resolve_backend,
)
from portraitflow.operators.atomic import exclusive_folder, write_parquet
from portraitflow.operators.generation_jobs import Job, load_jobs
from portraitflow.operators.job_status import DONE, FAILED, OK, SKIPPED
from portraitflow.operators.generation_results import (
    RESULTS_FILE, merged_with_earlier, pasted_back_side, plan_rows, records_dir, results_table, save_preview,
)
from portraitflow.pipelines.generate import PREP_MEMORY, animate_pending, animation_memory, animation_pool

log = logging.getLogger(__name__)


def _fresh(folder: Path) -> Path:
    """`folder`, emptied: crash counts belong to one invocation."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run_generation(jobs: list[Job] | str | Path, out_dir: str | Path, cfg: PortraitFlowConfig | None = None,
                   resume: bool = True, log_run: bool = True) -> pd.DataFrame:
    """Animate every job; returns this invocation's results table, one row per job in input order
    (docs/generation.md, "How it runs"), also merged into `out_dir/results.parquet`. A bad job never
    stops the others.

    jobs: `Job` objects, or a CSV / JSONL / parquet jobs file (`load_jobs`).
    resume: skip jobs whose output exists; False redoes every job, the drivers' cached motion included
        (an edit the cache's key cannot see is what a user reruns without resume for).
    log_run: one MLflow run per call (when `cfg.mlflow` enables tracking); False where the caller
        records the work in its own run (a sweep's child run).
    Raises FolderBusy while another run writes `out_dir`, and NotEnoughResources (a local Ray that
    could never run the flow) or the backend's refusal (`check_backend`) before any job runs. Ray is
    started only when a job is pending.
    """
    cfg = cfg or PortraitFlowConfig()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = load_jobs(jobs) if isinstance(jobs, (str, Path)) else jobs
    backend = resolve_backend(cfg.animate)
    check_backend(backend, cfg.animate)  # what would fail every actor fails here, before Ray starts
    if notice := identity_notice(backend, cfg.animate, cfg.face.backend):
        log.warning(notice)
    with exclusive_folder(out_dir):  # FolderBusy while another run writes it
        claim_folder(out_dir, "animate")
        rows = plan_rows(jobs, out_dir, backend, cfg.animate, resume, cfg.face)
        motion_dir = out_dir / ".state" / "motion"
        if not resume:
            shutil.rmtree(motion_dir, ignore_errors=True)
        started = time.perf_counter()
        pending = [row for row in rows if row["status"] == "pending"]
        if pending:  # a rerun of a finished folder records its rows without starting Ray
            pasted_side = pasted_back_side(pending, cfg.animate.max_output_side)
            init_ray(cfg.ray)
            _check_resources(backend, cfg, pasted_side)
        with mlflow_run(cfg.mlflow, cfg.animate.experiment, out_dir) if log_run else contextlib.nullcontext() as run:
            if pending:
                finished = iter(animate_pending(pending, backend, cfg, motion_dir, _fresh(out_dir / ".state" / "attempts"),
                                                records_dir(out_dir), pasted_side))
                rows = [next(finished) if row["status"] == "pending" else row for row in rows]
            table = results_table(rows)
            merged = merged_with_earlier(table, out_dir / RESULTS_FILE)
            write_parquet(out_dir / RESULTS_FILE, merged)
            _warn_of_unlisted_videos(out_dir, merged)
            preview = save_preview(table, cfg.animate, out_dir)
            if run is not None:
                with recorded_after_the_work(out_dir):
                    _log_run(table, cfg.animate, backend, time.perf_counter() - started, preview)
        return table


def _log_run(table: pd.DataFrame, cfg: AnimateConfig, backend: str, wall_s: float, preview: Path | None) -> None:
    """Params (the settings `backend` reads: a warp run logs no GPU or sampling settings), counts,
    throughput, the per-job table and the preview strip of this invocation; the run ends FAILED when
    no job has a video, as evaluate and sweep end theirs."""
    import mlflow

    read = backend_settings(backend)
    settings = {name: value for name, value in cfg.model_dump(mode="json").items() if name in read}
    mlflow.log_params({**settings, "backend_resolved": backend, "jobs": len(table)})
    done = table[table.status == OK]
    counts = table.status.value_counts()
    mlflow.log_metrics({
        "jobs_ok": int(counts.get(OK, 0)), "jobs_failed": int(counts.get(FAILED, 0)),
        "jobs_skipped": int(counts.get(SKIPPED, 0)), "frames_generated": int(done.frames.sum()),
        "wall_s": wall_s, "frames_per_s": float(done.frames.sum()) / max(wall_s, 1e-9),
        "video_s_per_wall_s": float(done.seconds.sum()) / max(wall_s, 1e-9),
    })
    mlflow.log_table(table, artifact_file="results.json")
    if preview is not None:
        mlflow.log_artifact(str(preview))
    if len(table) and not table.status.isin(DONE).any():
        mlflow.end_run("FAILED")


def _warn_of_unlisted_videos(out_dir: Path, results: pd.DataFrame) -> None:
    """Name the videos of `out_dir` its results table does not list: a rerun with other settings
    writes new names beside the earlier run's videos (never over them), which a glob of the folder
    would otherwise take for this run's."""
    listed = {Path(path).name for path in results.output if path}
    unlisted = sorted(path.name for path in out_dir.glob("*.mp4") if path.name not in listed)
    if unlisted:
        log.warning("%d video(s) in %s are in no row of %s, made by earlier runs with other settings or inputs "
                    "(%s%s): results.parquet lists this folder's current outputs", len(unlisted), out_dir,
                    RESULTS_FILE, ", ".join(unlisted[:3]), ", ..." if len(unlisted) > 3 else "")


def _check_resources(backend: str, cfg: PortraitFlowConfig, pasted_side: int) -> None:
    """NotEnoughResources when a local Ray could never run the flow, rather than a run that waits forever."""
    needed = cfg.animate.cpus_per_actor + 1  # else an actor holds every CPU and starves the tasks feeding it
    require_resource(cfg.ray, "CPU", needed, lambda cpus: (
        f"the generation flow needs {needed:g} CPUs (a preparation task beside an animation actor); Ray has "
        f"{cpus:g}: lower animate.cpus_per_actor or give Ray more CPUs (ray.num_cpus on a local Ray; nodes on a cluster)"))
    if animation_pool(backend, cfg.animate)[1]:
        require_resource(cfg.ray, "GPU", 1, lambda gpus: (
            f"hunyuan with animate.gpus={cfg.animate.gpus} needs a GPU for each animation actor; Ray has "
            f"{gpus:g}: pass --gpus 0 to animate on CPU actors (float32, slow)"))
    memory = animation_memory(backend, cfg.animate, pasted_side) + PREP_MEMORY
    pasted = f" pasted back onto portraits up to {pasted_side} px" if pasted_side > cfg.animate.size else ""
    model = model_host_bytes(backend, cfg.animate)
    weights = f" and {model / 1024**3:.1f} GiB for the model" if model else ""
    require_resource(cfg.ray, "memory", memory, lambda have: (
        f"an animation actor and the preparation task feeding it declare {memory / 1024**3:.1f} GiB (the actor "
        f"holds about 5 windows of output frames, animate.window={cfg.animate.window} of "
        f"animate.size={cfg.animate.size} px{pasted}{weights}); Ray has {have / 1024**3:.1f} GiB: "
        + ("give Ray more memory (the model needs its part whatever the window), or lower animate.window"
           if model else "lower animate.window or animate.size"
           + (", or animate.max_output_side" if pasted else ""))))
