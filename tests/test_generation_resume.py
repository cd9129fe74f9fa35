"""Resume takes an existing output for a job's result only when it was made from what the inputs
hold now, and a skipped job's row keeps the record of the run that made its video."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.operators.generation_jobs import FINGERPRINT_BYTES, Job, input_fingerprint
from portraitflow.operators.atomic import write_parquet
from portraitflow.operators.generation_results import RESULTS_FILE, plan_rows, results_table
from portraitflow.operators.video_writer import write_h264

CFG = AnimateConfig(backend="warp")


def _inputs(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ref, driving = folder / "ref.png", folder / "talk.mp4"
    ref.write_bytes(rng.bytes(4096))
    driving.write_bytes(rng.bytes(3 * FINGERPRINT_BYTES))
    return ref, driving


def _plan(out: Path, ref: Path, driving: Path, job_id: str = "j") -> dict:
    [row] = plan_rows([Job(job_id, str(ref), str(driving))], out, "warp", CFG, resume=True)
    return row


def _finish(row: dict, frames: int = 6) -> None:
    write_h264(row["output"], [np.zeros((frames, 32, 32, 3), np.uint8)], fps=12)


def test_a_driving_video_or_reference_replaced_at_the_same_path_is_animated_again(tmp_path: Path) -> None:
    """The repro: a 94-frame output was kept after another clip was copied over talk.mp4."""
    ref, driving = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    first = _plan(out, ref, driving)
    _finish(first)
    assert _plan(out, ref, driving)["status"] == "skipped"

    reexport = bytearray(driving.read_bytes())
    reexport[-1] ^= 0xFF  # same path, same size, other bytes at its end (an mp4's index lives there)
    driving.write_bytes(bytes(reexport))
    changed = _plan(out, ref, driving)
    assert changed["status"] == "pending" and changed["output"] != first["output"]

    driving.write_bytes(driving.read_bytes() + b"more")  # another length
    assert _plan(out, ref, driving)["output"] not in (first["output"], changed["output"])

    ref_first = _plan(out, ref, driving)["output"]
    ref.write_bytes(b"another portrait" + ref.read_bytes()[16:])
    assert _plan(out, ref, driving)["output"] != ref_first


def test_a_touch_or_a_copy_of_the_same_bytes_keeps_the_name_and_resumes(tmp_path: Path) -> None:
    ref, driving = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    first = _plan(out, ref, driving)
    _finish(first)
    os.utime(driving, ns=(1, 1))  # touch: another mtime, the same bytes
    shutil.copyfile(ref, tmp_path / "ref_copy.png")
    shutil.copyfile(tmp_path / "ref_copy.png", ref)  # copied over itself: a new inode, the same bytes
    again = _plan(out, ref, driving)
    assert again["status"] == "skipped" and again["output"] == first["output"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "in", moved)  # the same files at another path, same job id
    assert _plan(out, moved / "ref.png", moved / "talk.mp4")["output"] == first["output"]
    assert _plan(out, moved / "ref.png", moved / "talk.mp4", job_id="k")["output"] != first["output"]


def test_inputs_that_cannot_be_read_when_planning_are_named_by_path_and_fail_later_not_here(tmp_path: Path) -> None:
    """A missing file, a folder, a URL: no crash in planning; the job is pending (preparation fails
    it with its reason) or failed with the URL reason, and its name is stable across reruns."""
    ref, driving = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert input_fingerprint(str(tmp_path / "nope.mp4")) == f"path:{tmp_path / 'nope.mp4'}"
    assert input_fingerprint("s3://bucket/a.mp4") == "path:s3://bucket/a.mp4"
    assert input_fingerprint(str(driving)).startswith("sha256:")
    jobs = [Job("missing", str(tmp_path / "nope.png"), str(driving)), Job("folder", str(ref), str(tmp_path)),
            Job("remote", str(ref), "s3://bucket/a.mp4"), Job("gone", str(tmp_path / "nope2.png"), str(driving))]
    rows = plan_rows(jobs, out, "warp", CFG, resume=True)
    assert [r["status"] for r in rows] == ["pending", "pending", "failed", "pending"]
    assert "remote paths are not supported" in rows[2]["reason"]
    assert rows[0]["output"] != rows[3]["output"]
    assert [r["output"] for r in plan_rows(jobs, out, "warp", CFG, resume=True)] == [r["output"] for r in rows]


def _previous_results(out: Path, row: dict, **record) -> dict:
    done = {**row, "status": "ok", "reason": "", "model": json.dumps({"animator": "warp", "seed": 7}), "frames": 6,
            "fps": 12.0, "seconds": 0.5, "has_audio": False, "prep_s": 3.5, "animate_s": 1.25, "encode_s": 0.5,
            "total_s": 5.25, **record}
    write_parquet(out / RESULTS_FILE, results_table([done]))
    return done


def test_a_skipped_job_keeps_the_model_record_and_timings_of_the_run_that_made_its_video(tmp_path: Path) -> None:
    """The repro: after a rerun every row was `skipped` with model `{}` and prep_s/animate_s 0."""
    ref, driving = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    first = _plan(out, ref, driving)
    _finish(first)
    done = _previous_results(out, first)
    again = _plan(out, ref, driving)
    assert again["status"] == "skipped" and again["reason"] == "complete output exists"
    for field in ("model", "frames", "fps", "seconds", "has_audio", "prep_s", "animate_s", "encode_s", "total_s"):
        assert again[field] == done[field], field
    # that skipped row, written as this run's results, carries the record on to the next rerun
    write_parquet(out / RESULTS_FILE, results_table([again]))
    third = _plan(out, ref, driving)
    assert third["status"] == "skipped" and json.loads(third["model"]) == {"animator": "warp", "seed": 7}
    assert third["prep_s"] == 3.5 and third["total_s"] == 5.25
    # the out folder moved: the record is found by the output's name
    shutil.move(out, tmp_path / "moved")
    assert _plan(tmp_path / "moved", ref, driving)["animate_s"] == 1.25


def test_without_a_usable_earlier_record_a_skipped_row_describes_the_video_alone(tmp_path: Path) -> None:
    """...and a video that holds other frames than its record says is made again (the repro: an
    output cut to 13 of its 75 frames was kept as done, and the preview crashed every rerun)."""
    ref, driving = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    first = _plan(out, ref, driving)
    _finish(first)

    def skipped() -> dict:
        row = _plan(out, ref, driving)
        assert row["status"] == "skipped" and row["frames"] == 6 and row["fps"] == pytest.approx(12.0)
        return row

    assert skipped()["model"] == "{}"  # no results.parquet
    (out / RESULTS_FILE).write_bytes(b"not parquet")
    assert skipped()["model"] == "{}"
    pd.DataFrame({"job_id": ["j"], "output": [first["output"]]}).to_parquet(out / RESULTS_FILE)  # other columns
    assert skipped()["model"] == "{}"
    _previous_results(out, first, frames=9)  # its record counts other frames: cut short since (a copy), say
    assert _plan(out, ref, driving)["status"] == "pending"
    _previous_results(out, first, status="failed")  # a failed row describes no video
    assert skipped()["prep_s"] == 0.0
    _previous_results(out, first)
    assert [r["status"] for r in plan_rows([Job("j", str(ref), str(driving))], out, "warp", CFG, resume=False)] \
        == ["pending"]


def test_one_generation_at_a_time_per_output_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app
    from portraitflow.operators.atomic import exclusive_folder

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    with exclusive_folder(out):  # another animate holds it
        result = CliRunner().invoke(app, ["animate", "--ref", str(tmp_path / "a.png"), "--driving",
                                          str(tmp_path / "b.mp4"), "--out", str(out)])
    assert result.exit_code == 2 and "another run is writing" in result.output, result.output
    assert not (out / RESULTS_FILE).exists()


def test_a_finished_job_is_found_when_other_jobs_change_its_derived_id(tmp_path: Path) -> None:
    """The repro: `en/anna.jpg` and `fr/anna.jpg`, each run alone, are `anna__drive`; listed
    together both get a hashed id, and their finished videos were rendered again. Found under the
    other id form, each is skipped with its own video and record; no file is added or renamed."""
    from portraitflow.operators.generation_jobs import pair_jobs, unique_ids
    from portraitflow.operators.generation_results import records_dir, write_record

    out = tmp_path / "out"
    en, driving = _inputs(tmp_path / "en")
    fr = tmp_path / "fr" / "ref.png"
    fr.parent.mkdir()
    fr.write_bytes(b"another portrait" + en.read_bytes())
    alone = {}
    for ref in (en, fr):
        [row] = plan_rows(pair_jobs(str(ref), str(driving)), out, "warp", CFG, resume=True)
        _finish(row)
        write_record(records_dir(out), {**row, "frames": 6, "fps": 12.0, "seconds": 0.5, "prep_s": 3.5})
        alone[str(ref)] = row["output"]
    files = sorted(out.glob("*.mp4"))
    both = unique_ids([Job("", str(en), str(driving)), Job("", str(fr), str(driving))], "test")
    assert all(job.job_id.startswith("ref__talk-") for job in both)  # other ids than alone
    rows = plan_rows(both, out, "warp", CFG, resume=True)
    assert [(r["status"], r["output"]) for r in rows] == [("skipped", alone[str(en)]), ("skipped", alone[str(fr)])]
    assert all(r["prep_s"] == 3.5 for r in rows) and sorted(out.glob("*.mp4")) == files
    assert plan_rows([Job("given", str(en), str(driving))], out, "warp", CFG, resume=True)[0]["status"] == "pending"


def test_results_keep_one_row_per_job_id_and_per_output(tmp_path: Path) -> None:
    """Earlier rows are replaced by this run's row of the same job id (ids stay unique: `evaluate`
    refuses a table with one id twice), or of the same output (found under another id by resume)."""
    from portraitflow.operators.generation_results import merged_with_earlier

    path = tmp_path / RESULTS_FILE
    row = {"job_id": "anna__drive", "status": "ok", "driving": "/in/drive.mp4"}
    en = {**row, "ref": "/en/anna.jpg", "output": "/out/anna__drive-a00d492ba0.mp4"}
    fr = {**row, "ref": "/fr/anna.jpg", "output": "/out/anna__drive-7a81c8c484.mp4"}
    write_parquet(path, results_table([en]))
    merged = merged_with_earlier(results_table([fr]), path)
    assert merged.ref.tolist() == ["/fr/anna.jpg"]  # run alone, both derive `anna__drive`: the later stands
    other = {**row, "job_id": "other", "ref": "/o.jpg", "output": "/out/other-0123456789.mp4"}
    write_parquet(path, results_table([*merged.to_dict("records"), other]))
    fr_again = {**fr, "job_id": "anna__drive-170bb791d1", "status": "skipped"}  # its video, under a hashed id
    merged = merged_with_earlier(results_table([fr_again]), path)
    assert merged[["job_id", "output"]].values.tolist() == [[r["job_id"], r["output"]] for r in (fr_again, other)]


def test_a_rerun_with_nothing_left_to_run_starts_no_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repro: "8 jobs: 8 skipped" took 35 s, nearly all of it starting Ray."""
    from portraitflow.jobs import generation
    from portraitflow.jobs.config import load_config

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started with no job to run")

    monkeypatch.setattr(generation, "init_ray", no_ray)
    ref, driving = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    _finish(_plan(out, ref, driving))
    cfg = load_config(None, ["animate.backend=warp", "mlflow.enabled=false"])
    table = generation.run_generation([Job("j", str(ref), str(driving))], out, cfg)
    assert table.status.tolist() == ["skipped"]
    assert pd.read_parquet(out / RESULTS_FILE).status.tolist() == ["skipped"]


def test_the_preview_leaves_out_an_output_that_cannot_be_read(tmp_path: Path) -> None:
    from portraitflow.operators.generation_results import preview_strip

    good, cut = tmp_path / "good.mp4", tmp_path / "cut.mp4"
    write_h264(good, [np.full((6, 32, 32, 3), 128, np.uint8)], fps=12)
    cut.write_bytes(good.read_bytes()[:300])
    strip = preview_strip([str(cut), str(good)], 3)
    assert strip is not None and strip.shape[0] == 160  # one row: the readable output's
