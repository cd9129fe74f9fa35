"""The generation flow's Ray Data wiring: planned jobs -> finished result rows.

    pending rows -> prepare_job (CPU tasks) -> AnimateJobs (actor pool) -> result rows

The job around it (folder lock, resume plan, Ray, MLflow, results.parquet) is jobs/generation.py;
the stages live in operators/animate.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.models.animators.registry import model_host_bytes
from portraitflow.operators.animate import AnimateJobs, prepare_job
from portraitflow.operators.generation_results import failed_row
from portraitflow.operators.quarantine import MAX_ATTEMPTS

#: a preparation task: the Ray worker with the face models, one portrait, and the driver's
#: extraction, which decodes at most FULL_RES_CHUNK_BYTES (128 MiB) of full-resolution frames at
#: once, in order with PyAV (operators/driving_motion.py), so its peak hardly depends on the
#: driver's size or length. Ray's peaks (USS) of the task: 331 MiB on a 512x512 driver, 462 on a
#: 2-s 1080p one, 477 on a 20-s 1080x1920 one, 514-560 on 4K ones of 2 and 32 s (558 with a 16-MP
#: portrait), 545 for 7 jobs in one worker, 778 on 8K; before the budget, a 2-s 4K driver took
#: 3.1 GiB. Ray asks for 25% above a peak. Declaring it also keeps Ray Data from fusing the tasks
#: into the animation actors (different resources).
PREP_MEMORY = 1024 * 1024**2
#: an animation actor's memory besides the output frames it holds (interpreter, animator, encoder,
#: the driver decoded FULL_RES_CHUNK_BYTES at a time and cut into windows of crops), and the windows
#: of output frames it holds at once (`animation_memory`). Ray's peaks (USS) crop-only: 272 MiB on
#: a 512x512 driver, 381 on 1080p, 475 on 4K, 490 on a 20-s 1080x1920 one, 514 for 7 jobs of all
#: these sizes in one actor, 595 on 8K (a 2-s 4K driver took 3.1 GiB before the budget); pasted
#: back onto a portrait capped at 2048 px 1.5 GiB, onto an uncapped 2721x2705 one 2.1-2.3 GiB
#: (about 3.6 windows of its frames besides the crop-only peak).
ACTOR_BASE_MEMORY = 704 * 1024**2
WINDOWS_HELD = 5
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


def animation_memory(backend: str, cfg: AnimateConfig, pasted_side: int) -> int:
    """Bytes an animation actor declares, so Ray never packs more actors onto a node than its memory
    holds: its base, its model's host memory (`model_host_bytes`: hunyuan's checkpoints), and the
    windows of output frames it holds at once, each frame a crop of `size` or, where a job pastes
    back, as large as the largest portrait pasted back onto (`pasted_side`, its longer side as
    output: `generation_results.pasted_back_side`; 0 where none is)."""
    side = max(cfg.size, pasted_side)
    return ACTOR_BASE_MEMORY + model_host_bytes(backend, cfg) + WINDOWS_HELD * cfg.window * side * side * 3


def animate_pending(pending: list[dict[str, Any]], backend: str, cfg: PortraitFlowConfig, motion_dir: Path,
                    attempts_dir: Path, records_dir: Path, pasted_side: int) -> list[dict[str, Any]]:
    """The result row of each pending row (`plan_rows`), in their order; a job whose result never
    came back fails with LOST_REASON rather than vanish. Crash counts go to `attempts_dir`, the
    drivers' motion is cached in `motion_dir`, each finished job's record in `records_dir`;
    `pasted_side` sizes the actors' memory (`animation_memory`)."""
    import ray
    from ray.data import ActorPoolStrategy

    # a job that kills its worker is given up on after MAX_ATTEMPTS starts of a stage
    crashes = {"attempts_dir": str(attempts_dir), "max_attempts": MAX_ATTEMPTS}
    actors, gpus_per_actor = animation_pool(backend, cfg.animate)
    jobs = ray.data.from_items(pending, override_num_blocks=len(pending))
    jobs.context.max_errored_blocks = -1  # a job whose block is lost still gets its row (below)
    finished = (
        jobs
        .map(prepare_job, fn_kwargs={"face_cfg_json": cfg.face.model_dump_json(), "motion_dir": str(motion_dir),
                                     "animate_cfg_json": cfg.animate.model_dump_json(), **crashes},
             num_cpus=1, memory=PREP_MEMORY)
        .map_batches(AnimateJobs, fn_constructor_kwargs={"backend": backend, "records_dir": str(records_dir),
                                                         "animate_cfg_json": cfg.animate.model_dump_json(), **crashes},
                     batch_size=1, compute=ActorPoolStrategy(min_size=1, max_size=actors),
                     num_cpus=cfg.animate.cpus_per_actor, num_gpus=gpus_per_actor,
                     memory=animation_memory(backend, cfg.animate, pasted_side))
        .take_all()
    )
    by_job = {row["job_id"]: row for row in finished}  # ids are unique; a failed row's output is blank
    return [by_job.get(row["job_id"]) or failed_row(row, LOST_REASON) for row in pending]
