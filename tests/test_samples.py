"""`portraitflow samples`: the sample inputs are written atomically."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from portraitflow.jobs.samples import make_samples


def test_a_copy_that_fails_leaves_no_torn_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A half-copied clip under its final name would be curated as a real input."""
    def torn_copy(source: str, target: str) -> None:
        Path(target).write_bytes(Path(source).read_bytes()[:100])
        raise OSError("no space left on device")

    monkeypatch.setattr(shutil, "copyfile", torn_copy)
    with pytest.raises(OSError, match="no space"):
        make_samples(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut_pan.mp4", "truncated.mp4"]
