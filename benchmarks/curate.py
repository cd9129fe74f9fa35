"""The curate flow on Ray Data against the same stages in a plain single-process loop.

Both runs call `jobs.curate.run_curation` on the same inputs into fresh output folders, so shards,
manifest and decisions are produced the same way; only the pass over the inputs differs:

- `ray`: pipelines/curate.py (an actor pool where each actor scans an input and renders the clips
  it kept) on a local Ray with `--cpus` CPUs (started before timing: cluster start-up is not
  counted);
- `loop`: the same stage (`CurateInputStage.curate`) one input after the other in this process.

Every library runs one thread in both (OpenCV, x264 and decord's codec by the stage's settings,
BLAS by OMP_NUM_THREADS=1, which Ray also gives each 1-CPU worker), and the loop runs on one core
(`--loop-cores`): decord always decodes on a thread of its own, which in a loop left alone on the
machine would borrow ~8% of the idle cores, while each Ray worker shares its core. So the ratio
measures what Ray's parallelism brings. Reported: wall seconds, frames and video-seconds per wall-second (and per core
for Ray), video-seconds per CPU-second (the process CPU time each stage call spent, summed over
workers: what one uncontended core does, which barely moves when other work shares the machine),
the loop/Ray ratio, and seconds per stage summed over workers. The two runs alternate `--repeat`
times and the best wall time of each is reported. Inputs default to the `talking_video` files of
../shared/media whose longer side is 480-512 px (512p) and that last at most 15 s, detection every
2nd frame.

    .venv/bin/python benchmarks/curate.py [--cpus 2] [--limit N] [--repeat 2] [--detect-every 2] [--loop-cores 1]
"""
from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy loads OpenBLAS, which would use a thread per core here

import argparse
import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from portraitflow.jobs.config import load_config
from portraitflow.jobs.curate import run_curation
from portraitflow.jobs.runtime import init_ray
from portraitflow.operators.curate_input import CurateInputStage
from portraitflow.operators.quarantine import MAX_ATTEMPTS
from portraitflow.pipelines import curate as ray_pipeline

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PORTRAITFLOW_SHARED", ROOT.parent / "shared"))


def talking_videos(min_side: int, max_side: int, max_seconds: float, limit: int | None) -> list[str]:
    manifest = pd.read_csv(SHARED / "media" / "MANIFEST.tsv", sep="\t")
    longer = manifest[["width", "height"]].max(axis=1)
    chosen = manifest[(manifest.kind == "talking_video") & (longer >= min_side) & (longer <= max_side)
                      & (manifest.duration_s <= max_seconds)]
    return [str(SHARED / "media" / f) for f in chosen.file[:limit]]


def _loop_curate(rows, cfg, scan_dir, staging_dir, attempts_dir):
    stage = CurateInputStage(cfg.model_dump(mode="json"), str(scan_dir), str(staging_dir), str(attempts_dir),
                             MAX_ATTEMPTS)
    return [stage.curate(row) for row in rows], "single-process loop"


@contextlib.contextmanager
def single_process_stages(cores: int) -> Iterator[None]:
    """Run the pass over the inputs as a plain loop (run_curation looks it up in pipelines/curate.py)
    on `cores` CPUs of this machine (0: all); the threads the loop starts inherit the restriction."""
    saved, allowed = ray_pipeline.curate_inputs, os.sched_getaffinity(0)
    ray_pipeline.curate_inputs = _loop_curate
    if cores:
        os.sched_setaffinity(0, sorted(allowed)[:cores])
    try:
        yield
    finally:
        ray_pipeline.curate_inputs = saved
        os.sched_setaffinity(0, allowed)


def _summary(name: str, metrics: dict, video_s: float, cpus: int) -> dict:
    wall, cpu_s = metrics["wall_s"], metrics["time_worker_cpu_s"]
    return {
        "run": name,
        "wall_s": round(wall, 1),
        "worker_cpu_s": round(cpu_s, 1),
        "video_s_per_cpu_s": round(video_s / cpu_s, 3),
        "frames_per_s": round(metrics["frames_per_s"], 2),
        "video_s_per_s": round(video_s / wall, 3),
        "video_s_per_s_per_core": round(video_s / wall / cpus, 3),
        "clips_accepted": metrics["clips_accepted"],
        **{k[len("time_"):-2]: round(v, 1) for k, v in metrics.items() if k.startswith("time_") and "cpu" not in k},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="Use the first N inputs only.")
    parser.add_argument("--detect-every", type=int, default=2)
    parser.add_argument("--min-side", type=int, default=480)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--max-seconds", type=float, default=15.0, help="Skip longer inputs (load balance).")
    parser.add_argument("--repeat", type=int, default=2, help="Alternate the runs N times; report each best.")
    parser.add_argument("--loop-cores", type=int, default=1, help="CPUs the loop may use (0: all).")
    args = parser.parse_args()

    inputs = talking_videos(args.min_side, args.max_side, args.max_seconds, args.limit)
    cfg = load_config(None, [f"ray.num_cpus={args.cpus}", "ray.object_store_memory_mb=512", "mlflow.enabled=false",
                             "curate.progress_bars=false", f"curate.detect_every={args.detect_every}"])
    # Ray starts its workers at nice 15 so its own daemons stay responsive; on a machine shared
    # with other work that starves them against this loop at nice 0, so both run at nice 0 here.
    os.environ.setdefault("RAY_worker_niceness", "0")
    init_ray(cfg.ray)
    runs: dict[str, list[dict]] = {"ray": [], "loop": []}
    with tempfile.TemporaryDirectory() as work:
        for attempt in range(args.repeat):  # alternated, so a noisy neighbour hits both alike
            runs["ray"].append(run_curation(cfg, inputs, Path(work) / f"ray{attempt}"))
            with single_process_stages(args.loop_cores):
                runs["loop"].append(run_curation(cfg, inputs, Path(work) / f"loop{attempt}"))
        same = (pd.read_parquet(Path(work) / "ray0" / "clips.parquet")[["key", "decision", "reason"]]
                .equals(pd.read_parquet(Path(work) / "loop0" / "clips.parquet")[["key", "decision", "reason"]]))
    ray_metrics, loop_metrics = (min(runs[k], key=lambda m: m["wall_s"]) for k in ("ray", "loop"))
    walls = {k: [round(m["wall_s"], 1) for m in v] for k, v in runs.items()}
    video_s = ray_metrics["hours_in"] * 3600
    table = pd.DataFrame([_summary("ray", ray_metrics, video_s, args.cpus),
                          _summary("loop", loop_metrics, video_s, args.loop_cores or os.cpu_count())]).set_index("run").T
    print(f"{len(inputs)} inputs, {video_s:.1f} video-seconds, detection every {args.detect_every} frame(s), "
          f"Ray on {args.cpus} CPUs, loop on {args.loop_cores or 'all'}, load average {os.getloadavg()[0]:.1f}")
    print(table.to_string())
    print(json.dumps({"ray_over_loop": round(loop_metrics["wall_s"] / ray_metrics["wall_s"], 2),
                      "wall_s_of_each_run": walls, "same_decisions": bool(same)}))


if __name__ == "__main__":
    main()
