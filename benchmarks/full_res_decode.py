"""Full-resolution decoding as renders and driving videos do it (in order, PyAV) against decord.

Each reader decodes the same span of the same video at source resolution, in chunks of at most
FULL_RES_CHUNK_BYTES (`frames_per_chunk`), in a fresh process of its own, so each peak is its own.
Reported per reader: wall seconds, frames per second, and the peak resident memory above the
process's start (VmHWM); then the ratios decord/in-order. The frames must be equal (their
checksums are compared), so the ratio is between two ways of getting the same pixels.

decord (decord2) holds on to frames it decoded, so its peak grows with the span decoded; the
in-order reader holds one chunk. Default input: the shared media's 1080x1920 clip, its first 10 s.

    .venv/bin/python benchmarks/full_res_decode.py [--video PATH] [--start 0] [--seconds 10]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

from child_process import measure_in_children, print_ratios, resident_mib  # sibling script: benchmarks/ is on sys.path when run

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PORTRAITFLOW_SHARED", ROOT.parent / "shared"))
READERS = {"decord": False, "in_order": True}


def measure(video: str, start: float, seconds: float, in_order: bool) -> dict:
    """Decode the span once in this process; its time, frames, checksum and peak memory."""
    from portraitflow.operators.decode import FULL_RES_CHUNK_BYTES, frames_per_chunk, iter_frame_chunks, probe_video

    info = probe_video(video)
    chunk = frames_per_chunk(64, info.width, info.height, FULL_RES_CHUNK_BYTES)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: what the decoding adds
    before, began = resident_mib("VmRSS"), time.perf_counter()
    digest, frames = hashlib.sha256(), 0
    for part in iter_frame_chunks(video, info.fps, start, start + seconds, chunk, in_order=in_order):
        digest.update(part.frames.tobytes())
        frames += len(part.frames)
    wall = time.perf_counter() - began
    return {"wall_s": round(wall, 2), "frames": frames, "frames_per_s": round(frames / wall, 1),
            "peak_above_start_mib": round(resident_mib("VmHWM") - before), "chunk_frames": chunk,
            "size": f"{info.width}x{info.height}", "sha256": digest.hexdigest()[:16]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", default=str(SHARED / "media" / "latentsync_demo1_video.mp4"))
    parser.add_argument("--start", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reader", choices=READERS, help=argparse.SUPPRESS)  # one measurement, in a child
    args = parser.parse_args()
    if args.reader:
        print(json.dumps(measure(args.video, args.start, args.seconds, READERS[args.reader])))
        return
    results = measure_in_children(__file__, ["--video", args.video, "--start", str(args.start),
                                             "--seconds", str(args.seconds)], tuple(READERS), same="sha256")
    decord, in_order = results["decord"], results["in_order"]
    print(f"{args.video}: {args.seconds:g} s from {args.start:g} s, {in_order['size']}, "
          f"{in_order['frames']} frames, {in_order['chunk_frames']} per chunk")
    for reader, row in results.items():
        print(f"  {reader:9s} {row['wall_s']:7.2f} s  {row['frames_per_s']:7.1f} frames/s  "
              f"peak +{row['peak_above_start_mib']} MiB")
    print_ratios(decord, in_order)


if __name__ == "__main__":
    main()
