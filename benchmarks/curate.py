"""The curate flow on Ray Data against the same stages in a plain single-process loop.

Both runs call `jobs.curate.run_curation` on the same inputs into fresh output folders, so shards,
manifest and decisions are produced the same way; only the two passes differ:

- `ray`: pipelines/curate.py (an actor pool of face scanners, then render tasks) on a local
  Ray with `--cpus` CPUs (started before timing: cluster start-up is not counted);
- `loop`: the same stage callables (`FaceScanStage.scan`, `render_clip`) one input
  after the other in this process.

Every stage runs OpenCV single-threaded in both, so the ratio measures what Ray's parallelism
brings. Reported: wall seconds, frames and video-seconds per wall-second (and per core for Ray),
video-seconds per CPU-second (CPU time of this process and every process under it, Ray's included:
what one uncontended core does, which barely moves when other work shares the machine), the
loop/Ray ratio, and seconds per stage summed over workers. Inputs default to the
`talking_video` files of ../shared/media whose longer side is 480-512 px (512p), detection every
2nd frame.

    .venv/bin/python benchmarks/curate.py [--cpus 2] [--limit N] [--detect-every 2]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from portraitflow.jobs.config import load_config
from portraitflow.jobs.curate import run_curation
from portraitflow.jobs.runtime import init_ray
from portraitflow.operators.face_scan import FaceScanStage
from portraitflow.operators.render import render_clip
from portraitflow.pipelines import curate as ray_pipeline

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PORTRAITFLOW_SHARED", ROOT.parent / "shared"))


def talking_videos(min_side: int, max_side: int, limit: int | None) -> list[str]:
    manifest = pd.read_csv(SHARED / "media" / "MANIFEST.tsv", sep="\t")
    longer = manifest[["width", "height"]].max(axis=1)
    chosen = manifest[(manifest.kind == "talking_video") & (longer >= min_side) & (longer <= max_side)]
    return [str(SHARED / "media" / f) for f in chosen.file[:limit]]


def _loop_scan(rows, cfg, scan_dir):
    stage = FaceScanStage(cfg.model_dump(mode="json"), str(scan_dir))
    return [stage.scan(row) for row in rows], "single-process loop"


def _loop_render(rows, cfg, staging_dir):
    config = cfg.curate.model_dump(mode="json")
    return [render_clip(row, config, str(staging_dir)) for row in rows], "single-process loop"


@contextlib.contextmanager
def single_process_stages() -> Iterator[None]:
    """Run the two passes as plain loops: run_curation looks them up in pipelines/curate.py."""
    saved = ray_pipeline.scan_inputs, ray_pipeline.render_clips
    ray_pipeline.scan_inputs, ray_pipeline.render_clips = _loop_scan, _loop_render
    try:
        yield
    finally:
        ray_pipeline.scan_inputs, ray_pipeline.render_clips = saved


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its live descendants (Ray's processes)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0.0, [os.getpid()]
    while stack:
        pid = stack.pop()
        total += stats.get(pid, (0, 0.0))[1]
        stack.extend(children.get(pid, []))
    return total


def _timed(run) -> tuple[dict, float]:
    before = cpu_seconds()
    metrics = run()
    return metrics, cpu_seconds() - before


def _summary(name: str, metrics: dict, cpu_s: float, video_s: float, cpus: int) -> dict:
    wall = metrics["wall_s"]
    return {
        "run": name,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu_s, 1),
        "video_s_per_cpu_s": round(video_s / cpu_s, 3),
        "frames_per_s": round(metrics["frames_per_s"], 2),
        "video_s_per_s": round(video_s / wall, 3),
        "video_s_per_s_per_core": round(video_s / wall / cpus, 3),
        "clips_accepted": metrics["clips_accepted"],
        **{k[len("time_"):-2]: round(v, 1) for k, v in metrics.items() if k.startswith("time_")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="Use the first N inputs only.")
    parser.add_argument("--detect-every", type=int, default=2)
    parser.add_argument("--min-side", type=int, default=480)
    parser.add_argument("--max-side", type=int, default=512)
    args = parser.parse_args()

    inputs = talking_videos(args.min_side, args.max_side, args.limit)
    cfg = load_config(None, [f"ray.num_cpus={args.cpus}", "ray.object_store_memory_mb=512", "mlflow.enabled=false",
                             "curate.progress_bars=false", f"curate.detect_every={args.detect_every}"])
    init_ray(cfg.ray)
    with tempfile.TemporaryDirectory() as work:
        ray_metrics, ray_cpu = _timed(lambda: run_curation(cfg, inputs, Path(work) / "ray"))
        with single_process_stages():
            loop_metrics, loop_cpu = _timed(lambda: run_curation(cfg, inputs, Path(work) / "loop"))
        same = (pd.read_parquet(Path(work) / "ray" / "clips.parquet")[["key", "decision", "reason"]]
                .equals(pd.read_parquet(Path(work) / "loop" / "clips.parquet")[["key", "decision", "reason"]]))
    video_s = ray_metrics["hours_in"] * 3600
    table = pd.DataFrame([_summary("ray", ray_metrics, ray_cpu, video_s, args.cpus),
                          _summary("loop", loop_metrics, loop_cpu, video_s, 1)]).set_index("run").T
    print(f"{len(inputs)} inputs, {video_s:.1f} video-seconds, detection every {args.detect_every} frame(s), "
          f"Ray on {args.cpus} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(table.to_string())
    print(json.dumps({"ray_over_loop": round(loop_metrics["wall_s"] / ray_metrics["wall_s"], 2),
                      "same_decisions": bool(same)}))


if __name__ == "__main__":
    main()
