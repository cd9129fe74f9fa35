"""Milliseconds per 512x512 frame for detect / landmarks / pose / embed, per face backend.

Each stage runs over the same frames twice: one call per frame (the baseline) and one call for
the whole batch; the table gives wall-clock and CPU ms per frame for both, and their ratios
(batched / single, < 1 = faster).
Frames are scikit-image's astronaut (512x512, shipped with the package), shifted and mirrored so
no two are identical. The insightface row needs a pack (default: ../shared/models/insightface).

    .venv/bin/python benchmarks/face_backends.py [--frames 32] [--insightface-root DIR --pack NAME]
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage.data

from portraitflow.jobs.config.face import FaceConfig
from portraitflow.models.face.base import FaceAnalyzer
from portraitflow.models.face.factory import create_analyzer
from portraitflow.models.face.model_files import ModelFilesMissing


def benchmark_frames(count: int) -> list[np.ndarray]:
    base = skimage.data.astronaut()
    frames = []
    for i in range(count):
        frame = np.roll(base, shift=(i % 8 - 4) * 6, axis=1)
        frames.append(np.ascontiguousarray(frame[:, ::-1] if i % 2 else frame))
    return frames


def per_frame_ms(run: Callable[[], object], frames: int, repeats: int) -> tuple[float, float]:
    """Wall-clock and CPU (all threads of this process) ms per frame, each the best of `repeats`
    runs: on a shared machine the CPU time is the figure other work disturbs least."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall * 1000.0 / frames, best_cpu * 1000.0 / frames


def measure(analyzer: FaceAnalyzer, frames: list[np.ndarray], repeats: int) -> list[dict]:
    faces = [found[0] for found in analyzer.detect(frames)]
    boxes = np.stack([face.box for face in faces])
    sizes = [frame.shape[:2] for frame in frames]
    landmarks = analyzer.landmarks(frames, boxes)
    pairs = list(zip(frames, faces, boxes, landmarks, sizes))
    stages = {
        "detect": (lambda: analyzer.detect(frames),
                   lambda: [analyzer.detect([f]) for f, *_ in pairs]),
        "landmarks": (lambda: analyzer.landmarks(frames, boxes),
                      lambda: [analyzer.landmarks([f], b[None]) for f, _, b, _, _ in pairs]),
        "pose": (lambda: analyzer.head_pose(landmarks, sizes),
                 lambda: [analyzer.head_pose(lm[None], [s]) for *_, lm, s in pairs]),
        "embed": (lambda: analyzer.embed(frames, faces),
                  lambda: [analyzer.embed([f], [face]) for f, face, *_ in pairs]),
    }
    rows = []
    for stage, (batched, single) in stages.items():
        single_wall, single_cpu = per_frame_ms(single, len(frames), repeats)
        batched_wall, batched_cpu = per_frame_ms(batched, len(frames), repeats)
        rows.append({"backend": analyzer.name, "stage": stage,
                     "single wall ms": single_wall, f"batch of {len(frames)} wall ms": batched_wall,
                     "wall batched / single": batched_wall / single_wall,
                     "single CPU ms": single_cpu, f"batch of {len(frames)} CPU ms": batched_cpu,
                     "CPU batched / single": batched_cpu / single_cpu})
    return rows


def markdown_table(rows: list[dict], digits: int = 2) -> str:
    header = list(rows[0])
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--insightface-root", default=str(Path(__file__).resolve().parents[2] / "shared/models/insightface"))
    parser.add_argument("--pack", default="pack")
    args = parser.parse_args()
    frames = benchmark_frames(args.frames)
    rows = []
    for cfg in (FaceConfig(backend="opencv"),
                FaceConfig(backend="insightface", insightface_root=args.insightface_root, insightface_pack=args.pack)):
        try:
            analyzer = create_analyzer(cfg)
        except ModelFilesMissing as exc:
            print(f"skipping {cfg.backend}: {exc}")
            continue
        rows += measure(analyzer, frames, args.repeats)
    print(markdown_table(rows))
    print(f"\n{os.cpu_count()} CPUs, load average over the last 1/5/15 min at the end: "
          + " / ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
