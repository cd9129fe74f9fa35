"""What generation writes for a job, without Ray: the pasted-back frame (feathered only inside the
photo, scaled down to `max_output_side`), failed rows that name no output, settings refused before
anything runs, and failure reasons a user can act on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.models.animators.base import ReferenceInput
from portraitflow.operators.animate import AnimateJobs, prepare_job
from portraitflow.operators.decode import probe_video, read_frames
from portraitflow.operators.driving_motion import DrivingMotion
from portraitflow.operators.generation_jobs import Job
from portraitflow.operators.generation_results import plan_rows
from portraitflow.operators.paste_back import feathered_mask, fit_within, paste_back
from portraitflow.operators.reference_portrait import PreparedReference

STILL, ANIMATED = 100, 200


def _pasted(height: int, width: int, box: list[int]) -> np.ndarray:
    """One frame: an animated crop of ANIMATED pasted into `box` of a STILL photo."""
    image = np.full((height, width, 3), STILL, np.uint8)
    crop = np.full((1, 64, 64, 3), ANIMATED, np.uint8)
    (frames,) = list(paste_back(image, [crop], np.array(box), 0.1))
    return frames[0, :, :, 0]


def test_a_box_that_is_the_whole_photo_replaces_it_with_no_fade() -> None:
    """The repro: along row 256 at x = 0, 10, 25, 51 the frame read 100, 110, 149, 200."""
    frame = _pasted(512, 512, [0, 0, 512, 512])
    assert (frame == ANIMATED).all()


def test_the_mask_fades_only_along_box_edges_inside_the_photo() -> None:
    frame = _pasted(512, 512, [0, 0, 256, 256])  # on the left and top borders
    assert frame[128, 0] == frame[0, 128] == ANIMATED
    assert frame[128, 255] < 150 and frame[255, 128] < 150  # its right and bottom edges are inside
    inside = _pasted(512, 512, [100, 100, 300, 300])
    assert max(inside[200, 100], inside[100, 200], inside[200, 299], inside[299, 200]) < 150
    assert inside[200, 200] == ANIMATED
    mask = feathered_mask(100, 0.1, fade=(False, True, True, True))
    assert mask[50, 0, 0] == 1.0 and mask[0, 50, 0] < 0.05 and mask[50, 99, 0] < 0.05


def test_a_portrait_larger_than_the_cap_is_scaled_down_with_its_box() -> None:
    rows, columns = np.mgrid[0:4000, 0:3000]
    image = np.stack([rows * 255 // 4000, columns * 255 // 3000, np.full_like(rows, 90)], axis=-1).astype(np.uint8)
    # scaled by 2048 / 4000 = 0.512: a 1200 px side becomes 614 (614.4 rounded)
    for box, expected in (([0, 500, 3000, 3500], [0, 256, 1536, 1792]),  # the whole width: both borders kept
                          ([1200, 2800, 2400, 4000], [614, 1434, 1228, 2048]),  # on the bottom border: kept
                          ([700, 1300, 1900, 2500], [358, 666, 972, 1280])):  # inside
        scaled, scaled_box = fit_within(image, np.array(box), 2048)
        assert scaled.shape == (2048, 1536, 3) and scaled_box.tolist() == expected, box
        x1, y1, x2, y2 = scaled_box
        original = image[box[1]:box[3], box[0]:box[2]]
        assert np.abs(scaled[y1:y2, x1:x2].mean((0, 1)) - original.mean((0, 1))).max() < 1.0  # the same content
    for cap in (0, 4000):
        same, same_box = fit_within(image, np.array([0, 500, 3000, 3500]), cap)
        assert same is image and same_box.tolist() == [0, 500, 3000, 3500]


def _motion(frames: int, size: int) -> DrivingMotion:
    """Motion of a driver of `frames` frames that holds still, one shot cut with its top-left 96 px square."""
    kps = np.array([[20, 24], [44, 24], [32, 34], [22, 46], [42, 46]], np.float32) * size / 64
    return DrivingMotion(fps=25.0, size=size, shot=np.zeros(frames, np.int64), boxes=np.array([[0, 0, 96, 96]]),
                         face_boxes=np.array([[16.0, 16.0, 48.0, 48.0]]), kps=np.repeat(kps[None], frames, axis=0),
                         raw_kps=np.repeat(kps[None], frames, axis=0),
                         landmarks=np.zeros((frames, 68, 2), np.float32), pose=np.zeros((frames, 3), np.float32),
                         detected=np.ones(frames, bool))


def _row(tmp_path: Path, ref: Path, driving: Path, cfg: AnimateConfig, **params) -> dict:
    """The planned row of one `still` job with the intermediate columns `prepare_job` would add:
    the reference's crop (ANIMATED everywhere) cut with the box [0, 100, 600, 700]."""
    [row] = plan_rows([Job("j", str(ref), str(driving), params)], tmp_path / "out", "still", cfg, resume=True)
    crop = np.full((cfg.size, cfg.size, 3), ANIMATED, np.uint8)
    reference = ReferenceInput(crop, np.zeros((5, 2), np.float32), np.zeros((68, 2), np.float32),
                               np.zeros(3, np.float32), np.zeros((112, 112, 3), np.uint8))
    prepared = PreparedReference(reference, np.array([0, 100, 600, 700]), (800, 600))
    return {**row, "reference": prepared.to_bytes(), "motion": _motion(10, cfg.size).to_bytes(), "prep_s": 0.0}


@pytest.fixture
def still_job(tmp_path: Path):
    """A 600 x 800 STILL portrait, a 10-frame driver, and the `still` animation actor of a config."""
    from bad_media import synthetic_video

    ref = tmp_path / "portrait.png"
    Image.fromarray(np.full((800, 600, 3), STILL, np.uint8)).save(ref)
    driving = synthetic_video(tmp_path / "driver.mp4", frames=10)

    def actor(cfg: AnimateConfig) -> AnimateJobs:
        (tmp_path / "records").mkdir(exist_ok=True)
        return AnimateJobs("still", cfg.model_dump_json(), str(tmp_path / "attempts"), 3, str(tmp_path / "records"))

    return ref, driving, actor


def test_a_pasted_back_output_is_at_most_max_output_side(tmp_path: Path, still_job) -> None:
    ref, driving, actor = still_job
    cfg = AnimateConfig(backend="still", size=64, max_output_side=256)
    done = actor(cfg)._one(_row(tmp_path, ref, driving, cfg, paste_back=True))
    assert done["status"] == "ok", done["reason"]
    info = probe_video(done["output"])
    assert (info.width, info.height, info.num_frames) == (192, 256, 10)
    frames, _ = read_frames(done["output"], [5])
    # the box, scaled to [0, 32, 192, 224], spans the width: animated up to both borders
    assert abs(int(frames[0, 128, 0, 0]) - ANIMATED) <= 3 and abs(int(frames[0, 128, -1, 0]) - ANIMATED) <= 3
    assert abs(int(frames[0, 8, 96, 0]) - STILL) <= 3


def test_failed_rows_name_no_output_whatever_failed_them(tmp_path: Path, still_job) -> None:
    ref, driving, actor = still_job
    cfg = AnimateConfig(backend="still", size=64)
    jobs = [Job("a", str(ref), str(driving)), Job("b", str(ref), str(driving), {"pose_multiplier": 2.0}),
            Job("c", str(ref), str(driving), {"motion_scale": -1.0})]
    planned = plan_rows(jobs, tmp_path / "plan", "still", cfg, resume=True)
    assert [r["status"] for r in planned] == ["pending", "failed", "failed"]  # backend refusal, invalid param
    duplicate = plan_rows([jobs[0], jobs[0]], tmp_path / "dup", "still", cfg, resume=True)
    assert duplicate[1]["reason"] == "duplicate of job a: the same files and settings, one video"
    row = _row(tmp_path, ref, driving, cfg)
    prep = {"face_cfg_json": "{}", "animate_cfg_json": cfg.model_dump_json(), "attempts_dir": str(tmp_path / "att"),
            "motion_dir": str(tmp_path / "motion")}
    no_portrait = prepare_job({**row, "ref": str(tmp_path / "missing.png")}, max_attempts=3, **prep)
    crashed = prepare_job(row, max_attempts=0, **prep)
    unreadable_motion = actor(cfg)._one({**row, "motion": b"not motion"})
    failed = [*planned[1:], duplicate[1], no_portrait, crashed, unreadable_motion]
    assert [r["status"] for r in failed] == ["failed"] * 6
    assert [r["output"] for r in failed] == [""] * 6, [r["reason"] for r in failed]
    assert not Path(row["output"]).exists()


@pytest.mark.parametrize("setting, problem", [
    ("animate.size=0", "animate.size: Input should be greater than or equal to 64 (got 0)"),
    ("animate.size=513", "animate.size: size (513) must be even"),
    ("animate.window=0", "animate.window: Input should be greater than or equal to 1 (got 0)"),
    ("animate.crf=0", "animate.crf: Input should be greater than or equal to 1 (got 0)"),
    ("animate.max_output_side=10", "animate.max_output_side: max_output_side (10) must be 0"),
])
def test_settings_every_job_would_fail_on_exit_2_before_anything_runs(tmp_path: Path, setting: str,
                                                                      problem: str) -> None:
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    for name in ("a.png", "b.mp4"):  # the flags refuse a path that is not there
        (tmp_path / name).touch()
    result = CliRunner().invoke(app, ["animate", "--ref", str(tmp_path / "a.png"), "--driving", str(tmp_path / "b.mp4"),
                                      "--out", str(tmp_path / "out"), "--set", setting], env={"COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert problem in " ".join(result.output.replace("│", " ").split()), result.output
    assert not (tmp_path / "out" / "results.parquet").exists()


class _FaceOnFirstFrames:
    """An analyser that finds one face on the first `count` frames it is given, none after."""

    def __init__(self, count: int) -> None:
        self.count, self.seen = count, 0

    def detect(self, frames: list) -> list[list]:
        from portraitflow.models.face.base import Face

        found = []
        for _ in frames:
            face = Face(np.array([16, 16, 80, 80], np.float32), 1.0, np.full((5, 2), 48.0, np.float32))
            found.append([face] if self.seen < self.count else [])
            self.seen += 1
        return found

    def landmarks(self, frames: list, boxes: np.ndarray) -> np.ndarray:
        return np.full((len(frames), 68, 2), 48.0, np.float32)


def test_a_driver_whose_face_is_too_rarely_found_names_the_setting(tmp_path: Path) -> None:
    from bad_media import synthetic_video

    from portraitflow.operators.driving_motion import extract_driving_motion
    from portraitflow.operators.reference_portrait import NoFace

    path = str(synthetic_video(tmp_path / "driver.mp4", frames=10))
    with pytest.raises(NoFace, match=r"30% of the driving frames \(at least 50% needed: "
                                     r"animate\.min_face_fraction=0\.5\)"):
        extract_driving_motion(path, _FaceOnFirstFrames(3), size=128, fps=25.0, min_face_fraction=0.5)



def test_an_animation_actor_keeps_opencv_and_the_encoder_to_its_cpus(tmp_path: Path, still_job,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """x264 took about 1.5 threads per core of the node and OpenCV's pool every core, whatever the
    actor reserved: actors packed on a big node slowed each other down."""
    import cv2

    from portraitflow.operators import animate

    ref, driving, actor = still_job
    encoder_threads = []
    write_h264 = animate.write_h264
    monkeypatch.setattr(animate, "write_h264", lambda *a, **k: encoder_threads.append(k["threads"]) or write_h264(*a, **k))
    before = cv2.getNumThreads()
    try:
        cfg = AnimateConfig(backend="still", size=64, cpus_per_actor=2.5)
        done = actor(cfg)._one(_row(tmp_path, ref, driving, cfg))
        assert done["status"] == "ok", done["reason"]
        assert encoder_threads == [2] and cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)
