"""One evaluator scoring a video, its frames decoded in order (PyAV, as it does now) against decord.

The video is scored against itself (self protocol: its first frame is the reference) by
`JobEvaluator`, once per reader, each in a fresh process of its own so each peak is its own.
Reported per reader: wall seconds and the peak resident memory above the process's start
(VmHWM, the face models already loaded); then the ratios decord/in-order. The metrics must be
equal (the readers give the same pixels), so the ratio is between two ways to the same scores.

decord (decord2) holds on to frames it decoded, so the evaluator's peak grew with the video (4.57
GiB on a 1080x1920 clip); in order, it holds one chunk of each video. Default input: the shared
media's 1280x720 clip.

    .venv/bin/python benchmarks/evaluate_memory.py [--video PATH] [--chunk-frames 32]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from child_process import measure_in_children, print_ratios, resident_mib  # sibling script: benchmarks/ is on sys.path when run

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PORTRAITFLOW_SHARED", ROOT.parent / "shared"))
READERS = ("decord", "in_order")
#: per-video metrics compared between the readers (the others follow from the same frames)
COMPARED = ("psnr", "ssim", "l1", "akd", "apd", "aed", "frames")


def measure(video: str, chunk_frames: int, reader: str) -> dict:
    """Score `video` against itself once in this process; its time, metrics and peak memory."""
    import numpy as np
    from PIL import Image

    from portraitflow.jobs.config.evaluate import EvaluateConfig
    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.operators import decode
    from portraitflow.operators.evaluate_video import JobEvaluator

    if reader == "decord":  # the evaluator as it was: decord's reader, `chunk_frames` at a time
        in_order = decode.iter_frame_chunks
        decode.iter_frame_chunks = lambda *args, **kwargs: in_order(*args, **{**kwargs, "in_order": False})
    evaluator = JobEvaluator(create_analyzer(FaceConfig()), EvaluateConfig(chunk_frames=chunk_frames))
    info = decode.probe_video(video)
    with tempfile.TemporaryDirectory() as work:
        reference = Path(work) / "ref.png"
        Image.fromarray(next(decode.iter_frame_chunks(video, info.output_fps, chunk_size=1)).frames[0]).save(reference)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: what scoring adds to the loaded models
        before, began = resident_mib("VmRSS"), time.perf_counter()
        row = evaluator.evaluate({"job_id": "bench", "ref": str(reference), "driving": video, "output": video}, work)
        wall = time.perf_counter() - began
    if row["status"] != "ok":
        raise SystemExit(f"{video} could not be scored: {row['reason']} {row.get('error') or ''}")
    return {"wall_s": round(wall, 2), "peak_above_start_mib": round(resident_mib("VmHWM") - before),
            "size": f"{info.width}x{info.height}",
            "metrics": {name: float(np.round(row[name], 6)) for name in COMPARED}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(SHARED / "media" / "liveportrait_s18.mp4"))
    parser.add_argument("--chunk-frames", type=int, default=32)
    parser.add_argument("--reader", choices=READERS, help=argparse.SUPPRESS)  # one measurement, in a child
    args = parser.parse_args()
    if args.chunk_frames < 2:
        parser.error("--chunk-frames must be at least 2 (evaluate.chunk_frames)")
    if args.reader:
        print(json.dumps(measure(args.video, args.chunk_frames, args.reader)))
        return
    results = measure_in_children(__file__, ["--video", args.video, "--chunk-frames", str(args.chunk_frames)], READERS,
                                  same="metrics")
    decord, in_order = results["decord"], results["in_order"]
    print(f"{args.video}: {in_order['size']}, {in_order['metrics']['frames']:g} frames scored, "
          f"chunk_frames {args.chunk_frames}")
    for reader, row in results.items():
        print(f"  {reader:9s} {row['wall_s']:7.2f} s  peak +{row['peak_above_start_mib']} MiB")
    print_ratios(decord, in_order)


if __name__ == "__main__":
    main()
