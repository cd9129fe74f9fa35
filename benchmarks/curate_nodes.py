"""Curation on 1 vs 2 Ray nodes on this machine: does adding a node add throughput?

Each configuration is a real cluster of `ray start` nodes (tests/ray_nodes.py) and the curate CLI
joining it through RAY_ADDRESS, on the same inputs into a fresh --out, run one after the other:

- `1 node x 1 CPU`: the baseline;
- `2 nodes x 1 CPU`: the scaling case (ratio against the baseline; ideal 2.0);
- `1 node x 2 CPU` (with --equal-cores): the same cores on one node, so the gap to the 2-node run
  is the cost of distribution itself.

Reported per configuration: wall seconds, video-seconds and frames per wall-second, the ratio to
the baseline, the CPU seconds the workers spent in the stages per video-second (the flow's
`worker_cpu` timing), and the seconds each stage took per video-second (wall time inside the
stage, summed over workers). Worker CPU seconds per video-second is what docs/capacity.md scales
up: unlike wall time it barely moves when other work shares the machine. Compare ratios within one
run, not absolute wall times across runs.

    .venv/bin/python benchmarks/curate_nodes.py [--inputs FILE_OR_DIR ...] [--repeat N] [--equal-cores]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the one-machine cluster helper lives with the tests

from ray_nodes import local_ray_cluster

SHARED = Path(os.environ.get("PORTRAITFLOW_SHARED", ROOT.parent / "shared"))
DEFAULT_INPUTS = [
    "dreamtalk_M030_front_neutral_level1_001.mp4", "dreamtalk_M030_front_happy_level3_001.mp4",
    "dreamtalk_W009_front_neutral_level1_001.mp4", "megactor_audio_CHTF_2.mp4", "skyreels_driving_4.mp4",
    "aniportrait_pose_ref_video.mp4",
]


def curate_on(cpus_per_node: list[int], inputs: list[str], work: Path) -> dict:
    """One curate run on a fresh cluster of the given nodes; the CLI's metrics plus wall time."""
    out = work / f"out-{len(cpus_per_node)}x{cpus_per_node[0]}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "portraitflow.jobs.cli", "curate", *inputs, "--out", str(out),
               "--set", "curate.progress_bars=false", "--set", "mlflow.enabled=false"]
    with local_ray_cluster(cpus_per_node) as cluster:
        started = time.perf_counter()
        result = subprocess.run(command, check=False, env=cluster.env(), capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"curate failed on {cpus_per_node}:\n{result.stderr[-3000:]}")
    metrics = json.loads(result.stdout[result.stdout.index("{"):])
    metrics["driver_wall_s"] = wall
    return metrics


def summarise(name: str, runs: list[dict], baseline: dict | None) -> dict:
    best = min(runs, key=lambda m: m["driver_wall_s"])
    video_s = best["video_seconds_per_s"] * best["wall_s"]
    row = {
        "config": name,
        "wall_s": best["driver_wall_s"],
        "video_s_per_s": video_s / best["driver_wall_s"],
        "frames_per_s": best["frames_per_s"] * best["wall_s"] / best["driver_wall_s"],
        "cpu_s_per_video_s": best.get("time_worker_cpu_s", float("nan")) / video_s,
        "stage_s_per_video_s": {k[5:-2]: v / video_s for k, v in best.items() if k.startswith("time_")},
        "inputs": best["inputs"], "clips_accepted": best["clips_accepted"], "video_s": video_s,
    }
    row["speedup"] = baseline["wall_s"] / row["wall_s"] if baseline else 1.0
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="*", help="videos or folders (default: six talking clips of ../shared/media)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; the fastest counts")
    parser.add_argument("--equal-cores", action="store_true", help="also run 1 node x 2 CPU")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    inputs = args.inputs or [str(SHARED / "media" / name) for name in DEFAULT_INPUTS]
    configs = {"1 node x 1 CPU": [1], "2 nodes x 1 CPU": [1, 1]}
    if args.equal_cores:
        configs["1 node x 2 CPU"] = [2]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pf-bench-") as work:
        for name, nodes in configs.items():
            runs = [curate_on(nodes, inputs, Path(work)) for _ in range(args.repeat)]
            rows.append(summarise(name, runs, rows[0] if rows else None))
    stages = sorted(rows[0]["stage_s_per_video_s"], key=lambda s: -rows[0]["stage_s_per_video_s"][s])
    print(f"{rows[0]['inputs']} inputs, {rows[0]['video_s']:.1f} video-seconds, {rows[0]['clips_accepted']} clips accepted")
    print("| config | wall s | video-s/s | frames/s | speedup vs 1 node | worker CPU s per video-s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['wall_s']:.1f} | {row['video_s_per_s']:.3f} | {row['frames_per_s']:.2f} "
              f"| {row['speedup']:.2f}x | {row['cpu_s_per_video_s']:.2f} |")
    print("\nStage seconds per video-second (wall time inside each stage, summed over workers):")
    print("| stage | " + " | ".join(r["config"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(f"{r['stage_s_per_video_s'].get(stage, 0):.3f}" for r in rows) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
