"""What a rerun of a sweep may take from an earlier one: a prepared clip, a config's scores (a
config's videos, `still` included, are generation's: tests/test_generation_resume.py), only while the inputs behind them hold what they held (a job that failed on a missing file is
tried again once it is there)."""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
from PIL import Image
from synthetic_shards import write_shard
from test_eval_dataset import _clip, _fake_prepare, _sample
from test_sweep_driver import _fake_generation, _spec, driver  # noqa: F401 (a fixture)

from portraitflow.operators import eval_dataset
from portraitflow.operators.eval_dataset import DatasetSpec, dataset_jobs
from portraitflow.jobs.sweep_spec import SweepSpec


def _first_frame(video: str) -> np.ndarray:
    from portraitflow.operators.decode import iter_frame_chunks, probe_video

    return next(iter_frame_chunks(video, probe_video(video).fps, chunk_size=1)).frames[0]


def test_a_config_is_scored_again_when_a_jobs_inputs_changed_under_the_same_id(driver, monkeypatch) -> None:  # noqa: F811
    """A jobs file edited in place keeps its job ids: the finished config was reused with the old
    reference's scores. Scores made before per_video recorded the inputs cannot be checked: run again."""
    from portraitflow.operators.generation_jobs import input_fingerprint

    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    for name, colour in (("one.png", (200, 40, 40)), ("two.png", (40, 40, 200))):
        Image.new("RGB", (64, 64), colour).save(data / name)
    jobs, out = data / "jobs.csv", data.parent / "out"
    spec = SweepSpec.model_validate({"name": "s", "dataset": {"type": "jobs", "path": str(jobs)},
                                     "configs": [{"backend": "still"}], "evaluate": {"max_seconds": 0.5}})

    def rerun(ref: str) -> bool:
        jobs.write_text(f"job_id,ref,driving\na,{ref},talk.mp4\n")
        sweep.run_sweep(spec, cfg, out)
        return bool(pd.read_csv(out / "summary.csv")["reused"].item())

    assert not rerun("one.png") and rerun("one.png")
    assert not rerun("two.png")
    [scored] = out.glob("configs/*/scores/*/per_video.parquet")
    assert pd.read_parquet(scored)["ref_fingerprint"].tolist() == [input_fingerprint(str(data / "two.png"))]
    assert rerun("two.png")
    pd.read_parquet(scored).drop(columns=["ref_fingerprint", "driving_fingerprint"]).to_parquet(scored)
    assert not rerun("two.png") and rerun("two.png")


def test_a_cross_job_id_names_its_portrait_so_an_added_portrait_never_takes_an_earlier_id(tmp_path: Path) -> None:
    """Cross ids were `<clip>-x<index>`: adding a portrait paired a clip with another portrait under
    the same id, and every config reused the old pairing's scores."""
    for name in ("talk1.mp4", "talk2.mp4", "b_portrait.png"):
        (tmp_path / name).write_bytes(b"x")

    def pairs() -> dict[str, str]:
        with mock.patch.object(eval_dataset, "prepare_clip", _fake_prepare):
            return {j["job_id"]: Path(j["ref"]).name for j in dataset_jobs(DatasetSpec(path=str(tmp_path)), "cross",
                                                                          tmp_path / "prepared")}

    before = pairs()
    (tmp_path / "a_portrait.png").write_bytes(b"x")
    after = pairs()
    assert sorted(after.values()) == ["a_portrait.png", "b_portrait.png"]  # talk1 now pairs with a
    assert all(before[job_id] == after[job_id] for job_id in before.keys() & after.keys())
    assert len(before.keys() & after.keys()) == 1  # talk2 keeps b, and its id


def test_a_source_reexported_at_the_same_path_is_cut_again(tmp_path: Path) -> None:
    """Prepared clips are named by the source's path: a re-exported folder clip (or a shard curated
    again) kept its old clip and reference, and every sweep scored the old video."""
    videos = tmp_path / "videos"
    _clip(videos / "clip.mp4", shade=0)
    spec, prepared = DatasetSpec(path=str(videos)), tmp_path / "prepared"
    [old] = dataset_jobs(spec, "self", prepared, max_seconds=0.5)
    old_ref = np.asarray(Image.open(old["ref"])).copy()
    _clip(videos / "clip.mp4", shade=120)
    [new] = dataset_jobs(spec, "self", prepared, max_seconds=0.5)
    assert new["job_id"] == old["job_id"]
    new_ref = np.asarray(Image.open(new["ref"]))
    assert np.abs(new_ref.astype(int) - old_ref).mean() > 50
    assert np.abs(_first_frame(new["driving"]).astype(int) - new_ref).mean() < 3  # cut from the new source

    shards = tmp_path / "shards"
    for shade in (0, 120):
        video = _clip(tmp_path / f"s{shade}.mp4", shade=shade)
        write_shard(shards / "000000.tar", {"sample0": _sample(video)})
        [job] = dataset_jobs(DatasetSpec(type="shards", path=str(shards)), "self", tmp_path / "from_shards")
        assert Path(job["source"]).read_bytes() == video


def test_a_failed_job_is_tried_again_once_its_input_is_in_place_and_only_then(driver, monkeypatch) -> None:  # noqa: F811
    """A job that failed inside a FINISHED config on a file that arrived late stayed failed for
    good: the config was reused with it. A failure on unchanged inputs is not retried, or one
    faceless reference would rescore every config on every rerun."""
    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    generate = sweep.generate_outputs

    def needs_the_reference(params, jobs, folder, cfg):
        missing = [job for job in jobs if not Path(job["ref"]).is_file()]
        made = generate(params, [job for job in jobs if job not in missing], folder, cfg)
        return pd.concat([made, pd.DataFrame([{"job_id": job["job_id"], "status": "failed",
                                               "reason": "preparation: no reference", "output": None}
                                              for job in missing])], ignore_index=True)

    monkeypatch.setattr(sweep, "generate_outputs", needs_the_reference)
    jobs, out = data / "jobs.csv", data.parent / "out"
    jobs.write_text("job_id,ref,driving\na,late.png,talk.mp4\n")
    spec = SweepSpec.model_validate({"name": "s", "dataset": {"type": "jobs", "path": str(jobs)},
                                     "configs": [{"backend": "still"}], "evaluate": {"max_seconds": 0.5}})

    def rerun() -> tuple[bool, int]:
        sweep.run_sweep(spec, cfg, out)
        summary = pd.read_csv(out / "summary.csv")
        assert "error" not in summary  # the config finishes, with its job failed or not
        return bool(summary["reused"].item()), int(summary["jobs_ok"].item())

    assert rerun() == (False, 0) and rerun() == (True, 0)
    Image.new("RGB", (64, 64), (200, 40, 40)).save(data / "late.png")
    assert rerun() == (False, 1) and rerun() == (True, 1)


def test_retry_failed_runs_a_config_again_whose_job_failed_on_unchanged_inputs(driver, monkeypatch) -> None:  # noqa: F811
    """A worker out of memory fails a job once; a plain rerun keeps that failure (the inputs are
    unchanged), `retry_failed` generates it again, and a config with no failure is still reused."""
    sweep, cfg, data = driver
    _fake_generation(sweep, monkeypatch)
    generate, calls = sweep.generate_outputs, []

    def out_of_memory_once(params, jobs, folder, cfg):
        calls.append([job["job_id"] for job in jobs])
        if len(calls) > 1:
            return generate(params, jobs, folder, cfg)
        folder.mkdir(parents=True)
        return pd.DataFrame([{"job_id": job["job_id"], "status": "failed", "reason": "worker out of memory",
                              "output": None} for job in jobs])

    monkeypatch.setattr(sweep, "generate_outputs", out_of_memory_once)
    Image.new("RGB", (64, 64), (200, 40, 40)).save(data / "ref.png")
    jobs, out = data / "jobs.csv", data.parent / "out"
    jobs.write_text("job_id,ref,driving\na,ref.png,talk.mp4\n")
    spec = SweepSpec.model_validate({"name": "s", "dataset": {"type": "jobs", "path": str(jobs)},
                                     "configs": [{"backend": "still"}], "evaluate": {"max_seconds": 0.5}})

    def rerun(retry_failed: bool) -> tuple[bool, int]:
        sweep.run_sweep(spec, cfg, out, retry_failed=retry_failed)
        summary = pd.read_csv(out / "summary.csv")
        assert "error" not in summary, summary.to_dict("records")
        return bool(summary["reused"].item()), int(summary["jobs_ok"].item())

    assert rerun(False) == (False, 0) and rerun(False) == (True, 0) and len(calls) == 1
    assert rerun(True) == (False, 1) and len(calls) == 2
    assert rerun(True) == (True, 1) and len(calls) == 2
