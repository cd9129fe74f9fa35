"""Output names cover every setting that changes a video, so resume never takes a video made with
other settings for a finished job; settings that only say where and how fast jobs run stay out."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from portraitflow.jobs.config.animate import OPERATIONAL_FIELDS, AnimateConfig
from portraitflow.models.animators.registry import backend_settings
from portraitflow.operators.generation_jobs import Job
from portraitflow.operators.generation_results import plan_rows

#: another value of each setting, for a config to differ from the default in it
OTHER_VALUES = {
    "size": 256, "window": 10, "paste_back": True, "feather": 0.2, "min_face_fraction": 0.3, "smooth_sigma": 0.0,
    "crf": 23, "motion": "absolute", "pose_multiplier": 0.5, "expression_multiplier": 2.0, "seed": 1, "num_steps": 3,
    "appearance_scale": 1.5, "motion_scale": 1.5, "actors": 3, "cpus_per_actor": 2.0, "gpus": 0, "compile_mode": None,
    "windows_per_call": 2, "preview_jobs": 1, "preview_frames": 2, "experiment": "other", "min_face_px": 32,
    "max_output_side": 1024,
}
#: settings in the names of only the outputs they change (the test's job, crop-only, is not one)
NAMED_WHERE_THEY_APPLY = {"max_output_side"}
BASE = {"warp": {"backend": "warp"}, "hunyuan": {"backend": "hunyuan", "weights": "tiny"}, "still": {"backend": "still"}}


def _name(tmp_path: Path, backend: str, **settings) -> str:
    [row] = plan_rows([Job("j", "a.png", "b.mp4")], tmp_path, backend, AnimateConfig(**{**BASE[backend], **settings}),
                      resume=True)
    assert row["status"] == "pending", row["reason"]
    return Path(row["output"]).name


@pytest.mark.parametrize("backend", ["warp", "hunyuan", "still"])
def test_every_setting_a_backend_reads_changes_the_name_unless_operational(tmp_path: Path, backend: str) -> None:
    read = backend_settings(backend) - {"backend", "weights"}
    assert read <= set(OTHER_VALUES)  # a new setting needs its value here, and a decision: operational or not
    default = _name(tmp_path, backend)
    for field in sorted(read):
        changed = _name(tmp_path, backend, **{field: OTHER_VALUES[field]})
        assert (changed == default) == (field in OPERATIONAL_FIELDS or field in NAMED_WHERE_THEY_APPLY), field


def test_a_rerun_with_other_settings_does_not_skip_the_old_output(tmp_path: Path) -> None:
    from portraitflow.operators.video_writer import write_h264

    jobs = [Job("j", "a.png", "b.mp4")]
    [first] = plan_rows(jobs, tmp_path, "warp", AnimateConfig(backend="warp"), resume=True)
    write_h264(first["output"], [np.zeros((4, 32, 32, 3), np.uint8)], fps=10)
    assert plan_rows(jobs, tmp_path, "warp", AnimateConfig(backend="warp"), resume=True)[0]["status"] == "skipped"
    for change in ({"feather": 0.3, "paste_back": True}, {"crf": 30}, {"smooth_sigma": 2.0}):
        [again] = plan_rows(jobs, tmp_path, "warp", AnimateConfig(backend="warp", **change), resume=True)
        assert again["status"] == "pending" and again["output"] != first["output"], change
    # how the frames are batched and which jobs run leave the video as it is: lowering `window`,
    # what the memory message advises, re-rendered a finished batch byte for byte
    for change in ({"actors": 4, "experiment": "e"}, {"window": 5}, {"min_face_fraction": 0.2}):
        same = plan_rows(jobs, tmp_path, "warp", AnimateConfig(backend="warp", **change), resume=True)
        assert same[0]["status"] == "skipped", change


def test_hunyuan_names_follow_what_the_weights_folder_holds_not_where_it_is(tmp_path: Path) -> None:
    from portraitflow.operators.generation_jobs import output_settings

    weights = tmp_path / "weights"
    (weights / "hyportrait").mkdir(parents=True)
    (weights / "hyportrait" / "unet.pth").write_bytes(bytes(range(256)) * 1024)  # 256 KiB
    (weights / "unet").mkdir()
    (weights / "unet" / "config.json").write_text('{"in_channels": 8}')
    name = _name(tmp_path / "out", "hunyuan", weights=str(weights))
    assert output_settings("hunyuan", AnimateConfig(weights=str(weights)))["weights"].startswith("sha256:")
    copy = tmp_path / "elsewhere" / "weights"
    shutil.copytree(weights, copy)
    (copy / ".partial").mkdir()  # a conversion under way, not weights
    (copy / ".partial" / "unet.safetensors").write_bytes(b"half written")
    assert _name(tmp_path / "out", "hunyuan", weights=str(copy)) == name
    retrained = bytearray((weights / "hyportrait" / "unet.pth").read_bytes())
    retrained[-1] ^= 0xFF  # other weights of the same size, in the same folder
    (weights / "hyportrait" / "unet.pth").write_bytes(bytes(retrained))
    assert _name(tmp_path / "out", "hunyuan", weights=str(weights)) != name
    (copy / "unet" / "config.json").write_text('{"in_channels": 9}')
    assert _name(tmp_path / "out", "hunyuan", weights=str(copy)) not in (name, _name(tmp_path / "out", "hunyuan",
                                                                                    weights=str(weights)))


def test_face_settings_but_threads_change_the_names(tmp_path: Path) -> None:
    """The face layer finds the crop and the motion, so its settings change the video; threads do not."""
    from portraitflow.jobs.config.face import FaceConfig

    def name(**face) -> str:
        [row] = plan_rows([Job("j", "a.png", "b.mp4")], tmp_path, "warp", AnimateConfig(backend="warp"),
                          resume=True, face=FaceConfig(**face))
        return row["output"]

    assert name() == name(num_threads=3) != name(det_score_threshold=0.8) != name(det_size=320)


def test_the_output_side_cap_names_only_the_outputs_it_scales(tmp_path: Path) -> None:
    """Outputs the cap leaves alone (a crop, a portrait within it) keep the names they had without it."""
    from PIL import Image

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (300, 200)).save(small)
    Image.new("RGB", (200, 3000)).save(large)

    def name(ref: Path, paste_back: bool, cap: int) -> str:
        [row] = plan_rows([Job("j", str(ref), "b.mp4", {"paste_back": paste_back})], tmp_path, "warp",
                          AnimateConfig(backend="warp", max_output_side=cap), resume=True)
        return Path(row["output"]).name

    for ref, paste_back in ((small, True), (large, False)):
        assert name(ref, paste_back, 2048) == name(ref, paste_back, 1024) == name(ref, paste_back, 0), ref
    assert len({name(large, True, cap) for cap in (2048, 1024, 0)}) == 3
    assert name(large, True, 3000) == name(large, True, 0)  # the portrait fits: its own size, its old name
    assert name(small, True, 256) != name(small, True, 0)
