"""The curate flow's Ray Data wiring: which stage runs where, with what resources.

    inputs -> probe + face scan (actor pool holding the face models) -> scan files
    kept clips -> render crops, encode H.264, stage the sample (CPU task) -> staged samples

Everything between the two passes (corpus-wide identity decisions) and after them (shards,
manifest, MLflow) runs on the driver in jobs/curate.py; the stages live in operators/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.operators.face_scan import FaceScanStage
from portraitflow.operators.render import render_clip


# An input whose worker dies (segfault, OOM kill, lost node) is retried this many times, then its
# block is dropped from the dataset and the driver records it as `failed`: Ray Data's defaults
# retry forever, so one poisonous input would stall the whole job.
CRASH_RETRIES = 2


def _configure(cfg: PortraitFlowConfig) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = cfg.curate.progress_bars
    context.execution_options.preserve_order = False  # results are keyed; order is restored on the driver
    context.max_errored_blocks = -1  # every block is one input; a lost one becomes a `failed` row


def _cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def scan_inputs(rows: list[dict[str, Any]], cfg: PortraitFlowConfig, scan_dir: Path) -> tuple[list[dict], str]:
    """Probe and scan inputs; returns one row per input that came back, and Ray Data's stats."""
    import ray.data
    from ray.data import ActorPoolStrategy

    if not rows:
        return [], ""
    _configure(cfg)
    actors = min(cfg.curate.face_actors or _cluster_cpus(), len(rows))
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(
        FaceScanStage,
        fn_constructor_kwargs={"config": cfg.model_dump(mode="json"), "scan_dir": str(scan_dir)},
        batch_size=1,
        num_cpus=1,
        # One input per actor at a time, so an input that kills its actor spends only its own
        # retries. The pool is fixed (one actor per CPU, at most one per input): the autoscaler
        # cannot grow a pool whose actors take one task at a time. The probe runs inside the
        # actor, since a separate probe task would find every CPU held by the actors.
        compute=ActorPoolStrategy(min_size=actors, max_size=actors, max_tasks_in_flight_per_actor=1),
        max_task_retries=CRASH_RETRIES,
    )
    out = ds.take_all()
    return out, ds.stats()


def render_clips(rows: list[dict[str, Any]], cfg: PortraitFlowConfig, staging_dir: Path) -> tuple[list[dict], str]:
    """Render kept clips into staged samples; returns one row per clip and Ray Data's stats."""
    import ray.data

    if not rows:
        return [], ""
    _configure(cfg)
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map(
        render_clip,
        fn_kwargs={"config": cfg.curate.model_dump(mode="json"), "staging_dir": str(staging_dir)},
        num_cpus=cfg.curate.render_cpus,
        max_retries=CRASH_RETRIES,
    )
    out = ds.take_all()
    return out, ds.stats()
