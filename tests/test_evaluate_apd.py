"""APD in cross-reenactment compares head-pose changes, so the portrait's own pose (not the
driver's) never counts as pose error; self-reenactment keeps comparing poses directly."""
from __future__ import annotations

import numpy as np

from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.operators import metrics

FRAMES = 20


def _driver() -> np.ndarray:
    """(T, 3) yaw, pitch, roll in degrees: a head nodding and turning, roll crossing ±180."""
    t = np.linspace(0, 2 * np.pi, FRAMES)
    return np.stack([10 * np.sin(t), 6 * np.sin(2 * t), 178 + 5 * np.sin(t)], axis=1)


def _wrap(angles: np.ndarray) -> np.ndarray:
    return (angles + 180.0) % 360.0 - 180.0


def _apd(pred: np.ndarray, target: np.ndarray, protocol: str) -> float:
    """The per-video APD the evaluator reports for these poses."""
    from portraitflow.operators.evaluate_video import JobEvaluator

    class Analyzer:
        name, embedding_dim = "fake", 4

    count = len(pred)
    pixel = {"frame": np.arange(count), "luma": np.full(count, 100.0), "driver_luma": np.full(count, 100.0)}
    faces = {"detected": np.ones(count, bool), "embedding": np.ones((count, 4)),
             "landmarks": np.random.default_rng(0).uniform(0, 100, (count, 68, 2))}
    table = JobEvaluator(Analyzer(), EvaluateConfig(protocol=protocol))._frame_metrics(
        pixel, {**faces, "pose": pred}, {**faces, "pose": target}, np.ones(4), jitter_window=25)
    return metrics.nanmean(table["apd"])


def test_cross_apd_scores_pose_changes_not_the_portraits_own_pose() -> None:
    """A portrait turned 25° away that follows the driver's head motion exactly scored 13.3° (the
    constant offset), worse than a still portrait that does not move at all; now 0."""
    driver = _driver()
    follows = _wrap(driver + [25.0, -10.0, 5.0])  # relative motion from the portrait's own pose
    still = np.tile(_wrap(driver[0] + [25.0, -10.0, 5.0]), (FRAMES, 1))  # never moves
    assert _apd(follows, driver, "cross") < 1e-9
    assert _apd(still, driver, "cross") > 3.0  # the driver's mean turn from its first frame
    half = _wrap(driver[0] + 0.5 * _wrap(driver - driver[0]) + [25.0, -10.0, 5.0])  # turns half as far
    assert 0.4 * _apd(still, driver, "cross") < _apd(half, driver, "cross") < 0.6 * _apd(still, driver, "cross")
    assert abs(_apd(follows, driver, "self") - 40 / 3) < 1e-9  # self: the driver is the truth, offset counts


def test_cross_apd_is_measured_from_the_first_frame_both_show_a_face() -> None:
    driver = _driver()
    output = _wrap(driver - [30.0, 0.0, 0.0])
    output[:2] = np.nan  # no face on the first two frames: the anchor is frame 2 for both videos
    values = metrics.apd_change(output, driver)
    assert np.isnan(values[:3]).all() and np.allclose(values[3:], 0.0, atol=1e-9)
    assert np.isnan(metrics.apd_change(output[:3], driver[:3])).all()  # one shared face frame: no change
    output[7] = np.nan
    assert np.isnan(metrics.apd_change(output, driver)[7])
