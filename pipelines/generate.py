"""The generation flow's Ray Data wiring: planned jobs -> finished result rows.

    pending rows -> prepare_job (CPU tasks) -> AnimateJobs (actor pool) -> result rows

The job around it (folder lock, resume plan, Ray, MLflow, results.parquet) is jobs/generation.py;
the stages live in operators/animate.py.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.operators.animate import AnimateJobs, prepare_job
from portraitflow.operators.generation_results import failed_row
from portraitflow.operators.quarantine import MAX_ATTEMPTS

#: a preparation task holds the face models and one chunk of full-resolution frames. Declaring
#: it also keeps Ray Data from fusing the tasks into the animation actors (different resources).
PREP_MEMORY = 768 * 1024**2
#: an animation actor's memory besides its output frames (interpreter, animator, encoder), and the
#: windows of output frames it holds at once: a 2048-px paste-back at `window` 25 peaked 1.37 GB
#: above the actor's start, 4.4 windows.
ACTOR_BASE_MEMORY = 512 * 1024**2
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


def animation_memory(cfg: AnimateConfig, paste_back: bool) -> int:
    """Bytes an animation actor declares, so Ray never packs more actors onto a node than its memory
    holds: the largest output frame (a crop of `size`, or with `paste_back` the cap, 2048 px when
    uncapped, as a photo's size is not known ahead) times the windows held at once."""
    side = max(cfg.size, (cfg.max_output_side or 2048) if paste_back else 0)
    return ACTOR_BASE_MEMORY + WINDOWS_HELD * cfg.window * side * side * 3


def pastes_back(pending: list[dict[str, Any]]) -> bool:
    """Whether any of the jobs pastes its animation back onto the whole portrait (larger frames)."""
    return any(json.loads(row["params"]).get("paste_back") for row in pending)


def animate_pending(pending: list[dict[str, Any]], backend: str, cfg: PortraitFlowConfig, motion_dir: Path,
                    attempts_dir: Path, records_dir: Path) -> list[dict[str, Any]]:
    """The result row of each pending row (`plan_rows`), in their order; a job whose result never
    came back fails with LOST_REASON rather than vanish. Crash counts go to `attempts_dir`, the
    drivers' motion is cached in `motion_dir`, each finished job's record in `records_dir`."""
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
                     memory=animation_memory(cfg.animate, pastes_back(pending)))
        .take_all()
    )
    by_job = {row["job_id"]: row for row in finished}  # ids are unique; a failed row's output is blank
    return [by_job.get(row["job_id"]) or failed_row(row, LOST_REASON) for row in pending]
