"""Pictures of a curated output for MLflow: a contact sheet of reference frames and histograms."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from portraitflow.operators.shards import shard_paths

if TYPE_CHECKING:
    import pyarrow as pa


def contact_sheet(shard_dir: Path, out: Path, max_images: int = 64, thumb: int = 128) -> int:
    """A PNG grid of the accepted clips' `ref.jpg`, in key order; returns the number of images."""
    from PIL import Image

    images = []
    for path in shard_paths(shard_dir):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".ref.jpg") and len(images) < max_images:
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                        images.append(image.convert("RGB").resize((thumb, thumb)))
        if len(images) >= max_images:
            break
    columns = max(1, min(8, len(images)))
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * thumb, rows * thumb))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * thumb, (i // columns) * thumb))
    sheet.save(out)
    return len(images)


def histograms(clips: pa.Table, out: Path) -> None:
    """Pose (yaw, pitch), face size and clip length of the candidate clips, accepted vs rejected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = clips.to_pandas()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, column in zip(axes, ("yaw", "pitch", "face_side_px", "duration_s")):
        for decision, group in table.groupby("decision"):
            values = group[column].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                ax.hist(values, bins=20, alpha=0.6, label=decision)
        ax.set_title(column)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
