"""The evaluate flow's Ray Data wiring: which stage runs where, with what resources.

    outputs -> per-video metrics (EvaluateActor pool, `evaluate.evaluators` actors)

The MLflow runs around it (a sweep's parent and child runs, generating each config's outputs,
resume, the report) are the driver's, in jobs/sweep.py; the stages live in operators/.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.operators.job_status import OK

#: what an evaluator declares to Ray, so a sweep's pools beside its animation actors never hold more
#: than a node's memory: the face models and both videos decoded in order, `chunk_frames` at a time
#: (at most FULL_RES_CHUNK_BYTES each). Peak RSS scoring a video against itself: 0.81 GiB at 480x480,
#: 1.19 at 1280x720, 1.48 at 1080x1920 (decoded with decord before: 1.07, 2.64, 4.57); 25% spare.
EVALUATOR_MEMORY = 1900 * 1024**2


def evaluate_outputs(jobs: pd.DataFrame, work_dir: Path, cfg: PortraitFlowConfig,
                     evaluate: EvaluateConfig) -> pd.DataFrame:
    """Per-video metrics for jobs with an `output`; jobs that failed before keep their row and reason.
    `paste_back` or `params` columns, when the table has them, tell the evaluator how the output
    was framed."""
    import ray.data
    from ray.data import ActorPoolStrategy

    from portraitflow.operators.evaluate_video import EvaluateActor

    ready = jobs[jobs["status"] == OK]
    scored = pd.DataFrame()
    if len(ready):
        columns = [c for c in ("job_id", "ref", "driving", "output", "paste_back", "params") if c in ready]
        ds = ray.data.from_items(ready[columns].to_dict("records"), override_num_blocks=len(ready))
        ds = ds.map_batches(EvaluateActor, batch_size=1, num_cpus=1, memory=EVALUATOR_MEMORY,
                            compute=ActorPoolStrategy(size=min(evaluate.evaluators, len(ready))),
                            fn_constructor_kwargs={"face_json": cfg.face.model_dump_json(),
                                                   "evaluate_json": evaluate.model_dump_json(),
                                                   "work_dir": str(work_dir)})
        scored = pd.DataFrame(ds.take_all())
    failed = jobs.loc[jobs["status"] != OK, ["job_id", "status", "reason"]]
    return pd.concat([scored, failed], ignore_index=True).sort_values("job_id", kind="stable").reset_index(drop=True)
