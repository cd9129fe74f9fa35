"""A measured clip's decisions (`face_scan._decide`) on made-up per-frame arrays: frames where the
face leaves the clip's fixed crop are cut out, and a part with no detected frame reads NaN, not 0."""
from __future__ import annotations

import numpy as np
import pytest

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.operators import face_scan, filters
from portraitflow.operators.decode import VideoInfo

FRAMES = 200  # 8 s at 25 fps
INFO = VideoInfo(1280, 720, 25.0, FRAMES)
BOX = np.array([500, 200, 650, 350], np.float32)  # its crop: 450 px square, 150 px about the box
CFG = CurateConfig(min_motion=0.0)  # the made-up landmarks hold still
GALLERIES = face_scan.Galleries(np.zeros((0, 8)), np.zeros((0, 8)), 0.5)


def _arrays(boxes: np.ndarray) -> dict[str, np.ndarray]:
    """What `_measure` hands `_decide` for one person's clip, detected every other frame, whose face
    box is `boxes` (FRAMES, 4) on each frame."""
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 17), np.linspace(0, 1, 4)), -1).reshape(68, 2)
    landmarks = boxes[:, None, :2] + grid[None] * (boxes[:, None, 2:] - boxes[:, None, :2])
    detected = np.arange(FRAMES) % 2 == 0
    samples = face_scan.identity_sample_frames(detected, CFG.identity_samples)
    return {
        "boxes": boxes, "kps": landmarks[:, :5], "landmarks": landmarks,
        "pose": np.zeros((FRAMES, 3), np.float32),
        "thumbnails": np.zeros((FRAMES, 16, 16), np.float32),
        "sample_index": samples,
        "sample_embedding": np.tile(np.eye(8, dtype=np.float32)[0], (len(samples), 1)),
        "measure_sharpness": np.where(detected, 200.0, np.nan),
        "measure_face_side": np.full(FRAMES, 150.0, np.float32),
        "measure_detected": detected,
        "measure_keypoint_yaw": np.zeros(FRAMES, np.float32),
        "measure_other_sides": np.zeros((FRAMES, 0), np.float32),
    }


def _decide(arrays: dict[str, np.ndarray]) -> list[face_scan.Candidate]:
    return face_scan._decide(arrays, 0, FRAMES, 0, INFO, GALLERIES, CFG)


def _leaning(*stretches: tuple[int, int]) -> np.ndarray:
    """Face boxes at BOX but on `stretches` [a, b), where the speaker leans 300 px to the right."""
    boxes = np.tile(BOX, (FRAMES, 1))
    for a, b in stretches:
        boxes[a:b, [0, 2]] += 300
    return boxes


def test_outside_share_is_the_share_of_the_face_box_the_crop_cuts_off() -> None:
    crop = np.array([0, 0, 100, 100])
    boxes = np.array([[10, 10, 50, 50], [80, 0, 120, 40], [90, 90, 110, 110], [200, 0, 240, 40]])
    np.testing.assert_allclose(face_scan.outside_share(boxes, crop), [0.0, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(("stretches", "parts"), [
    # skyreels_driving_2: the speaker leans out for the clip's last frames; what comes before is kept
    ([(160, 200)], [(0, 160, None), (160, 200, filters.FACE_LEAVES_CROP)]),
    # a lean and back: the frames after it are a clip of their own
    ([(60, 80)], [(0, 60, None), (60, 80, filters.FACE_LEAVES_CROP), (80, 200, None)]),
    # back for fewer frames than a clip takes (20 < 50) between two leans: cut out with them
    ([(60, 70), (90, 100)], [(0, 60, None), (60, 100, filters.FACE_LEAVES_CROP), (100, 200, None)]),
    # at the start: nothing before survives
    ([(0, 30)], [(0, 30, filters.FACE_LEAVES_CROP), (30, 200, None)]),
])
def test_frames_where_the_face_leaves_the_crop_are_cut_out_of_the_clip(
        stretches: list[tuple[int, int]], parts: list[tuple[int, int, str | None]]) -> None:
    """The crop is fixed per clip (from the median face box): a clip was kept whole with half a face
    in its last 14% of frames."""
    decided = _decide(_arrays(_leaning(*stretches)))
    assert [(c.start, c.end, c.reason) for c in decided] == parts
    for clip in decided:
        if clip.reason is None:  # every frame of a kept part is inside the crop it is rendered with
            assert clip.measures["face_outside_crop"] == 0.0
            assert not face_scan.outside_share(clip.arrays["boxes"], clip.arrays["crop_box"]).any()
        else:
            assert clip.measures["face_outside_crop"] == 1.0
            assert clip.measures["face_side_px"] == 150.0  # measured on its own frames


def test_a_face_a_little_over_the_crop_edge_is_kept_whole() -> None:
    """Up to MAX_CROP_OUTSIDE of the face box may be outside (a face box touching a tight source's edge)."""
    boxes = _leaning()
    boxes[150:, [0, 2]] += 150 + 0.08 * 150  # 8% of the box past the crop's right edge (x 800)
    [kept] = _decide(_arrays(boxes))
    assert (kept.start, kept.end, kept.reason) == (0, FRAMES, None)
    assert kept.measures["face_outside_crop"] == pytest.approx(0.08)


def test_a_part_with_no_detected_frame_reports_unmeasured_not_zero() -> None:
    """The rest of a split on one frame the detector skipped read sharpness 0 (a wholly blurred face)
    and keypoint yaw 0 (frontal); unmeasured is NaN, as for every measure, and no filter rejects on it."""
    arrays = _arrays(_leaning())
    rest = face_scan._part_measures(face_scan._frames(arrays, 199, 200), 199, 200, CFG)
    for measure in ("sharpness", "keypoint_yaw", "profile_share"):
        assert np.isnan(rest[measure]), measure
    assert rest["detected_ratio"] == 0.0 and rest["face_side_px"] == 150.0  # these are measured
    assert face_scan._track_reason(dict(rest, detected_ratio=1.0), FRAMES, INFO, CFG) is None
    assert filters.sharpness(rest["sharpness"], CFG) is None
