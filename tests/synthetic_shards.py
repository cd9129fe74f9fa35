"""Small curated shards in the issue-3 format, made from drawn clips (a test helper, not a stage).

Each clip shows a drawn face that moves and opens its mouth, with its 5 keypoints, 68 landmarks
and pose known exactly, and its frame index written as a bar code in the top-left corner, so a
test can check that a decoded frame is the one it claims to be.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np

from portraitflow.operators.motion import motion_table
from portraitflow.operators.shards import INDEX_NAME
from portraitflow.operators.video_writer import write_h264

CODE_BITS = 8
CODE_CELL = 16


def frame_code(frames: np.ndarray) -> np.ndarray:
    """Read back the frame indices written by `draw_clip` from (T, H, W, 3) uint8 RGB frames."""
    cells = frames[:, 4 : 4 + CODE_CELL, : CODE_BITS * CODE_CELL].reshape(len(frames), CODE_CELL, CODE_BITS, CODE_CELL, 3)
    bits = cells.mean(axis=(1, 3, 4)) > 128
    return (bits * (1 << np.arange(CODE_BITS))).sum(axis=1)


def draw_clip(num_frames: int, seed: int, size: int = 512) -> dict[str, np.ndarray]:
    """Frames (T, size, size, 3) uint8 RGB and their tracks, in crop pixels."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_frames)
    phase = rng.uniform(0, 2 * np.pi, 3)
    centre = np.stack([size / 2 + 12 * np.sin(t / 6 + phase[0]), size / 2 + 8 * np.sin(t / 9 + phase[1])], axis=1)
    mouth_open = 6 + 10 * (1 + np.sin(t / 3 + phase[2])) / 2
    skin = rng.integers(150, 220, 3)
    background = np.linspace(30, 110, size, dtype=np.float32)[None, :, None] * np.array([0.6, 0.8, 1.0], np.float32)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    kps = np.empty((num_frames, 5, 2), np.float32)
    landmarks = np.empty((num_frames, 68, 2), np.float32)
    half_w, half_h = size / 6, size / 5
    for i in range(num_frames):
        cx, cy = centre[i]
        frame = np.broadcast_to(background, (size, size, 3)).astype(np.uint8).copy()
        cv2.ellipse(frame, (int(cx), int(cy)), (int(half_w), int(half_h)), 0, 0, 360, skin.tolist(), -1)
        eyes = [(cx - 0.35 * half_w, cy - 0.25 * half_h), (cx + 0.35 * half_w, cy - 0.25 * half_h)]
        nose = (cx, cy + 0.05 * half_h)
        mouth_y = cy + 0.45 * half_h
        mouth = [(cx - 0.3 * half_w, mouth_y), (cx + 0.3 * half_w, mouth_y)]
        for ex, ey in eyes:
            cv2.circle(frame, (int(ex), int(ey)), 9, (20, 20, 20), -1)
        cv2.circle(frame, (int(nose[0]), int(nose[1])), 6, (120, 60, 60), -1)
        cv2.ellipse(frame, (int(cx), int(mouth_y)), (int(0.3 * half_w), int(mouth_open[i])), 0, 0, 360, (90, 20, 30), -1)
        for bit in range(CODE_BITS):
            value = 255 if (i >> bit) & 1 else 0
            frame[4 : 4 + CODE_CELL, bit * CODE_CELL : (bit + 1) * CODE_CELL] = value
        frames[i] = frame
        kps[i] = [eyes[0], eyes[1], nose, mouth[0], mouth[1]]
        angles = np.linspace(0, np.pi, 17)
        jaw = np.stack([cx - half_w * np.cos(angles), cy + half_h * np.sin(angles) * 0.9], axis=1)
        features = np.concatenate([
            np.stack([np.linspace(e[0] - 20, e[0] + 20, 5), np.full(5, e[1] - 20)], axis=1) for e in eyes
        ] + [np.stack([np.full(9, cx), np.linspace(cy - 0.2 * half_h, nose[1], 9)], axis=1)] + [
            np.stack([e[0] + 10 * np.cos(a := np.linspace(0, 2 * np.pi, 6, endpoint=False)), e[1] + 5 * np.sin(a)], axis=1)
            for e in eyes
        ] + [np.stack([cx + 0.3 * half_w * np.cos(b := np.linspace(0, 2 * np.pi, 20, endpoint=False)),
                       mouth_y + mouth_open[i] * np.sin(b)], axis=1)])
        landmarks[i] = np.concatenate([jaw, features])
    pose = np.stack([10 * np.sin(t / 7 + phase[0]), 5 * np.sin(t / 5), 3 * np.cos(t / 8)], axis=1).astype(np.float32)
    identity = rng.normal(size=128).astype(np.float32)
    return dict(frames=frames, kps=kps, landmarks=landmarks, pose=pose, identity=identity / np.linalg.norm(identity))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def clip_members(num_frames: int, seed: int, workdir: Path, fps: float = 25.0) -> dict[str, bytes]:
    """The members of one curated sample, by extension."""
    clip = draw_clip(num_frames, seed)
    video = workdir / f"clip{seed}.mp4"
    write_h264(video, [clip["frames"]], fps=fps)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(clip["frames"][0], cv2.COLOR_RGB2BGR))
    assert ok
    meta = {"source": f"synthetic/{seed}.mp4", "start_s": 0.0, "end_s": num_frames / fps, "fps": fps, "source_fps": fps,
            "crop_box": [0, 0, 512, 512], "face_backend": "synthetic", "scores": {}}
    return {
        "mp4": video.read_bytes(),
        "ref.jpg": jpeg.tobytes(),
        "json": json.dumps(meta).encode(),
        "landmarks.npy": _npy(clip["landmarks"]),
        "kps.npy": _npy(clip["kps"]),
        "pose.npy": _npy(clip["pose"]),
        "id.npy": _npy(clip["identity"]),
        "motion.npy": _npy(motion_table(clip["landmarks"], clip["kps"])),
    }


def write_shard(path: Path, samples: dict[str, dict[str, bytes]]) -> None:
    """One tar in WebDataset layout: `<key>.<ext>` members, grouped by key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_dataset(out: Path, shards: int, per_shard: int, num_frames: int = 40) -> list[str]:
    """`out/shards/{shard:06d}.tar` plus a wids-style `out/index.wids.json`, as the curation flow
    lays them out; returns the keys."""
    keys, entries = [], []
    for shard in range(shards):
        samples = {}
        for j in range(per_shard):
            seed = shard * per_shard + j
            samples[f"synthetic{seed:04d}"] = clip_members(num_frames, seed, out / "work")
        path = out / "shards" / f"{shard:06d}.tar"
        write_shard(path, samples)
        keys.extend(samples)
        entries.append({"url": f"shards/{path.name}", "nsamples": per_shard, "filesize": path.stat().st_size})
    index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": "synthetic", "shardlist": entries}
    (out / INDEX_NAME).write_text(json.dumps(index))
    return keys
