"""Sweep specs, evaluation datasets, failure rows and the report, on media made by the tests."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.jobs import sweep_spec
from portraitflow.operators import metrics, report
from portraitflow.operators.eval_dataset import DatasetSpec, check_dataset, dataset_jobs


def _spec(**extra) -> sweep_spec.SweepSpec:
    return sweep_spec.SweepSpec.model_validate({"dataset": {"type": "folder", "path": "/data"}, **extra})


def test_grid_and_list_expand_to_distinct_configs_with_stable_hashes() -> None:
    from portraitflow.jobs.config import load_config

    spec = _spec(grid={"backend": ["warp"], "pose_multiplier": [0.5, 1.0], "expression_multiplier": [1.0, 2.0]},
                 configs=[{"backend": "still"}, {"backend": "warp", "pose_multiplier": 0.5, "expression_multiplier": 1.0}])
    configs = sweep_spec.expand_configs(spec)
    assert len(configs) == 5  # 2 x 2 grid + still; the duplicate warp config is dropped
    evaluate, cfg = EvaluateConfig(), load_config(None, [])
    hashes = {sweep_spec.config_hash(c, spec.dataset, evaluate, cfg) for c in configs}
    assert len(hashes) == 5
    first = configs[0]
    assert sweep_spec.config_hash(first, spec.dataset, evaluate, cfg) == sweep_spec.config_hash(
        dict(reversed(list(first.items()))), spec.dataset, evaluate.model_copy(update={"rank_by": "akd"}), cfg)
    changed = [
        sweep_spec.config_hash(first, DatasetSpec(path="/other"), evaluate, cfg),
        sweep_spec.config_hash(first, spec.dataset, evaluate.model_copy(update={"max_seconds": 3.0}), cfg),
        sweep_spec.config_hash(first, spec.dataset, evaluate, load_config(None, ["face.backend=insightface"])),
    ]
    assert sweep_spec.config_hash(first, spec.dataset, evaluate, cfg) not in changed
    assert sweep_spec.config_label({"backend": "warp", "seed": 1, "pose_multiplier": 0.5}) == \
        "warp[pose_multiplier=0.5,seed=1]"
    parallel = spec.model_copy(update={"evaluate": {"max_parallel": 4}})
    assert sweep_spec.sweep_hash(spec, evaluate, cfg) == sweep_spec.sweep_hash(
        parallel, sweep_spec.effective_evaluate(evaluate, parallel), cfg)
    slower = spec.model_copy(update={"evaluate": {"frame_stride": 2}})
    assert sweep_spec.sweep_hash(spec, evaluate, cfg) != sweep_spec.sweep_hash(
        slower, sweep_spec.effective_evaluate(evaluate, slower), cfg)
    with pytest.raises(ValueError, match="backend"):
        sweep_spec.expand_configs(_spec(configs=[{"seed": 1}]))
    with pytest.raises(ValueError, match="no configs"):
        sweep_spec.expand_configs(_spec())


@pytest.mark.parametrize("override, changes", [
    ("animate.crf=30", True), ("animate.feather=0.3", True), ("animate.smooth_sigma=0", True),
    ("animate.min_face_fraction=0.2", True), ("animate.min_face_px=128", True), ("animate.window=10", False),
    ("animate.size=256", True),
    ("animate.motion=absolute", True), ("face.det_size=320", True), ("face.det_score_threshold=0.8", True),
    ("animate.actors=3", False), ("animate.cpus_per_actor=2", False), ("face.num_threads=2", False),
    ("animate.experiment=other", False),
])
def test_settings_under_the_sweep_that_change_outputs_change_both_hashes(override: str, changes: bool) -> None:
    """`-s`/`-c` settings a config does not override reach its outputs: a rerun with other ones must
    not reuse its finished runs; resources never start anything anew."""
    from portraitflow.jobs.config import load_config

    spec = _spec(configs=[{"backend": "warp", "pose_multiplier": 0.5}])
    evaluate, base, other = EvaluateConfig(), load_config(None, []), load_config(None, [override])
    [params] = sweep_spec.expand_configs(spec)
    same_config = sweep_spec.config_hash(params, spec.dataset, evaluate, base) == sweep_spec.config_hash(
        params, spec.dataset, evaluate, other)
    same_sweep = sweep_spec.sweep_hash(spec, evaluate, base) == sweep_spec.sweep_hash(spec, evaluate, other)
    assert same_config == same_sweep == (not changes)


def test_a_still_config_hash_follows_what_it_writes_only_and_hunyuan_its_weights(tmp_path: Path) -> None:
    from portraitflow.jobs.config import load_config

    dataset, evaluate = DatasetSpec(path="/data"), EvaluateConfig()

    def digest(params: dict, *overrides: str) -> str:
        return sweep_spec.config_hash(params, dataset, evaluate, load_config(None, list(overrides)))

    still = {"backend": "still"}
    assert digest(still) == digest(still, "animate.pose_multiplier=2") != digest(still, "animate.size=256")
    assert digest(still) == digest(still, "animate.actors=2") != digest(still, "animate.crf=30")
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "unet.pth").write_bytes(b"first weights")
    hunyuan = {"backend": "hunyuan", "weights": str(weights)}
    first = digest(hunyuan)
    (weights / "unet.pth").write_bytes(b"other weights")
    assert digest(hunyuan) != first


@pytest.mark.parametrize("setting, value, makes_videos", [
    ("pixel_size", 128, False), ("frame_stride", 3, False), ("fid_frames_per_video", 8, False),
    ("fvd_clip_frames", 8, False), ("lpips_onnx", "/nets/lpips.onnx", False),
    ("max_seconds", 3.0, True), ("max_videos", 2, True), ("protocol", "cross", True),
])
def test_a_scoring_setting_changes_the_config_hash_but_not_the_generation_hash(setting: str, value,
                                                                              makes_videos: bool) -> None:
    """The generation hash names the folder of a config's videos: a setting that only changes how they
    are scored must not change it (it made every video again), but must still change the config's
    (its scores). Every evaluate setting that changes numbers is one or the other."""
    from portraitflow.jobs.config import load_config

    params, dataset, cfg = {"backend": "warp"}, DatasetSpec(path="/data"), load_config(None, [])
    base, other = EvaluateConfig(), EvaluateConfig(**{setting: value})
    assert sweep_spec.config_hash(params, dataset, base, cfg) != sweep_spec.config_hash(params, dataset, other, cfg)
    same_videos = sweep_spec.generation_hash(params, dataset, base, cfg) == sweep_spec.generation_hash(
        params, dataset, other, cfg)
    assert same_videos == (not makes_videos)
    assert sweep_spec.generation_hash(params, dataset, base, cfg) != sweep_spec.generation_hash(
        params, dataset, base, load_config(None, ["animate.size=256"]))


def test_the_output_side_cap_makes_other_videos_only_where_they_are_pasted_back() -> None:
    """`max_output_side` scales pasted-back outputs only: a crop-only sweep that changed it made every
    video again."""
    from portraitflow.jobs.config import load_config

    dataset, evaluate = DatasetSpec(path="/data"), EvaluateConfig()

    def videos(params: dict, *overrides: str) -> str:
        return sweep_spec.generation_hash(params, dataset, evaluate, load_config(None, list(overrides)))

    crop, pasted = {"backend": "warp"}, {"backend": "warp", "paste_back": True}
    assert videos(crop) == videos(crop, "animate.max_output_side=1024")
    assert videos(pasted) != videos(pasted, "animate.max_output_side=1024")


def test_learned_metric_networks_are_hashed_by_what_their_files_hold(tmp_path: Path) -> None:
    """`lpips_onnx`, `fid_onnx` and `fvd_onnx` were hashed as paths: another export written to the
    same path reused the old network's scores, and the same file moved scored everything again."""
    from portraitflow.jobs.config import load_config

    params, dataset, cfg = {"backend": "still"}, DatasetSpec(path="/data"), load_config(None, [])

    def digests(field: str, path: Path) -> tuple[str, str]:
        """The config's hash and its sweep's, with `field` naming `path`."""
        evaluate = EvaluateConfig(**{field: str(path)})
        spec = _spec(configs=[params], evaluate={field: str(path)})
        return (sweep_spec.config_hash(params, dataset, evaluate, cfg),
                sweep_spec.sweep_hash(spec, sweep_spec.effective_evaluate(EvaluateConfig(), spec), cfg))

    for field in ("lpips_onnx", "fid_onnx", "fvd_onnx"):
        net, moved = tmp_path / f"{field}.onnx", tmp_path / "moved" / f"{field}.onnx"
        net.write_bytes(b"one export")
        moved.parent.mkdir(exist_ok=True)
        moved.write_bytes(b"one export")
        first = digests(field, net)
        assert digests(field, moved) == first
        net.write_bytes(b"another export")
        assert digests(field, net)[0] != first[0] and digests(field, net)[1] != first[1]


def test_sweep_file_loads_and_overrides_the_evaluate_section(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("name: s\ndataset: {type: jobs, path: jobs.csv}\nconfigs: [{backend: still}]\n"
                    "evaluate: {protocol: cross, max_seconds: 2}\n")
    spec = sweep_spec.load_sweep(path)
    evaluate = sweep_spec.effective_evaluate(EvaluateConfig(rank_by="akd"), spec)
    assert (evaluate.protocol, evaluate.max_seconds, evaluate.rank_by) == ("cross", 2.0, "akd")
    path.write_text("name: s\ndataset: {type: jobs, path: j.csv}\nevaluate: {no_such_field: 1}\nconfigs: [{backend: still}]\n")
    with pytest.raises(ValueError):
        sweep_spec.effective_evaluate(EvaluateConfig(), sweep_spec.load_sweep(path))


def _clip(path: Path, frames: int = 10, shade: int = 0) -> bytes:
    from portraitflow.operators.video_writer import write_h264

    ramp = np.linspace(0, 200, 64, dtype=np.uint8)[None, :, None]
    video = np.stack([np.broadcast_to(ramp, (64, 64, 3)) // 2 + shade + 5 * i for i in range(frames)]).astype(np.uint8)
    write_h264(path, [video], fps=10)
    return path.read_bytes()


def _tar(path: Path, samples: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, data in samples.items():
            for ext, payload in (("mp4", data), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_curated_shards_become_self_and_cross_jobs(tmp_path: Path) -> None:
    curated = tmp_path / "curated"
    _tar(curated / "shards" / "000000.tar", {"clip_a": _clip(tmp_path / "a.mp4"), "clip_b": _clip(tmp_path / "b.mp4", shade=40)})
    _tar(curated / "staging" / "clip_c.tar", {"clip_c": _clip(tmp_path / "c.mp4")})  # not yet in a shard
    spec = DatasetSpec(type="shards", path=str(curated))
    jobs = dataset_jobs(spec, "self", tmp_path / "prepared", max_seconds=0.5)
    assert len(jobs) == 2 and all(j["status"] == "ok" for j in jobs)
    from portraitflow.models.face.images import load_image
    from portraitflow.operators.decode import iter_frame_chunks, probe_video

    for job in jobs:
        assert probe_video(job["driving"]).num_frames == 5  # cut to 0.5 s at 10 fps
        first = next(iter_frame_chunks(job["driving"], 10, chunk_size=1)).frames[0]
        assert np.array_equal(load_image(job["ref"]).rgb, first)  # the reference is the clip's first frame
    again = dataset_jobs(spec, "self", tmp_path / "prepared", max_seconds=0.5)
    assert again == jobs
    cross = dataset_jobs(spec, "cross", tmp_path / "prepared", max_seconds=0.5)
    assert [c["ref"] for c in cross] == [jobs[1]["ref"], jobs[0]["ref"]]


def test_a_bad_video_in_a_folder_is_a_failed_row(tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    _clip(folder / "good.mp4")
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    jobs = dataset_jobs(DatasetSpec(path=str(folder)), "self", tmp_path / "prepared")
    status = {Path(j["source"]).name: (j["status"], j["reason"]) for j in jobs}
    assert status == {"good.mp4": ("ok", None), "broken.mp4": ("failed", "unreadable")}


def test_row_errors_are_clipped_at_a_word_without_decord_stamps() -> None:
    """Evaluation and sweep rows cut errors mid-word at 300 characters and kept decord's wall-clock
    stamps, so one failure read differently in every run; generation rows were already clipped."""
    from portraitflow.operators.probe import error_text

    text = error_text(RuntimeError("[12:05:42] video_reader.cc:86: ERROR " + "opening the file " * 30))
    assert len(text) <= 300 and text.endswith("…") and text[-2] != " " and "[12:05:42]" not in text
    assert text.startswith("RuntimeError: video_reader.cc:86: ERROR opening the file")


def test_jobs_that_cannot_be_scored_get_every_column_and_a_reason(tmp_path: Path) -> None:
    from PIL import Image

    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.operators.evaluate_video import JobEvaluator

    from portraitflow.operators.decode import iter_frame_chunks

    clip = tmp_path / "clip.mp4"
    _clip(clip)
    blank = tmp_path / "blank.png"  # the clip's first frame: a self-protocol reference, with no face in it
    Image.fromarray(next(iter_frame_chunks(str(clip), 10.0, chunk_size=1)).frames[0]).save(blank)
    evaluator = JobEvaluator(create_analyzer(FaceConfig()), EvaluateConfig())
    missing = evaluator.evaluate({"job_id": "a", "ref": str(blank), "driving": str(clip), "output": str(tmp_path / "nope.mp4")}, tmp_path)
    faceless = evaluator.evaluate({"job_id": "b", "ref": str(blank), "driving": str(clip), "output": str(clip)}, tmp_path)
    assert (missing["status"], missing["reason"]) == ("failed", "no_output")
    assert (faceless["status"], faceless["reason"]) == ("failed", "no_reference_face")
    assert list(missing) == evaluator.columns and np.isnan(missing["apd"]) and "csim_opencv" in missing
    broken = evaluator.evaluate({"job_id": "c", "driving": str(clip), "output": str(clip)}, tmp_path)  # no `ref`
    assert (broken["status"], broken["reason"]) == ("failed", "evaluation_error") and "KeyError" in broken["error"]
    cross = JobEvaluator(evaluator.analyzer, EvaluateConfig(protocol="cross"))
    assert {"psnr", "akd"} & set(cross.metric_names) == set() and {"apd", "aed"} <= set(cross.metric_names)


def test_report_ranks_by_metric_direction_and_writes_a_page(tmp_path: Path) -> None:
    summary = pd.DataFrame({"config": ["a", "b", "c"], "apd": [3.0, np.nan, 1.0], "ssim": [0.5, 0.9, 0.7]})
    assert list(report.rank(summary, "apd")["config"]) == ["c", "a", "b"]
    assert list(report.rank(summary, "ssim")["config"]) == ["b", "c", "a"]
    with pytest.raises(ValueError, match="cannot rank"):
        report.rank(summary, "fid")
    # a config that lost the face on a third of its frames scores best on the frames it kept: not first
    covered = summary.assign(detection_rate=[1.0, 0.99, 0.66])
    ranked = report.rank(covered, "apd")
    assert list(ranked["config"]) == ["a", "b", "c"] and list(ranked["full_coverage"]) == [True, True, False]
    assert list(report.rank(covered, "detection_rate")["config"]) == ["a", "b", "c"]
    per_video = pd.DataFrame({"config": ["a", "a", "c", "c"], "job_id": ["x", "y", "x", "y"],
                              "apd": [3.0, 3.5, 1.0, 1.2], "ssim": [0.5, 0.6, 0.7, 0.8]})
    plot = report.metric_plots(per_video, tmp_path / "metrics.png", ["c", "a"])
    assert plot.stat().st_size > 5_000
    paired = report.paired_plot(per_video, "apd", ["c", "a"], tmp_path / "paired.png")
    assert paired is not None and paired.stat().st_size > 5_000
    assert report.paired_plot(per_video[per_video["config"] == "a"], "apd", ["a"], tmp_path / "one.png") is None
    page = report.write_html(tmp_path, "t", report.rank(summary, "apd"), "apd",
                             [("Metrics across configs", plot), ("apd per video", paired)], [], ["fid skipped: x"], per_video)
    text = page.read_text()
    assert text.index("<td>c</td>") < text.index("<td>a</td>") < text.index("<td>b</td>")
    assert "src='metrics.png'" in text and "src='paired.png'" in text and "fid skipped" in text


def test_the_still_baseline_sets_the_coverage_bar_too() -> None:
    """The bar was the best *animating* config's detection rate: two warps that lost the face on a
    tenth of the frames kept full coverage and outranked still on AKD measured over the easier
    frames they kept. Still keeps the face; an animator has to beat it on the same frames."""
    summary = pd.DataFrame({"config": ["warpA", "warpB", "still"], "backend": ["warp", "warp", "still"],
                            "akd": [0.010, 0.012, 0.017], "detection_rate": [0.90, 0.91, 1.00]})
    ranked = report.rank(summary, "akd")
    assert list(ranked["config"]) == ["still", "warpA", "warpB"]
    assert list(ranked["full_coverage"]) == [True, False, False]
    kept = report.rank(summary.assign(detection_rate=[0.99, 0.91, 1.00]), "akd")
    assert list(kept["config"]) == ["warpA", "still", "warpB"]  # within the tolerance of still's: ranked on akd


def test_the_detection_rate_counts_only_the_frames_where_the_driver_shows_a_face() -> None:
    """With still setting the bar, an output that follows a driver into profile (its face lost there
    too) must keep full coverage: the rate is over the driver's face frames, and a driver without
    one anywhere leaves it undefined rather than 0."""
    from portraitflow.operators.evaluate_video import JobEvaluator

    class Analyzer:
        name, embedding_dim = "fake", 4

    count = 10
    driver_face = np.arange(count) < 7  # the driver turns away for the last three frames
    pixel = {"frame": np.arange(count), "luma": np.full(count, 100.0), "driver_luma": np.full(count, 100.0)}
    landmarks = np.random.default_rng(0).uniform(0, 100, (count, 68, 2))

    def rate(out_face: np.ndarray, drv_face: np.ndarray) -> float:
        def faces(seen: np.ndarray) -> dict[str, np.ndarray]:
            return {"detected": seen, "embedding": np.ones((count, 4)), "pose": np.zeros((count, 3)),
                    "landmarks": np.where(seen[:, None, None], landmarks, np.nan)}
        table = JobEvaluator(Analyzer(), EvaluateConfig(protocol="cross"))._frame_metrics(
            pixel, faces(out_face), faces(drv_face), np.ones(4), jitter_window=25)
        return metrics.nanmean(table["face_detected"])

    assert rate(driver_face, driver_face) == 1.0  # follows the driver into profile: nothing lost
    assert rate(np.ones(count, bool), driver_face) == 1.0  # still: keeps the face throughout
    assert rate(driver_face & (np.arange(count) != 3), driver_face) == pytest.approx(6 / 7)  # lost one of 7
    assert np.isnan(rate(np.ones(count, bool), np.zeros(count, bool)))


def test_parameter_plots_draw_each_numeric_param_of_the_grid(tmp_path: Path) -> None:
    summary = pd.DataFrame({"config": ["w1", "w2", "w3", "h1", "s"], "backend": ["warp"] * 3 + ["hunyuan", "still"],
                            "scale": [1.0, 2.0, 3.0, 1.0, None], "flip": [True, False, True, None, None]})
    assert report.numeric_params(summary, ["backend", "scale", "flip"]) == ["scale"]
    per_video = pd.DataFrame({"config": [c for c in summary["config"] for _ in range(2)],
                              "job_id": ["x", "y"] * 5, "apd": np.arange(10.0), "ssim": np.linspace(0, 1, 10)})
    plot = report.parameter_plots(summary, per_video, ["backend", "scale", "flip"], tmp_path / "parameters.png")
    assert plot is not None and plot.stat().st_size > 5_000
    assert report.parameter_plots(summary, per_video, ["backend", "flip"], tmp_path / "none.png") is None
    # Student's t: 12.7 standard errors for 2 videos, 2.78 for 5; no interval for one
    half = report._interval(np.array([1.0, 1.0, 1.0]), np.array([2, 5, 1]))
    np.testing.assert_allclose(half[:2], [12.706 / np.sqrt(2), 2.776 / np.sqrt(5)], rtol=1e-3)
    assert np.isnan(half[2])


def test_a_jobs_dataset_is_read_as_animate_reads_it_and_cut_to_max_seconds(tmp_path: Path) -> None:
    from portraitflow.operators.decode import probe_video

    data = tmp_path / "data"
    data.mkdir()
    _clip(data / "talk.mp4", frames=10)  # 1 s at 10 fps
    (data / "face.png").write_bytes(b"")
    (data / "jobs.csv").write_text("ref,driving\nface.png,talk.mp4\nface.png,missing.mp4\n")  # paths from the file
    rows = dataset_jobs(DatasetSpec(type="jobs", path=str(data / "jobs.csv")), "cross", tmp_path / "prepared", max_seconds=0.5)
    assert [r["job_id"] for r in rows] == ["face__talk", "face__missing"]
    assert rows[0]["status"] == "ok" and rows[0]["ref"] == str(data / "face.png")
    assert rows[0]["driving"].startswith(str(tmp_path / "prepared")) and probe_video(rows[0]["driving"]).duration_s <= 0.6
    assert not list((tmp_path / "prepared").glob("*.ref.png"))  # the job's own portrait is the reference
    assert rows[1]["status"] == "failed" and rows[1]["reason"] == "unreadable"
    (data / "params.csv").write_text("ref,driving,seed\nface.png,talk.mp4,3\n")
    with pytest.raises(ValueError, match=r"per-job params \(column\(s\) seed\)"):
        dataset_jobs(DatasetSpec(type="jobs", path=str(data / "params.csv")), "cross", tmp_path / "prepared")
    # and before anything starts: it was a traceback after Ray and a FAILED parent run
    with pytest.raises(ValueError, match=r"per-job params \(column\(s\) seed\)"):
        check_dataset(DatasetSpec(type="jobs", path=str(data / "params.csv")))


def test_jobs_dataset_ids_are_unique_so_each_job_keeps_its_own_ref_and_driver(tmp_path: Path) -> None:
    """`s1/ref.png + s1/drive.mp4` and `s2/...` derive one id: each job gets its own (hashed) id,
    portrait and clip; a `job_id` given twice refuses the dataset before any clip is cut."""
    data = tmp_path / "data"
    for session, shade in (("s1", 0), ("s2", 40)):
        (data / session).mkdir(parents=True)
        _clip(data / session / "drive.mp4", shade=shade)
        (data / session / "ref.png").write_bytes(b"")
    (data / "jobs.csv").write_text("ref,driving\ns1/ref.png,s1/drive.mp4\ns2/ref.png,s2/drive.mp4\n")
    rows = dataset_jobs(DatasetSpec(type="jobs", path=str(data / "jobs.csv")), "cross", tmp_path / "prepared")
    assert len({r["job_id"] for r in rows}) == 2 and all(r["job_id"].startswith("ref__drive-") for r in rows)
    assert [r["ref"] for r in rows] == [str(data / "s1/ref.png"), str(data / "s2/ref.png")]
    assert [r["source"] for r in rows] == [str(data / "s1/drive.mp4"), str(data / "s2/drive.mp4")]
    assert rows[0]["driving"] != rows[1]["driving"]
    (data / "twice.csv").write_text("job_id,ref,driving\nj,s1/ref.png,s1/drive.mp4\nj,s2/ref.png,s2/drive.mp4\n")
    with pytest.raises(ValueError, match="job_id 'j'"):
        dataset_jobs(DatasetSpec(type="jobs", path=str(data / "twice.csv")), "cross", tmp_path / "again")
    assert not list((tmp_path / "again").glob("*.mp4"))


def test_evaluate_refuses_results_or_jobs_whose_ids_do_not_match_one_to_one(tmp_path: Path) -> None:
    """Repeated ids in RESULTS or --jobs, or ids --jobs lacks, are refused before anything is scored
    (a merge would give rows another job's ref and driving)."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    results = tmp_path / "results.parquet"
    pd.DataFrame({"job_id": ["a", "a"], "status": ["ok", "ok"], "output": ["1.mp4", "2.mp4"]}).to_parquet(results)
    args = ["evaluate", str(results), "--out", str(tmp_path / "eval"), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "'a'" in refused.output and "Traceback" not in refused.output
    pd.DataFrame({"job_id": ["a", "b"], "status": ["ok", "ok"], "output": ["1.mp4", "2.mp4"]}).to_parquet(results)
    (tmp_path / "twice.csv").write_text("job_id,ref,driving\na,r.png,d.mp4\na,q.png,e.mp4\n")
    refused = CliRunner().invoke(app, [*args, "--jobs", str(tmp_path / "twice.csv")])
    assert refused.exit_code == 2 and "'a'" in refused.output and "Traceback" not in refused.output
    (tmp_path / "other.csv").write_text("job_id,ref,driving\na,r.png,d.mp4\nc,q.png,e.mp4\n")
    refused = CliRunner().invoke(app, [*args, "--jobs", str(tmp_path / "other.csv")])
    assert refused.exit_code == 2 and "'b'" in refused.output and "Traceback" not in refused.output
    pd.DataFrame({"job_id": [], "ref": [], "driving": [], "output": []}).to_parquet(results)
    refused = CliRunner().invoke(app, args)  # Ray started and a FAILED run was recorded for no job
    assert refused.exit_code == 2 and "has no row: nothing to score" in refused.output
    assert not (tmp_path / "eval").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("suffix, ids", [(".csv", ["007", "NA"]), (".jsonl", ["007", "12"])])
def test_evaluate_reads_job_ids_of_a_text_results_file_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               suffix: str, ids: list[str]) -> None:
    """`007` stays `007` (not 7) and `NA` stays `NA` (not missing): ids must match the jobs file's
    and name the job's files."""
    from typer.testing import CliRunner

    from portraitflow.jobs import sweep
    from portraitflow.jobs.cli import app

    results = tmp_path / f"results{suffix}"
    rows = [{"job_id": job_id, "output": f"{job_id}.mp4", "status": "ok"} for job_id in ids]
    if suffix == ".csv":
        pd.DataFrame(rows).to_csv(results, index=False)
    else:
        pd.DataFrame(rows).to_json(results, orient="records", lines=True)
    (tmp_path / "jobs.csv").write_text(f"job_id,ref,driving\n{ids[0]},r.png,d.mp4\n{ids[1]},q.png,e.mp4\n")
    scored = []

    def evaluate_results(table: pd.DataFrame, cfg, out_dir, *_, name: str, **__) -> str:
        scored.append(table)
        assert name == f"{tmp_path.name}/{results.name}"  # two tables of one folder were two runs of one name
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        table.assign(status="ok").to_parquet(Path(out_dir) / "per_video.parquet")  # as the real one writes it
        return "run"

    monkeypatch.setattr(sweep, "evaluate_results", evaluate_results)
    monkeypatch.setattr(sweep, "report_from_run", lambda *_: tmp_path / "report.html")
    args = ["evaluate", str(results), "--out", str(tmp_path / "eval"), "--jobs", str(tmp_path / "jobs.csv")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert scored[0]["job_id"].tolist() == ids
    assert scored[0]["ref"].tolist() == [str(tmp_path / "r.png"), str(tmp_path / "q.png")]


def test_a_still_config_refuses_params_it_does_not_take_before_any_work(tmp_path: Path) -> None:
    """`still` reads only what every backend reads (framing such as `size`, `paste_back`); a typo or
    a motion setting is refused naming the key, as for every backend, not ignored."""
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.sweep import generate_outputs
    from portraitflow.jobs.sweep_spec import config_settings

    cfg = load_config(None, [])
    settings = config_settings({"backend": "still", "size": 256, "paste_back": True}, cfg)
    assert (settings.size, settings.paste_back) == (256, True)
    with pytest.raises(ValueError, match="pose_multipler"):
        config_settings({"backend": "still", "pose_multipler": 0.5}, cfg)
    with pytest.raises(ValueError, match="backend still does not use pose_multiplier: still reads only the settings"):
        config_settings({"backend": "still", "pose_multiplier": 0.5}, cfg)
    with pytest.raises(ValueError, match=r"^size: Input should be a valid integer, unable to parse string as an "
                       r"integer \(got 'big'\)$"):  # one line: it lands in summary.csv and the run's error tag
        config_settings({"backend": "still", "size": "big"}, cfg)
    with pytest.raises(ValueError, match="pose_multipler"):
        config_settings({"backend": "warp", "pose_multipler": 0.5}, cfg)
    job = {"job_id": "j", "ref": str(tmp_path / "r.png"), "driving": str(tmp_path / "d.mp4")}
    with pytest.raises(ValueError, match="pose_multipler"):
        generate_outputs({"backend": "still", "pose_multipler": 0.5}, [job], tmp_path / "outputs", cfg)
    assert not (tmp_path / "outputs").exists()


# ---- scoring one video (operators/evaluate_video.py) on a small off-centre face clip ----

@pytest.fixture(scope="module")
def corner_clip(tmp_path_factory) -> dict:
    """A 320 x 320 driving clip (2 s at 10 fps) whose face sits small in the top-left corner, its
    first decoded frame as the self-protocol reference, the reference's square crop box, and a
    face analyser."""
    from PIL import Image

    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.jobs.samples import astronaut_pan
    from portraitflow.models.face.align import square_crop_box
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.operators.decode import iter_frame_chunks
    from portraitflow.operators.video_writer import write_h264

    root = tmp_path_factory.mktemp("corner_clip")
    canvas = np.full((20, 320, 320, 3), 90, np.uint8)
    canvas[:, :160, :160] = astronaut_pan(seconds=2.0, fps=10.0, size=160)
    driving = root / "clip.mp4"
    write_h264(driving, [canvas], fps=10.0)
    frames = np.concatenate([c.frames for c in iter_frame_chunks(str(driving), 10.0)])
    ref = root / "clip.ref.png"
    Image.fromarray(frames[0]).save(ref)
    analyzer = create_analyzer(FaceConfig())
    box = square_crop_box(analyzer.detect([frames[0]])[0][0].box, frames.shape[1:3])
    assert (box[2] - box[0]) < 250  # the face does not fill the frame, so the crop is a real cut
    return {"root": root, "driving": str(driving), "ref": str(ref), "frames": frames, "box": box,
            "analyzer": analyzer}


def _crop_video(clip: dict, path: Path, size: int, frames: np.ndarray | None = None) -> str:
    """What a perfect crop-only animator writes: each driving frame cut with the reference's box."""
    from portraitflow.models.face.align import crop_square
    from portraitflow.operators.video_writer import write_h264

    frames = clip["frames"] if frames is None else frames
    write_h264(path, [np.stack([crop_square(f, clip["box"], size) for f in frames])], fps=10.0)
    return str(path)


def _evaluator(clip: dict, **settings):
    from portraitflow.operators.evaluate_video import JobEvaluator

    return JobEvaluator(clip["analyzer"], EvaluateConfig(**{"frame_stride": 2, **settings}))


def test_a_crop_output_the_size_of_the_driver_is_compared_with_the_cropped_driver(corner_clip, tmp_path: Path) -> None:
    """A 320 x 320 crop of a 320 x 320 driver: the ground truth is cut with the reference's box
    unless the output was pasted back, whichever way the job says so."""
    clip = corner_clip
    job = {"job_id": "j", "ref": clip["ref"], "driving": clip["driving"]}
    evaluator = _evaluator(clip)
    crop = _crop_video(clip, tmp_path / "crop.mp4", 320)
    for said in ({"paste_back": False}, {"params": '{"paste_back": false, "motion": "relative"}'}):
        row = evaluator.evaluate({**job, "output": crop, **said}, tmp_path)
        assert row["status"] == "ok" and row["psnr"] > 30 and row["akd"] < 0.05, (said, row)
    # as `animate` leaves it: results.parquet beside the output records each job's params
    pd.DataFrame({"output": [crop], "params": ['{"paste_back": false}']}).to_parquet(tmp_path / "results.parquet")
    assert evaluator.evaluate({**job, "output": crop}, tmp_path)["psnr"] > 30
    # a pasted-back output (the whole frame) is compared with the whole driving frame
    pasted = evaluator.evaluate({**job, "output": clip["driving"], "paste_back": True}, tmp_path)
    assert pasted["status"] == "ok" and pasted["psnr"] > 40
    crop_said_pasted = evaluator.evaluate({**job, "output": crop, "paste_back": True}, tmp_path / "x")
    assert crop_said_pasted["psnr"] < 25  # the flag decides, not the sizes


def test_self_protocol_refuses_a_reference_that_is_not_the_size_of_the_driving_frames(corner_clip,
                                                                                      tmp_path: Path) -> None:
    from PIL import Image

    clip = corner_clip
    ref = tmp_path / "small.png"
    Image.fromarray(clip["frames"][0][:200, :240]).save(ref)
    output = _crop_video(clip, tmp_path / "crop.mp4", 128)
    row = _evaluator(clip).evaluate({"job_id": "j", "ref": str(ref), "driving": clip["driving"], "output": output},
                                    tmp_path)
    assert (row["status"], row["reason"]) == ("failed", "reference_size_mismatch")
    assert "240x200" in row["error"] and "320x320" in row["error"] and np.isnan(row["psnr"])


def test_self_protocol_refuses_a_reference_that_is_not_the_clips_first_frame(corner_clip, tmp_path: Path) -> None:
    """Another portrait of the driver's size was scored against the clip as ground truth (a
    cross-reenactment read as self, exit 0): now the row fails and says to use the cross protocol;
    the clip's frame saved as JPEG still passes."""
    from PIL import Image

    clip = corner_clip
    other = np.full_like(clip["frames"][0], 90)
    other[:160, 160:] = clip["frames"][0][:160, :160]  # the face in the other corner: another portrait
    other_ref, jpeg_ref = tmp_path / "other.png", tmp_path / "first.jpg"
    Image.fromarray(other).save(other_ref)
    Image.fromarray(clip["frames"][0]).save(jpeg_ref, quality=75)
    output = _crop_video(clip, tmp_path / "crop.mp4", 128)
    job = {"job_id": "j", "driving": clip["driving"], "output": output, "paste_back": False}
    row = _evaluator(clip).evaluate({**job, "ref": str(other_ref)}, tmp_path)
    assert (row["status"], row["reason"]) == ("failed", "reference_not_driver_frame"), row
    assert "--protocol cross" in row["error"] and np.isnan(row["psnr"]) and np.isnan(row["jitter_error"])
    jpeg = _evaluator(clip).evaluate({**job, "ref": str(jpeg_ref)}, tmp_path)
    assert jpeg["status"] == "ok" and jpeg["psnr"] > 30, jpeg
    cross = _evaluator(clip, protocol="cross").evaluate({**job, "ref": str(other_ref)}, tmp_path)
    assert cross["status"] == "ok", cross


def test_the_reference_threshold_sits_between_real_self_pairs_and_other_clips(media_dir: Path, tmp_path: Path) -> None:
    """On real footage: a clip's first frame saved as a poor JPEG clears the threshold; the first
    frame of another clip of the same man in the same studio (the closest pair in the shared media,
    19.4 dB) and another person's portrait cut to the clip's size do not."""
    import cv2
    from PIL import Image

    from portraitflow.models.face.images import load_image
    from portraitflow.operators.decode import iter_frame_chunks, probe_video
    from portraitflow.operators.evaluate_video import SELF_REFERENCE_MIN_PSNR_DB, first_frame_psnr

    driving = str(media_dir / "dreamtalk_M030_front_neutral_level1_001.mp4")
    info = probe_video(driving)
    first = next(iter_frame_chunks(driving, info.fps, chunk_size=1)).frames[0]
    Image.fromarray(first).save(tmp_path / "first.jpg", quality=50)
    same_man = str(media_dir / "dreamtalk_M030_front_happy_level3_001.mp4")
    other_clip = next(iter_frame_chunks(same_man, probe_video(same_man).fps, chunk_size=1)).frames[0]
    portrait = cv2.resize(load_image(media_dir / "sadtalker_happy.png").rgb, (info.width, info.height))

    def psnr(image: np.ndarray) -> float:
        return first_frame_psnr(image, driving, info.fps, 256)

    assert psnr(first) == 100.0 and psnr(load_image(tmp_path / "first.jpg").rgb) > SELF_REFERENCE_MIN_PSNR_DB + 3
    assert psnr(other_clip) < SELF_REFERENCE_MIN_PSNR_DB - 8 and psnr(portrait) < SELF_REFERENCE_MIN_PSNR_DB - 8


@pytest.mark.parametrize("height, width, scaled", [(180, 320, (64, 114)), (320, 180, (114, 64)), (90, 90, (64, 64))])
def test_pixel_metrics_keep_the_aspect_ratio_of_non_square_frames(monkeypatch: pytest.MonkeyPatch, height: int,
                                                                  width: int, scaled: tuple[int, int]) -> None:
    """A pasted-back 16:9 frame was squashed to pixel_size x pixel_size before PSNR, SSIM and L1; now
    its shorter side is scaled to pixel_size, the same for output and ground truth, so a circle
    stays a circle."""
    import cv2

    from portraitflow.operators import metrics
    from portraitflow.operators.evaluate_video import JobEvaluator, scale_short_side

    frame = np.zeros((1, height, width, 3), np.uint8)
    cv2.circle(frame[0], (width // 2, height // 2), min(height, width) // 3, (255, 255, 255), -1)
    small = scale_short_side(frame, 64)
    assert small.shape[1:3] == scaled
    rows, cols = np.nonzero(small[0, ..., 0] > 127)
    assert abs((np.ptp(cols) + 1) - (np.ptp(rows) + 1)) <= 1  # round, not an ellipse
    seen: list[tuple] = []
    monkeypatch.setattr(metrics, "ssim", lambda pred, target: (seen.append((pred.shape, target.shape)),
                                                               np.ones(len(pred)))[1])
    evaluator = JobEvaluator(type("A", (), {"name": "opencv", "embedding_dim": 4})(), EvaluateConfig(pixel_size=64))
    evaluator._pixel_metrics(frame, frame.copy(), np.arange(1))
    assert seen == [((1, *scaled, 3), (1, *scaled, 3))]


def test_a_still_output_no_longer_beats_the_clip_itself_on_jitter_and_flicker(media_dir: Path, tmp_path: Path,
                                                                            ray_local) -> None:
    """The output's own jitter and flicker ranked a still output first and the ground truth behind
    warp (real talking moves); scored against the driver's, the clip itself is perfect and the still
    output pays for the motion it lacks."""
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.jobs.generation import run_generation
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.operators.evaluate_video import JobEvaluator
    from portraitflow.operators.generation_jobs import Job

    spec = DatasetSpec(path=str(media_dir), include=["liveportrait_d20.mp4"])
    [job] = dataset_jobs(spec, "self", tmp_path / "prepared", max_seconds=2.0)
    analyzer = create_analyzer(FaceConfig())
    cfg = load_config(None, ["animate.backend=still", "animate.size=256", "mlflow.enabled=false"])
    [still] = run_generation([Job(job["job_id"], job["ref"], job["driving"])], tmp_path / "still", cfg).to_dict("records")
    evaluator = JobEvaluator(analyzer, EvaluateConfig())
    itself = evaluator.evaluate({**job, "output": job["driving"], "paste_back": True}, tmp_path / "itself")
    frozen = evaluator.evaluate({**job, "output": still["output"], "paste_back": False}, tmp_path / "still")
    assert itself["status"] == frozen["status"] == "ok"
    assert itself["jitter_error"] == 0.0 and itself["flicker_error"] == 0.0
    assert frozen["output_jitter"] < 0.5 * frozen["driver_jitter"]  # the own jitter it used to win on
    assert frozen["output_flicker"] < 0.5 * frozen["driver_flicker"]
    assert frozen["jitter_error"] > 0.5 * frozen["driver_jitter"] and frozen["flicker_error"] > 0.5 * frozen["driver_flicker"]


def test_head_pose_does_not_depend_on_where_the_face_sits(media_dir: Path) -> None:
    """A real face in the corner of a wide frame and the same face centred in its crop: the same
    head, so the same pose (the uncentred fit read several degrees of tilt into the corner)."""
    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.models.face.align import crop_square, square_crop_box
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.operators.decode import iter_frame_chunks
    from portraitflow.operators.evaluate_video import analyse_faces

    analyzer = create_analyzer(FaceConfig())
    frame = next(iter_frame_chunks(str(media_dir / "liveportrait_d18.mp4"), 25.0, chunk_size=1)).frames[0]
    wide = np.full((720, 1280, 3), 90, np.uint8)
    wide[:480, :480] = frame
    crop = crop_square(wide, square_crop_box(analyzer.detect([wide])[0][0].box, wide.shape[:2]), 512)
    corner, centred = (analyse_faces(analyzer, image[None], embed=False)["pose"][0] for image in (wide, crop))
    assert np.abs(corner - centred).max() < 1.5, (corner, centred)


def test_a_truncated_output_fails_with_both_frame_counts(corner_clip, tmp_path: Path) -> None:
    clip = corner_clip
    job = {"job_id": "j", "ref": clip["ref"], "driving": clip["driving"], "paste_back": False}
    evaluator = _evaluator(clip)
    short = evaluator.evaluate({**job, "output": _crop_video(clip, tmp_path / "short.mp4", 128, clip["frames"][:12])},
                               tmp_path)
    assert (short["status"], short["reason"]) == ("failed", "frame_count_mismatch")
    assert "12" in short["error"] and "20" in short["error"] and np.isnan(short["psnr"])
    one_less = evaluator.evaluate({**job, "output": _crop_video(clip, tmp_path / "l.mp4", 128, clip["frames"][:19])},
                                  tmp_path)
    assert one_less["status"] == "ok" and one_less["frames"] == 10  # 19 frames in common, every 2nd analysed


#: how an output one frame longer or shorter than its 20-frame driver shows it, and the offset to find
_SHOWN = {"reference first": (lambda frames: np.concatenate([frames[:1], frames]), 1),
          "last frame twice": (lambda frames: np.concatenate([frames, frames[-1:]]), 0),
          "first frame missing": (lambda frames: frames[1:], -1), "last frame missing": (lambda frames: frames[:-1], 0)}


@pytest.mark.parametrize("shown", list(_SHOWN))
def test_an_output_a_frame_longer_or_shorter_is_paired_as_its_first_frames_match(corner_clip, tmp_path: Path,
                                                                                 shown: str) -> None:
    """The one-frame tolerance paired frames from the start, so an output that shows the reference
    first was scored a frame late throughout (25 dB here instead of 40): now the pairing whose first
    frames match the ground truth better is taken, and `frame_offset` records it."""
    clip, (cut, offset) = corner_clip, _SHOWN[shown]
    job = {"job_id": "j", "ref": clip["ref"], "driving": clip["driving"], "paste_back": False}
    evaluator = _evaluator(clip)
    row = evaluator.evaluate({**job, "output": _crop_video(clip, tmp_path / "out.mp4", 128, cut(clip["frames"]))},
                             tmp_path)
    aligned = evaluator.evaluate({**job, "output": _crop_video(clip, tmp_path / "same.mp4", 128)}, tmp_path / "same")
    assert (row["status"], row["frame_offset"], aligned["frame_offset"]) == ("ok", offset, 0), row
    assert row["psnr"] > aligned["psnr"] - 1, (row, aligned)
    paired = range(max(-offset, 0), 20)  # the driver's frames that have an output, every 2nd analysed
    assert row["frames"] == len([frame for frame in paired if frame % 2 == 0])


def test_a_still_opening_leaves_an_output_a_frame_longer_paired_from_the_start(corner_clip, tmp_path: Path) -> None:
    """On a still opening (an animator's own grain over the driver's) both pairings match alike, and
    taking the shifted one by any margin scored about half of such videos a frame late throughout."""
    from portraitflow.operators.video_writer import write_h264

    clip, rng = corner_clip, np.random.default_rng(0)
    still = np.repeat(clip["frames"][:1], 12, axis=0).astype(np.int16)

    def grain() -> np.ndarray:
        return np.clip(still + rng.integers(-4, 5, still.shape), 0, 255).astype(np.uint8)

    offsets = []
    for attempt in range(8):
        driver = tmp_path / f"driver{attempt}.mp4"
        write_h264(driver, [grain()], fps=10.0)
        output = grain()  # rendered: its own grain, one frame more at the end
        output = _crop_video(clip, tmp_path / f"out{attempt}.mp4", 128, np.concatenate([output, output[-1:]]))
        offsets.append(_evaluator(clip)._frame_offset(output, str(driver), 10.0, 1, clip["box"], False))
    assert offsets == [0] * 8


@pytest.mark.parametrize("shown", ["reference first", "last frame twice", "first frame missing"])
def test_cross_pairs_an_output_a_frame_off_by_how_the_landmarks_move(media_dir: Path, tmp_path: Path,
                                                                     shown: str) -> None:
    """Without a ground truth, cross reenactment chooses the pairing by the landmarks' motion: the
    talking face's lips and head move a frame apart otherwise."""
    from PIL import Image

    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.operators.decode import iter_frame_chunks
    from portraitflow.operators.evaluate_video import JobEvaluator
    from portraitflow.operators.video_writer import write_h264

    source = str(media_dir / "dreamtalk_M030_front_neutral_level1_001.mp4")
    frames = next(iter_frame_chunks(source, 25.0, chunk_size=20)).frames
    write_h264(tmp_path / "driver.mp4", [frames], fps=25.0)
    cut, offset = _SHOWN[shown]
    write_h264(tmp_path / "out.mp4", [cut(frames)], fps=25.0)
    Image.fromarray(frames[0]).save(tmp_path / "ref.png")
    row = JobEvaluator(create_analyzer(FaceConfig()), EvaluateConfig(protocol="cross")).evaluate(
        {"job_id": "j", "ref": str(tmp_path / "ref.png"), "driving": str(tmp_path / "driver.mp4"),
         "output": str(tmp_path / "out.mp4")}, tmp_path)
    assert (row["status"], row["frame_offset"]) == ("ok", offset), row


@pytest.mark.parametrize("output", [float("nan"), None, "", pd.NA])
def test_a_missing_output_is_no_output_not_an_error(corner_clip, tmp_path: Path, output) -> None:
    clip = corner_clip
    row = _evaluator(clip).evaluate({"job_id": "j", "ref": clip["ref"], "driving": clip["driving"], "output": output},
                                    tmp_path)
    assert (row["status"], row["reason"], row["error"]) == ("failed", "no_output", None)


def test_fid_and_fvd_see_frames_spread_over_the_whole_video(corner_clip, tmp_path: Path, monkeypatch) -> None:
    """FID frames evenly spaced and K = max(fid, clip) // clip FVD clips evenly spaced, over all
    analysed frames, not the video's first ones."""
    from portraitflow.operators import metrics_learned
    from portraitflow.operators.decode import iter_frame_chunks
    from portraitflow.operators.evaluate_video import learned_picks

    clip = corner_clip
    seen: dict[str, list[np.ndarray]] = {"fid": [], "fvd": []}
    monkeypatch.setattr(metrics_learned, "image_features",
                        lambda net, frames: (seen["fid"].append(frames), np.zeros((len(frames), 2)))[1])
    monkeypatch.setattr(metrics_learned, "video_features",
                        lambda net, frames, n: (seen["fvd"].append(frames), np.zeros((len(frames) // n, 2)))[1])
    evaluator = _evaluator(clip, fid_frames_per_video=4, fvd_clip_frames=2, chunk_frames=4)
    evaluator.networks.update(fid=object(), fvd=object())
    output = _crop_video(clip, tmp_path / "crop.mp4", 128)
    row = evaluator.evaluate({"job_id": "j", "ref": clip["ref"], "driving": clip["driving"], "output": output,
                              "paste_back": False}, tmp_path)
    assert row["status"] == "ok" and row["frames"] == 10
    decoded = np.concatenate([c.frames for c in iter_frame_chunks(output, 10.0)])
    fake_fid, _, fake_fvd, _ = seen["fid"] + seen["fvd"]  # fake then real, per kind

    def positions(frames: np.ndarray) -> list[int]:
        return [next(i for i, d in enumerate(decoded) if np.array_equal(d, f)) for f in frames]

    assert positions(fake_fid) == [0, 6, 12, 18]  # analysed frames 0, 3, 6, 9 of 0, 2, ..., 18
    assert positions(fake_fvd) == [0, 2, 16, 18]  # 4 // 2 = 2 clips of 2 analysed frames, first and last
    fid, fvd = learned_picks(10, 4, 2)
    assert list(fid) == [0, 3, 6, 9] and list(fvd) == [0, 1, 8, 9]
    assert list(learned_picks(10, 6, 2)[1]) == [0, 1, 4, 5, 8, 9]
    assert (tmp_path / "metrics" / "j.fvd_real.npy").is_file()


@pytest.mark.parametrize("params, pasted", [({"backend": "still"}, False), ({"backend": "still", "paste_back": True}, True),
                                            ({"backend": "warp", "paste_back": False}, False)])
def test_a_sweep_config_tells_the_evaluator_how_its_outputs_are_framed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        params: dict, pasted: bool) -> None:
    """Self-reenactment crops the ground truth for crop-only outputs: the config's paste_back reaches scoring."""
    from portraitflow.jobs import sweep
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.runtime import ensure_experiment, mlflow_client

    cfg = load_config(None, [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    client = mlflow_client(cfg.mlflow)
    experiment = ensure_experiment(client, "t")
    parent = client.create_run(experiment).info.run_id
    jobs = [{"job_id": "a", "ref": "a.png", "driving": "a.mp4"}]
    scored = []

    def score(_client, _run, table, _label, work_dir, *_):
        scored.append(table)
        table.to_parquet(work_dir / "per_video.parquet")

    monkeypatch.setattr(sweep, "generate_outputs", lambda *_: pd.DataFrame(
        [{"job_id": "a", "status": "ok", "reason": "", "output": "a-out.mp4"}]))
    monkeypatch.setattr(sweep, "score_and_log", score)
    spec = sweep_spec.SweepSpec(dataset=DatasetSpec(path=str(tmp_path)))
    sweep.run_config(params, jobs, spec, EvaluateConfig(), cfg, tmp_path, parent, experiment)
    assert scored[0]["paste_back"].tolist() == [pasted]


def test_metrics_are_the_names_the_evaluation_defines_not_every_numeric_column(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sweep's numeric params (`nosuch: [1]`, `pose_multiplier`) and job counts were taken for
    metrics: the warning offered `available: nosuch`, and `--rank-by pose_multiplier` ranked
    "higher is better". Now only `metrics.METRICS` names are metrics."""
    from typer.testing import CliRunner

    from portraitflow.jobs import sweep
    from portraitflow.jobs.cli import app
    from portraitflow.jobs.config import load_config
    from portraitflow.operators import metrics
    from portraitflow.operators.evaluate_video import JobEvaluator

    summary = pd.DataFrame({"config": ["a", "b"], "backend": ["warp", "warp"], "nosuch": [1, 2],
                            "pose_multiplier": [0.5, 1.0], "csim_opencv": [0.8, 0.9], "apd": [2.0, 1.0],
                            "detection_rate": [1.0, 0.5], "fid": [3.0, 4.0], "jobs_ok": [1.0, 1.0], "frames": [9, 9]})
    assert report.metric_columns(summary) == ["csim_opencv", "apd", "detection_rate", "fid"]
    assert [report.lower_is_better(m) for m in ("csim_opencv", "apd", "detection_rate", "fid")] == [
        False, True, False, True]
    for column in ("pose_multiplier", "nosuch", "jobs_ok", "csim_"):
        with pytest.raises(ValueError, match="is not a metric"):
            report.rank(summary, column)
    with caplog.at_level("WARNING"):
        assert sweep._ranked(summary[["config", "backend", "nosuch"]], "apd") is not None
    assert "available: none" in caplog.text and "nosuch" not in caplog.text.split("available:")[1]
    evaluator = JobEvaluator(type("A", (), {"name": "opencv", "embedding_dim": 4})(), EvaluateConfig())
    assert all(metrics.metric_kind(name) for name in evaluator.metric_names)  # one definition for both
    result = CliRunner().invoke(app, ["report", "anyrun", "--out", str(tmp_path / "r"), "--rank-by",
                                      "pose_multiplier", "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                                env={"COLUMNS": "1000"})
    assert result.exit_code == 2 and "'pose_multiplier' is not a metric" in result.output, result.output
    spec = sweep_spec.SweepSpec.model_validate({"dataset": {"path": str(tmp_path)}, "configs": [{"backend": "still"}],
                                     "evaluate": {"rank_by": "nosuch"}})
    with pytest.raises(ValueError, match="evaluate.rank_by 'nosuch' is not a metric"):
        sweep.check_sweep(spec, load_config(None, []))


def test_a_sweep_over_a_dataset_with_no_video_is_a_usage_error_before_any_run(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder holding only a macOS fork and notes ran every config on nothing and exited 0."""
    from typer.testing import CliRunner

    from portraitflow.jobs import sweep
    from portraitflow.jobs.cli import app

    def no_ray(*_, **__):
        raise AssertionError("Ray started for a dataset with no video")

    monkeypatch.setattr(sweep, "init_ray", no_ray)
    data = tmp_path / "data"
    data.mkdir()
    (data / "._talk.mp4").write_bytes(b"\0\5\26\7")
    (data / "notes.txt").write_text("no video here")
    (tmp_path / "sweep.yaml").write_text(f"name: s\ndataset: {{type: folder, path: {data}}}\n"
                                         "configs: [{backend: still}]\n")
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "out"),
                                      "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"], env={"COLUMNS": "1000"})
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"dataset '{data}' matched no videos" in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / "m.db").exists()


def test_evaluate_refuses_a_csv_row_whose_comma_would_shift_its_columns(tmp_path: Path) -> None:
    """pandas took a row with a trailing comma for an index and its fields: `job_id` got the ref,
    `output` nothing, and a wrong file was scored or failed under a made-up id."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    results = tmp_path / "results.csv"
    results.write_text("job_id,ref,driving,output\nj0,a.png,b.mp4,o.mp4\nj1,a.png,b.mp4,out.mp4,\n")
    result = CliRunner().invoke(app, ["evaluate", str(results), "--out", str(tmp_path / "eval"),
                                      "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"], env={"COLUMNS": "1000"})
    assert result.exit_code == 2 and "data row 2 has 5 fields" in result.output, result.output
    assert not (tmp_path / "eval").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_evaluate_reads_a_results_file_that_starts_with_a_bom(tmp_path: Path, suffix: str) -> None:
    from portraitflow.jobs.evaluate_cmd import _read_table

    results = tmp_path / f"results{suffix}"
    text = ("job_id,ref,driving,output\nj1,a.png,b.mp4,o.mp4\n" if suffix == ".csv" else
            '{"job_id": "j1", "ref": "a.png", "driving": "b.mp4", "output": "o.mp4"}\n')
    results.write_bytes(b"\xef\xbb\xbf" + text.encode())
    table = _read_table(results)
    assert table.columns.tolist() == ["job_id", "ref", "driving", "output"] and table["job_id"].tolist() == ["j1"]
    assert table["output"].tolist() == [str(tmp_path / "o.mp4")]


def test_a_refused_grid_value_does_not_hide_the_others_trend(tmp_path: Path) -> None:
    """A typo ("1,5") refused one config, and the finished ones lost their parameters plot."""
    summary = pd.DataFrame({"config": ["a", "b", "typo"], "backend": ["warp"] * 3, "scale": [0.5, 1.0, "1,5"],
                            "status": ["FINISHED", "FINISHED", "FAILED"]})
    per_video = pd.DataFrame({"config": ["a", "a", "b", "b"], "job_id": ["x", "y"] * 2, "apd": [1.0, 2.0, 3.0, 4.0]})
    plot = report.parameter_plots(summary, per_video, ["backend", "scale"], tmp_path / "parameters.png")
    assert plot is not None and plot.is_file()


def test_a_sweep_that_scored_no_video_exits_1_naming_why(tmp_path: Path, capsys) -> None:
    """Every job of its one config failed (a clip with no face): it exited 0."""
    import typer

    from portraitflow.jobs.evaluate_cmd import _refuse_sweep_scored_nothing

    summary = tmp_path / "summary.csv"
    pd.DataFrame({"config": ["warp", "still"], "jobs_ok": [0, None], "jobs_failed": [1, None],
                  "error": [None, "RuntimeError: broke"]}).to_csv(summary, index=False)
    with pytest.raises(typer.Exit) as stopped:
        _refuse_sweep_scored_nothing(summary, Path("sweep.yaml"))
    assert stopped.value.exit_code == 1
    pd.DataFrame({"config": ["warp"], "jobs_ok": [0], "jobs_failed": [1]}).to_csv(summary, index=False)
    with pytest.raises(typer.Exit):  # no config failed whole, so no `error` column: a KeyError before
        _refuse_sweep_scored_nothing(summary, Path("sweep.yaml"))
    assert "1 finished with every job failed" in capsys.readouterr().err
    pd.DataFrame({"config": ["warp", "still"], "jobs_ok": [0, 2], "error": [None, None]}).to_csv(summary, index=False)
    _refuse_sweep_scored_nothing(summary, Path("sweep.yaml"))  # one config scored: a result


def test_configs_that_make_the_same_videos_run_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`{backend: warp}`, `pose_multiplier: 1.0` and `pose_multiplier: 1` were three configs: each
    generated, scored and ranked, for one set of videos."""
    from portraitflow.jobs.config import load_config
    from portraitflow.jobs.sweep import check_sweep

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "talk.mp4").write_bytes(b"listed, not read")
    path = tmp_path / "sweep.yaml"
    path.write_text(f"name: s\ndataset: {{type: folder, path: {tmp_path / 'data'}}}\nconfigs: [{{backend: warp}}, "
                    "{backend: auto}, {backend: still}, {backend: still, seed: 3}, {backend: still}]\n"
                    "grid: {backend: [warp], pose_multiplier: [1.0, 1, 0.5]}\n")
    with caplog.at_level("WARNING"):
        _, configs = check_sweep(sweep_spec.load_sweep(path), load_config(None, []))
    assert configs == [{"backend": "warp", "pose_multiplier": 1.0}, {"backend": "warp", "pose_multiplier": 0.5},
                       {"backend": "still"}, {"backend": "still", "seed": 3}]  # still refuses a seed: it fails alone
    assert caplog.text.count("makes the same videos as warp[pose_multiplier=1.0]") == 3  # 1, warp, auto
    assert caplog.text.count("sweep config still is listed twice: it runs once") == 1  # was left out without a word


def test_the_side_by_side_pairs_frames_as_they_were_scored(tmp_path: Path) -> None:
    """An output that writes the reference first (`frame_offset` 1) was shown a frame out of step
    with the pairing its numbers came from."""
    from PIL import Image

    from portraitflow.operators.decode import read_frames
    from portraitflow.operators.video_writer import write_h264

    levels = np.arange(0, 200, 20)
    driver, output, ref = tmp_path / "driver.mp4", tmp_path / "output.mp4", tmp_path / "ref.png"
    write_h264(driver, [np.stack([np.full((64, 64, 3), v, np.uint8) for v in levels])], fps=10)
    write_h264(output, [np.stack([np.full((64, 64, 3), v, np.uint8) for v in [250, *levels]])], fps=10)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(ref)
    count = report.side_by_side(str(ref), str(driver), str(output), tmp_path / "sbs.mp4", height=64, frame_offset=1)
    frames, _ = read_frames(str(tmp_path / "sbs.mp4"), list(range(count)))
    middle, right = frames[:, 32, 96, 0].astype(int), frames[:, 32, 160, 0].astype(int)
    assert count == len(levels) and np.abs(middle - right).max() <= 3 and np.abs(middle - levels).max() <= 3


def test_an_evaluation_that_scored_nothing_for_want_of_ground_truth_points_to_cross(tmp_path: Path, capsys) -> None:
    """`evaluate out/results.parquet` on animate's own outputs (portraits driven by other videos) failed
    every job `reference_size_mismatch` under the default self protocol, and pointed at relative paths."""
    import pandas as pd
    import typer

    from portraitflow.jobs.evaluate_cmd import _refuse_nothing_scored

    per_video = tmp_path / "per_video.parquet"
    pd.DataFrame({"job_id": ["a"], "status": ["failed"], "reason": ["reference_size_mismatch"]}).to_parquet(per_video)
    with pytest.raises(typer.Exit):
        _refuse_nothing_scored(per_video, tmp_path / "results.parquet")
    said = capsys.readouterr().err
    assert "score it with --protocol cross" in said and "Relative ref" not in said


def test_the_report_says_how_many_of_the_datasets_videos_could_not_be_used() -> None:
    """They were in dataset.parquet and a parent metric only: the page, meant to be read alone, never said."""
    from types import SimpleNamespace

    from portraitflow.jobs.sweep import _sweep_notes

    def parent(status: str, failed: float) -> SimpleNamespace:
        return SimpleNamespace(info=SimpleNamespace(status=status, lifecycle_stage="active", run_id="r"),
                               data=SimpleNamespace(params={"configs": "3"}, metrics={"videos_failed": failed}))

    [note] = _sweep_notes(parent("FINISHED", 2.0), 3)
    assert note.startswith("2 video(s) of the dataset could not be used") and "dataset.parquet" in note
    assert _sweep_notes(parent("FINISHED", 0.0), 3) == []
    # a sweep killed outright: its page passed for a whole one, a config RUNNING, one never started (review s24)
    [note] = _sweep_notes(parent("RUNNING", 0.0), 2)
    assert note.startswith("The sweep's run is still RUNNING, and 2 of its 3 configs have runs")
    assert _sweep_notes(parent("RUNNING", 0.0), 3) == []  # the sweep's own page, made before it ends its run


def test_a_long_path_in_a_reason_is_kept_in_part() -> None:
    """Cut at a word, a reason ending in a long path lost the path whole (review s24)."""
    from portraitflow.operators.job_status import clipped

    path = "s3://bucket/" + "a" * 40 + "/" + "b" * 300 + ".mp4"
    text = clipped(f"FileNotFoundError: [Errno 2] No such file or directory: {path}")
    assert len(text) == 300 and text.endswith("b…") and "s3://bucket/aaa" in text
    assert clipped("word " * 100).endswith("word…") and len(clipped("word " * 100)) <= 300


@pytest.mark.parametrize(("output", "driver", "pasted", "refused"), [
    ((480, 270), (480, 480), True, True),  # a squashed output scored PSNR 100 against a ground truth squashed alike
    ((480, 270), (480, 480), None, True),
    ((256, 256), (480, 480), False, False),  # the face crop
    ((300, 256), (480, 480), False, True),  # a crop is square
    ((1024, 576), (1280, 720), None, False),  # pasted back, capped at max_output_side
    ((852, 480), (853, 480), True, False),  # even sizes
    ((512, 512), (1280, 720), None, False),  # a crop of another size
    ((512, 512), (1280, 720), True, True),
])
def test_an_output_of_another_aspect_than_its_ground_truth_is_refused(output, driver, pasted, refused) -> None:
    from types import SimpleNamespace

    from portraitflow.operators.evaluate_video import ASPECT_MISMATCH, _aspect_refusal

    found = _aspect_refusal(SimpleNamespace(width=output[0], height=output[1]),
                            SimpleNamespace(width=driver[0], height=driver[1]), pasted)
    assert (found is not None) == refused and (found is None or found["reason"] == ASPECT_MISMATCH)
