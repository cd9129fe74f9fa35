"""Shot splitting: exposure steps in dim footage are not cuts; a new person before the same wall is."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from portraitflow.operators.decode import iter_frame_chunks
from portraitflow.operators.shots import ShotDetector

FPS = 25.0
DARK_WALL_RGB = (46, 44, 30)
CURATE_HISTOGRAM_THRESHOLD = 0.1  # curate.shot_histogram_threshold's default


def _talking_person(frame_index: int, face_center: tuple[int, int], face_axes: tuple[int, int],
                    shirt_rgb: tuple[int, int, int]) -> np.ndarray:
    """A 256x256 float RGB cartoon head and shoulders before the dark wall, its mouth opening and closing."""
    image = np.empty((256, 256, 3), np.float32)
    image[:] = DARK_WALL_RGB
    x, y = face_center
    cv2.ellipse(image, (x, y + 150), (90, 70), 0, 0, 360, shirt_rgb, -1)
    cv2.ellipse(image, (x, y - 10), (face_axes[0] + 8, face_axes[1] + 6), 0, 180, 360, (25, 20, 18), -1)  # hair
    cv2.ellipse(image, (x, y), face_axes, 0, 0, 360, (205, 165, 140), -1)
    for eye_offset in (-14, 14):
        cv2.circle(image, (x + eye_offset, y - 8), 4, (40, 30, 30), -1)
    mouth_open = 2 + int(6 * abs(np.sin(frame_index * 0.7)))
    cv2.ellipse(image, (x, y + 22), (12, mouth_open), 0, 0, 360, (90, 30, 40), -1)
    return image


def dim_talking_head(num_frames: int = 150, cut_at: int | None = None, seed: int = 0) -> np.ndarray:
    """A low-light talking head whose auto-exposure steps 8% up or down every second, with sensor noise;
    from `cut_at` on, another person (other place, size and shirt) before the same wall."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(num_frames):
        gain = 1.08 if (index // 25) % 2 else 1.0
        if cut_at is not None and index >= cut_at:
            image = _talking_person(index, (150, 110), (34, 44), (70, 40, 40))
        else:
            image = _talking_person(index, (110, 100), (30, 40), (200, 200, 195))
        frames.append(np.clip(image * gain + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def _cuts(frames: np.ndarray, **settings: float) -> list[int]:
    detector = ShotDetector(FPS, histogram_threshold=CURATE_HISTOGRAM_THRESHOLD, min_shot_frames=12, **settings)
    detector.update(np.arange(len(frames)), frames)
    return detector.cuts()


def test_exposure_steps_in_a_dim_talking_head_leave_one_shot() -> None:
    frames = dim_talking_head()
    assert len(_cuts(frames, hash_threshold=0.0)) >= 3  # the histogram alone reads each step as a cut
    assert _cuts(frames) == []


def test_a_new_person_before_the_same_dim_wall_is_still_a_cut() -> None:
    frames = dim_talking_head(cut_at=75)
    assert _cuts(frames) == [75]
    # with the content vote off, the histogram vote confirmed by the hash must find it alone
    assert _cuts(frames, content_threshold=255.0) == [75]


def test_a_hash_threshold_no_cut_reaches_keeps_only_the_content_vote() -> None:
    """The hash threshold gates the histogram vote, never the content vote."""
    frames = dim_talking_head(cut_at=75)
    assert _cuts(frames, hash_threshold=1.0, content_threshold=255.0) == []
    assert _cuts(frames, hash_threshold=1.0) == [75]


def _shared_cuts(path: Path) -> list[int]:
    detector = ShotDetector(FPS, histogram_threshold=CURATE_HISTOGRAM_THRESHOLD)
    for chunk in iter_frame_chunks(str(path), FPS):
        detector.update(chunk.positions, chunk.frames)
    return detector.cuts()


def test_shared_low_light_talking_head_is_one_shot_and_known_cuts_stay(media_dir: Path) -> None:
    """lia_vox_driving3.mov (18.6 s, dim room, continuous) came out as 9 shots; the two scene-cut files
    keep their cuts: 3.5 s in the derived one (two men before one grey wall) and three in the Hamilton clip."""
    assert _shared_cuts(media_dir / "lia_vox_driving3.mov") == []
    assert _shared_cuts(media_dir / "derived_scenecut_liveportrait_d18_to_d19.mp4") == [88]
    assert _shared_cuts(media_dir / "face_recognition_short_hamilton_clip.mp4") == [17, 69, 177]


def test_the_shortest_shot_is_half_a_second_at_any_rate() -> None:
    """A driver is split at its own rate as curation splits at its: cuts under half a second merge
    (12 frames at 25 fps, 15 at a 30 fps driver's), unless told otherwise."""
    assert [ShotDetector(fps).min_shot_frames for fps in (25.0, 30.0, 12.5)] == [12, 15, 6]
    assert ShotDetector(30.0, min_shot_frames=4).min_shot_frames == 4
