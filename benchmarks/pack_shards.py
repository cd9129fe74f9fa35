"""Shard packing (`operators/shards.py::pack_shards`): the driver alone against writer processes.

Stages N synthetic samples shaped like rendered ones (operators/render.py: an incompressible mp4 of
100-800 kB, a 40-90 kB reference JPEG and a 4-8 kB face JPEG, the json, and the arrays of a 2-10 s
clip at 25 fps: landmarks, keypoints, boxes, pose, motion, thumbnails, signature, embedding), then
packs hard-linked copies of that staging folder as a curate run does (100 samples a shard, each
shard's keys noted, a completion marker written per input of 5 clips once its clips are in shards):

- `serial`: `workers=1`, every shard written in the driver, one after the other (what every run did
  before writers existed); its time outside the shard writes is the driver's own part (planning,
  moving shards in, key notes, markers, deleting staged files), which stays serial with writers;
- `processes`: `workers` writer processes (`PARALLEL_FROM_SAMPLES` is set to 0 here, so small counts
  are measured too: that is how the threshold was chosen); `workers=1` is the serial path again,
  measured as a separate run: its ratio shows the noise;
- `threads` (`--threads`): the same writers as threads of the driver, for comparison (tarfile holds
  the GIL).

The runs alternate `--repeat` times, so a noisy neighbour hits all alike, and the best wall time
of each is reported beside serial's, as `serial / processes` (above 1: faster than serial). Staged
files are in the page cache (just written); shards are flushed to the disk as in a real run. Every
run of a sample count must write the same bytes, or nothing is reported.

    .venv/bin/python benchmarks/pack_shards.py [--samples 2000 4000] [--workers 1 2 4] [--repeat 2] [--threads]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from portraitflow.operators import ledger, shards

CLIPS_PER_INPUT = 5


def synthetic_sample(rng: np.random.Generator, key: str) -> dict[str, bytes]:
    """A sample's fields at the sizes a rendered 512x512 clip of 2-10 s has (random bytes for the
    encoded members: H.264 and JPEG do not compress further)."""
    frames = int(rng.integers(50, 251))

    def floats(*shape: int) -> bytes:
        return shards.npy_bytes(rng.random(shape, dtype=np.float32))

    meta = {"key": key, "num_frames": frames, "scores": {f"measure_{i}": 0.5 for i in range(12)},
            "motion_buckets": [[1, 2]] * (frames // 25)}
    return {
        "mp4": rng.bytes(int(rng.integers(100_000, 800_001))),
        "ref.jpg": rng.bytes(int(rng.integers(40_000, 90_001))),
        "ref_face.jpg": rng.bytes(int(rng.integers(4_000, 8_001))),
        "json": json.dumps(meta, sort_keys=True).encode(),
        "landmarks.npy": floats(frames, 68, 2),
        "kps.npy": floats(frames, 5, 2),
        "boxes.npy": floats(frames, 4),
        "pose.npy": floats(frames, 3),
        "motion.npy": floats(frames, 3),
        "id.npy": floats(512),
        "signature.npy": shards.npy_bytes(rng.random(32 * 16 * 16).astype(np.float16)),
        "thumbnails.npy": shards.npy_bytes(rng.integers(0, 256, (frames, 16, 16), dtype=np.uint8)),
    }


def clip_key(index: int) -> str:
    return f"talk-{index // CLIPS_PER_INPUT:07d}_{index % CLIPS_PER_INPUT * 10_000:08d}_{index % CLIPS_PER_INPUT * 10_000 + 8_000:08d}"


def stage(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        shards.stage_sample(folder, clip_key(index), synthetic_sample(rng, clip_key(index)))


@contextlib.contextmanager
def timed_writes() -> Iterator[list[float]]:
    """The seconds pack_shards spends writing shards in this process (serial runs only: a writer
    process would be handed this wrapper, which does not pickle)."""
    saved, seconds = shards._write_shard, [0.0]

    def write_shard(*args) -> None:
        started = time.perf_counter()
        saved(*args)
        seconds[0] += time.perf_counter() - started

    shards._write_shard = write_shard
    try:
        yield seconds
    finally:
        shards._write_shard = saved


@contextlib.contextmanager
def writers_as_threads() -> Iterator[None]:
    """pack_shards' writer pool made of threads (their initializer is for processes only)."""
    saved = shards.ProcessPoolExecutor
    shards.ProcessPoolExecutor = lambda workers, **_: ThreadPoolExecutor(workers)
    try:
        yield
    finally:
        shards.ProcessPoolExecutor = saved


def pack(staged: Path, count: int, run: Path, workers: int) -> tuple[float, str]:
    """Pack the first `count` staged samples into `run`; the wall seconds and a digest of the shards."""
    staging, done = run / "staging", run / "done"
    staging.mkdir(parents=True)
    for path in sorted(staged.glob("*.tar"))[:count]:
        os.link(path, staging / path.name)

    def mark_inputs(keys: list[str]) -> None:  # what curate's on_shard does: a marker per finished input
        for key in keys:
            if key.split("_")[1] == f"{(CLIPS_PER_INPUT - 1) * 10_000:08d}":
                ledger.write_marker(done, {"input_key": key.split("_")[0], "status": "accepted"},
                                    [{"clip_key": key, "decision": "accepted"}] * CLIPS_PER_INPUT)

    started = time.perf_counter()
    written = shards.pack_shards(staging, run / "shards", 100, 1 << 30, mark_inputs, run / "notes", workers)
    wall = time.perf_counter() - started
    digest = hashlib.sha256()
    for path in written:
        digest.update(path.name.encode() + path.read_bytes())
    shutil.rmtree(run)
    return wall, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[2000, 4000], help="Samples to pack in each run.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="Writer processes.")
    parser.add_argument("--repeat", type=int, default=2, help="Alternate the runs N times; report each best.")
    parser.add_argument("--threads", action="store_true", help="Also measure the writers as threads.")
    parser.add_argument("--tmp", type=Path, default=None, help="Folder to stage and pack in (default: the temp folder).")
    args = parser.parse_args()
    shards.PARALLEL_FROM_SAMPLES = 0
    modes = [("processes", contextlib.nullcontext)] + ([("threads", writers_as_threads)] if args.threads else [])
    with tempfile.TemporaryDirectory(dir=args.tmp) as work:
        staged = Path(work) / "staged"
        stage(staged, max(args.samples))
        sizes = [path.stat().st_size for path in sorted(staged.glob("*.tar"))]
        print(f"{len(sizes)} staged samples of {min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} kB "
              f"(mean {np.mean(sizes) / 1e3:.0f} kB), 100 a shard; {len(os.sched_getaffinity(0))} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        rows, each_run = [], {}
        for count in args.samples:
            walls: dict[tuple[str, int], list[float]] = {}
            digests, driver_part = set(), []
            for attempt in range(args.repeat):
                with timed_writes() as writing:
                    wall, digest = pack(staged, count, Path(work) / f"serial_{attempt}", 1)
                walls.setdefault(("serial", 1), []).append(round(wall, 2))
                digests.add(digest)
                driver_part.append(wall - writing[0])
                for mode, context in modes:
                    for workers in args.workers:
                        with context():
                            wall, digest = pack(staged, count, Path(work) / f"{mode}{workers}_{attempt}", workers)
                        walls.setdefault((mode, workers), []).append(round(wall, 2))
                        digests.add(digest)
            if len(digests) != 1:
                raise SystemExit(f"{count} samples: the runs wrote different shards")
            each_run[count] = {f"{mode} {workers}": times for (mode, workers), times in walls.items()}
            megabytes, serial = sum(sizes[:count]) / 1e6, min(walls["serial", 1])
            for workers in args.workers:
                row = (f"| {count} | {megabytes:.0f} | {workers} | {serial:.2f} | {serial / count * 1e3:.2f} "
                       f"| {min(driver_part) / count * 1e3:.2f} ")
                for mode, _ in modes:
                    best = min(walls[mode, workers])
                    row += f"| {best:.2f} | {serial / best:.2f} "
                rows.append(row + "|")
        print(f"load average at the end {os.getloadavg()[0]:.1f}; every run of a sample count wrote the same bytes\n")
        print("| samples | staged MB | workers | serial s | serial ms a sample | driver's own part ms a sample | "
              + " | ".join(f"{mode} s | serial / {mode}" for mode, _ in modes) + " |")
        print("|---" * (6 + 2 * len(modes)) + "|")
        print("\n".join(rows))
        print("\nwall s of each run:", json.dumps(each_run))


if __name__ == "__main__":
    main()
