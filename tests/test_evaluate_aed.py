"""AED in cross-reenactment compares expression changes, so two people's face shapes never count
as expression error; self-reenactment keeps comparing shapes directly. Synthetic landmarks: two
face shapes, one expression (mouth opening, brows raised) played over time, under moving poses."""
from __future__ import annotations

import numpy as np
import pytest

from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.operators import metrics

FRAMES = 12
MOUTH, BROWS = np.arange(48, 68), np.arange(17, 27)


def _face(person: int) -> np.ndarray:
    """68 points of a face shape about 100 px wide: one layout, each person with their own
    proportions (width, length) and features moved by up to 6% of the face's width."""
    layout = np.random.default_rng(0).uniform([-50, -60], [50, 60], (68, 2))
    rng = np.random.default_rng(person)
    return layout * rng.uniform(0.8, 1.2, 2) + rng.uniform(-6, 6, (68, 2))


def _video(face: np.ndarray, opening: np.ndarray, turn_deg: float, zoom: float,
           shift: tuple[float, float]) -> np.ndarray:
    """(T, 68, 2) landmarks: `face` with the mouth opened and the brows raised by `opening` (face
    fractions per frame), then turned, zoomed and moved a little more each frame (a pose change)."""
    width = np.ptp(face[:, 0])
    out = np.repeat(face[None], len(opening), axis=0).copy()
    out[:, MOUTH[MOUTH >= 57], 1] += opening[:, None] * width * 0.3  # lower lip drops
    out[:, BROWS, 1] -= opening[:, None] * width * 0.08
    for t in range(len(opening)):
        angle = np.radians(turn_deg * (1 + 0.1 * t))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        out[t] = out[t] @ rotation.T * zoom * (1 + 0.01 * t) + np.asarray(shift) + t
    return out


def _cross_aed(pred: np.ndarray, target: np.ndarray, protocol: str = "cross") -> float:
    """The per-video AED the evaluator reports for these landmarks."""
    from portraitflow.operators.evaluate_video import JobEvaluator

    class Analyzer:
        name, embedding_dim = "fake", 4

    count = len(pred)
    pixel = {"frame": np.arange(count), "luma": np.full(count, 100.0), "driver_luma": np.full(count, 100.0)}
    faces = {"detected": np.ones(count, bool), "embedding": np.ones((count, 4)), "pose": np.zeros((count, 3))}
    table = JobEvaluator(Analyzer(), EvaluateConfig(protocol=protocol))._frame_metrics(
        pixel, {**faces, "landmarks": pred}, {**faces, "landmarks": target}, np.ones(4), jitter_window=25)
    return metrics.nanmean(table["aed"])


def test_cross_aed_scores_expression_changes_not_the_two_face_shapes() -> None:
    ramp, still = np.linspace(0.0, 0.5, FRAMES), np.zeros(FRAMES)
    driver = _video(_face(1), ramp, turn_deg=5, zoom=1.0, shift=(300, 200))
    follows = _video(_face(2), ramp, turn_deg=-8, zoom=2.3, shift=(120, 90))  # another person, same expression
    frozen = _video(_face(2), still, turn_deg=-8, zoom=2.3, shift=(120, 90))  # another person, no expression
    good, bad = _cross_aed(follows, driver), _cross_aed(frozen, driver)
    assert good < 0.25 * bad  # shapes compared directly, identity dominates: 0.018 against 0.019
    # the driver against itself under another pose: 0, whatever the pose
    assert _cross_aed(_video(_face(1), ramp, turn_deg=20, zoom=0.5, shift=(0, 0)), driver) < 1e-9
    # one person's real expression change scores worse than two people both keeping still
    assert _cross_aed(_video(_face(2), still, 0, 1, (0, 0)), _video(_face(1), still, 0, 1, (0, 0))) < 1e-9 < bad


def test_cross_aed_is_measured_from_the_first_frame_both_show_a_face() -> None:
    ramp = np.linspace(0.0, 0.5, FRAMES)
    driver = _video(_face(1), ramp, turn_deg=0, zoom=1.0, shift=(0, 0))
    output, frozen = (_video(_face(2), opening, turn_deg=0, zoom=1.0, shift=(0, 0))
                      for opening in (ramp, np.full(FRAMES, ramp[2])))
    output[:2] = frozen[:2] = np.nan  # no face on the first two frames: the anchor is frame 2 for both videos
    values = metrics.aed_change(output, driver)
    assert np.isnan(values[:3]).all() and np.isfinite(values[3:]).all()
    assert values[3:].mean() < 0.25 * metrics.aed_change(frozen, driver)[3:].mean()  # held at frame 2's opening
    assert np.isnan(metrics.aed_change(output[:3], driver[:3])).all()  # one shared face frame: nothing changes


def test_self_aed_still_compares_shapes_directly() -> None:
    """One person in self-reenactment: a frozen face that should have opened its mouth is scored on
    each frame's shape against the clip's, as before."""
    ramp = np.linspace(0.0, 0.5, FRAMES)
    clip = _video(_face(1), ramp, turn_deg=0, zoom=1.0, shift=(0, 0))
    opened = _video(_face(1), np.full(FRAMES, 0.5), turn_deg=0, zoom=1.0, shift=(0, 0))
    assert _cross_aed(opened, clip, protocol="self") == pytest.approx(metrics.nanmean(metrics.aed(opened, clip)))
