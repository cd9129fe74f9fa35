"""Training loader throughput per loader worker: seek-decoding (the loader) vs decoding whole clips.

Both variants build the same training samples from the same shard samples, in this process with
one torch thread, as a DataLoader worker does (parse arrays, place the window, decode, encoder
inputs); only the decode differs:
- seek: decord decodes the window and the reference only (what the loader does);
- whole: every frame of the clip is decoded, then the window and the reference are picked.
Reported per worker: samples/s, decoded frames/s (frames the decoder delivered as RGB), the
decode share, and the ratio seek / whole (> 1 = faster), wall-clock and CPU time side by side
(CPU time is what other work on a shared machine disturbs least). Then the real loader end to end
(DataLoader with --workers processes): samples/s in all and per worker.

Shards: --shards (anything the loader takes: a curated output folder, an index, a brace pattern),
else synthetic ones made with the test helper: --clips clips of --clip-seconds at 25 fps (default
8 x 10 s, the curation flow's longest clip).

    .venv/bin/python benchmarks/train_loader.py [--shards DIR] [--n-frames 25] [--workers 2]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from portraitflow.jobs.config.train_data import TrainDataConfig
from portraitflow.operators.shard_source import expand_shards
from portraitflow.operators.train_sample import choose_window, decode_frames, encoder_inputs, parse_tracks, sample_rng
from portraitflow.pipelines.train_data import TrainLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def decode_whole_clip(mp4: bytes, indices: np.ndarray) -> tuple[np.ndarray, int]:
    """The baseline: decode every frame of the clip in order, then pick the wanted ones."""
    from decord import VideoReader, cpu

    reader = VideoReader(io.BytesIO(mp4), ctx=cpu(0), num_threads=1)
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    return frames[indices], len(frames)


def build(sample: dict, n_frames: int, decode: Callable, seed: int) -> tuple[float, float, int]:
    """One training sample the loader's way with a given decoder; (decode wall s, decode CPU s,
    frames decoded)."""
    tracks = parse_tracks(sample)
    start, ref = choose_window(tracks.num_frames, n_frames, sample_rng(seed, 0, sample["__key__"]))
    window = np.arange(start, start + n_frames)
    wall, cpu = time.perf_counter(), time.process_time()
    frames, clip_frames = decode(bytes(sample["mp4"]), np.append(window, ref))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    encoder_inputs(frames[:-1], frames[-1], tracks, window, ref)
    return wall, cpu, len(frames) if decode is decode_frames else clip_frames


def per_worker(samples: list[dict], n_frames: int, decode: Callable, repeats: int) -> dict[str, float]:
    best = None
    for repeat in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        results = [build(s, n_frames, decode, seed=repeat) for s in samples]
        run = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
               "decode_s": sum(r[0] for r in results), "decode_cpu_s": sum(r[1] for r in results),
               "frames": sum(r[2] for r in results)}
        best = run if best is None or run["wall_s"] < best["wall_s"] else best
    n = len(samples)
    return {"samples_per_s": n / best["wall_s"], "samples_per_cpu_s": n / best["cpu_s"],
            "frames_per_s": best["frames"] / best["wall_s"], "decoded_frames_per_sample": best["frames"] / n,
            "decode_ms_per_sample": 1000 * best["decode_s"] / n, "decode_cpu_ms_per_sample": 1000 * best["decode_cpu_s"] / n,
            "decode_share": best["decode_cpu_s"] / best["cpu_s"]}


def keyframes_per_clip(samples: list[dict]) -> float:
    import av

    counts = []
    for sample in samples:
        with av.open(io.BytesIO(bytes(sample["mp4"]))) as container:
            counts.append(sum(p.is_keyframe for p in container.demux(video=0) if p.size))
    return float(np.mean(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", help="loader source; default: synthetic shards")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--n-frames", type=int, default=25)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker

    with tempfile.TemporaryDirectory() as tmp:
        source = args.shards
        if source is None:
            from synthetic_shards import write_dataset

            began = time.perf_counter()
            write_dataset(Path(tmp), shards=2, per_shard=(args.clips + 1) // 2, num_frames=int(args.clip_seconds * 25))
            print(f"synthetic shards: {args.clips} clips of {args.clip_seconds:g} s in {time.perf_counter() - began:.0f} s")
            source = tmp
        samples = list(wds.WebDataset(expand_shards(source), shardshuffle=False, empty_check=False))
        clip_frames = np.mean([len(np.load(io.BytesIO(s["kps.npy"]), allow_pickle=False)) for s in samples])
        print(f"{len(samples)} samples, {clip_frames:.0f} frames per clip on average, "
              f"{keyframes_per_clip(samples):.1f} keyframes per clip, window {args.n_frames} frames + reference")

        rows = {"seek (loader)": per_worker(samples, args.n_frames, decode_frames, args.repeats),
                "whole clip": per_worker(samples, args.n_frames, decode_whole_clip, args.repeats)}
        print(f"\nper loader worker (1 process, 1 torch thread), best of {args.repeats}:")
        header = ["decode", "samples/s", "samples/cpu-s", "frames/s", "frames/sample", "decode ms/sample",
                  "decode cpu-ms", "decode cpu share"]
        print(" | ".join(f"{h:>16}" for h in header))
        for name, row in rows.items():
            print(" | ".join(f"{v:>16}" for v in [name, f"{row['samples_per_s']:.2f}", f"{row['samples_per_cpu_s']:.2f}",
                                                  f"{row['frames_per_s']:.1f}", f"{row['decoded_frames_per_sample']:.0f}",
                                                  f"{row['decode_ms_per_sample']:.0f}",
                                                  f"{row['decode_cpu_ms_per_sample']:.0f}", f"{row['decode_share']:.0%}"]))
        seek, whole = rows["seek (loader)"], rows["whole clip"]
        print(f"ratio seek / whole: samples/s x{seek['samples_per_s'] / whole['samples_per_s']:.2f} "
              f"(cpu x{seek['samples_per_cpu_s'] / whole['samples_per_cpu_s']:.2f}), "
              f"decode CPU time per sample x{whole['decode_cpu_ms_per_sample'] / seek['decode_cpu_ms_per_sample']:.2f} less")

        cfg = TrainDataConfig(shards=[source], n_frames=args.n_frames, batch_size=2, num_workers=args.workers,
                              shuffle_buffer=0, seed=0)
        loader = TrainLoader(cfg)
        began = time.perf_counter()
        count = sum(len(batch["key"]) for batch in loader)
        wall = time.perf_counter() - began
        workers = max(args.workers, 1)
        print(f"\nloader end to end, {args.workers} workers: {count} samples in {wall:.1f} s = "
              f"{count / wall:.2f} samples/s, {count / wall / workers:.2f} per worker "
              f"(includes worker start-up), skipped {loader.skipped or 'none'}")


if __name__ == "__main__":
    main()
