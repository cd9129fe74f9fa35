"""Filling the driver's undetected frames: within a shot, never across a cut."""
from __future__ import annotations

import numpy as np
import pytest

from portraitflow.operators.face_tracking import fill_within_shots


def test_fill_holds_a_missing_frame_next_to_a_cut_at_its_own_shot_value():
    # Shot 0 (frames 0-3) sits near x 100 in its crop, shot 1 (frames 4-7) near x 400 in its own.
    # Frame 3, the last of shot 0, is undetected: it must hold shot 0's last value, not blend
    # toward shot 1's crop coordinates; frame 4, the first of shot 1, likewise holds shot 1's.
    shot = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    known = np.array([True, True, True, False, False, True, True, True])
    values = np.zeros((8, 5, 2), np.float32)
    values[:3] = np.array([100.0, 102.0, 104.0])[:, None, None]
    values[5:] = np.array([400.0, 402.0, 404.0])[:, None, None]
    filled = fill_within_shots(values, known, shot)
    assert filled.shape == values.shape and filled.dtype == np.float32
    np.testing.assert_array_equal(filled[known], values[known])
    np.testing.assert_array_equal(filled[3], np.full((5, 2), 104.0))
    np.testing.assert_array_equal(filled[4], np.full((5, 2), 400.0))


def test_fill_interpolates_inside_a_shot():
    shot = np.array([0, 0, 0, 0, 0, 1, 1])
    known = np.array([True, False, False, True, True, True, True])
    values = np.array([0.0, -1.0, -1.0, 30.0, 40.0, 500.0, 600.0], np.float32)[:, None]
    filled = fill_within_shots(values, known, shot)
    np.testing.assert_allclose(filled[:, 0], [0.0, 10.0, 20.0, 30.0, 40.0, 500.0, 600.0])


def test_fill_a_shot_without_detections_holds_the_nearest_shots_facing_value():
    # Shot 1 has no detection; like its crop box it borrows shot 0 (nearest, lower on ties) and
    # holds shot 0's last value. Shot 3 borrows shot 2 and holds its last value too; shot 0
    # would borrow from after itself and hold that shot's first value.
    shot = np.array([0, 0, 1, 1, 2, 2, 3])
    known = np.array([True, True, False, False, True, True, False])
    values = np.array([1.0, 2.0, 0.0, 0.0, 7.0, 8.0, 0.0], np.float32)[:, None]
    np.testing.assert_array_equal(fill_within_shots(values, known, shot)[:, 0], [1.0, 2.0, 2.0, 2.0, 7.0, 8.0, 8.0])

    shot = np.array([0, 0, 1, 1])
    known = np.array([False, False, True, True])
    values = np.array([0.0, 0.0, 5.0, 6.0], np.float32)[:, None]
    np.testing.assert_array_equal(fill_within_shots(values, known, shot)[:, 0], [5.0, 5.0, 5.0, 6.0])


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


class _TurningDriver:
    """One face per frame whose landmarks always fit a positive yaw (as dlib lays out a profile: like a
    near-frontal face, here turned the wrong way), while its detector nose moves from the box centre
    (frontal) to 0.45 box widths left of it (a left profile) from frame `turn` on."""

    def __init__(self, turn: int) -> None:
        self.turn, self.seen = turn, 0

    def detect(self, frames: list) -> list[list]:
        from portraitflow.models.face.base import Face

        faces = []
        for _ in frames:
            kps = np.array([[40, 45], [88, 45], [64, 60], [46, 78], [82, 78]], np.float32)
            kps[2, 0] -= 0.45 * 96 if self.seen >= self.turn else 0.0
            faces.append([Face(np.array([16, 16, 112, 112], np.float32), 1.0, kps)])
            self.seen += 1
        return faces

    def landmarks(self, frames: list, boxes: np.ndarray) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        from portraitflow.models.face.pose import POSE_LANDMARKS, POSE_TEMPLATE

        turned = Rotation.from_euler("y", -20, degrees=True).apply(POSE_TEMPLATE)  # nose to larger x: yaw +20
        points = np.full((68, 2), 64.0)
        points[POSE_LANDMARKS] = turned[:, :2] * 0.5 + 64.0
        return np.repeat(points[None], len(frames), axis=0).astype(np.float32)

    def head_pose(self, landmarks: np.ndarray, image_sizes: list) -> np.ndarray:
        from portraitflow.models.face.pose import head_pose_from_landmarks

        return head_pose_from_landmarks(landmarks, image_sizes)


def test_a_profile_drivers_yaw_comes_from_its_keypoints(tmp_path) -> None:
    """`lia_ted_driving3.mp4`'s left profile gave the warp animator yaw +32..+46 (a head turning right)."""
    from bad_media import synthetic_video

    from portraitflow.operators.driving_motion import extract_driving_motion

    path = str(synthetic_video(tmp_path / "shapes.mp4", frames=20))
    motion = extract_driving_motion(path, _TurningDriver(turn=8), size=128, fps=25.0)
    assert motion.num_frames == 20
    assert np.all((motion.pose[:5, 0] > 10.0) & (motion.pose[:5, 0] < 25.0))  # frontal keypoints: the fit stands
    np.testing.assert_allclose(motion.pose[11:, 0], np.degrees(np.arcsin(-0.675)), atol=0.5)  # asin(1.5 x -0.45)
    assert np.isfinite(motion.pose).all()  # pitch and roll filled from the frontal frames
    throughout = extract_driving_motion(path, _TurningDriver(turn=0), size=128, fps=25.0)  # profile on every frame
    assert np.all(throughout.pose[:, 0] < -30.0) and np.all(throughout.pose[:, 1:] == 0.0)


def test_a_driver_whose_face_is_smaller_than_min_face_px_fails(tmp_path) -> None:
    """`lia_taichi_driving2.mp4` (a 30-px face) animated a portrait grimacing at landmark noise, `ok`:
    `min_face_px` guarded the reference only. Its face box here: 96 px on every frame."""
    from bad_media import synthetic_video

    from portraitflow.operators.driving_motion import extract_driving_motion
    from portraitflow.operators.reference_portrait import NoFace

    path = str(synthetic_video(tmp_path / "shapes.mp4", frames=12))
    assert extract_driving_motion(path, _TurningDriver(turn=99), size=128, fps=25.0, min_face_px=96).num_frames == 12
    with pytest.raises(NoFace, match=r"too small \(96 px.*animate.min_face_px=97"):
        extract_driving_motion(path, _TurningDriver(turn=99), size=128, fps=25.0, min_face_px=97)


def test_the_keypoints_before_smoothing_are_kept_for_hunyuanportrait(tmp_path) -> None:
    """The release computes its intensity buckets and expression crops on its detector's per-frame
    points; smoothed (warp's jitter filter) the buckets came out about 40% lower."""
    from bad_media import synthetic_video

    from portraitflow.operators.driving_motion import DrivingMotion, extract_driving_motion, iter_driving_windows

    path = str(synthetic_video(tmp_path / "shapes.mp4", frames=16))
    smoothed = extract_driving_motion(path, _TurningDriver(turn=8), size=128, fps=25.0, smooth_sigma=2.0)
    raw = extract_driving_motion(path, _TurningDriver(turn=8), size=128, fps=25.0, smooth_sigma=0)
    np.testing.assert_array_equal(smoothed.raw_kps, raw.kps)  # the nose's step at frame 8, as detected
    assert np.abs(smoothed.kps - raw.kps).max() > 5.0
    again = DrivingMotion.from_bytes(smoothed.to_bytes())  # the cached form keeps both
    windows = list(iter_driving_windows(path, again, window=5))
    np.testing.assert_array_equal(np.concatenate([w.raw_kps for w in windows]), raw.kps)
    np.testing.assert_array_equal(np.concatenate([w.kps for w in windows]), smoothed.kps)


def test_the_ted_drivers_left_profile_reads_as_turned_left(media_dir) -> None:
    """MANIFEST: frontal, then near side profile to her left. Frames 84-114 (10 fps) read yaw
    +10..+49 from the landmark fit; the keypoints read -50..-90 (asin(2 x offset))."""
    from portraitflow.jobs.config import FaceConfig
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.models.face.model_files import ModelFilesMissing
    from portraitflow.operators.driving_motion import extract_driving_motion

    try:
        analyzer = create_analyzer(FaceConfig(backend="opencv"))
    except ModelFilesMissing as missing:
        pytest.skip(str(missing))
    path = str(media_dir / "lia_ted_driving3.mp4")
    motion = extract_driving_motion(path, analyzer, size=512)  # 54% of its frames in profile: still used
    assert motion.fps == 10.0
    assert np.all(motion.pose[:30, 0] > 15.0)  # first turned to the image's right, which the fit reads
    assert np.all(motion.pose[84:115, 0] < -30.0)


def _spy_chunks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Record the chunk size and `in_order` of every decode the driving-motion module starts."""
    from portraitflow.operators import driving_motion

    calls: list[tuple[int, bool]] = []
    decode = driving_motion.iter_frame_chunks

    def spied(*args, chunk_size: int = 64, in_order: bool = False, **kwargs):
        calls.append((chunk_size, in_order))
        return decode(*args, chunk_size=chunk_size, in_order=in_order, **kwargs)

    monkeypatch.setattr(driving_motion, "iter_frame_chunks", spied)
    return calls


def test_driving_windows_cut_from_chunks_under_the_byte_budget_are_the_windows_decoded_whole(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4K driver's window was decoded whole (25 frames, 620 MB) in the animation actor; decoded a
    few frames at a time and cropped at once, every window is the one cut from its frames decoded
    together, bit for bit."""
    from bad_media import synthetic_video

    from portraitflow.models.face.align import crop_square
    from portraitflow.operators import driving_motion
    from portraitflow.operators.decode import iter_frame_chunks

    path = str(synthetic_video(tmp_path / "shapes.mp4", frames=23, size=(160, 128)))  # a shape decord reads
    motion = driving_motion.extract_driving_motion(path, _TurningDriver(turn=8), size=64, fps=25.0)
    before = []  # as the windows were cut: decoded a window at a time (decord), cropped together
    for chunk in iter_frame_chunks(path, motion.fps, chunk_size=5):
        frames = chunk.positions[chunk.positions < motion.num_frames]
        before.append((frames, np.stack([crop_square(rgb, motion.boxes[motion.shot[i]], motion.size)
                                         for i, rgb in zip(frames, chunk.frames)])))
    monkeypatch.setattr(driving_motion, "FULL_RES_CHUNK_BYTES", 2 * 160 * 128 * 3)  # two frames of the clip
    calls = _spy_chunks(monkeypatch)
    windows = list(driving_motion.iter_driving_windows(path, motion, window=5))
    assert calls == [(2, True)]
    assert [len(w.crops) for w in windows] == [5, 5, 5, 5, 3]
    for (frames, crops), window in zip(before, windows, strict=True):
        assert window.start == frames[0]
        np.testing.assert_array_equal(window.crops, crops)
        for name in ("kps", "raw_kps", "landmarks", "pose"):
            np.testing.assert_array_equal(getattr(window, name), getattr(motion, name)[frames])
        np.testing.assert_array_equal(window.face_boxes, motion.face_boxes[motion.shot[frames]])
        np.testing.assert_array_equal(window.meta["shot"], motion.shot[frames])


def test_motion_extracted_from_chunks_under_the_byte_budget_is_the_same(tmp_path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of fewer frames (a 4K driver: 5, not 32) change nothing the extraction finds, so
    cached motion stays valid (EXTRACTION_VERSION unchanged)."""
    from bad_media import synthetic_video

    from portraitflow.operators import driving_motion

    path = str(synthetic_video(tmp_path / "shapes.mp4", frames=23, size=(160, 128)))
    calls = _spy_chunks(monkeypatch)
    whole = driving_motion.extract_driving_motion(path, _TurningDriver(turn=8), size=64, fps=25.0)
    monkeypatch.setattr(driving_motion, "FULL_RES_CHUNK_BYTES", 3 * 160 * 128 * 3)
    chunked = driving_motion.extract_driving_motion(path, _TurningDriver(turn=8), size=64, fps=25.0)
    assert calls == [(32, True), (3, True)]
    assert chunked.to_bytes() == whole.to_bytes()


def test_a_driver_that_dropped_a_frame_is_animated_at_its_own_rate(tmp_path) -> None:
    """A 29.97-fps driver short of one frame was animated at its average, 29.47 fps: an output at
    a rate no editor's timeline has. It is animated at 29.97, the frame before the gap held over it."""
    from bad_media import dropped_frame_video

    from portraitflow.operators.driving_motion import extract_driving_motion

    path = str(dropped_frame_video(tmp_path / "dropped.mp4"))
    motion = extract_driving_motion(path, _TurningDriver(turn=1000), size=64)
    assert motion.fps == pytest.approx(30000 / 1001, rel=1e-9) and motion.num_frames == 60
