"""Generation jobs: the three CLI forms, jobs files, per-job params and deterministic names."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.operators.generation_jobs import (
    Job,
    cross_jobs,
    effective_params,
    load_jobs,
    output_name,
    pair_jobs,
)
from portraitflow.operators.generation_results import RESULT_DEFAULTS, plan_rows, results_table


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_jobs_files_in_every_format(tmp_path: Path, suffix: str) -> None:
    table = pd.DataFrame({"job_id": ["a", ""], "ref": ["faces/a.png", "/abs/b.jpg"], "driving": ["d.mp4", "/abs/e.mp4"],
                          "pose_multiplier": [0.5, None], "paste_back": [True, None]})
    path = tmp_path / f"jobs{suffix}"
    if suffix == ".csv":
        table.astype(object).fillna("").to_csv(path, index=False)
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps({k: v for k, v in r.items() if v is not None}) for r in table.to_dict("records")))
    else:
        table.to_parquet(path)
    first, second = load_jobs(path)
    assert first.job_id == "a" and first.ref == str(tmp_path / "faces/a.png") and first.driving == str(tmp_path / "d.mp4")
    assert second.job_id == "b__e" and second.ref == "/abs/b.jpg" and second.params == {}
    params = effective_params(first, AnimateConfig())
    assert params["pose_multiplier"] == 0.5 and params["paste_back"] is True and params["motion"] == "relative"


def test_unknown_columns_refuse_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("ref,driving,pose_multiplyer\na.png,b.mp4,2\n")
    with pytest.raises(ValueError, match="pose_multiplyer"):
        load_jobs(path)


def test_invalid_params_fail_that_job_only(tmp_path: Path) -> None:
    jobs = [Job("bad", "a.png", "b.mp4", {"motion": "sideways"}), Job("neg", "a.png", "b.mp4", {"pose_multiplier": -1}),
            Job("good", "a.png", "b.mp4"), Job("twin", "a.png", "b.mp4"), Job("good", "a.png", "b.mp4")]
    rows = plan_rows(jobs, tmp_path, "warp", AnimateConfig(), resume=True)
    assert [r["status"] for r in rows] == ["failed", "failed", "pending", "pending", "failed"]
    assert "motion" in rows[0]["reason"] and "pose_multiplier" in rows[1]["reason"]
    assert rows[4]["reason"] == "duplicate of job good"
    table = results_table(rows)
    assert list(table.columns) == list(RESULT_DEFAULTS) and len(table) == 5


def test_output_names_are_safe_and_change_with_what_changes_the_video() -> None:
    job = Job("../../etc/passwd x", "a.png", "b.mp4")
    name = output_name(job, "warp", effective_params(job, AnimateConfig()), 512)
    assert "/" not in name and not name.startswith(".") and name.endswith(".mp4")
    assert name == output_name(job, "warp", effective_params(job, AnimateConfig()), 512)
    other = effective_params(job, AnimateConfig(expression_multiplier=0.5))
    assert name != output_name(job, "warp", other, 512) != output_name(job, "hunyuan", other, 512)
    assert output_name(Job("...", "a.png", "b.mp4"), "warp", other, 512).startswith("job-")


def test_pairs_and_cross_products(tmp_path: Path) -> None:
    (tmp_path / "refs").mkdir()
    (tmp_path / "drivers").mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / "refs" / name).write_bytes(b"")
    for name in ("x.mp4", "y.mov"):
        (tmp_path / "drivers" / name).write_bytes(b"")
    jobs = cross_jobs(str(tmp_path / "refs"), str(tmp_path / "drivers"))
    assert [j.job_id for j in jobs] == ["a__x", "a__y", "b__x", "b__y"]
    assert pair_jobs("p/r.png", "q/d.mp4")[0].job_id == "r__d"


def test_sampling_options_reach_the_animator_in_its_form() -> None:
    from portraitflow.models.animators.registry import animator_params

    params = effective_params(Job("a", "a.png", "b.mp4", {"seed": 7, "appearance_scale": 2.5}), AnimateConfig())
    assert animator_params("hunyuan", params) == {**{k: v for k, v in params.items() if v is not None},
                                                  "appearance_scale": (2.5, 2.5)}
    assert "num_steps" not in animator_params("warp", params) and animator_params("warp", params)["seed"] == 7


def test_resume_skips_finished_outputs_and_redoes_unreadable_ones(tmp_path: Path) -> None:
    import numpy as np

    from portraitflow.operators.video_writer import write_h264

    jobs = [Job("done", "a.png", "b.mp4"), Job("torn", "a.png", "c.mp4")]
    planned = plan_rows(jobs, tmp_path, "warp", AnimateConfig(), resume=True)
    write_h264(planned[0]["output"], [np.zeros((6, 32, 32, 3), np.uint8)], fps=12)
    Path(planned[1]["output"]).write_bytes(b"not a video")
    again = plan_rows(jobs, tmp_path, "warp", AnimateConfig(), resume=True)
    assert [r["status"] for r in again] == ["skipped", "pending"] and again[0]["frames"] == 6
    assert [r["status"] for r in plan_rows(jobs, tmp_path, "warp", AnimateConfig(), resume=False)] == ["pending"] * 2


def test_paths_are_recorded_absolute_so_resume_does_not_depend_on_how_they_were_typed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "refs").mkdir()
    (tmp_path / "drivers").mkdir()
    (tmp_path / "refs" / "a.png").write_bytes(b"")
    (tmp_path / "drivers" / "x.mp4").write_bytes(b"")
    (tmp_path / "jobs.csv").write_text("ref,driving\nrefs/a.png,./drivers/x.mp4\n")
    forms = [pair_jobs("./refs/a.png", "drivers/x.mp4"), pair_jobs(str(tmp_path / "refs/a.png"), "drivers/../drivers/x.mp4"),
             cross_jobs("refs", "./drivers"), load_jobs("jobs.csv")]
    assert {(j.job_id, j.ref, j.driving) for jobs in forms for j in jobs} == \
        {("a__x", str(tmp_path / "refs/a.png"), str(tmp_path / "drivers/x.mp4"))}
    rows = plan_rows([jobs[0] for jobs in forms], tmp_path / "out", "warp", AnimateConfig(), resume=True)
    assert len({r["output"] for r in rows}) == 1 and rows[0]["ref"] == str(tmp_path / "refs/a.png")


def test_remote_paths_fail_their_job_with_a_reason_not_as_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("job_id,ref,driving\ns3,s3://bucket/a.png,local.mp4\nweb,a.png,https://example.com/d.mp4\nok,a.png,d.mp4\n")
    jobs = load_jobs(path)
    assert jobs[0].ref == "s3://bucket/a.png" and jobs[2].ref == str(tmp_path / "a.png")
    rows = plan_rows(jobs, tmp_path / "out", "warp", AnimateConfig(), resume=True)
    assert [r["status"] for r in rows] == ["failed", "failed", "pending"]
    assert "remote paths are not supported" in rows[0]["reason"] and "ref s3://bucket/a.png" in rows[0]["reason"]
    assert "driving https://example.com/d.mp4" in rows[1]["reason"]
