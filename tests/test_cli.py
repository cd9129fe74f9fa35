"""The CLI's handling of flags and of ordinary user mistakes: clean errors, no Ray, no tracebacks."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from portraitflow.jobs.cli import app
from portraitflow.jobs.config import load_config

WIDE = {"COLUMNS": "400"}  # rich wraps errors and help to the terminal width


@pytest.fixture
def generation_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Stands in for the Ray flow: records the config `animate` hands over and returns no rows."""
    from portraitflow.jobs import generation

    calls: list = []

    def record(jobs, out, cfg, resume=True) -> pd.DataFrame:
        calls.append(cfg)
        return pd.DataFrame({"job_id": [], "status": [], "reason": []})

    monkeypatch.setattr(generation, "run_generation", record)
    return calls


def _animate(tmp_path: Path, *flags: str):
    for name in ("a.png", "b.mp4"):  # the flags refuse a path that is not there
        (tmp_path / name).touch()
    pair = ["--ref", str(tmp_path / "a.png"), "--driving", str(tmp_path / "b.mp4"), "--out", str(tmp_path / "out")]
    return CliRunner().invoke(app, ["animate", *pair, *flags], env=WIDE)


@pytest.mark.parametrize("weights", ["/w/my run #2", "2024", "no", "tiny: yes"])
def test_flag_values_are_kept_whole(weights: str, generation_calls: list, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A flag's string is the value: not cut at `#`, not read as a YAML number, boolean or mapping."""
    monkeypatch.setattr("portraitflow.jobs.animate.check_weights", lambda cfg: None)  # no such folders here
    monkeypatch.setattr("portraitflow.jobs.options.node_model_problem", lambda cfg: None)  # nor such a cluster
    result = _animate(tmp_path, "--backend", "hunyuan", "--weights", weights, "--ray-address", "auto #1")
    assert result.exit_code == 0, result.output
    assert generation_calls[0].animate.weights == weights
    assert generation_calls[0].ray.address == "auto #1"


def test_missing_weights_fail_before_ray(generation_calls: list, tmp_path: Path) -> None:
    result = _animate(tmp_path, "--weights", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    assert f"weights folder {tmp_path / 'nowhere'} does not exist" in " ".join(result.output.replace("│", " ").split())
    (tmp_path / "empty").mkdir()
    incomplete = _animate(tmp_path, "--weights", str(tmp_path / "empty"))
    assert incomplete.exit_code == 2 and f"{tmp_path / 'empty' / 'hyportrait' / 'unet'}.pth" in incomplete.output
    assert "Traceback" not in result.output
    no_weights = _animate(tmp_path, "--backend", "hunyuan")
    assert no_weights.exit_code == 2 and "needs --weights" in no_weights.output
    assert generation_calls == []
    tiny = _animate(tmp_path, "--weights", "tiny")
    assert tiny.exit_code == 0, tiny.output
    assert generation_calls[0].animate.weights == "tiny"


def test_help_names_choices_and_defaults() -> None:
    animate = CliRunner().invoke(app, ["animate", "--help"], env=WIDE)
    assert animate.exit_code == 0
    text = " ".join(animate.output.split())  # as wrapped at any width
    assert "auto|warp|hunyuan" in text and "relative|absolute" in text
    assert "`tiny` for random tiny modules" in text
    assert "default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current directory" in text
    refused = CliRunner().invoke(app, ["animate", "--backend", "bogus", "--out", "x"], env=WIDE)
    assert refused.exit_code == 2 and "bogus" in refused.output


def test_help_shows_no_value_for_a_flag() -> None:
    """typer 0.29 renders `--dry-run <bool>`, which reads as if it took a value: `--dry-run true`
    would then curate an input named `true`. pyproject keeps typer below it."""
    curate = CliRunner().invoke(app, ["curate", "--help"], env=WIDE).output
    assert re.search(r"--dry-run\s+List the inputs", curate), curate


def test_a_bad_config_file_or_override_is_a_usage_error(tmp_path: Path) -> None:
    """Malformed YAML, a folder given as --config, an unparsable --set: exit 2 naming it, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate: {fps: [\n")
    for flags, named in [(["--config", str(bad)], f"{bad} is not valid YAML"),
                         (["--config", str(tmp_path)], "is a directory"),
                         (["--set", "curate.fps=["], "override 'curate.fps=[' is not valid YAML")]:
        result = CliRunner().invoke(app, ["config", "show", *flags], env=WIDE)
        assert result.exit_code == 2, result.output
        assert named in result.output and "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_inspect_names_the_missing_manifest(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)], env=WIDE)
    assert result.exit_code == 2
    assert str(tmp_path / "manifest.parquet") in result.output and "not a folder written by" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_inspect_says_a_curation_stopped_before_its_tables_can_be_resumed(tmp_path: Path) -> None:
    """A run stopped by `ray job stop` was called "not a folder written by `portraitflow curate`"."""
    from portraitflow.jobs.runtime import claim_folder

    claim_folder(tmp_path, "curate")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path)], env=WIDE)
    assert result.exit_code == 2 and "rerun the same `portraitflow curate` command" in result.output


def test_inspect_reports_a_truncated_shard_and_exits_1(tmp_path: Path) -> None:
    """The summary still prints; the broken shard counts its intact samples and says why."""
    import io
    import json
    import tarfile

    pd.DataFrame({"path": ["a.mp4"], "status": ["accepted"], "error": [None], "seconds_accepted": [3.0]}).to_parquet(
        tmp_path / "manifest.parquet")
    pd.DataFrame({"key": ["k0", "k1", "k2"], "decision": ["accepted"] * 3, "reason": [None] * 3}).to_parquet(
        tmp_path / "clips.parquet")
    shard = io.BytesIO()
    with tarfile.open(fileobj=shard, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key in ("k0", "k1", "k2"):
            for field, size in (("json", 10), ("mp4", 3000)):
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size = size
                tar.addfile(info, io.BytesIO(bytes(size)))
    whole = shard.getvalue()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "000000.tar").write_bytes(whole)
    (tmp_path / "shards" / "000001.tar").write_bytes(whole[:whole.index(b"k1.mp4") + 2048])  # inside k1's video

    result = CliRunner().invoke(app, ["inspect", str(tmp_path)], env=WIDE)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["shards"][0] == {"name": "000000.tar", "samples": 3, "mb": round(len(whole) / 2**20, 2)}
    broken = summary["shards"][1]
    assert broken["samples"] == 1 and broken["error"].startswith("unreadable: ")
    assert summary["shards_unreadable"] == 1 and summary["sample_keys"] == ["k0", "k1", "k2"]
    assert "1 of 2 shards unreadable: 000001.tar" in result.stderr and "Traceback" not in result.output
    assert "delete the notes" not in result.stderr
    # damaged in place, a shard keeps the size and time its note names: curate would trust it, unless told
    note = tmp_path / ".state" / "shard_keys" / "000001.json"
    note.parent.mkdir(parents=True)
    note.write_text("{}")
    again = CliRunner().invoke(app, ["inspect", str(tmp_path)], env=WIDE)
    assert again.exit_code == 1 and f"rm {note}" in " ".join(again.stderr.split())


def test_report_refuses_a_run_that_is_no_evaluation(tmp_path: Path) -> None:
    """A curation run's id made a page of curation metrics titled as an evaluation, exit 0."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("curate")).info.run_id
    result = CliRunner().invoke(app, ["report", run, "--out", str(tmp_path / "r"), "--mlflow-uri", uri], env=WIDE)
    assert result.exit_code == 2 and "experiment 'curate') is neither a sweep nor an evaluation" in result.output
    assert not (tmp_path / "r").exists()


def test_report_names_the_unknown_run_and_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["report", "0123abcd", "--out", str(tmp_path / "r"), "--mlflow-uri", uri], env=WIDE)
    assert result.exit_code == 2
    assert "run 0123abcd" in result.output and uri in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "r").exists()  # nothing written for a run that is not there


def test_insightface_error_names_a_real_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """The missing-pack message tells users an override the CLI accepts."""
    from portraitflow.models.face.model_files import INSIGHTFACE_ROOT_ENV, ModelFilesMissing, insightface_models

    monkeypatch.delenv(INSIGHTFACE_ROOT_ENV, raising=False)
    with pytest.raises(ModelFilesMissing) as missing:
        insightface_models(None, "buffalo_l")
    override = re.search(r"--set (\S+)=<root>", str(missing.value))
    assert override is not None, str(missing.value)
    assert load_config(None, [f"{override.group(1)}=/models"]).face.insightface_root == "/models"


def test_a_root_holding_another_pack_names_it(tmp_path: Path) -> None:
    """The message sent a user whose root held `pack` to download buffalo_l."""
    from portraitflow.models.face.model_files import ModelFilesMissing, insightface_models

    (tmp_path / "models" / "pack").mkdir(parents=True)
    (tmp_path / "models" / "pack" / "det_10g.onnx").write_bytes(b"")
    with pytest.raises(ModelFilesMissing, match="holds the pack[(]s[)] pack: pass --set face.insightface_pack=pack"):
        insightface_models(str(tmp_path), "buffalo_l")


def test_a_face_backend_without_its_models_is_a_usage_error(generation_calls: list, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTRAITFLOW_INSIGHTFACE_ROOT", raising=False)
    result = _animate(tmp_path, "--set", "face.backend=insightface")
    assert result.exit_code == 2 and "download an insightface pack" in result.output and generation_calls == []
    assert "Traceback" not in result.output
    # on a cluster the nodes' files count, not the driver's (tests/test_cluster_models.py asks real nodes)
    monkeypatch.setattr("portraitflow.jobs.runtime.check_ray_reachable", lambda _ray: None)  # as if it answered
    monkeypatch.setattr("portraitflow.jobs.options.node_model_problem", lambda cfg: None)
    on_a_cluster = _animate(tmp_path, "--set", "face.backend=insightface", "--ray-address", "head:6379")
    assert on_a_cluster.exit_code == 0, on_a_cluster.output
    monkeypatch.setattr("portraitflow.jobs.options.node_model_problem", lambda cfg: "1 of 2 Ray node(s) lack them")
    lacking = _animate(tmp_path, "--set", "face.backend=insightface", "--ray-address", "head:6379")
    assert lacking.exit_code == 2 and "1 of 2 Ray node(s) lack them" in lacking.output


@pytest.mark.parametrize("verb", ["curate", "sweep", "evaluate"])
def test_every_verb_refuses_missing_face_models_before_anything_starts(verb: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTRAITFLOW_INSIGHTFACE_ROOT", raising=False)
    monkeypatch.setattr("portraitflow.jobs.runtime.init_ray", lambda *args, **kwargs: pytest.fail("Ray started"))
    (tmp_path / "sweep.yaml").write_text("configs: [{backend: warp}]\n")
    (tmp_path / "results.csv").write_text("job_id,output\n")
    first = {"curate": str(tmp_path), "sweep": str(tmp_path / "sweep.yaml"), "evaluate": str(tmp_path / "results.csv")}
    result = CliRunner().invoke(app, [verb, first[verb], "--out", str(tmp_path / "out"), "--set",
                                      "face.backend=insightface"], env=WIDE)
    assert result.exit_code == 2 and "download an insightface pack" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_animate_names_its_mlflow_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """curate, sweep and evaluate print their run id; animate printed none."""
    from portraitflow.jobs import generation
    from portraitflow.jobs.runtime import mlflow_run

    def one_run(jobs, out, cfg, resume=True) -> pd.DataFrame:
        with mlflow_run(cfg.mlflow, cfg.animate.experiment, out):
            return pd.DataFrame({"job_id": ["a"], "status": ["ok"], "reason": [""]})

    monkeypatch.setattr(generation, "run_generation", one_run)
    for name in ("a.png", "b.mp4"):
        (tmp_path / name).touch()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["animate", "--ref", str(tmp_path / "a.png"), "--driving", str(tmp_path / "b.mp4"),
                                      "--out", str(tmp_path / "out"), "--mlflow-uri", uri], env=WIDE)
    assert result.exit_code == 0, result.output
    assert re.search(rf"^run [0-9a-f]{{32}} \({re.escape(uri)}\)$", result.output, re.M), result.output


def test_a_misspelt_or_swapped_ref_or_driving_is_a_usage_error(generation_calls: list, tmp_path: Path) -> None:
    """A typo in --ref, or the two swapped, started Ray and made a failed job about 30 s later; it is
    the command that is wrong."""
    (tmp_path / "b.mp4").touch()
    result = CliRunner().invoke(app, ["animate", "--ref", str(tmp_path / "a.jpgg"), "--driving", str(tmp_path / "b.mp4"),
                                      "--out", str(tmp_path / "out")], env=WIDE)
    assert result.exit_code == 2 and "a.jpgg' does not exist" in result.output and not generation_calls, result.output
    folder = CliRunner().invoke(app, ["animate", "--ref", str(tmp_path / "b.mp4"), "--driving", str(tmp_path),
                                      "--out", str(tmp_path / "out")], env=WIDE)
    assert folder.exit_code == 2 and "is a directory" in folder.output and not generation_calls, folder.output
    (tmp_path / "a.JPG").touch()
    swapped = CliRunner().invoke(app, ["animate", "--ref", str(tmp_path / "b.mp4"), "--driving", str(tmp_path / "a.JPG"),
                                       "--out", str(tmp_path / "out")], env=WIDE)
    assert swapped.exit_code == 2 and "swap them" in swapped.output and not generation_calls, swapped.output


def test_animate_refuses_an_out_that_is_a_file(generation_calls: list, tmp_path: Path) -> None:
    (tmp_path / "out").write_text("not a folder")
    result = _animate(tmp_path)
    assert result.exit_code == 2 and "is a file" in result.output and generation_calls == []


def test_every_verb_that_writes_takes_its_folder_as_out(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["samples", "--out", str(tmp_path / "samples")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "samples" / "truncated.mp4").is_file()
    for verb in ("samples", "curate", "animate", "sweep", "evaluate", "report", "convert-weights"):
        help_text = CliRunner().invoke(app, [verb, "--help"], env=WIDE).output
        assert "--out" in help_text, verb


def test_curate_refuses_an_actor_larger_than_a_local_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Data would wait forever for an actor no node can place (it did, with actor_cpus 4 on 2 CPUs)."""
    import ray

    from portraitflow.pipelines import curate as pipeline

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("portraitflow.jobs.runtime.init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(pipeline, "curate_inputs", lambda *args: pytest.fail("curation started"))
    (tmp_path / "a.mp4").write_bytes(b"x")
    result = CliRunner().invoke(app, ["curate", str(tmp_path / "a.mp4"), "--out", str(tmp_path / "out"),
                                      "--set", "curate.actor_cpus=4", "--set", "mlflow.enabled=false"], env=WIDE)
    assert result.exit_code == 2, result.output
    assert "a curation actor needs 4 CPUs (curate.actor_cpus); Ray has 2" in result.output


@pytest.mark.parametrize("verb", ["evaluate", "sweep", "report"])
def test_the_verbs_whose_results_are_mlflow_runs_refuse_it_disabled(verb: str, tmp_path: Path) -> None:
    """They would record (or read) runs anyway, the setting silently ignored."""
    (tmp_path / "sweep.yaml").write_text("configs: [{backend: warp}]\n")
    (tmp_path / "results.csv").write_text("job_id,output\n")
    first = {"report": "0123abcd", "sweep": str(tmp_path / "sweep.yaml"), "evaluate": str(tmp_path / "results.csv")}
    result = CliRunner().invoke(app, [verb, first[verb], "--out", str(tmp_path / "out"), "--set", "mlflow.enabled=false",
                                      "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], env=WIDE)
    assert result.exit_code == 2 and "keep their results in MLflow runs" in result.output, result.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


def test_doctor_fails_where_the_flows_refuse_the_face_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both backends need dlib's landmarks: a machine without them must not pass an image or node check."""
    from portraitflow.models.face import model_files

    def missing() -> dict:
        raise model_files.ModelFilesMissing("no 68-point predictor")

    monkeypatch.setattr(model_files, "dlib_models", missing)
    result = CliRunner().invoke(app, ["doctor", "--no-check-ray", "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"],
                                env=WIDE)
    assert result.exit_code == 1, result.output
    assert "[missing] face.backend=opencv: no 68-point predictor" in result.output


def test_doctor_can_require_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU node whose image has a CPU torch passed its setup check; its hunyuan jobs failed one by one."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a node without one
    args = ["doctor", "--no-check-ray", "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert CliRunner().invoke(app, args, env=WIDE).exit_code == 0  # this machine has no GPU: reported, not required
    result = CliRunner().invoke(app, [*args, "--require-gpu"], env=WIDE)
    assert result.exit_code == 1 and "[missing] gpu: no CUDA device visible to torch" in result.output, result.output


def test_samples_refuses_an_out_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        result = CliRunner().invoke(app, ["samples", "--out", str(out)], env=WIDE)
        assert result.exit_code == 2 and "is a file, not a folder" in result.output, result.output


def test_a_mistyped_input_is_said_to_be_missing(tmp_path: Path) -> None:
    """Not "decord cannot open the video", which hid the cause; beside an input that is there, it is
    a `failed` row; alone, a usage error, the dry run's as the run's (it listed the run as going on)."""
    from portraitflow.operators.inputs import NO_SUCH_FILE

    (tmp_path / "there.mp4").write_bytes(b"\0" * 100)
    result = CliRunner().invoke(app, ["curate", str(tmp_path / "nope_input"), str(tmp_path / "there.mp4"),
                                      "--out", str(tmp_path / "out"), "--dry-run"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert re.search(rf"fails +nope_input-\w+ +\S+nope_input +\(FileNotFoundError: {NO_SUCH_FILE}\)", result.output)
    alone = CliRunner().invoke(app, ["curate", str(tmp_path / "nope_input"), str(tmp_path / "*.mkv"),
                                     "--out", str(tmp_path / "out"), "--dry-run"], env=WIDE)
    said = " ".join(alone.output.replace("│", " ").split())
    assert alone.exit_code == 2 and "no such file or folder:" in said and "matched no file" in said, alone.output


def test_curate_says_which_inputs_failed_and_refuses_arguments_that_name_nothing(tmp_path: Path, in_process) -> None:
    """`curate /nope/dir` exited 0 after starting Ray, and a run's failed inputs showed only as a
    count: a typo looked like success."""
    args = ["--out", str(tmp_path / "out"), "--set", "mlflow.enabled=false"]
    typo = CliRunner().invoke(app, ["curate", str(tmp_path / "nope"), str(tmp_path / "*.mkv"), *args], env=WIDE)
    assert typo.exit_code == 2 and "no such file or folder" in typo.output and not (tmp_path / "out").exists()
    (tmp_path / "broken.mp4").write_bytes(b"\0" * 1000)
    failed = CliRunner().invoke(app, ["curate", str(tmp_path / "broken.mp4"), str(tmp_path / "nope"), *args], env=WIDE)
    assert failed.exit_code == 1, failed.output  # every input failed: nothing was curated
    assert f"failed {tmp_path / 'broken.mp4'}: " in failed.output and f"failed {tmp_path / 'nope'}: " in failed.output
    (tmp_path / "other.mp4").write_bytes(b"\0" * 1000)  # the folder's earlier failures are not this run's news
    other = CliRunner().invoke(app, ["curate", str(tmp_path / "other.mp4"), *args], env=WIDE)
    assert f"failed {tmp_path / 'other.mp4'}: " in other.output and "broken.mp4" not in other.output, other.output


def test_sweep_passes_retry_failed_to_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def run_sweep(spec, cfg, out, retry_failed=False):
        calls.append(retry_failed)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.csv").write_text("config,run_id\nwarp,r\n")
        return "r"

    monkeypatch.setattr("portraitflow.jobs.sweep.run_sweep", run_sweep)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "talk.mp4").write_bytes(b"")  # a dataset naming no video is refused before the sweep
    (tmp_path / "sweep.yaml").write_text(f"dataset: {{type: folder, path: {tmp_path / 'data'}}}\n"
                                         "configs: [{backend: warp}]\n")
    for flags in ([], ["--retry-failed"]):
        result = CliRunner().invoke(app, ["sweep", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "out"),
                                          "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", *flags], env=WIDE)
        assert result.exit_code == 0, result.output
    assert calls == [False, True]


def test_a_setting_out_of_range_is_one_line_per_problem() -> None:
    """Pydantic's own text takes three lines per field and ends with a link to its documentation."""
    result = CliRunner().invoke(app, ["config", "show", "--set", "curate.fps=-1", "--set", "face.det_size=3",
                                      "--set", "curate.bogus=1"], env=WIDE)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.replace("│", " ").split())
    assert ("face.det_size: Input should be greater than or equal to 32 (got 3); curate.fps: Input should be "
            "greater than 0 (got -1); curate.bogus: no such setting (got 1)") in message, message
    assert "errors.pydantic.dev" not in message
    typos = CliRunner().invoke(app, ["config", "show", "--set", "curat.fps=25", "--set", "curate.detect_evry=2"], env=WIDE)
    message = " ".join(typos.output.replace("│", " ").split())
    assert typos.exit_code == 2 and "curat: no such setting (did you mean 'curate'?)" in message, message
    assert "curate.detect_evry: no such setting (did you mean 'detect_every'?)" in message, message


def test_animate_refuses_a_jobs_file_with_a_header_alone(generation_calls: list, tmp_path: Path) -> None:
    """It ran no job, logged a run and exited 0: a script took an empty batch for a finished one."""
    (tmp_path / "jobs.csv").write_text("ref,driving\n")
    result = CliRunner().invoke(app, ["animate", "--jobs", str(tmp_path / "jobs.csv"), "--out", str(tmp_path / "out")],
                                env=WIDE)
    assert result.exit_code == 2 and "has no jobs" in result.output and generation_calls == []


@pytest.mark.parametrize("verb", ["animate", "sweep", "evaluate", "report"])
def test_a_folder_holding_curated_outputs_is_refused_to_other_verbs(verb: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing told a curate folder from an animate one: one flow wrote its report/, ledger and
    lock among the other's files. The first flow to hold a folder marks it; another is refused
    (exit 2) before Ray starts, and the same flow goes on."""
    from portraitflow.jobs.runtime import OWNER_MARK, FolderOfAnotherFlow, claim_folder

    monkeypatch.setattr("portraitflow.jobs.runtime.init_ray", lambda *args, **kwargs: pytest.fail("Ray started"))
    out = tmp_path / "curated"
    out.mkdir()
    claim_folder(out, "curate")
    assert (out / OWNER_MARK).read_text() == "curate\n"
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.mp4").write_bytes(b"x")
    (tmp_path / "sweep.yaml").write_text("configs: [{backend: warp}]\n")
    (tmp_path / "results.csv").write_text("job_id,output\n")
    first = {"animate": ["--ref", str(tmp_path / "a.png"), "--driving", str(tmp_path / "b.mp4")],
             "sweep": [str(tmp_path / "sweep.yaml")], "evaluate": [str(tmp_path / "results.csv")], "report": ["0" * 32]}
    result = CliRunner().invoke(app, [verb, *first[verb], "--out", str(out)], env=WIDE)
    assert result.exit_code == 2 and "holds the outputs of `portraitflow curate`" in result.output, result.output
    claim_folder(out, "curate")  # its own flow goes on
    with pytest.raises(FolderOfAnotherFlow, match="not animate"):
        claim_folder(out, "animate")


@pytest.mark.parametrize(("holds", "owner"), [(".state/done", "curate"), ("results.parquet", "animate"),
                                              ("summary.csv", "sweep"), ("per_video.parquet", "evaluate")])
def test_a_folder_written_before_the_mark_is_known_by_what_it_holds(tmp_path: Path, holds: str, owner: str) -> None:
    """An unmarked curate folder given once by mistake to animate would have become animate's, and
    its curation could not resume."""
    from portraitflow.jobs.runtime import FolderOfAnotherFlow, claim_folder, folder_owner

    (tmp_path / holds).mkdir(parents=True) if holds.startswith(".state") else (tmp_path / holds).write_bytes(b"")
    (tmp_path / ".state" / "motion").mkdir(parents=True, exist_ok=True)  # animate's cache: a .state/ of its own
    assert folder_owner(tmp_path) == owner
    other = "animate" if owner != "animate" else "curate"
    with pytest.raises(FolderOfAnotherFlow):
        claim_folder(tmp_path, other)
    claim_folder(tmp_path, owner)
    assert folder_owner(tmp_path) == owner


@pytest.mark.parametrize(("given", "expected"), [(None, "false"), ("true", "true")])
def test_the_command_silences_mlflows_artifact_bars_unless_the_user_set_them(
        given: str | None, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep's report printed a progress bar per artifact it downloaded, burying its summary."""
    import sys

    from portraitflow.jobs import cli

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", given or "")  # recorded, so the test's own is undone
    if given is None:
        monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    monkeypatch.setattr(sys, "argv", ["portraitflow", "--help"])
    monkeypatch.setattr("portraitflow.jobs.runtime.stop_on_sigterm", lambda: None)  # pytest keeps its handler
    with pytest.raises(SystemExit):
        cli.main()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == expected


@pytest.mark.parametrize("verb", ["curate", "animate", "samples"])
def test_an_out_that_cannot_be_written_is_a_usage_error(verb: str, tmp_path: Path) -> None:
    """A read-only place (here /proc, where even root makes no folder) gave a 68-line traceback, exit 1."""
    (tmp_path / "a.png").touch()
    (tmp_path / "b.mp4").touch()
    first = {"curate": [str(tmp_path / "b.mp4")], "animate": ["--ref", str(tmp_path / "a.png"), "--driving",
                                                               str(tmp_path / "b.mp4")], "samples": []}
    result = CliRunner().invoke(app, [verb, *first[verb], "--out", "/proc/portraitflow_out"], env=WIDE)
    assert result.exit_code == 2 and "cannot write in /proc" in result.output, result.output


def test_animate_refuses_an_out_that_is_one_of_its_input_folders(tmp_path: Path, generation_calls: list) -> None:
    """An --out that was --drivers took the run's own videos for new drivers on every rerun; a folder
    inside one is not listed (the folders are read flat), so it is taken."""
    refs, drivers = tmp_path / "refs", tmp_path / "drivers"
    refs.mkdir()
    drivers.mkdir()
    for out in (drivers, refs):
        result = CliRunner().invoke(app, ["animate", "--refs", str(refs), "--drivers", str(drivers), "--out", str(out)],
                                    env=WIDE)
        assert result.exit_code == 2 and "a rerun would take this run's videos" in result.output, result.output
    assert generation_calls == []
    inside = CliRunner().invoke(app, ["animate", "--refs", str(refs), "--drivers", str(drivers), "--out",
                                      str(drivers / "out")], env=WIDE)
    assert "a rerun would take" not in inside.output  # refused for the empty folders only


def test_failures_are_listed_on_stderr_ten_at_most(capsys: pytest.CaptureFixture[str]) -> None:
    """`animate` printed every failed job on stdout, 10,000 lines for a batch where all failed,
    among the summary scripts read; `curate` already capped its list on stderr."""
    from portraitflow.jobs.options import FAILED_SHOWN, say_failures

    say_failures([(f"job{i}", "no face") for i in range(FAILED_SHOWN + 5)], "results.parquet's `reason`")
    out, err = capsys.readouterr()
    assert out == "" and err.count("  failed job") == FAILED_SHOWN and "failed job9: no face" in err
    assert err.splitlines()[-1] == "  ... 5 more failed (results.parquet's `reason` says why)"


@pytest.mark.parametrize("code", ["ENOSPC", "EACCES"])
def test_a_full_disk_is_one_line_that_says_a_rerun_resumes(code: str, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk mid-curation was an 80-line traceback and exit 1, which says every input failed;
    any other OSError is a bug or an input's, and keeps its traceback."""
    import errno

    from portraitflow.jobs import cli

    def fill(*_args, **_kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), "/out/.state/corpus/ledger.bin")

    monkeypatch.setattr(cli, "app", fill)
    monkeypatch.setattr("portraitflow.jobs.runtime.stop_on_sigterm", lambda: None)  # pytest keeps its handler
    if code == "EACCES":
        with pytest.raises(PermissionError):
            cli.main()
        return
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2
    assert capsys.readouterr().err == ("Error: No space left on device writing /out/.state/corpus/ledger.bin: finished "
                                       "work is kept; free room and rerun the same command to resume\n")


def test_a_resumed_sweep_names_the_configs_it_kept_with_failed_videos(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """After a full disk, the rerun exited 0 keeping a config with 0 of 2 videos, and nothing
    pointed to --retry-failed (review s24)."""
    from portraitflow.jobs.evaluate_cmd import _say_failures_kept

    summary = tmp_path / "summary.csv"
    pd.DataFrame({"config": ["warp[p=0.5]", "warp[p=1.0]", "still"], "jobs_ok": [2, 0, 1],
                  "jobs_failed": [0, 2, 1], "reused": [True, True, False]}).to_csv(summary, index=False)
    _say_failures_kept(summary)
    err = capsys.readouterr().err
    assert "kept from earlier runs with failed videos: warp[p=1.0] (2 failed);" in err and "--retry-failed" in err
    assert "still" not in err  # failed in this run, not kept


def test_evaluate_refuses_job_ids_that_name_the_same_files(tmp_path: Path) -> None:
    """`x!` is filed as `safe_stem('x!')`, which is also a safe id of its own: the two rows' metric
    files and merges were one."""
    from portraitflow.operators.paths import safe_stem

    (tmp_path / "results.csv").write_text(f"job_id,ref,driving,output\nx!,a.png,a.mp4,a.mp4\n{safe_stem('x!')},"
                                          "b.png,b.mp4,b.mp4\n")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "results.csv"), "--out", str(tmp_path / "ev"),
                                      "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], env=WIDE)
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and f"job_ids 'x!', '{safe_stem('x!')}' name the same files" in said, result.output


def test_curate_refuses_a_file_name_on_the_command_line_that_is_not_utf8(tmp_path: Path) -> None:
    """Ray records the process's command line as UTF-8: `curate dir/*.mp4` over such a name crashed
    as Ray started (through its folder the file gets a `failed` row)."""
    odd = tmp_path / "caf\udce9.mp4"  # the byte 0xE9, as Python holds a name that is not UTF-8
    odd.write_bytes(b"junk")
    result = CliRunner().invoke(app, ["curate", str(odd), "--out", str(tmp_path / "out"), "--dry-run"], env=WIDE)
    said = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "caf\\xe9.mp4 is not valid UTF-8" in said and "give its folder" in said, said
