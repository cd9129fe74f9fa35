"""The curate flow's Ray Data wiring: which stage runs where, with what resources.

    inputs -> probe, face scan, then render the clips the scan kept (actor pool holding the face
              models) -> scan files, staged samples, one row per input

One streaming pass: an actor renders an input's clips as soon as it has scanned it, so every CPU
stays busy until the last input. The corpus-wide identity decisions, shards, manifest and MLflow
run on the driver afterwards (jobs/curate.py); the stages live in operators/. With a cap per
identity the pass only scans, and `render_decided` renders the clips the decisions kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.runtime import local_resource
from portraitflow.operators.curate_input import CurateInputStage
from portraitflow.operators.inputs import input_bytes
from portraitflow.operators.quarantine import MAX_ATTEMPTS

if TYPE_CHECKING:
    import ray.data
    from ray.data import ActorPoolStrategy

#: what a curation worker declares to Ray, so a node never runs more of them than its memory holds:
#: the face models, an input's scan (its per-frame arrays grow with its length) and one clip's
#: render (source frames decoded in order, at most FULL_RES_CHUNK_BYTES at once). Peak RSS of one
#: process scanning and rendering an input: 0.65 GiB for a 65-s 256-px one, 0.79 for a 30-s 4K one,
#: 0.94 for a 50-s 1080p one (the scan 0.5 GiB above the models there; scanning 5 min of 1080p,
#: 0.96). Ray's own measure of a worker, which counts its libraries too, reached 1.9 GiB on a 20-s
#: 1080x1920 input and 1.7 with identity samples 8 a clip (its warning asks for 2.3): 2.5 GiB, with
#: Ray's advised 25% to spare. Decoded with decord, which holds on to frames, rendering one 10-s
#: clip of the 4K input took 15 GiB.
WORKER_MEMORY = 2560 * 1024**2

#: up to this many inputs, each is a Ray Data block of its own (one actor task): the best balance at
#: the end of a run, and a worker that crashes takes one input's task with it
ONE_INPUT_PER_TASK_UP_TO = 1000
#: above it, inputs share blocks, at most this many a block: a block costs the driver about the
#: same whatever it holds (building the dataset, Ray Data's scheduling of its task), 21-28 ms on a
#: shared 2-core machine (`benchmarks/ray_input_blocks.py`), ~6 h of driver time at 1e6 inputs one a block
MAX_INPUTS_PER_TASK = 16


def _inputs_dataset(rows: list[dict[str, Any]], cfg: PortraitFlowConfig) -> tuple[ray.data.Dataset, int]:
    """The rows as a dataset of `input_blocks` blocks (one actor task each) with curation's
    execution settings, and how many blocks.

    Largest inputs first, since those that start last decide how long CPUs idle at the end, and
    dealt in turn to the blocks, as Ray Data cuts a list into consecutive blocks: cut so, blocks of
    16 put a run's 16 largest inputs one after the other in one task (1.2-5x the run's length in a
    simulation of a pool of 64-256 actors over inputs of varied sizes; dealt, 1.01-1.1x).
    """
    import ray.data

    rows = sorted(rows, key=lambda r: -input_bytes(r["uri"]))
    blocks = input_blocks(len(rows), cfg.curate.inputs_per_task)
    dealt = [rows[i] for block in range(blocks) for i in range(block, len(rows), blocks)]
    return _configured(ray.data.from_items(dealt, override_num_blocks=blocks), cfg), blocks


def _configured(ds: ray.data.Dataset, cfg: PortraitFlowConfig) -> ray.data.Dataset:
    """`ds` with curation's execution settings, on its own context (the process's stays as it was)."""
    context = ds.context
    context.enable_progress_bars = cfg.curate.progress_bars
    context.execution_options.preserve_order = False  # results are keyed; order is restored on the driver
    context.max_errored_blocks = -1  # the inputs of a lost block become `failed` rows
    return ds


def input_blocks(inputs: int, per_task: int) -> int:
    """How many blocks (actor tasks) `inputs` inputs are split into: `per_task` a block when set
    (`curate.inputs_per_task`); else one each up to ONE_INPUT_PER_TASK_UP_TO inputs, and above it
    at least that many blocks of at most MAX_INPUTS_PER_TASK."""
    if per_task:
        return -(-inputs // per_task)
    if inputs <= ONE_INPUT_PER_TASK_UP_TO:
        return inputs
    return max(ONE_INPUT_PER_TASK_UP_TO, -(-inputs // MAX_INPUTS_PER_TASK))


def _actor_pool(cfg: PortraitFlowConfig, tasks: int) -> ActorPoolStrategy:
    """A fixed pool on a local Ray (one actor per `actor_cpus` CPUs, as many as its memory holds
    (WORKER_MEMORY each), at most one per task (`input_blocks`); `run_curation` refuses a Ray without the CPUs
    and memory for one: the pool would wait forever for actors that cannot start); on a cluster, unless `face_actors`
    fixes it, a pool that grows from one actor as the autoscaler adds nodes (the CPUs present at
    the start, none on a fresh cluster, would fix it at one). Each actor has its next input queued,
    so it never waits for the driver between inputs (a crash costs the queued input nothing: only
    starts count)."""
    from ray.data import ActorPoolStrategy

    cpus, memory = local_resource(cfg.ray, "CPU"), local_resource(cfg.ray, "memory")
    if cpus is None and not cfg.curate.face_actors:
        return ActorPoolStrategy(min_size=1, max_size=tasks, max_tasks_in_flight_per_actor=2)
    fit = None if cpus is None else min(int(cpus) // cfg.curate.actor_cpus, int(memory // WORKER_MEMORY))
    actors = max(1, min(cfg.curate.face_actors or fit, tasks))
    return ActorPoolStrategy(min_size=actors, max_size=actors, max_tasks_in_flight_per_actor=2)


def _stage_kwargs(cfg: PortraitFlowConfig, scan_dir: Path, staging_dir: Path, attempts_dir: Path) -> dict[str, Any]:
    """What both passes' stages are given: the config as data and where they write."""
    return {"config": cfg.model_dump(mode="json"), "scan_dir": str(scan_dir), "staging_dir": str(staging_dir),
            "attempts_dir": str(attempts_dir), "max_attempts": MAX_ATTEMPTS}


def curate_inputs(rows: list[dict[str, Any]], cfg: PortraitFlowConfig, scan_dir: Path, staging_dir: Path,
                  attempts_dir: Path) -> tuple[list[dict], str]:
    """Scan inputs and stage their kept clips; returns one row per input that came back, and Ray Data's stats."""
    if not rows:
        return [], ""
    ds, blocks = _inputs_dataset(rows, cfg)
    ds = ds.map_batches(
        CurateInputStage,
        fn_constructor_kwargs=_stage_kwargs(cfg, scan_dir, staging_dir, attempts_dir),
        batch_size=1,
        num_cpus=cfg.curate.actor_cpus,
        memory=WORKER_MEMORY,
        # The probe runs inside the actor, since a separate probe task would find every CPU held by the actors.
        compute=_actor_pool(cfg, blocks),
    )
    out = ds.take_all()
    return out, ds.stats()


def render_decided(rows: list[dict[str, Any]], cfg: PortraitFlowConfig, scan_dir: Path,
                   staging_dir: Path, attempts_dir: Path) -> list[dict]:
    """The second pass when rendering waits for the corpus decisions: a task per input with kept
    clips (`keys`; in a large run, per block of them: `input_blocks`), on `actor_cpus` CPUs like the
    scan; returns the rows that came back."""
    from portraitflow.operators.curate_input import render_decided_clips

    if not rows:
        return []
    ds, _ = _inputs_dataset(rows, cfg)
    ds = ds.map(render_decided_clips, num_cpus=cfg.curate.actor_cpus, memory=WORKER_MEMORY,
                fn_kwargs=_stage_kwargs(cfg, scan_dir, staging_dir, attempts_dir))
    return ds.take_all()
