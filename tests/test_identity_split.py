"""A clip split at an identity switch: each part is measured and judged on its own person's frames.

The second pass (`face_scan._measure`) runs on made-up frames with a stand-in face backend, so a
part's frames can differ from the other part's in one way at a time (blur, face size, pose, a
bystander) while the whole clip's medians stay those of the first, longer part.
"""
from __future__ import annotations

import numpy as np
import pytest

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.operators import face_scan, filters
from portraitflow.operators.decode import FrameChunk, VideoInfo
from portraitflow.operators.timing import StageTimer
from portraitflow.operators.face_tracking import Track

FRAMES, SWITCH = 200, 120  # 8 s: the first person 4.8 s, the second 3.2 s
SIDE, TO_SOURCE = 64, 4.0  # analysis frames of a 256-px video
BOX = np.array([8, 8, 56, 56], np.float32)  # 192 source px
SMALL_BOX = np.array([18, 18, 46, 46], np.float32)  # 112 source px, under `min_face_px`
PEOPLE = np.eye(8, dtype=np.float32)[:2]
# with identity samples at most 0.5 s apart (17: 0, 12, ..., 112, 124, ..., 198, on detected frames)
# the split keeps [0, 113) and [124, 200)
FIRST, SECOND = (0, 113), (124, 200)


class _Analyzer:
    """A face backend telling the two people apart by their faces' brightness (dark, bright)."""

    same_person_threshold = 0.5

    def landmarks(self, frames: list[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        grid = np.stack(np.meshgrid(np.linspace(0.2, 0.8, 17), [0.3, 0.5, 0.6, 0.8]), -1).reshape(68, 2)
        return boxes[:, None, :2] + grid[None] * (boxes[:, None, 2:] - boxes[:, None, :2])

    def head_pose(self, landmarks: np.ndarray, sizes: list[tuple[int, int]]) -> np.ndarray:
        return np.zeros((len(landmarks), 3), np.float32)

    def embed(self, frames: list[np.ndarray], faces: list) -> np.ndarray:
        return np.stack([PEOPLE[int(_face(frame, face.box).mean() > 127)] for frame, face in zip(frames, faces)])


def _face(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box.astype(int)
    return frame[y1:y2, x1:x2]


def _footage(second_box: np.ndarray, blur_second: bool) -> np.ndarray:
    """(FRAMES, SIDE, SIDE, 3) frames: a dark textured face, then from SWITCH a bright one."""
    import cv2

    rng = np.random.default_rng(0)
    frames = np.full((FRAMES, SIDE, SIDE, 3), 128, np.uint8)
    for index, frame in enumerate(frames):
        box, low = (BOX, 0) if index < SWITCH else (second_box, 128)
        face = _face(frame, box)
        face[:] = rng.integers(low, low + 128, face.shape[:2])[..., None]
        if blur_second and index >= SWITCH:
            frame[:] = cv2.GaussianBlur(frame, (0, 0), 3)
    return frames


def _track(second_box: np.ndarray, nose_offset: float) -> Track:
    """The main face's track, detected every second frame; the second person's nose sits
    `nose_offset` box widths off centre (0.45: about 64 degrees of keypoint yaw)."""
    boxes = np.stack([BOX if i < SWITCH else second_box for i in range(FRAMES)])
    offsets = np.where(np.arange(FRAMES) < SWITCH, 0.0, nose_offset)
    shape = np.array([[0.35, 0.35], [0.65, 0.35], [0.5, 0.55], [0.375, 0.75], [0.625, 0.75]], np.float32)
    kps = np.repeat(shape[None], FRAMES, axis=0)
    kps[:, 2, 0] += offsets
    kps = boxes[:, None, :2] + kps * (boxes[:, None, 2:] - boxes[:, None, :2])
    return Track(np.arange(FRAMES), boxes, kps.astype(np.float32), np.arange(FRAMES) % 2 == 0)


def _scan(monkeypatch: pytest.MonkeyPatch, frames: np.ndarray, main: Track, others: list[Track] = (),
          analyzer: _Analyzer | None = None, margin_s: float = 0.0) -> list[face_scan.Candidate]:
    """The first pass and the second on the clip [0, FRAMES), with `frames` as the decoded video; no
    margin around a switch unless `margin_s` (the parts' own frames are what these tests judge)."""
    def decoded(path: str, fps: float, start_s: float, end_s: float, chunk_size: int, size: object):
        for begin in range(round(start_s * fps), round(end_s * fps), chunk_size):
            positions = np.arange(begin, min(begin + chunk_size, round(end_s * fps)))
            yield FrameChunk(positions, frames[positions])

    monkeypatch.setattr(face_scan, "iter_frame_chunks", decoded)
    cfg = CurateConfig(min_motion=0.0, chunk_frames=48, identity_switch_margin_seconds=margin_s)  # still landmarks
    info = VideoInfo(SIDE * 4, SIDE * 4, cfg.fps, FRAMES)
    to_source = np.full(2, TO_SOURCE, np.float32)
    galleries = face_scan.Galleries(np.zeros((0, 8)), np.zeros((0, 8)), 0.5)
    candidate = face_scan._cheap_checks(main, [main, *others], 0, FRAMES, info, to_source, cfg.detect_every, cfg)
    assert candidate.reason is None  # the whole clip passes the first pass on the first person's frames
    return face_scan._measure(analyzer or _Analyzer(), "talk.mp4", None, (SIDE, SIDE), main, candidate, to_source, info,
                              galleries, cfg, StageTimer())


def _median_sharpness(frames: np.ndarray, box: np.ndarray, start: int, end: int) -> float:
    return float(np.median([filters.laplacian_sharpness(frames[i], box) for i in range(start, end, 2)]))


def test_a_blurred_part_is_rejected_on_its_own_sharpness_and_the_sharp_part_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    frames = _footage(BOX, blur_second=True)
    sharp, between, blurred = _scan(monkeypatch, frames, _track(BOX, 0.0))
    assert [(c.start, c.end, c.reason) for c in (sharp, blurred)] == [(*FIRST, None), (*SECOND, filters.TOO_BLURRY)]
    # the frames between the two people's samples show either: their own row, so every second is accounted for
    assert (between.start, between.end, between.reason) == (FIRST[1], SECOND[0], filters.IDENTITY_SWITCH)
    assert sharp.measures["sharpness"] == pytest.approx(_median_sharpness(frames, BOX, *FIRST))
    assert blurred.measures["sharpness"] == pytest.approx(_median_sharpness(frames, BOX, *SECOND))
    assert blurred.measures["sharpness"] < CurateConfig().min_sharpness < sharp.measures["sharpness"]
    assert len(sharp.arrays["boxes"]) == FIRST[1] - FIRST[0]
    assert not [name for name in sharp.arrays if name.startswith(face_scan.DECISION_ONLY)]  # none stored


@pytest.mark.parametrize(("second", "measure", "own", "reason"), [
    ("small face", "face_side_px", 112.0, filters.FACE_TOO_SMALL),
    ("profile", "keypoint_yaw", float(np.degrees(np.arcsin(0.9))), filters.EXTREME_POSE),
    ("bystander", "secondary_faces", 1.0, filters.MULTIPLE_FACES),
])
def test_a_part_is_judged_on_its_own_first_pass_measures(monkeypatch: pytest.MonkeyPatch, second: str, measure: str,
                                                        own: float, reason: str) -> None:
    """The whole clip passes on the first person's medians; the second person's part does not on its own."""
    second_box = SMALL_BOX if second == "small face" else BOX
    # a face on 40 frames of the second part: over a quarter of it, under a quarter of the clip
    bystander = Track(np.arange(150, 190), np.tile(np.array([0, 0, 20, 20], np.float32), (40, 1)),
                      np.zeros((40, 5, 2), np.float32), np.ones(40, bool))
    first, _, rest = _scan(monkeypatch, _footage(second_box, blur_second=False),
                        _track(second_box, 0.45 if second == "profile" else 0.0),
                        [bystander] if second == "bystander" else [])
    assert [(c.start, c.end, c.reason) for c in (first, rest)] == [(*FIRST, None), (*SECOND, reason)]
    assert rest.measures[measure] == pytest.approx(own, rel=1e-4)
    assert first.measures[measure] == pytest.approx({"face_side_px": 192.0}.get(measure, 0.0))


class _AligningAnalyzer(_Analyzer):
    """A recogniser that knows the dark face only from a crop on it: a crop half beside it reads as
    someone else (a real recogniser's embedding of a misaligned crop drifts the same way)."""

    def embed(self, frames: list[np.ndarray], faces: list) -> np.ndarray:
        return np.stack([PEOPLE[int(_face(frame, face.box).mean() > 80)] for frame, face in zip(frames, faces)])


def test_identity_samples_are_embedded_on_detected_frames_not_interpolated_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A shaking camera moves the face between detections, where the track's box is interpolated: one
    person's clip sampled at 0, 28, 57, 85, ..., 199 was rejected `identity_switch`, its undetected
    samples cropped half beside the face. Moved to the nearest detected frames, they are one person."""
    rng = np.random.default_rng(0)
    frames = np.full((FRAMES, SIDE, SIDE, 3), 128, np.uint8)
    for index, frame in enumerate(frames):  # the dark face, 24 px to the right on the undetected frames
        face = _face(frame, BOX + (np.array([24, 0, 24, 0], np.float32) if index % 2 else 0))
        face[:] = rng.integers(0, 128, face.shape[:2])[..., None]
    [clip] = _scan(monkeypatch, frames, _track(BOX, 0.0), analyzer=_AligningAnalyzer())
    assert (clip.start, clip.end, clip.reason) == (0, FRAMES, None)
    assert clip.measures["identity_link"] == pytest.approx(1.0)
    assert face_scan.identity_sample_frames(np.arange(9) % 4 == 0, 4).tolist() == [0, 4, 8]  # 3 and 5 -> 4



def test_a_second_of_another_person_inside_a_clip_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames 88-111 of one person's 8-s clip show another, with no cut: 8 samples (0, 28, 57, 85, 114,
    ...) fell around them, the clip was kept whole, and the other person's most frontal frame became
    its reference. Samples at most 0.5 s apart see them (the one at 100): no clip kept holds a frame
    of them, and the first person's footage on either side is kept (a switch away and back had
    rejected the whole clip). Half a second either side of each switch goes with it (a dissolve's
    frames blend the two faces)."""
    rng = np.random.default_rng(0)
    frames = np.full((FRAMES, SIDE, SIDE, 3), 128, np.uint8)
    for index, frame in enumerate(frames):
        low = 128 if 88 <= index < 112 else 0
        _face(frame, BOX)[:] = rng.integers(low, low + 128, (48, 48))[..., None]
    parts = _scan(monkeypatch, frames, _track(BOX, 0.0))
    assert [(c.start, c.end, c.reason) for c in parts] == [
        (0, 87, None), (87, 100, filters.IDENTITY_SWITCH), (100, 101, filters.TOO_SHORT),
        (101, 112, filters.IDENTITY_SWITCH), (112, FRAMES, None)]
    margin = round(0.5 * CurateConfig().fps)
    parts = _scan(monkeypatch, frames, _track(BOX, 0.0), margin_s=0.5)
    assert [(c.start, c.end, c.reason) for c in parts] == [
        (0, 87 - margin, None), (87 - margin, 100 + margin, filters.IDENTITY_SWITCH),
        (100 + margin, FRAMES, None)]


def test_a_deny_list_matches_any_sample_not_only_their_mean() -> None:
    from portraitflow.operators.identity import matches_gallery

    samples, denied = np.stack([PEOPLE[0], PEOPLE[0], PEOPLE[1]]), PEOPLE[1:]
    assert matches_gallery(samples, denied, 0.5) and not matches_gallery(samples.mean(axis=0), denied, 0.5)
