"""Filling the driver's undetected frames: within a shot, never across a cut."""
from __future__ import annotations

import numpy as np
import pytest

from portraitflow.operators.driving_motion import _fill


def test_fill_holds_a_missing_frame_next_to_a_cut_at_its_own_shot_value():
    # Shot 0 (frames 0-3) sits near x 100 in its crop, shot 1 (frames 4-7) near x 400 in its own.
    # Frame 3, the last of shot 0, is undetected: it must hold shot 0's last value, not blend
    # toward shot 1's crop coordinates; frame 4, the first of shot 1, likewise holds shot 1's.
    shot = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    known = np.array([True, True, True, False, False, True, True, True])
    values = np.zeros((8, 5, 2), np.float32)
    values[:3] = np.array([100.0, 102.0, 104.0])[:, None, None]
    values[5:] = np.array([400.0, 402.0, 404.0])[:, None, None]
    filled = _fill(values, known, shot)
    assert filled.shape == values.shape and filled.dtype == np.float32
    np.testing.assert_array_equal(filled[known], values[known])
    np.testing.assert_array_equal(filled[3], np.full((5, 2), 104.0))
    np.testing.assert_array_equal(filled[4], np.full((5, 2), 400.0))


def test_fill_interpolates_inside_a_shot():
    shot = np.array([0, 0, 0, 0, 0, 1, 1])
    known = np.array([True, False, False, True, True, True, True])
    values = np.array([0.0, -1.0, -1.0, 30.0, 40.0, 500.0, 600.0], np.float32)[:, None]
    filled = _fill(values, known, shot)
    np.testing.assert_allclose(filled[:, 0], [0.0, 10.0, 20.0, 30.0, 40.0, 500.0, 600.0])


def test_fill_a_shot_without_detections_holds_the_nearest_shots_facing_value():
    # Shot 1 has no detection; like its crop box it borrows shot 0 (nearest, lower on ties) and
    # holds shot 0's last value. Shot 3 borrows shot 2 and holds its last value too; shot 0
    # would borrow from after itself and hold that shot's first value.
    shot = np.array([0, 0, 1, 1, 2, 2, 3])
    known = np.array([True, True, False, False, True, True, False])
    values = np.array([1.0, 2.0, 0.0, 0.0, 7.0, 8.0, 0.0], np.float32)[:, None]
    np.testing.assert_array_equal(_fill(values, known, shot)[:, 0], [1.0, 2.0, 2.0, 2.0, 7.0, 8.0, 8.0])

    shot = np.array([0, 0, 1, 1])
    known = np.array([False, False, True, True])
    values = np.array([0.0, 0.0, 5.0, 6.0], np.float32)[:, None]
    np.testing.assert_array_equal(_fill(values, known, shot)[:, 0], [5.0, 5.0, 5.0, 6.0])


class _NoFaces:
    """An analyser that finds no face: enough to run the decoding and shot detection."""

    def detect(self, frames: list) -> list[list]:
        return [[] for _ in frames]


def test_an_int_frame_rate_is_taken_like_a_float(tmp_path) -> None:
    # PySceneDetect refuses an int fps; `fps=25` used to raise TypeError before a frame was read
    from bad_media import synthetic_video

    from portraitflow.operators.driving_motion import extract_driving_motion
    from portraitflow.operators.reference_portrait import NoFace

    path = synthetic_video(tmp_path / "shapes.mp4", frames=10)
    with pytest.raises(NoFace):
        extract_driving_motion(str(path), _NoFaces(), fps=25)
