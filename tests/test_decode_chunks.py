"""Decoding in chunks bounded in bytes, and in order with PyAV: the same frames, bounded memory."""
from __future__ import annotations

import numpy as np
import pytest


def test_frames_per_chunk_fit_the_budget() -> None:
    from portraitflow.operators.decode import frames_per_chunk

    budget = 128 * 1024**2
    assert frames_per_chunk(32, 512, 512, budget) == 32
    assert frames_per_chunk(32, 1920, 1080, budget) == 21
    assert frames_per_chunk(25, 3840, 2160, budget) == 5
    assert frames_per_chunk(25, 30000, 20000, budget) == 1  # at least one


@pytest.mark.parametrize("span", [(0.0, None), (0.44, 1.24)])
def test_frames_decoded_in_order_are_decords(tmp_path, monkeypatch: pytest.MonkeyPatch, span) -> None:
    """`in_order` decodes with PyAV, which holds one chunk where decord kept GBs of a long 4K
    driver's frames: the same positions and pixels, chunk for chunk, from the start or mid-video."""
    from bad_media import synthetic_video

    from portraitflow.operators import decode

    path = str(synthetic_video(tmp_path / "shapes.mp4", frames=40, size=(160, 128)))  # a shape decord reads
    start_s, end_s = span
    used: list[str] = []
    pyav, by_decord = decode._pyav_frames, decode._decord_frames
    monkeypatch.setattr(decode, "_pyav_frames", lambda *args: used.append("pyav") or pyav(*args))
    monkeypatch.setattr(decode, "_decord_frames", lambda *args: used.append("decord") or by_decord(*args))
    by_index = list(decode.iter_frame_chunks(path, 25.0, start_s, end_s, chunk_size=7))
    in_order = list(decode.iter_frame_chunks(path, 25.0, start_s, end_s, chunk_size=7, in_order=True))
    assert used == ["decord", "pyav"]
    assert [len(c.positions) for c in in_order] == [len(c.positions) for c in by_index]
    for ours, theirs in zip(in_order, by_index, strict=True):
        np.testing.assert_array_equal(ours.positions, theirs.positions)
        np.testing.assert_array_equal(ours.frames, theirs.frames)


def test_pyav_chunks_hold_a_stream_that_ends_early_on_its_last_frame(tmp_path) -> None:
    """Each chunk is filled as frames decode; frames wanted past the stream's end repeat its last one."""
    from bad_media import synthetic_video

    from portraitflow.operators.decode import _pyav_frames

    path = str(synthetic_video(tmp_path / "shapes.mp4", frames=10, size=(96, 128)))
    chunks = list(_pyav_frames(path, np.array([0, 0, 3, 8, 9, 10, 11]), (128, 96), 3))
    assert [len(c) for c in chunks] == [3, 3, 1]
    frames = np.concatenate(chunks)
    np.testing.assert_array_equal(frames[0], frames[1])
    assert not np.array_equal(frames[2], frames[3])
    np.testing.assert_array_equal(frames[4], frames[5])
    np.testing.assert_array_equal(frames[5], frames[6])  # indices 10, 11: past the end, the last frame held
