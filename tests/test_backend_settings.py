"""Each backend declares the animate settings it reads; one it does not read is refused, in a sweep
config, a jobs file's column and a command-line flag, instead of being silently ignored (in a sweep,
at the cost of a run that repeats another)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.jobs.config.animate import OPERATIONAL_FIELDS, PER_JOB_FIELDS, PIPELINE_FIELDS, AnimateConfig
from portraitflow.models.animators.registry import animator_class, backend_settings, identity_notice
from portraitflow.operators.generation_jobs import Job
from portraitflow.operators.generation_results import plan_rows
from portraitflow.jobs.sweep_spec import config_settings


def test_every_animate_setting_is_read_by_every_backend_or_declared_by_exactly_one() -> None:
    from portraitflow.models.animators.warp import DEFAULT_PARAMS
    from portraitflow.models.hunyuan.pipeline import SamplingSettings

    warp, hunyuan = animator_class("warp").params, animator_class("hunyuan").params
    declared = [*PIPELINE_FIELDS, *warp, *hunyuan]
    assert sorted(declared) == sorted(AnimateConfig.model_fields)  # each field once: no gaps, no overlaps
    assert set(warp) == set(DEFAULT_PARAMS)  # what WarpAnimator.animate reads
    sampling = {f.name for f in dataclasses.fields(SamplingSettings)}
    assert set(hunyuan) & set(PER_JOB_FIELDS) <= sampling  # HunyuanAnimator._settings reads only these
    assert set(OPERATIONAL_FIELDS) < set(AnimateConfig.model_fields)
    assert {"motion", "pose_multiplier", "expression_multiplier"}.isdisjoint(backend_settings("hunyuan"))
    assert {"seed", "num_steps", "appearance_scale", "motion_scale", "weights"}.isdisjoint(backend_settings("warp"))


@pytest.mark.parametrize("backend, params, unused", [
    ("warp", {"backend": "warp", "seed": 3}, "seed"),
    ("warp", {"backend": "warp", "num_steps": 4, "appearance_scale": 1.5}, "appearance_scale, num_steps"),
    ("warp", {"backend": "warp", "weights": "/w"}, "weights"),
    ("warp", {"backend": "auto", "motion_scale": 1.0}, "motion_scale"),  # auto without weights is warp
    ("hunyuan", {"backend": "hunyuan", "weights": "tiny", "pose_multiplier": 0.5}, "pose_multiplier"),
    ("hunyuan", {"backend": "hunyuan", "weights": "tiny", "motion": "absolute"}, "motion"),
    ("hunyuan", {"backend": "auto", "weights": "tiny", "expression_multiplier": 2.0}, "expression_multiplier"),
    ("still", {"backend": "still", "pose_multiplier": 0.5, "seed": 1}, "pose_multiplier, seed"),
])
def test_a_sweep_config_refuses_a_param_its_backend_does_not_read(backend: str, params: dict, unused: str) -> None:
    with pytest.raises(ValueError, match=rf"backend {backend} does not use {unused}: {backend} reads"):
        config_settings(params, load_config(None, []))


def test_a_sweep_config_takes_its_backends_own_params_and_every_backends() -> None:
    cfg = load_config(None, [])
    warp = config_settings({"backend": "warp", "pose_multiplier": 0.5, "motion": "absolute", "crf": 20}, cfg)
    assert (warp.pose_multiplier, warp.motion, warp.crf) == (0.5, "absolute", 20)
    hunyuan = config_settings({"backend": "hunyuan", "weights": "tiny", "seed": 1, "num_steps": 3, "size": 256}, cfg)
    assert (hunyuan.seed, hunyuan.num_steps, hunyuan.size) == (1, 3, 256)


def test_the_still_baseline_is_an_animator_that_repeats_the_reference_crop() -> None:
    """`still` is chosen like any backend and reads no setting of its own: every driving frame shows
    the prepared crop unchanged, so the flow frames, encodes, resumes and quarantines it like the others."""
    import numpy as np

    from portraitflow.models.animators.base import DrivingWindow, ReferenceInput
    from portraitflow.models.animators.registry import create_animator

    crop = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    reference = ReferenceInput(crop, np.zeros((5, 2)), np.zeros((68, 2)), np.zeros(3), np.zeros((112, 112, 3), np.uint8))
    windows = [DrivingWindow(start, np.zeros((n, 8, 8, 3), np.uint8), np.zeros((n, 5, 2)), np.zeros((n, 68, 2)),
                             np.zeros((n, 3))) for start, n in ((0, 3), (3, 2))]
    animator = create_animator("still", AnimateConfig(backend="still"))
    frames = list(animator.animate(reference, iter(windows), {"paste_back": False}))
    assert [len(f) for f in frames] == [3, 2] and all((f == crop).all() for f in frames)
    assert animator.describe(reference) == {"animator": "still"} and backend_settings("still") == set(PIPELINE_FIELDS)


def test_a_job_column_its_backend_does_not_read_fails_that_job(tmp_path: Path) -> None:
    jobs = [Job("motion", "a.png", "b.mp4", {"motion": "absolute"}), Job("seed", "a.png", "b.mp4", {"seed": 5}),
            Job("both", "a.png", "b.mp4", {"paste_back": True})]
    warp = plan_rows(jobs, tmp_path, "warp", AnimateConfig(), resume=True)
    assert [r["status"] for r in warp] == ["pending", "failed", "pending"]
    assert warp[1]["reason"].startswith("backend warp does not use seed: warp reads motion")
    hunyuan = plan_rows(jobs, tmp_path, "hunyuan", AnimateConfig(weights="tiny"), resume=True)
    assert [r["status"] for r in hunyuan] == ["failed", "pending", "pending"]
    assert hunyuan[0]["reason"].startswith("backend hunyuan does not use motion: hunyuan reads weights")


@pytest.mark.parametrize("flags, refused", [
    (["--weights", "tiny", "--motion", "absolute"], "motion"),
    (["--weights", "tiny", "--pose-multiplier", "0.5", "--expression-multiplier", "2"],
     "expression_multiplier, pose_multiplier"),
    (["--backend", "warp", "--set", "animate.seed=3"], "seed"),
    (["--backend", "warp", "--weights", "tiny", "--gpus", "2"], "gpus, weights"),
    (["--set", "animate.compile_mode=reduce-overhead"], "compile_mode"),
    (["--set", "animate.num_steps=4"], "num_steps"),
    (["--backend", "warp", "--motion", "absolute", "--set", "animate.crf=20"], None),
    (["--weights", "tiny", "--set", "animate.seed=3", "--paste-back"], None),
])
def test_the_command_line_refuses_job_options_the_backend_does_not_read(
        flags: list[str], refused: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app
    from portraitflow.jobs import generation

    calls = []
    monkeypatch.setattr(generation, "run_generation", lambda jobs, out, cfg, resume=True: calls.append(cfg) or
                        pd.DataFrame({"job_id": [], "status": [], "reason": []}))
    for name in ("a.png", "b.mp4"):  # the flags refuse a path that is not there
        (tmp_path / name).touch()
    pair = ["--ref", str(tmp_path / "a.png"), "--driving", str(tmp_path / "b.mp4"), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["animate", *pair, *flags], env={"COLUMNS": "400"})
    if refused is None:
        assert result.exit_code == 0 and len(calls) == 1, result.output
    else:
        assert result.exit_code == 2 and f"does not use {refused}:" in result.output and not calls, result.output
        assert "Traceback" not in result.output


def test_hunyuan_neither_reads_nor_is_named_by_the_drivers_smoothing() -> None:
    """HunyuanPortrait reads the keypoints as detected: a sweep over `smooth_sigma` would repeat its
    GPU jobs, and a new value re-render its videos unchanged."""
    from portraitflow.models.animators.registry import check_settings
    from portraitflow.operators.generation_jobs import output_settings

    cfg = load_config(None, []).animate
    assert "smooth_sigma" in backend_settings("warp") and "smooth_sigma" not in backend_settings("hunyuan")
    assert "smooth_sigma" not in output_settings("hunyuan", cfg) and "smooth_sigma" in output_settings("warp", cfg)
    with pytest.raises(ValueError, match="backend hunyuan does not use smooth_sigma"):
        check_settings("hunyuan", ["smooth_sigma"])


def test_hunyuan_weights_without_arcface_are_said_before_the_run(tmp_path: Path) -> None:
    """Without `arcface.onnx` the identity adapter got zeros from the 128-d default recognisers, said
    only in each job's `model` record."""
    notice = identity_notice("hunyuan", AnimateConfig(weights=str(tmp_path)), "opencv")
    assert notice is not None and f"{tmp_path} holds no arcface.onnx" in notice and "opencv gives 128-d" in notice
    assert "only with an ArcFace pack" in identity_notice("hunyuan", AnimateConfig(weights=str(tmp_path)), "insightface")
    (tmp_path / "arcface.onnx").write_bytes(b"")
    assert identity_notice("hunyuan", AnimateConfig(weights=str(tmp_path)), "opencv") is None
    assert identity_notice("hunyuan", AnimateConfig(weights="tiny"), "opencv") is None  # random modules: plumbing
    assert identity_notice("warp", AnimateConfig(), "opencv") is None
