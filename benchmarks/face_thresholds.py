"""Measure each face backend's same-person cosine threshold on ../shared/media.

Same person: pairs of frames of one talking video (FRAMES_PER_VIDEO frames evenly spread over it);
pairs across two files of one person are reported too, but do not set the threshold.
Different people: all frame pairs across different talking videos and single-face portrait photos,
skipping the files known to show one person (SAME_PERSON_GROUPS).
The chosen threshold is the midpoint between the highest different-people similarity and the 1st
percentile of same-person similarities, rounded to 0.01.

    .venv/bin/python benchmarks/face_thresholds.py [--backends opencv insightface] [--shared ../shared]
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import decord
import numpy as np
import pandas as pd

from face_backends import markdown_table  # sibling script: benchmarks/ is on sys.path when run

from portraitflow.jobs.config.face import FaceConfig
from portraitflow.models.face.factory import create_analyzer
from portraitflow.models.face.images import load_image

FRAMES_PER_VIDEO = 8
#: files that show the same person: the MEAD M030 pair (MANIFEST.tsv notes) and two photos of one
#: actress found by both backends (0.75 cosine, far above every other cross-file pair; checked by eye).
SAME_PERSON_GROUPS = [
    {"dreamtalk_M030_front_neutral_level1_001.mp4", "dreamtalk_M030_front_happy_level3_001.mp4"},
    {"deepface_img5.jpg", "dreamtalk_uncut_src_img.jpg"},
]


def sample_frames(path: Path, count: int) -> list[np.ndarray]:
    reader = decord.VideoReader(str(path), num_threads=1)
    positions = np.linspace(0, len(reader) - 1, count).round().astype(int)
    return list(reader.get_batch(list(positions)).asnumpy())


def identity_of(file: str) -> str:
    for group in SAME_PERSON_GROUPS:
        if file in group:
            return min(group)
    return file


def embed_media(analyzer, media: Path, manifest: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(file, identity, embedding) of the largest face in each sampled frame or photo."""
    rows = []
    for item in manifest.itertuples():
        if item.kind == "talking_video":
            frames = sample_frames(media / item.file, FRAMES_PER_VIDEO)
        elif item.kind == "portrait_image":
            loaded = load_image(media / item.file)
            frames = [loaded.rgb] if loaded.ok else []
        else:
            continue
        faces = analyzer.detect(frames)
        kept = [(frame, found[0]) for frame, found in zip(frames, faces) if found]
        if not kept:
            continue
        embeddings = analyzer.embed([f for f, _ in kept], [face for _, face in kept])
        rows += [(item.file, identity_of(item.file), e) for e in embeddings]
    return rows


def similarity_sets(rows: list[tuple[str, str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosine similarities of same-video frame pairs, of different-identity pairs and of pairs
    across different files of one person."""
    by_file: dict[str, list[np.ndarray]] = {}
    identity: dict[str, str] = {}
    for file, ident, emb in rows:
        by_file.setdefault(file, []).append(emb)
        identity[file] = ident
    same = [float(a @ b) for embs in by_file.values() for a, b in itertools.combinations(embs, 2)]
    different = [
        float(a @ b)
        for f1, f2 in itertools.combinations(sorted(by_file), 2) if identity[f1] != identity[f2]
        for a in by_file[f1] for b in by_file[f2]
    ]
    same_across_files = [
        float(a @ b)
        for f1, f2 in itertools.combinations(sorted(by_file), 2) if identity[f1] == identity[f2]
        for a in by_file[f1] for b in by_file[f2]
    ]
    return np.array(same), np.array(different), np.array(same_across_files)


def choose_threshold(same: np.ndarray, different: np.ndarray) -> float:
    return round((float(different.max()) + float(np.percentile(same, 1))) / 2.0, 2)


def summary(values: np.ndarray) -> dict[str, float]:
    percentiles = {f"p{p}": float(np.percentile(values, p)) for p in (1, 5, 50, 95, 99)}
    return {"n": len(values), "min": float(values.min()), **percentiles, "max": float(values.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["opencv", "insightface"])
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    args = parser.parse_args()
    media = args.shared / "media"
    manifest = pd.read_csv(media / "MANIFEST.tsv", sep="\t")
    table = []
    for backend in args.backends:
        cfg = FaceConfig(backend=backend, insightface_root=str(args.shared / "models" / "insightface"),
                         insightface_pack="pack")
        analyzer = create_analyzer(cfg)
        rows = embed_media(analyzer, media, manifest)
        same, different, same_across_files = similarity_sets(rows)
        threshold = choose_threshold(same, different)
        files = {file for file, _, _ in rows}
        print(f"{backend}: {len(files)} files, {len(rows)} faces; threshold {threshold:.2f} "
              f"(class attribute {analyzer.same_person_threshold:.2f}); "
              f"same below it {np.mean(same < threshold):.2%}, different at or above {np.mean(different >= threshold):.2%}")
        for label, values in (("same video", same), ("same person, other file", same_across_files),
                              ("different people", different)):
            table.append({"backend": backend, "pairs": label, **summary(values)})
    print(markdown_table(table, digits=3))


if __name__ == "__main__":
    main()
