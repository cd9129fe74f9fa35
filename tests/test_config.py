from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from portraitflow.jobs.cli import app
from portraitflow.jobs.config import PortraitFlowConfig, load_config


def test_defaults_need_no_file() -> None:
    cfg = load_config()
    assert cfg.face.backend == "opencv"
    assert cfg.mlflow.enabled


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("face:\n  backend: insightface\n  det_size: 320\n")
    cfg = load_config(path, ["face.det_size=480", "ray.num_cpus=2"])
    assert cfg.face.backend == "insightface"
    assert cfg.face.det_size == 480
    assert cfg.ray.num_cpus == 2


@pytest.mark.parametrize(("override", "said"), [
    ("face.nope=1", "face.nope: no such setting"), ("nosection.x=1", "nosection: no such setting"),
    ("face.backend=dlib", "face.backend: Input should be 'opencv' or 'insightface'"),
    ("missing_equals", "not of the form section.field=value")])
def test_bad_overrides_are_errors(override: str, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        load_config(None, [override])


def test_empty_override_unsets_an_optional_field() -> None:
    """`field=` is the docs' "Empty: ...": None, not an empty string that fails or means nothing."""
    cfg = load_config(None, ["animate.compile_mode=", "animate.weights=", "face.num_threads= "])
    assert cfg.animate.compile_mode is None
    assert cfg.animate.weights is None
    assert cfg.face.num_threads is None


def test_text_fields_take_the_override_as_written() -> None:
    """A string field gets the text (as a flag does): not a YAML number, boolean or comment-cut."""
    cfg = load_config(None, ["curate.allow_dir=2024", "mlflow.tracking_uri=2024", "curate.experiment=no",
                             "ray.address=auto #1", "face.insightface_pack=[x", "curate.deny_dir=",
                             "face.det_size=480", "curate.fps=29.97", "train_data.shards=[a, 'b']"])
    assert (cfg.curate.allow_dir, cfg.mlflow.tracking_uri, cfg.curate.experiment) == \
        (os.path.abspath("2024"), "2024", "no")  # a gallery folder is taken from the working directory
    assert cfg.ray.address == "auto #1" and cfg.face.insightface_pack == "[x" and cfg.curate.deny_dir is None
    assert cfg.face.det_size == 480 and cfg.curate.fps == 29.97 and cfg.train_data.shards == ["a", "b"]
    cfg = load_config(None, ["animate.weights=null", "evaluate.rank_by='apd'", "curate.allow_dir= /w ",
                             'curate.experiment="a #1"'])
    assert cfg.animate.weights is None and cfg.evaluate.rank_by == "apd" and cfg.curate.allow_dir == "/w"
    assert cfg.curate.experiment == "a #1"


def test_unreadable_config_and_bad_yaml_are_value_errors_that_name_the_source(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate: {fps: [\n")
    with pytest.raises(ValueError, match=re.escape(f"{bad} is not valid YAML: ") + ".* at line 2, column 1$"):
        load_config(bad)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: cannot read the config file")):
        load_config(tmp_path)
    bad.write_text("curate:\n  fps: 10\n  fps: 25\n")  # PyYAML keeps the last one without a word
    with pytest.raises(ValueError, match=re.escape(f"{bad} is not valid YAML: the key 'fps' is given twice at line 3")):
        load_config(bad)
    bad.write_text("base: &base {fps: 10, crop_size: 256}\n")
    merged = tmp_path / "merged.yaml"  # a merge key is no repeat, and an explicit key overrides what it merges
    merged.write_text("curate:\n  <<: {fps: 10, crop_size: 256}\n  fps: 25\n")
    assert (load_config(merged).curate.fps, load_config(merged).curate.crop_size) == (25, 256)
    with pytest.raises(ValueError, match=r"override 'curate.fps=\[' is not valid YAML"):
        load_config(None, ["curate.fps=["])


def test_config_show_round_trips(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["config", "show", "--set", "face.det_size=320"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["face"]["det_size"] == 320
    assert PortraitFlowConfig.model_validate(shown).face.det_size == 320


def test_every_field_is_documented() -> None:
    """docs/config.md and `config show` rely on descriptions; a field without one is a bug."""
    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                yield from walk(annotation, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", field.description

    undocumented = [name for name, desc in walk(PortraitFlowConfig) if not desc]
    assert undocumented == []


def test_config_reference_is_current() -> None:
    """docs/config.md is generated; regenerate it with `portraitflow config docs > docs/config.md`."""
    from portraitflow.jobs.config_cmd import config_reference

    committed = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert committed == config_reference()


@pytest.mark.parametrize("override", ["curate.shard_max_samples=0", "curate.fps=0", "curate.detect_every=0",
                                      "curate.chunk_frames=-1", "curate.crf=60", "curate.max_clip_seconds=1"])
def test_curate_settings_out_of_range_are_refused(override: str) -> None:
    """A zero shard size would pack empty shards forever; a zero step or frame rate fails every input."""
    field = override.partition("=")[0].removeprefix("curate.")  # one field's bound, or its relation to another
    with pytest.raises(ValueError, match=rf"curate(\.{field}: Input should be|: {field} \(1\.0\) is below)"):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["ray.num_cpus=-3", "ray.num_cpus=0", "ray.object_store_memory_mb=-1",
                                      "ray.object_store_memory_mb=74", "face.det_size=0", "face.det_score_threshold=7",
                                      "face.num_threads=-2", "face.same_person_threshold=1.5",
                                      "animate.pose_multiplier=.inf", "animate.smooth_sigma=.inf",
                                      "animate.expression_multiplier=.nan", "animate.seed=18446744073709551616",
                                      "curate.fps=1e308", "curate.crop_size=99999998", 'curate.experiment=""',
                                      "animate.seed=true", "curate.fps=true", "animate.num_steps=false",
                                      "animate.seed=-1"])
def test_settings_out_of_range_are_refused_in_one_line(override: str) -> None:
    """Taken, they crashed Ray with a traceback (negative CPUs, an object store under Ray's minimum)
    or quietly changed nothing or everything (no face found at size 0, threads left at the default);
    an infinite multiplier reached the workers as JSON null and crashed each of them, a seed past
    64 bits failed each job after its preparation, a huge frame rate or crop size failed every
    input, an empty experiment crashed after Ray started; true was taken for 1 (a seed, a frame rate);
    seed -1 drew what 2**64-1 does, under another name."""
    with pytest.raises(ValueError):
        load_config(None, [override])
    assert CliRunner().invoke(app, ["config", "show", "--set", override]).exit_code == 2


def test_config_show_says_what_empty_fields_resolve_to(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """It printed `address: null` where every verb would join RAY_ADDRESS's cluster, record to
    MLFLOW_TRACKING_URI's server and load PORTRAITFLOW_INSIGHTFACE_ROOT's pack."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("PORTRAITFLOW_INSIGHTFACE_ROOT", "/models/if")
    shown = CliRunner().invoke(app, ["config", "show"]).output
    assert "# ray.address = 10.0.0.1:6379 (RAY_ADDRESS)" in shown
    assert "# mlflow.tracking_uri = http://mlflow.example:5000 (MLFLOW_TRACKING_URI)" in shown
    assert "# face.insightface_root = /models/if (PORTRAITFLOW_INSIGHTFACE_ROOT)" in shown
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PORTRAITFLOW_INSIGHTFACE_ROOT"):
        monkeypatch.delenv(name)
    shown = CliRunner().invoke(app, ["config", "show", "--set", "ray.address=auto"]).output
    assert "# ray.address" not in shown and "insightface_root =" not in shown
    assert f"# mlflow.tracking_uri = sqlite:///{tmp_path / 'mlflow.db'} (the default, in this folder)" in shown


def test_a_bad_value_in_the_config_file_names_the_file_and_a_field_without_its_section_is_found(tmp_path) -> None:
    """"Invalid value: curate.detect_every ..." left a team config beside several `--set`s to guess;
    `--set detect_every=1` got no hint of the `section.field` it wants."""
    bad = tmp_path / "team.yaml"
    bad.write_text("curate:\n  detect_every: x\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: curate.detect_every: Input should be a valid integer"):
        load_config(bad)
    assert load_config(bad, ["curate.detect_every=2"]).curate.detect_every == 2  # mended on the command line
    with pytest.raises(ValueError, match=r"^curate.detect_every: Input should be"):  # the command line's fault
        load_config(None, ["curate.detect_every=x"])
    with pytest.raises(ValueError, match=r"detect_every: no such setting \(did you mean 'curate.detect_every'\?\)"):
        load_config(None, ["detect_every=1"])
    with pytest.raises(ValueError, match=r"backend: no such setting \(did you mean 'face.backend' or 'animate.backend'\?\)"):
        load_config(None, ["backend=warp"])
    with pytest.raises(ValueError, match=r"^curate.fps: .*; " + re.escape(str(bad)) + ": curate.detect_every"):
        load_config(bad, ["curate.fps=x"])  # only the file's own problem is said with its name
