"""The evaluate flow's Ray Data wiring: which stage runs where, with what resources.

    one config's params -> outputs (`still`: a StillActor; other backends: pipelines/generate.py)
    outputs -> per-video metrics (EvaluateActor pool, `evaluate.evaluators` actors)

The MLflow runs around them (a sweep's parent and child runs, resume, the report) are the
driver's, in jobs/sweep.py; the stages live in operators/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.operators.sweep_spec import config_settings


def generate_outputs(params: dict[str, Any], jobs: list[dict], out_dir: Path, cfg: PortraitFlowConfig) -> pd.DataFrame:
    """A row per job for one config, at least (job_id, status, reason, output). `still`, the
    baseline, is rendered here; every other backend runs through the generation pipeline
    (`run_generation`, whose results table it returns) with the config's params as animate settings
    (its own MLflow run is off: the sweep's child run records this config). Params are validated
    first (`config_settings`), before anything is written or run."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from portraitflow.operators.still_baseline import StillActor

    animate = config_settings(params, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not jobs:
        return pd.DataFrame(columns=["job_id", "status", "reason", "output"])
    if params["backend"] != "still":
        from portraitflow.operators.generation_jobs import Job
        from portraitflow.pipelines.generate import run_generation

        quiet = cfg.model_copy(update={"animate": animate, "mlflow": cfg.mlflow.model_copy(update={"enabled": False})})
        table = run_generation([Job(j["job_id"], j["ref"], j["driving"]) for j in jobs], out_dir, quiet)
        return table.assign(status=table["status"].replace({"skipped": "ok"}))  # skipped = finished before
    rows = [{k: j[k] for k in ("job_id", "ref", "driving")} for j in jobs]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(StillActor, batch_size=1, num_cpus=1, compute=ActorPoolStrategy(size=1), fn_constructor_kwargs={
        "face": cfg.face.model_dump(), "out_dir": str(out_dir), "size": animate.size, "paste_back": animate.paste_back})
    return pd.DataFrame(ds.take_all())


def evaluate_outputs(jobs: pd.DataFrame, work_dir: Path, cfg: PortraitFlowConfig,
                     evaluate: EvaluateConfig) -> pd.DataFrame:
    """Per-video metrics for jobs with an `output`; jobs that failed before keep their row and reason.
    `paste_back` or `params` columns, when the table has them, tell the evaluator how the output
    was framed."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from portraitflow.operators.evaluate_video import EvaluateActor

    ready = jobs[jobs["status"] == "ok"]
    scored = pd.DataFrame()
    if len(ready):
        columns = [c for c in ("job_id", "ref", "driving", "output", "paste_back", "params") if c in ready]
        ds = ray.data.from_items(ready[columns].to_dict("records"), override_num_blocks=len(ready))
        ds = ds.map_batches(EvaluateActor, batch_size=1, num_cpus=1,
                            compute=ActorPoolStrategy(size=min(evaluate.evaluators, len(ready))),
                            fn_constructor_kwargs={"face": cfg.face.model_dump(), "evaluate": evaluate.model_dump(),
                                                   "work_dir": str(work_dir)})
        scored = pd.DataFrame(ds.take_all())
    failed = jobs.loc[jobs["status"] != "ok", ["job_id", "status", "reason"]]
    return pd.concat([scored, failed], ignore_index=True).sort_values("job_id", kind="stable").reset_index(drop=True)
