"""Evaluation metrics on constructed cases whose answers are known in closed form."""
from __future__ import annotations

import numpy as np
import pytest

from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.operators import metrics, metrics_learned


def _video(seed: int = 0, frames: int = 4, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)


def _landmarks(frames: int = 5) -> np.ndarray:
    """A 68-point face-like cloud in a 100 x 120 px box, repeated over frames."""
    rng = np.random.default_rng(1)
    points = rng.uniform([50, 40], [150, 160], (68, 2))
    points[0], points[1] = (50, 40), (150, 160)  # pin the bounding box: face size sqrt(100 * 120)
    return np.repeat(points[None], frames, axis=0)


def test_identical_videos_are_perfect() -> None:
    video = _video()
    assert np.allclose(metrics.ssim(video, video), 1.0)
    assert np.allclose(metrics.l1(video, video), 0.0)
    assert np.all(metrics.psnr(video, video) == metrics.PSNR_CAP_DB)
    lm = _landmarks()
    assert np.allclose(metrics.akd(lm, lm), 0.0)
    assert np.allclose(metrics.aed(lm, lm), 0.0, atol=1e-9)
    pose = np.tile([10.0, -5.0, 3.0], (5, 1))
    assert np.allclose(metrics.apd(pose, pose), 0.0)


def test_known_brightness_offset_gives_known_psnr_and_l1() -> None:
    target = np.full((3, 32, 32, 3), 100, np.uint8)
    pred = target + np.uint8(10)  # MSE 100 on a 0..255 range
    assert np.allclose(metrics.psnr(pred, target), 10 * np.log10(255.0**2 / 100.0), atol=1e-3)
    assert np.allclose(metrics.l1(pred, target), 10 / 255.0)
    assert np.all(metrics.ssim(pred, target) < 1.0)


def test_known_shift_gives_known_akd() -> None:
    target = _landmarks()
    pred = target + np.array([3.0, 4.0])  # 5 px everywhere
    assert np.allclose(metrics.akd(pred, target), 5.0 / np.sqrt(100.0 * 120.0))
    assert np.allclose(metrics.face_size(target), np.sqrt(100.0 * 120.0))


def test_aed_ignores_pose_and_sees_expression() -> None:
    target = _landmarks(1)
    angle = np.radians(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (target[0] @ rotation.T) * 1.7 + np.array([40.0, -15.0])
    assert metrics.aed(moved[None], target)[0] < 1e-9
    opened = target.copy()
    opened[0, 57] += (0, 12.0)  # iBUG-68 lower-lip point moves down: mouth opens
    wider = target.copy()
    wider[0, 57] += (0, 24.0)
    small, large = metrics.aed(opened, target)[0], metrics.aed(wider, target)[0]
    assert 0 < small < large


def test_apd_wraps_angles() -> None:
    assert metrics.apd(np.array([[179.0, 0, 0]]), np.array([[-179.0, 0, 0]]))[0] == pytest.approx(2 / 3)


def test_known_rotation_gives_known_apd_through_the_face_layer_pose() -> None:
    """Landmarks of a template head turned by 20 degrees of yaw, fitted by the face layer."""
    from scipy.spatial.transform import Rotation

    from portraitflow.models.face.pose import POSE_LANDMARKS, POSE_TEMPLATE, head_pose_from_landmarks

    height = width = 512
    focal = 512.0

    def project(yaw_deg: float) -> np.ndarray:
        # yaw > 0 turns the nose toward larger x: rotate about the camera's y axis
        points = Rotation.from_euler("y", -yaw_deg, degrees=True).apply(POSE_TEMPLATE) + [0, 0, 4000.0]
        landmarks = np.zeros((68, 2))
        landmarks[:] = (width / 2, height / 2)
        landmarks[POSE_LANDMARKS] = points[:, :2] / points[:, 2:] * focal + (width / 2, height / 2)
        return landmarks

    frames = np.stack([project(0.0), project(20.0)])
    poses = head_pose_from_landmarks(frames, [(height, width)] * 2)
    assert abs(poses[1, 0] - poses[0, 0]) == pytest.approx(20.0, abs=1.0)
    apd = metrics.apd(poses[1:], poses[:1])[0]
    assert apd == pytest.approx(20.0 / 3, abs=0.5)  # yaw error only, averaged over three angles


def test_jitter_sees_shaking_not_smooth_motion() -> None:
    base = _landmarks(6)
    steady = base + np.arange(6)[:, None, None] * np.array([2.0, 1.0])  # constant velocity
    assert np.allclose(metrics.landmark_jitter(steady)[1:-1], 0.0)
    shaking = base + (np.array([1, -1, 1, -1, 1, -1])[:, None, None] * np.array([1.5, 0.0]))
    jitter = metrics.landmark_jitter(shaking)
    assert np.isnan(jitter[0]) and np.isnan(jitter[-1])
    assert np.allclose(jitter[1:-1], 4 * 1.5 / np.sqrt(100.0 * 120.0))


def test_flicker_sees_alternating_brightness_not_ramps() -> None:
    ramp = np.stack([np.full((8, 8, 3), 50 + 10 * i, np.uint8) for i in range(5)])
    assert np.allclose(metrics.flicker(ramp)[1:-1], 0.0)
    blink = np.stack([np.full((8, 8, 3), 100 + (6 if i % 2 else -6), np.uint8) for i in range(5)])
    assert np.allclose(metrics.flicker(blink)[1:-1], 12.0)


def test_jitter_and_flicker_errors_score_the_output_against_the_drivers_own() -> None:
    """Talking moves landmarks and mouth brightness, so the output's own jitter and flicker made a
    still output win and the real video lose; against the driver's, a copy scores 0, a still output
    the driver's motion, and shaking or pumping on top of the driver's motion adds to the error."""
    base = _landmarks(8)
    mouth = np.zeros((8, 68, 2))
    mouth[:, 48:68, 1] = 3.0 * np.sin(np.arange(8) * 1.3)[:, None]  # the lips open and close
    talking, still = base + mouth, base
    shaking = talking + np.array([1, -1] * 4)[:, None, None] * np.array([1.5, 0.0])
    driver_jitter = metrics.landmark_jitter(talking)[1:-1]
    assert np.allclose(metrics.jitter_error(talking, talking, 8)[1:-1], 0.0)
    assert np.allclose(metrics.jitter_error(still, talking, 8)[1:-1], driver_jitter.mean())  # all the driver's motion
    assert np.all(metrics.landmark_jitter(still)[1:-1] < driver_jitter)  # what ranked it first before
    assert np.nanmean(metrics.jitter_error(shaking, talking, 8)) > 0.5 * np.nanmean(driver_jitter)
    assert np.isnan(metrics.jitter_error(still, talking, 8)[[0, -1]]).all()

    speaking = 100.0 + 4.0 * np.sin(np.arange(8) * 1.3)  # luma as the mouth opens and closes
    steady = np.full(8, 100.0)
    pumping = speaking + np.array([1, -1] * 4) * 5.0
    assert np.allclose(metrics.flicker_error(speaking, speaking)[1:-1], 0.0)
    assert np.allclose(metrics.flicker_error(steady, speaking)[1:-1], metrics.flicker(speaking)[1:-1])
    assert np.nanmean(metrics.flicker_error(pumping, speaking)) > 5.0
    frames = np.repeat(speaking.astype(np.uint8)[:, None, None, None], 3, axis=3)
    assert np.allclose(metrics.flicker_error(frames, speaking.astype(np.uint8).astype(float))[1:-1], 0.0)
    assert not {"jitter", "flicker"} & set(metrics.METRICS)  # the own values are no ranked metrics
    assert not metrics.higher_is_better("jitter_error") and not metrics.higher_is_better("flicker_error")


def _noisy(landmarks: np.ndarray, seed: int, sigma: float = 0.7) -> np.ndarray:
    """Landmarks as a detector reads them frame by frame: the whole face box wobbles by `sigma` px, each
    point a little more, independently in every video."""
    rng = np.random.default_rng(seed)
    return landmarks + rng.normal(0, sigma, (len(landmarks), 1, 2)) + rng.normal(0, 0.2, landmarks.shape)


def test_jitter_error_has_no_floor_from_each_videos_own_landmark_noise() -> None:
    """Frame by frame, |jitter(output) - jitter(driver)| of two independently noisy detections scored
    a near-perfect copy 26-62% of the still output (a lossless re-encode of the clip, on real
    footage); the difference of window means cancels the noise, not the motion."""
    frames = 75  # three 1 s windows at 25 fps
    base = _landmarks(frames)
    talking = base.copy()
    talking[:, 48:68, 1] += 3.0 * np.sin(np.arange(frames) * 0.9)[:, None]  # the lips open and close
    driver, copy = _noisy(talking, seed=1), _noisy(talking, seed=2)
    copy_error, still_error = (np.nanmean(metrics.jitter_error(output, driver, 25)) for output in (copy, base))
    frame_by_frame = np.nanmean(np.abs(metrics.landmark_jitter(copy) - metrics.landmark_jitter(driver)))
    assert frame_by_frame > 0.3 * still_error  # the floor these landmarks had
    assert copy_error < 0.2 * still_error


def test_jitter_error_windows_keep_shaking_in_one_part_from_cancelling_stillness_in_another() -> None:
    """Over the whole video, an output that shakes for a second and then freezes can have the
    driver's mean jitter; per one-second window it cannot."""
    frames = 50
    base = _landmarks(frames)
    driver = base + (np.array([1, -1] * (frames // 2))[:, None, None] * np.array([0.5, 0.0]))
    output = base + (np.array([1, -1] * (frames // 2))[:, None, None] * np.array([1.0, 0.0]))
    output[25:] = base[25:]  # shakes twice as much, then not at all
    assert abs(np.nanmean(metrics.landmark_jitter(output)) - np.nanmean(metrics.landmark_jitter(driver))) < 0.2 * \
        np.nanmean(metrics.landmark_jitter(driver))  # the whole-video means nearly agree
    assert np.nanmean(metrics.jitter_error(output, driver, 25)) > 0.8 * np.nanmean(metrics.landmark_jitter(driver))


def test_csim_and_nanmean() -> None:
    ref = np.array([1.0, 0.0, 0.0])
    assert np.allclose(metrics.csim(np.array([[2.0, 0, 0], [0, 1.0, 0]]), ref), [1.0, 0.0])
    assert np.isnan(metrics.nanmean(np.array([np.nan])))
    assert metrics.nanmean(np.array([1.0, np.nan, 3.0])) == 2.0


def test_learned_metrics_are_skipped_with_a_note_without_weights(tmp_path) -> None:
    notes = metrics_learned.skip_notes(EvaluateConfig(fid_onnx=str(tmp_path / "missing.onnx")))
    assert set(notes) == {"lpips", "fid", "fvd"}
    assert "evaluate.lpips_onnx=PATH" in notes["lpips"]
    assert "does not exist" in notes["fid"]


def test_learned_metrics_run_from_local_onnx_weights(tmp_path) -> None:
    from onnx_nets import channel_means, mean_abs_difference

    # FID features: per-channel means (N, 3); a constant offset c per channel gives FID 3 c^2
    fid_path = channel_means(tmp_path / "feat.onnx")
    lpips_path = mean_abs_difference(tmp_path / "lpips.onnx")
    cfg = EvaluateConfig(fid_onnx=fid_path, lpips_onnx=lpips_path)
    assert set(metrics_learned.skip_notes(cfg)) == {"fvd"}

    real = _video(seed=3, frames=12, size=32) // 2
    fake = real + np.uint8(51)  # +0.2 on the network's 0..1 scale, in every channel
    network = metrics_learned.OnnxNetwork(fid_path)
    real_features = metrics_learned.image_features(network, real)
    assert real_features.shape == (12, 3)
    fake_features = metrics_learned.image_features(network, fake)
    assert metrics_learned.frechet_distance(real_features, real_features) == pytest.approx(0.0, abs=1e-6)
    assert metrics_learned.frechet_distance(real_features, fake_features) == pytest.approx(3 * 0.2**2, rel=1e-3)

    lpips_net = metrics_learned.OnnxNetwork(lpips_path)
    assert np.allclose(metrics_learned.lpips(lpips_net, real, real), 0.0)
    assert np.allclose(metrics_learned.lpips(lpips_net, fake, real), 0.4, atol=1e-5)  # 0.2 on a [-1,1] scale


def _real_pair(media_dir) -> tuple[np.ndarray, np.ndarray]:
    """Two 256 x 256 frames of a real talking head, 0.4 s apart (the head and mouth have moved)."""
    import cv2

    from portraitflow.operators.decode import iter_frame_chunks

    frames = next(iter_frame_chunks(str(media_dir / "liveportrait_d20.mp4"), 25.0, chunk_size=11)).frames
    small = [cv2.resize(frames[i], (256, 256), interpolation=cv2.INTER_AREA) for i in (0, 10)]
    return small[0][None], small[1][None]


def test_ssim_is_the_standard_definition_border_cropped_as_scikit_image(media_dir) -> None:
    """torchmetrics averages the SSIM map over its reflect-padded border as well, which read up to
    0.024 higher than the standard definition (Wang et al. 2004; scikit-image) on real frames."""
    from scipy.ndimage import gaussian_filter

    def reference(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Wang et al.'s formula written out: Gaussian window sigma 1.5 (radius 5), population
        (co)variances, C1 = (0.01 L)^2, C2 = (0.03 L)^2, the map's mean inside a 5 px border, per channel."""
        def window(x: np.ndarray) -> np.ndarray:
            return gaussian_filter(x, 1.5, truncate=3.5, mode="reflect")

        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        scores = []
        for p, t in zip(pred.astype(np.float64), target.astype(np.float64)):
            channels = []
            for x, y in zip(np.moveaxis(p, -1, 0), np.moveaxis(t, -1, 0)):
                mx, my = window(x), window(y)
                vx, vy, cxy = window(x * x) - mx ** 2, window(y * y) - my ** 2, window(x * y) - mx * my
                ssim_map = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
                channels.append(ssim_map[5:-5, 5:-5].mean())
            scores.append(np.mean(channels))
        return np.array(scores)

    rng = np.random.default_rng(3)
    synthetic = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    synthetic[:, 6:-6, 6:-6] = 128  # all the structure at the border, where the definitions differ
    noisy = np.clip(synthetic + rng.normal(0, 20, synthetic.shape), 0, 255).astype(np.uint8)
    for pred, target in ((noisy, synthetic), _real_pair(media_dir)):
        assert np.allclose(metrics.ssim(pred, target), reference(pred, target), atol=1e-4, rtol=0)
