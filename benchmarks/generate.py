"""Generation throughput: the `warp` animator per core, and the pipeline with 1 vs 2 actors.

1. warp, in this process on one thread (cv2 and torch): frames/s at 512x512 of the animator
   (motion transfer + dense piecewise-affine map + remap + mouth cavity) over a real driver's
   motion, side by side with the same warp rendered by scikit-image's PiecewiseAffineTransform
   (the library baseline), wall-clock and CPU time; the ratio ours / skimage (> 1 = faster).
2. the pipeline (`run_generation`, local Ray with --cpus CPUs, MLflow off, after a warm-up job):
   the same jobs with at most 1 and at most 2 animation actors, fresh output folders; frames/s and
   the ratio 2 / 1 actors. Preparation tasks take a CPU too, so 2 actors need --cpus 3 to run.

    .venv/bin/python benchmarks/generate.py [--media ../shared/media] [--frames 250] [--cpus 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REFS = ["sadtalker_people_0.png", "hallo_6.jpg"]
DRIVERS = ["vexpress_RD_Radio10_0_clip_0.mp4", "skyreels_driving_4.mp4"]


def _timed(run, repeat: int = 1) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        run()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_warp(media: Path, frames: int, baseline_frames: int) -> dict[str, float]:
    import torch
    from skimage.transform import PiecewiseAffineTransform, warp

    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.models.animators.base import DrivingWindow
    from portraitflow.models.animators.warp import WarpAnimator, _MotionTransfer
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.models.face.images import load_image
    from portraitflow.operators.driving_motion import extract_driving_motion
    from portraitflow.operators.reference_portrait import prepare_reference

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    analyzer = create_analyzer(FaceConfig())
    reference = prepare_reference(load_image(media / REFS[0]).rgb, analyzer, 512).reference
    motion = extract_driving_motion(str(media / "liveportrait_d20.mp4"), analyzer, 512)
    index = np.arange(frames) % motion.num_frames
    windows = [DrivingWindow(start=int(s), crops=np.zeros((0, 512, 512, 3), np.uint8), kps=motion.kps[index[s:s + 25]],
                             landmarks=motion.landmarks[index[s:s + 25]], pose=motion.pose[index[s:s + 25]])
               for s in range(0, frames, 25)]
    ours_wall, ours_cpu = _timed(lambda: sum(len(c) for c in WarpAnimator().animate(reference, iter(windows), {})))

    transfer = _MotionTransfer(reference, "relative", 1.0, 1.0)
    targets = [transfer.step(motion.landmarks[i].astype(float), motion.pose[i].astype(float), 0)[1]
               for i in index[:baseline_frames]]

    def skimage_warp() -> None:
        for points in targets:
            transform = PiecewiseAffineTransform.from_estimate(points, transfer.source_points)  # output -> source
            warp(reference.crop, transform, output_shape=(512, 512), order=1, preserve_range=True)

    base_wall, base_cpu = _timed(skimage_warp)
    return {"ours_fps": frames / ours_wall, "ours_fps_cpu": frames / ours_cpu,
            "skimage_fps": baseline_frames / base_wall, "skimage_fps_cpu": baseline_frames / base_cpu,
            "ratio": (frames / ours_wall) / (baseline_frames / base_wall)}


def bench_pipeline(media: Path, cpus: int) -> dict[int, dict[str, float]]:
    import ray

    from portraitflow.jobs.config import load_config
    from portraitflow.operators.generation_jobs import Job
    from portraitflow.jobs.generation import run_generation

    jobs = [Job(f"{Path(r).stem}__{Path(d).stem}", str(media / r), str(media / d)) for r in REFS for d in DRIVERS]
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        with tempfile.TemporaryDirectory() as out:  # warm-up: Ray workers, imports, model files in cache
            run_generation(jobs[:1], out, load_config(None, ["mlflow.enabled=false"]), resume=False)
        for actors in (1, 2):
            cfg = load_config(None, ["mlflow.enabled=false", f"animate.actors={actors}"])
            with tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                table = run_generation(jobs, out, cfg, resume=False)
                wall = time.perf_counter() - started
            assert (table.status == "ok").all(), table[["job_id", "status", "reason"]]
            results[actors] = {"wall_s": wall, "frames": int(table.frames.sum()), "fps": table.frames.sum() / wall}
    finally:
        ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--media", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "media")
    parser.add_argument("--frames", type=int, default=250, help="warp frames timed")
    parser.add_argument("--baseline-frames", type=int, default=25, help="frames timed for the skimage baseline")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray for the pipeline runs")
    args = parser.parse_args()
    if not args.media.is_dir():
        raise SystemExit(f"{args.media} is absent: pass --media with the shared test media")
    warp = bench_warp(args.media, args.frames, args.baseline_frames)
    print("| warp at 512x512, 1 thread | frames/s (wall) | frames/s (CPU time) |\n|---|---|---|")
    print(f"| ours (dense map + remap) | {warp['ours_fps']:.1f} | {warp['ours_fps_cpu']:.1f} |")
    print(f"| skimage PiecewiseAffineTransform + warp | {warp['skimage_fps']:.1f} | {warp['skimage_fps_cpu']:.1f} |")
    print(f"| ratio ours / skimage | {warp['ratio']:.1f}x | |\n")
    pipeline = bench_pipeline(args.media, args.cpus)
    print(f"| pipeline, {len(REFS) * len(DRIVERS)} jobs, {args.cpus} CPUs | wall s | frames | frames/s |\n|---|---|---|---|")
    for actors, row in pipeline.items():
        print(f"| {actors} actor{'s' if actors > 1 else ''} | {row['wall_s']:.1f} | {row['frames']} | {row['fps']:.1f} |")
    print(f"| ratio 2 / 1 actors | | | {pipeline[2]['fps'] / pipeline[1]['fps']:.2f}x |")


if __name__ == "__main__":
    main()
