"""The curation run's pictures for MLflow (operators/curation_report.py)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from portraitflow.operators.curation_report import contact_sheet
from portraitflow.operators.shards import pack_shards, stage_sample


def _jpeg(grey: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), grey, np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_the_contact_sheet_shows_the_clips_it_is_given_in_key_order(tmp_path: Path) -> None:
    """An earlier run's clips (the first shards) are not shown: the sheet is the run's own."""
    staging, shards, notes = tmp_path / "staging", tmp_path / "shards", tmp_path / "notes"
    for folder in (staging, shards, notes):
        folder.mkdir()
    greys = {f"clip{i}": 20 * i for i in range(6)}
    for key, grey in greys.items():
        stage_sample(staging, key, {"ref.jpg": _jpeg(grey), "json": b"{}"})
    pack_shards(staging, shards, 2, 1 << 30, remember_in=notes)  # 3 shards of 2
    sheet = tmp_path / "sheet.png"

    assert contact_sheet(shards, sheet, ["clip5", "clip1", "clip4", "gone"], notes, thumb=16) == 3
    image = np.asarray(Image.open(sheet).convert("L"), np.float32)
    assert image.shape == (16, 48)
    tiles = [image[:, 16 * i:16 * (i + 1)].mean() for i in range(3)]
    assert np.allclose(tiles, [greys["clip1"], greys["clip4"], greys["clip5"]], atol=3)

    assert contact_sheet(shards, sheet, ["clip0", "clip2", "clip3"], notes, max_images=2, thumb=16) == 2
    assert contact_sheet(shards, sheet, [], notes) == 0
