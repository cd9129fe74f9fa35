"""Untrusted input end to end: many malformed files through `portraitflow curate`.

No crash, nothing written outside --out, and every input accounted for in the manifest with a
status (and an error when it failed). Self-contained: every file is generated here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from bad_media import BAD_IMAGES, BAD_VIDEOS, make_all, snapshot
from curate_runs import LOCAL_RAY, read_rows, run_curate

pytestmark = pytest.mark.slow
SAFE_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def test_malformed_inputs_are_accounted_for_and_confined(tmp_path: Path) -> None:
    uploads = tmp_path / "uploads"
    videos = make_all(uploads / "videos ünï", BAD_VIDEOS)
    images = make_all(uploads / "images", BAD_IMAGES)
    escape = uploads / "videos ünï" / ".." / "videos ünï" / "a..b.mp4"  # a `..` inside an argument
    listed = [str(uploads / "missing file.mp4"), "../../outside.mp4", "relative/../../../etc/passwd.mp4"]
    listing = uploads / "list with spaces.txt"
    listing.write_text("\n".join(listed) + "\n")
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    before = snapshot(tmp_path)

    run_curate([str(uploads / "videos ünï"), *map(str, images), str(escape), str(listing)], out, None, *LOCAL_RAY,
               cwd=cwd, timeout_s=800)

    expected = {str(p.resolve()) for p in videos} | {str(p.resolve()) for p in images}
    expected |= {str(uploads / "missing file.mp4")}
    # names that match nothing are kept (a relative one taken from the list's folder), to end as failed rows
    expected |= {os.path.abspath(uploads / name) for name in listed[1:]}
    rows = read_rows(out / "manifest.parquet")
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "an input has two manifest rows"
    assert set(paths) == expected, f"missing: {expected - set(paths)}; unexpected: {set(paths) - expected}"
    for row in rows:
        assert row["status"] in ("accepted", "rejected", "failed"), row
        if row["status"] == "failed":
            assert row["error"], f"failed without a reason: {row}"
    by_name = {Path(r["path"]).name: r for r in rows}
    for name in ("random bytes.mp4", "empty.mp4", "zero frames.mp4", "audio only.mp4", "truncated half.mp4",
                 "absurd.y4m.mp4", "exif rotated.jpg", "cmyk.jpg", "bomb.png", "missing file.mp4"):
        assert by_name[name]["status"] == "failed", by_name[name]
    assert by_name["valid no face 🎥.mp4"]["status"] == "rejected"  # decodable, but no face in it

    after = snapshot(tmp_path)
    outside = {p for p in set(after) - set(before) if not Path(p).is_relative_to(out) and p != f"{out}.log"}
    assert outside == set(), f"written outside --out: {sorted(outside)}"
    assert {p for p in before if before[p] != after.get(p)} == set(), "an input was modified or removed"
    for path in out.rglob("*"):
        assert SAFE_OUTPUT_NAME.match(path.name), f"an output name carries input characters: {path}"
