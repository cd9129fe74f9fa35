"""Pictures of a curated output for MLflow: a contact sheet of reference frames and histograms."""
from __future__ import annotations

import io
import tarfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from portraitflow.operators.shards import shard_paths, whole_shard_keys

if TYPE_CHECKING:
    import pyarrow as pa


def contact_sheet(shard_dir: Path, out: Path, keys: Collection[str], key_notes: Path | None = None,
                  max_images: int = 64, thumb: int = 128) -> int:
    """A PNG grid of the `ref.jpg` of the clips `keys` names (a run's accepted clips), at most
    `max_images`, in key order; returns the number of images. Shards are searched newest first (a
    run appends its own) through their key notes, so only the shards holding those clips are
    opened, and of more than `max_images` clips those packed last are shown."""
    from PIL import Image

    wanted = set(keys)
    found: dict[str, Image.Image] = {}
    for path in reversed(shard_paths(shard_dir)):
        if len(found) >= max_images or not wanted:
            break
        held = wanted.intersection(whole_shard_keys(path, key_notes, read_only=True)[0])
        if not held:
            continue
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, _, field = member.name.partition(".")  # keys are dot-free
                if field == "ref.jpg" and key in held and len(found) < max_images:
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                        found[key] = image.convert("RGB").resize((thumb, thumb))
        wanted -= held
    images = [found[key] for key in sorted(found)]
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
        every = table[column].to_numpy(dtype=float)
        every = every[np.isfinite(every)]
        # one set of bins for every decision, so bars compare (and one value alone is not 1/20 of a pixel wide)
        bins = np.histogram_bin_edges(every, bins=20) if len(every) else 20
        for decision, group in table.groupby("decision"):
            values = group[column].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                ax.hist(values, bins=bins, alpha=0.6, label=decision)
        ax.set_title(column)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
