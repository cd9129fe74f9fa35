"""Generation jobs: the three CLI forms, jobs files, per-job params and deterministic names."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.operators.generation_jobs import (
    Job,
    cross_jobs,
    effective_params,
    load_jobs,
    output_name,
    output_settings,
    pair_jobs,
)
from portraitflow.operators.generation_results import RESULT_DEFAULTS, plan_rows, results_table
from portraitflow.operators.inputs import NOT_UTF8


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
            Job("good", "a.png", "b.mp4"), Job("twin", "a.png", "b.mp4"), Job("good", "a.png", "b.mp4"),
            Job("inf", "a.png", "b.mp4", {"expression_multiplier": "inf"})]  # was `ok`: a video of no face
    rows = plan_rows(jobs, tmp_path, "warp", AnimateConfig(), resume=True)
    assert [r["status"] for r in rows] == ["failed", "failed", "pending", "pending", "failed", "failed"]
    assert "motion" in rows[0]["reason"] and "pose_multiplier" in rows[1]["reason"]
    assert "expression_multiplier" in rows[5]["reason"] and "finite" in rows[5]["reason"]
    assert json.loads(rows[0]["params"]) == {"motion": "sideways"}  # what was refused, as given (was {})
    long = plan_rows([Job("hy", "a.png", "b.mp4", {"motion": "absolute"})], tmp_path, "hunyuan",
                     AnimateConfig(), resume=True)[0]["reason"]  # the settings hunyuan reads: a long list
    assert len(long) <= 300 and long.endswith("…") and long[-2] != " " and long.startswith("backend hunyuan does not use")
    assert rows[4]["reason"] == "duplicate of job good: the same files and settings, one video"
    table = results_table(rows)
    assert list(table.columns) == list(RESULT_DEFAULTS) and len(table) == 6


def test_output_names_are_safe_and_change_with_what_changes_the_video() -> None:
    job = Job("../../etc/passwd x", "a.png", "b.mp4")
    settings = output_settings("warp", AnimateConfig())
    name = output_name(job, "warp", effective_params(job, AnimateConfig()), settings)
    assert "/" not in name and not name.startswith(".") and name.endswith(".mp4")
    assert name == output_name(job, "warp", effective_params(job, AnimateConfig()), settings)
    other = effective_params(job, AnimateConfig(expression_multiplier=0.5))
    assert name != output_name(job, "warp", other, settings) != output_name(job, "hunyuan", other, settings)
    assert output_name(Job("...", "a.png", "b.mp4"), "warp", other, settings).startswith("job-")


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


def test_folder_jobs_take_every_kind_of_video_and_photo_the_other_flows_take(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("refs/face.gif", "refs/notes.txt", "drivers/a.mpg", "drivers/b.flv", "drivers/c.ts",
                 "only_text/readme.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "drivers" / "folder.mp4").mkdir()
    jobs = cross_jobs(str(tmp_path / "refs"), str(tmp_path / "drivers"))
    assert [j.job_id for j in jobs] == ["face__a", "face__b", "face__c"]
    assert "folder.mp4/" in caplog.text and "notes.txt" in caplog.text  # not taken, but named
    with pytest.raises(ValueError, match="holds no portraits"):
        cross_jobs(str(tmp_path / "only_text"), str(tmp_path / "drivers"))
    with pytest.raises(ValueError, match="holds no driving videos"):
        cross_jobs(str(tmp_path / "refs"), str(tmp_path / "only_text"))


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
    assert rows[0]["status"] == "pending" and rows[0]["ref"] == str(tmp_path / "refs/a.png")
    assert [r["reason"] for r in rows[1:]] == ["duplicate of job a__x: the same files and settings, one video"] * 3  # one output, so one job


def test_remote_paths_fail_their_job_with_a_reason_not_as_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("job_id,ref,driving\ns3,s3://bucket/a.png,local.mp4\nweb,a.png,https://example.com/d.mp4\nok,a.png,d.mp4\n")
    jobs = load_jobs(path)
    assert jobs[0].ref == "s3://bucket/a.png" and jobs[2].ref == str(tmp_path / "a.png")
    rows = plan_rows(jobs, tmp_path / "out", "warp", AnimateConfig(), resume=True)
    assert [r["status"] for r in rows] == ["failed", "failed", "pending"]
    assert "remote paths are not supported" in rows[0]["reason"] and "ref s3://bucket/a.png" in rows[0]["reason"]
    assert "driving https://example.com/d.mp4" in rows[1]["reason"]


def test_a_job_id_given_twice_refuses_the_file_naming_it(tmp_path: Path) -> None:
    """One id for two jobs would merge, overwrite and score the wrong rows downstream; which row
    was meant cannot be guessed, so the file is refused (like an unknown column), not half-run."""
    path = tmp_path / "jobs.csv"
    path.write_text("job_id,ref,driving\nclip7,a.png,x.mp4\nother,b.png,y.mp4\nclip7,c.png,z.mp4\n")
    with pytest.raises(ValueError, match=r"job_id 'clip7' is given to data rows 1, 3; job ids must be unique"):
        load_jobs(path)


def test_derived_ids_that_two_jobs_would_share_get_a_stable_hash(tmp_path: Path) -> None:
    """`s1/ref.png + s1/drive.mp4` and `s2/...` both derive `ref__drive`: each gets a dot-free hash
    of its own paths (the same on every read); an id no other job has keeps its documented form,
    and a derived id equal to a given one yields to it."""
    from portraitflow.operators.paths import safe_name

    path = tmp_path / "jobs.csv"
    path.write_text("job_id,ref,driving\n,s1/ref.png,s1/drive.mp4\n,s2/ref.png,s2/drive.mp4\n,s1/solo.png,s1/drive.mp4\n"
                    ",s1/ref.png,s1/drive.mp4.mov\nref__drive.mp4,x.png,y.mp4\n")
    jobs = load_jobs(path)
    ids = [j.job_id for j in jobs]
    assert len(set(ids)) == len(ids) and ids[2] == "solo__drive" and ids[4] == "ref__drive.mp4"
    assert ids[0].startswith("ref__drive-") and ids[1].startswith("ref__drive-") and ids[0] != ids[1]
    assert ids[3].startswith("ref__drive-mp4-")  # derived `ref__drive.mp4`, the given id of row 5
    assert all(safe_name(i, 96) == i for i in ids[:2] + ids[3:4])  # file-name safe: no dots, no slashes
    assert [j.job_id for j in load_jobs(path)] == ids  # reruns find their outputs
    rows = plan_rows(jobs, tmp_path / "out", "warp", AnimateConfig(), resume=True)
    assert [r["status"] for r in rows] == ["pending"] * 5 and results_table(rows)["job_id"].is_unique


def test_the_same_pair_with_other_params_is_two_jobs_and_the_same_row_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("ref,driving,pose_multiplier\na.png,x.mp4,0.5\na.png,x.mp4,1.0\n")
    first, second = load_jobs(path)
    assert first.job_id != second.job_id and first.job_id.startswith("a__x-")
    path.write_text("ref,driving\na.png,x.mp4\nb.png,y.mp4\na.png,x.mp4\n")
    with pytest.raises(ValueError, match=r"data rows 1 and 3 both get job id 'a__x-[0-9a-f]+'.*give each its own job_id"):
        load_jobs(path)


def test_cross_jobs_with_one_stem_in_two_formats_get_distinct_ids(tmp_path: Path) -> None:
    for folder, names in (("refs", ("a.png", "a.jpg", "b.png")), ("drivers", ("x.mp4",))):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"")
    jobs = cross_jobs(str(tmp_path / "refs"), str(tmp_path / "drivers"))
    ids = [j.job_id for j in jobs]
    assert len(set(ids)) == 3 and ids[2] == "b__x" and all(i.startswith("a__x-") for i in ids[:2])
    assert ids == [j.job_id for j in cross_jobs(str(tmp_path / "refs"), str(tmp_path / "drivers"))]


def test_the_preview_strip_shows_outputs_of_any_width(tmp_path: Path) -> None:
    """96 px is a width decord returns in a wrong shape: the strip reads it through PyAV."""
    import numpy as np

    from portraitflow.operators.generation_results import preview_strip
    from portraitflow.operators.video_writer import write_h264

    outputs = []
    for width in (96, 128):
        frames = np.stack([np.full((64, width, 3), 20 * k, np.uint8) for k in range(6)])
        outputs.append(str(tmp_path / f"out{width}.mp4"))
        write_h264(outputs[-1], [frames], fps=25)
    strip = preview_strip(outputs, 3, height=32)
    assert strip.shape == (64, 3 * 64, 3)  # rows of 3 frames, 32 px high: 48 and 64 px wide, padded to 64 x 3
    assert [int(strip[:32, 48 * k + 24].mean()) for k in range(3)] == pytest.approx([0, 40, 100], abs=3)  # frames 0, 2, 5


@pytest.mark.parametrize("row", ["hallo.jpg,vfr.mp4,", "my ref, é.jpg,vfr.mp4"])
def test_a_csv_row_with_more_fields_than_the_header_refuses_the_file_naming_it(tmp_path: Path, row: str) -> None:
    """A trailing comma (spreadsheet exports) or an unquoted comma in a path: pandas took the extra
    field for an index and shifted the row (ref became the driving video, driving empty)."""
    path = tmp_path / "jobs.csv"
    path.write_text(f'ref,driving\n"my ref, é.jpg",vfr.mp4\n{row}\n')
    with pytest.raises(ValueError, match=r"jobs.csv: data row 2 has 3 fields, the header 2: quote a value"):
        load_jobs(path)
    path.write_text('ref,driving\n"my ref, é.jpg",vfr.mp4\n\nb.png,\n')  # a quoted comma, a blank line, a short row
    quoted, short = load_jobs(path)
    assert quoted.ref == str(tmp_path / "my ref, é.jpg") and quoted.driving == str(tmp_path / "vfr.mp4")
    assert short.ref == str(tmp_path / "b.png") and short.driving == ""


def test_an_empty_ref_or_driving_fails_its_job_saying_so(tmp_path: Path) -> None:
    """An empty path read as the current folder: `a folder, not a video`, `Is a directory: '.'`."""
    path = tmp_path / "jobs.csv"
    path.write_text("job_id,ref,driving\nnoref,,d.mp4\nnodrive,a.png,\nneither,,\nok,a.png,d.mp4\n")
    rows = plan_rows(load_jobs(path), tmp_path / "out", "warp", AnimateConfig(), resume=True)
    assert [(r["job_id"], r["status"], r["reason"]) for r in rows] == [
        ("noref", "failed", "ref is empty"), ("nodrive", "failed", "driving is empty"),
        ("neither", "failed", "ref is empty; driving is empty"), ("ok", "pending", "")]


@pytest.mark.parametrize("form", ["jsonl", "arrow parquet", "pandas parquet", "csv"])
def test_job_ids_are_read_as_written_not_as_floats(tmp_path: Path, form: str) -> None:
    """Integer ids beside a row without one became `7.0` (pandas makes such a column float)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"jobs.{form.split()[-1]}"
    if form == "jsonl":
        path.write_text('{"ref": "a.png", "driving": "d.mp4", "job_id": 7}\n{"ref": "b.png", "driving": "d.mp4"}\n'
                        '{"ref": "c.png", "driving": "d.mp4", "job_id": 8}\n')
    elif form == "arrow parquet":
        pq.write_table(pa.table({"ref": ["a.png", "b.png", "c.png"], "driving": ["d.mp4"] * 3,
                                 "job_id": pa.array([7, None, 8])}), path)
    elif form == "pandas parquet":
        pd.DataFrame({"ref": ["a.png", "b.png", "c.png"], "driving": ["d.mp4"] * 3,
                      "job_id": pd.array([7, None, 8], dtype="Int64")}).to_parquet(path)
    else:
        path.write_text("ref,driving,job_id\na.png,d.mp4,7\nb.png,d.mp4,\nc.png,d.mp4,007\n")
    ids = [job.job_id for job in load_jobs(path)]
    assert ids == ["7", "b__d", "007" if form == "csv" else "8"]


def test_a_file_name_that_is_not_utf8_fails_its_job_and_the_table_holds_it(tmp_path: Path) -> None:
    """`caf\\xe9.jpg` in --refs ran, then the results table (pyarrow) refused its surrogate: a
    traceback after every job, no results.parquet, the same on every rerun."""
    import pyarrow as pa

    refs, drivers = tmp_path / "refs", tmp_path / "drivers"
    refs.mkdir(), drivers.mkdir()
    Image.new("RGB", (32, 32)).save(refs / "ok.png")
    Image.new("RGB", (32, 32)).save(refs / b"caf\xe9.png".decode("utf-8", "surrogateescape"))
    (drivers / "talk.mp4").write_bytes(b"not read when planning")
    rows = plan_rows(cross_jobs(str(refs), str(drivers)), tmp_path / "out", "warp", AnimateConfig(), resume=True)
    assert [(Path(r["ref"]).name, r["status"]) for r in rows] == [("caf\\xe9.png", "failed"), ("ok.png", "pending")]
    assert rows[0]["reason"] == f"ref: {NOT_UTF8}"
    pa.Table.from_pandas(results_table(rows))  # every row writable


def test_an_animator_output_version_renames_its_outputs_and_zero_names_nothing(monkeypatch) -> None:
    """A bumped `output_version` gives every output of that backend a new name, so a rerun remakes
    videos the old code made; version 0 adds nothing, so the names from before the field stay."""
    from portraitflow.models.animators.still import StillAnimator

    job = Job("talk", "a.png", "b.mp4")
    params = effective_params(job, AnimateConfig())
    before = output_name(job, "still", params, output_settings("still", AnimateConfig()))
    unversioned = output_settings("still", AnimateConfig())
    assert "output_version" not in unversioned
    monkeypatch.setattr(StillAnimator, "output_version", 2)
    bumped = output_settings("still", AnimateConfig())
    assert bumped == {**unversioned, "output_version": 2}
    assert output_name(job, "still", params, bumped) != before
    assert output_settings("warp", AnimateConfig())["output_version"] >= 1
    assert output_settings("hunyuan", AnimateConfig(backend="hunyuan", weights="tiny"))["output_version"] >= 1


def test_a_damaged_motion_cache_is_extracted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached driver's motion cut short failed every job on that driver on every resumed run."""
    import numpy as np

    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.operators import animate
    from portraitflow.operators.driving_motion import DrivingMotion

    frames = 3
    motion = DrivingMotion(25.0, 512, np.zeros(frames, np.int64), np.zeros((1, 4)), np.zeros((1, 4)),
                           np.zeros((frames, 5, 2)), np.zeros((frames, 5, 2)), np.zeros((frames, 68, 2)),
                           np.zeros((frames, 3)), np.ones(frames, bool))
    extractions = []
    monkeypatch.setattr(animate, "worker_analyzer", lambda face: None)
    monkeypatch.setattr(animate, "extract_driving_motion", lambda *args, **kwargs: extractions.append(1) or motion)
    driver = tmp_path / "talk.mp4"
    driver.write_bytes(b"a driver")
    args = (str(driver), FaceConfig().model_dump_json(), AnimateConfig(), tmp_path / "motion")
    first = animate._driving_motion(*args)
    assert animate._driving_motion(*args) == first and len(extractions) == 1  # cached
    [cached] = (tmp_path / "motion").glob("*.npz")
    cached.write_bytes(first[:100])
    assert animate._driving_motion(*args) == first and len(extractions) == 2
    assert DrivingMotion.from_bytes(cached.read_bytes()).num_frames == frames


def test_a_jobs_file_not_utf8_or_empty_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    """Python's codec error named neither the file nor the fix; an empty file read as `unknown columns []`."""
    latin = tmp_path / "latin.csv"
    latin.write_bytes("ref,driving\ncafé.png,talk.mp4\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv: not UTF-8 text \(byte 15 is b'\\xe9'\): save it as UTF-8"):
        load_jobs(latin)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.csv: empty: no columns \(ref and driving"):
        load_jobs(empty)


def test_a_preview_that_cannot_be_written_is_a_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    """On a full disk the strip's write raised after every video and results.parquet were written:
    a traceback instead of the summary, and the MLflow run ended FAILED."""
    import logging

    import numpy as np

    from portraitflow.operators import generation_results

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(generation_results, "preview_strip", lambda outputs, frames: np.zeros((8, 8, 3), np.uint8))
    monkeypatch.setattr(generation_results, "atomic_write", full_disk)
    table = pd.DataFrame({"status": ["ok"], "output": [str(tmp_path / "a.mp4")]})
    with caplog.at_level(logging.WARNING):
        assert generation_results.save_preview(table, AnimateConfig(), tmp_path) is None
    assert "preview.png was not written: [Errno 28] No space left on device" in caplog.text


def test_videos_of_earlier_settings_left_in_the_folder_are_named(tmp_path: Path, caplog) -> None:
    """A rerun with other settings wrote its videos beside the first run's, and nothing said that
    half the folder's videos were in no row of results.parquet (review s24)."""
    import logging

    from portraitflow.jobs.generation import _warn_of_unlisted_videos

    for name in ("talk-aaaa.mp4", "talk-bbbb.mp4", ".talk-cccc.mp4.x1y2z3w4.part"):
        (tmp_path / name).write_bytes(b"")
    results = pd.DataFrame({"output": [str(tmp_path / "talk-bbbb.mp4"), ""]})
    with caplog.at_level(logging.WARNING):
        _warn_of_unlisted_videos(tmp_path, results)
    assert "1 video(s) in" in caplog.text and "(talk-aaaa.mp4)" in caplog.text and "cccc" not in caplog.text
    caplog.clear()
    _warn_of_unlisted_videos(tmp_path, pd.DataFrame({"output": [str(tmp_path / n) for n in ("talk-aaaa.mp4",
                                                                                             "talk-bbbb.mp4")]}))
    assert not caplog.text


def test_one_job_written_two_ways_is_one_job(tmp_path: Path) -> None:
    """`1` and `1.0` (and `true` and `True`) in a CSV were two jobs with two ids: two videos of the
    same thing. Read as the settings read them, they are the same row, which the file may not list
    twice; a value the setting refuses stays as written and fails its own job."""
    path = tmp_path / "jobs.csv"
    path.write_text("ref,driving,pose_multiplier,paste_back\na.png,d.mp4,1,true\na.png,d.mp4,1.0,True\n")
    with pytest.raises(ValueError, match="data rows 1 and 2 are one job"):
        load_jobs(path)
    path.write_text("ref,driving,pose_multiplier\na.png,d.mp4,0.5\na.png,d.mp4,lots\na.png,d.mp4,1\n")
    first, second, third = load_jobs(path)
    assert second.params == {"pose_multiplier": "lots"}  # fails its own job
    with pytest.raises(ValueError, match="invalid job params: pose_multiplier"):
        effective_params(second, AnimateConfig())
    # ids hash the params as written, as before: the videos of earlier runs keep their names
    from portraitflow.operators.generation_jobs import _hashed_id

    assert first.params == {"pose_multiplier": "0.5"}
    assert first.job_id == _hashed_id(Job("", first.ref, first.driving, {"pose_multiplier": "0.5"}))
    assert first.job_id != _hashed_id(Job("", first.ref, first.driving, {"pose_multiplier": 0.5}))
