"""Sweep specs, evaluation datasets, failure rows and the report, on media made by the tests."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.operators import report, sweep_spec
from portraitflow.operators.eval_dataset import DatasetSpec, load_jobs


def _spec(**extra) -> sweep_spec.SweepSpec:
    return sweep_spec.SweepSpec.model_validate({"dataset": {"type": "folder", "path": "/data"}, **extra})


def test_grid_and_list_expand_to_distinct_configs_with_stable_hashes() -> None:
    spec = _spec(grid={"backend": ["warp"], "pose_multiplier": [0.5, 1.0], "seed": [0, 1]},
                 configs=[{"backend": "still"}, {"backend": "warp", "pose_multiplier": 0.5, "seed": 0}])
    configs = sweep_spec.expand_configs(spec)
    assert len(configs) == 5  # 2 x 2 grid + still; the duplicate warp config is dropped
    evaluate = EvaluateConfig()
    hashes = {sweep_spec.config_hash(c, spec.dataset, evaluate, "opencv") for c in configs}
    assert len(hashes) == 5
    first = configs[0]
    assert sweep_spec.config_hash(first, spec.dataset, evaluate, "opencv") == sweep_spec.config_hash(
        dict(reversed(list(first.items()))), spec.dataset, evaluate.model_copy(update={"rank_by": "akd"}), "opencv")
    changed = [
        sweep_spec.config_hash(first, DatasetSpec(path="/other"), evaluate, "opencv"),
        sweep_spec.config_hash(first, spec.dataset, evaluate.model_copy(update={"max_seconds": 3.0}), "opencv"),
        sweep_spec.config_hash(first, spec.dataset, evaluate, "insightface"),
    ]
    assert sweep_spec.config_hash(first, spec.dataset, evaluate, "opencv") not in changed
    assert sweep_spec.config_label({"backend": "warp", "seed": 1, "pose_multiplier": 0.5}) == \
        "warp[pose_multiplier=0.5,seed=1]"
    parallel = spec.model_copy(update={"evaluate": {"max_parallel": 4}})
    assert sweep_spec.sweep_hash(spec, evaluate, "opencv") == sweep_spec.sweep_hash(
        parallel, sweep_spec.effective_evaluate(evaluate, parallel), "opencv")
    slower = spec.model_copy(update={"evaluate": {"frame_stride": 2}})
    assert sweep_spec.sweep_hash(spec, evaluate, "opencv") != sweep_spec.sweep_hash(
        slower, sweep_spec.effective_evaluate(evaluate, slower), "opencv")
    with pytest.raises(ValueError, match="backend"):
        sweep_spec.expand_configs(_spec(configs=[{"seed": 1}]))
    with pytest.raises(ValueError, match="no configs"):
        sweep_spec.expand_configs(_spec())


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
    jobs = load_jobs(spec, "self", tmp_path / "prepared", max_seconds=0.5)
    assert len(jobs) == 2 and all(j["status"] == "ok" for j in jobs)
    from portraitflow.models.face.images import load_image
    from portraitflow.operators.decode import iter_frame_chunks, probe_video

    for job in jobs:
        assert probe_video(job["driving"]).num_frames == 5  # cut to 0.5 s at 10 fps
        first = next(iter_frame_chunks(job["driving"], 10, chunk_size=1)).frames[0]
        assert np.array_equal(load_image(job["ref"]).rgb, first)  # the reference is the clip's first frame
    again = load_jobs(spec, "self", tmp_path / "prepared", max_seconds=0.5)
    assert again == jobs
    cross = load_jobs(spec, "cross", tmp_path / "prepared", max_seconds=0.5)
    assert [c["ref"] for c in cross] == [jobs[1]["ref"], jobs[0]["ref"]]


def test_a_bad_video_in_a_folder_is_a_failed_row(tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    _clip(folder / "good.mp4")
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    jobs = load_jobs(DatasetSpec(path=str(folder)), "self", tmp_path / "prepared")
    status = {Path(j["source"]).name: (j["status"], j["reason"]) for j in jobs}
    assert status == {"good.mp4": ("ok", None), "broken.mp4": ("failed", "unreadable")}


def test_jobs_that_cannot_be_scored_get_every_column_and_a_reason(tmp_path: Path) -> None:
    from PIL import Image

    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.models.face.factory import create_analyzer
    from portraitflow.operators.evaluate_video import JobEvaluator

    clip = tmp_path / "clip.mp4"
    _clip(clip)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(blank)
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
    per_video = pd.DataFrame({"config": ["a", "a", "c", "c"], "job_id": ["x", "y", "x", "y"],
                              "apd": [3.0, 3.5, 1.0, 1.2], "ssim": [0.5, 0.6, 0.7, 0.8]})
    plot = report.metric_plots(per_video, tmp_path / "metrics.png", ["c", "a"])
    assert plot.stat().st_size > 5_000
    page = report.write_html(tmp_path, "t", report.rank(summary, "apd"), "apd", plot, [], ["fid skipped: x"], per_video)
    text = page.read_text()
    assert text.index("<td>c</td>") < text.index("<td>a</td>") < text.index("<td>b</td>")
    assert "src='metrics.png'" in text and "fid skipped" in text


def test_a_jobs_dataset_is_read_as_animate_reads_it_and_cut_to_max_seconds(tmp_path: Path) -> None:
    from portraitflow.operators.decode import probe_video

    data = tmp_path / "data"
    data.mkdir()
    _clip(data / "talk.mp4", frames=10)  # 1 s at 10 fps
    (data / "face.png").write_bytes(b"")
    (data / "jobs.csv").write_text("ref,driving\nface.png,talk.mp4\nface.png,missing.mp4\n")  # paths from the file
    rows = load_jobs(DatasetSpec(type="jobs", path=str(data / "jobs.csv")), "cross", tmp_path / "prepared", max_seconds=0.5)
    assert [r["job_id"] for r in rows] == ["face__talk", "face__missing"]
    assert rows[0]["status"] == "ok" and rows[0]["ref"] == str(data / "face.png")
    assert rows[0]["driving"].startswith(str(tmp_path / "prepared")) and probe_video(rows[0]["driving"]).duration_s <= 0.6
    assert not list((tmp_path / "prepared").glob("*.ref.png"))  # the job's own portrait is the reference
    assert rows[1]["status"] == "failed" and rows[1]["reason"] == "unreadable"
    (data / "params.csv").write_text("ref,driving,seed\nface.png,talk.mp4,3\n")
    with pytest.raises(ValueError, match="per-job params"):
        load_jobs(DatasetSpec(type="jobs", path=str(data / "params.csv")), "cross", tmp_path / "prepared")


def test_jobs_dataset_ids_are_unique_so_each_job_keeps_its_own_ref_and_driver(tmp_path: Path) -> None:
    """`s1/ref.png + s1/drive.mp4` and `s2/...` derive one id: each job gets its own (hashed) id,
    portrait and clip; a `job_id` given twice refuses the dataset before any clip is cut."""
    data = tmp_path / "data"
    for session, shade in (("s1", 0), ("s2", 40)):
        (data / session).mkdir(parents=True)
        _clip(data / session / "drive.mp4", shade=shade)
        (data / session / "ref.png").write_bytes(b"")
    (data / "jobs.csv").write_text("ref,driving\ns1/ref.png,s1/drive.mp4\ns2/ref.png,s2/drive.mp4\n")
    rows = load_jobs(DatasetSpec(type="jobs", path=str(data / "jobs.csv")), "cross", tmp_path / "prepared")
    assert len({r["job_id"] for r in rows}) == 2 and all(r["job_id"].startswith("ref__drive-") for r in rows)
    assert [r["ref"] for r in rows] == [str(data / "s1/ref.png"), str(data / "s2/ref.png")]
    assert [r["source"] for r in rows] == [str(data / "s1/drive.mp4"), str(data / "s2/drive.mp4")]
    assert rows[0]["driving"] != rows[1]["driving"]
    (data / "twice.csv").write_text("job_id,ref,driving\nj,s1/ref.png,s1/drive.mp4\nj,s2/ref.png,s2/drive.mp4\n")
    with pytest.raises(ValueError, match="job_id 'j'"):
        load_jobs(DatasetSpec(type="jobs", path=str(data / "twice.csv")), "cross", tmp_path / "again")
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
    assert not (tmp_path / "eval").exists() and not (tmp_path / "m.db").exists()


def test_a_still_config_refuses_params_it_does_not_take_before_any_work(tmp_path: Path) -> None:
    """`still` frames the reference (`size`, `paste_back`); a typo or a motion setting is refused
    naming the key, as `AnimateConfig` refuses other backends' unknown keys, not ignored."""
    from portraitflow.jobs.config import load_config
    from portraitflow.pipelines.evaluate import config_settings, generate_outputs

    cfg = load_config(None, [])
    settings = config_settings({"backend": "still", "size": 256, "paste_back": True}, cfg)
    assert (settings.size, settings.paste_back) == (256, True)
    with pytest.raises(ValueError, match=r"'pose_multipler' \(unknown\).*takes only size, paste_back"):
        config_settings({"backend": "still", "pose_multipler": 0.5}, cfg)
    with pytest.raises(ValueError, match=r"'pose_multiplier' \(an animate setting it does not use\)"):
        config_settings({"backend": "still", "pose_multiplier": 0.5}, cfg)
    with pytest.raises(ValueError, match="size"):
        config_settings({"backend": "still", "size": "big"}, cfg)
    with pytest.raises(ValueError, match="pose_multipler"):
        config_settings({"backend": "warp", "pose_multipler": 0.5}, cfg)
    job = {"job_id": "j", "ref": str(tmp_path / "r.png"), "driving": str(tmp_path / "d.mp4")}
    with pytest.raises(ValueError, match="pose_multipler"):
        generate_outputs({"backend": "still", "pose_multipler": 0.5}, [job], tmp_path / "outputs", cfg)
    assert not (tmp_path / "outputs").exists()
