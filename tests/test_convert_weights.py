"""`convert-weights` on a release folder with a corrupt or partly downloaded checkpoint."""
from __future__ import annotations

import argparse
import io
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from portraitflow.jobs.cli import app
from portraitflow.models.hunyuan import weights
from portraitflow.models.hunyuan.checkpoints import ARCFACE, CONFIG_FILES, HYPORTRAIT_MODULES, VAE_WEIGHTS, WeightsUnreadable

WIDE = {"COLUMNS": "400"}  # rich wraps errors to the terminal width


def _checkpoint(seed: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))}, buffer)
    return buffer.getvalue()


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """The official layout with tiny stand-in files (conversion only copies or re-saves them)."""
    root = tmp_path / "release"
    for seed, name in enumerate(HYPORTRAIT_MODULES):
        (root / "hyportrait").mkdir(parents=True, exist_ok=True)
        (root / "hyportrait" / f"{name}.pth").write_bytes(_checkpoint(seed))
    for name in CONFIG_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    save_file({"weight": torch.zeros(2)}, root / "vae" / VAE_WEIGHTS[0])
    return root


def _onnx_model() -> bytes:
    """The bytes of an (empty) ONNX model: copied files are read before they are copied."""
    import onnx

    return onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])).SerializeToString()


def _convert(root: Path, out: Path):
    return CliRunner().invoke(app, ["convert-weights", str(root), "--out", str(out)], env=WIDE)


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    reads: list[Path] = []
    read = weights.read_state_dict

    def recorded(path: Path) -> dict[str, torch.Tensor]:
        reads.append(path)
        return read(path)

    monkeypatch.setattr(weights, "read_state_dict", recorded)
    return reads


def test_a_cut_checkpoint_is_named_and_leaves_no_partial_output(release: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dino = release / "hyportrait" / "dino.pth"
    whole = dino.read_bytes()
    dino.write_bytes(whole[: len(whole) // 2])  # a partial download
    out = tmp_path / "converted"
    failed = _convert(release, out)
    assert failed.exit_code == 2, failed.output
    assert f"{dino} is unreadable or incomplete; download it again" in failed.output
    assert "Traceback" not in failed.output and not out.exists()

    dino.write_bytes(whole)
    reads = _count_reads(monkeypatch)
    done = _convert(release, out)
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (out / "hyportrait").iterdir()) == sorted(f"{n}.safetensors" for n in HYPORTRAIT_MODULES)
    assert all((out / name).is_file() for name in CONFIG_FILES)
    assert [p.stem for p in reads] == list(HYPORTRAIT_MODULES[2:])  # unet and pose_guider were kept from the failed run
    assert not (tmp_path / "converted.partial").exists()
    assert torch.equal(weights.read_state_dict(out / "hyportrait" / "dino.safetensors")["weight"],
                       torch.load(io.BytesIO(whole), weights_only=True)["weight"])


def test_an_existing_folder_gets_its_missing_files_only_when_all_are_converted(release: Path) -> None:
    """Converting in place (OUT = DIR): nothing lands beside the .pth files until the last one is read."""
    (release / "hyportrait" / "motion_proj.pth").write_bytes(b"<html>404</html>")
    failed = _convert(release, release)
    assert failed.exit_code == 2 and "motion_proj.pth is unreadable or incomplete" in failed.output
    assert not list(release.glob("hyportrait/*.safetensors"))

    (release / "hyportrait" / "motion_proj.pth").write_bytes(_checkpoint(0))
    done = _convert(release, release)
    assert done.exit_code == 0, done.output
    assert len(list(release.glob("hyportrait/*.safetensors"))) == len(HYPORTRAIT_MODULES)
    assert not (release / ".partial").exists()


class Killed(BaseException):
    """Stands for a conversion killed mid-way (nothing in it catches a BaseException)."""


def test_a_resume_installs_only_what_was_staged_from_the_current_sources(release: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A run from folder A killed before its end, then a run from folder B into the same OUT: OUT
    must hold B's files only, not A's staged ones (nor A's fp16 VAE, which loads would prefer)."""
    other = tmp_path / "other"
    shutil.copytree(release, other)
    (other / "hyportrait" / "pose_guider.pth").write_bytes(_checkpoint(99))
    (other / "vae" / VAE_WEIGHTS[0]).unlink()
    save_file({"weight": torch.ones(2)}, other / "vae" / VAE_WEIGHTS[1])  # B's VAE
    (release / ARCFACE).write_bytes(_onnx_model())
    copy = weights._atomic_copy

    def killed_at_arcface(source: Path, target: Path) -> None:
        if source.name == ARCFACE:
            raise Killed
        copy(source, target)

    monkeypatch.setattr(weights, "_atomic_copy", killed_at_arcface)
    out = tmp_path / "converted"
    with pytest.raises(Killed):
        weights.convert_weights(release, out)
    assert (tmp_path / "converted.partial" / "hyportrait" / "pose_guider.safetensors").is_file()

    reads = _count_reads(monkeypatch)
    done = _convert(other, out)
    assert done.exit_code == 0, done.output
    assert [p.stem for p in reads] == list(HYPORTRAIT_MODULES)
    assert torch.equal(weights.read_state_dict(out / "hyportrait" / "pose_guider.safetensors")["weight"],
                       torch.load(other / "hyportrait" / "pose_guider.pth", weights_only=True)["weight"])
    assert sorted(p.name for p in (out / "vae").iterdir()) == ["config.json", VAE_WEIGHTS[1]]
    assert not (out / ARCFACE).exists() and not (out / weights.STAGED_FROM).exists()


def test_a_resume_converts_again_a_checkpoint_downloaded_again(release: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    headpose = release / "hyportrait" / "headpose.pth"
    whole = headpose.read_bytes()
    headpose.write_bytes(whole[:100])
    out = tmp_path / "converted"
    assert _convert(release, out).exit_code == 2  # unet .. expression are staged

    headpose.write_bytes(whole)
    new_pose_guider = torch.randn(5, 5)  # another size: a new version whatever the clock's resolution
    torch.save({"weight": new_pose_guider}, release / "hyportrait" / "pose_guider.pth")
    reads = _count_reads(monkeypatch)
    done = _convert(release, out)
    assert done.exit_code == 0, done.output
    assert [p.stem for p in reads] == ["pose_guider", "headpose", "motion_proj"]
    assert torch.equal(weights.read_state_dict(out / "hyportrait" / "pose_guider.safetensors")["weight"],
                       new_pose_guider)


@pytest.mark.parametrize("how", [["OUT"], ["--out", "OUT"], ["-o", "OUT"], ["OUT", "--out", "OUT"]])
def test_out_is_positional_or_an_option(release: Path, tmp_path: Path, how: list[str]) -> None:
    out = tmp_path / "converted"
    args = [str(out) if arg == "OUT" else arg for arg in how]
    done = CliRunner().invoke(app, ["convert-weights", str(release), *args], env=WIDE)
    assert done.exit_code == 0, done.output
    assert (out / "hyportrait" / "unet.safetensors").is_file()


def test_out_missing_or_given_twice_differently_is_a_usage_error(release: Path, tmp_path: Path) -> None:
    neither = CliRunner().invoke(app, ["convert-weights", str(release)], env=WIDE)
    assert neither.exit_code == 2 and "give the folder to write, as OUT or --out OUT" in neither.output
    both = CliRunner().invoke(app, ["convert-weights", str(release), str(tmp_path / "a"), "--out",
                                    str(tmp_path / "b")], env=WIDE)
    assert both.exit_code == 2 and "differ; give one" in both.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("pickled", ["module", "namespace"])
def test_a_checkpoint_that_needs_pickle_is_not_called_corrupt(release: Path, tmp_path: Path, pickled: str) -> None:
    path = release / "hyportrait" / "pose_guider.pth"
    linear = torch.nn.Linear(2, 2)
    torch.save(linear if pickled == "module" else {"state_dict": linear.state_dict(), "args": argparse.Namespace(a=1)},
               path)
    failed = _convert(release, tmp_path / "converted")
    said = " ".join(failed.output.replace("│", " ").split())
    assert failed.exit_code == 2, failed.output
    assert f"{path} is not a plain tensor state dict: it holds" in said
    assert ("torch.nn.modules.linear.Linear" if pickled == "module" else "argparse.Namespace") in said
    assert "PortraitFlow does not unpickle" in said and "torch.load(PATH, weights_only=False)" in said
    assert "download it again" not in said and "Traceback" not in said


@pytest.mark.parametrize("config", CONFIG_FILES)
def test_a_corrupt_config_file_is_named(release: Path, config: str) -> None:
    (release / config).write_text("{")
    with pytest.raises(WeightsUnreadable, match=f"^{re.escape(str(release / config))} is not valid JSON"):
        weights.load_models(release, size="tiny")


def test_a_training_checkpoint_wrapper_is_named_not_a_traceback(release: Path, tmp_path: Path) -> None:
    """`{"state_dict": ..., "epoch": 3}` loads without pickle, and saving it as safetensors crashed
    (`'dict' object has no attribute 'contiguous'`, exit 1)."""
    path = release / "hyportrait" / "unet.pth"
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "epoch": 3}, path)
    failed = _convert(release, tmp_path / "converted")
    said = " ".join(failed.output.replace("│", " ").split())
    assert failed.exit_code == 2 and f"{path} holds entries that are no tensors: state_dict, epoch" in said  # where it is
    assert "Traceback" not in said and not (tmp_path / "converted").exists()


@pytest.mark.parametrize("copied", [CONFIG_FILES[1], f"vae/{VAE_WEIGHTS[0]}", ARCFACE])
def test_a_corrupt_file_copied_as_it_is_is_named_not_installed(release: Path, tmp_path: Path, copied: str) -> None:
    """Copied unread, a cut VAE or a config that is not JSON made a converted folder that said it was
    complete, and a rerun after the download was mended kept the bad copy."""
    (release / copied).write_bytes(b"{not json, no safetensors header, no protobuf")
    failed = _convert(release, tmp_path / "converted")
    said = " ".join(failed.output.replace("│", " ").split())
    assert failed.exit_code == 2 and str(release / copied) in said and "Traceback" not in said
    assert not (tmp_path / "converted").exists()


class _RunsCode:
    """A pickled object that would run a shell command when loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_runs_code_gets_no_recipe_to_load_it(release: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = release / "hyportrait" / "pose_guider.pth"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(marker)}, path)
    failed = _convert(release, tmp_path / "converted")
    said = " ".join(failed.output.replace("│", " ").split())
    assert failed.exit_code == 2, failed.output
    assert "system, which only unpickling could rebuild and no plain checkpoint" in said and "weights_only=False" not in said
    assert not marker.exists()


def test_a_staging_folder_holding_someone_elses_files_is_left_alone(release: Path, tmp_path: Path) -> None:
    """It was emptied without a word: OUT.partial is where a conversion stages, and one that holds
    no record of a conversion is not one."""
    notes = tmp_path / "converted.partial" / "notes" / "thesis.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    failed = _convert(release, tmp_path / "converted")
    assert failed.exit_code == 2 and "holds files no conversion staged" in " ".join(failed.output.split())
    assert notes.read_text() == "mine" and not (tmp_path / "converted").exists()


def test_a_folder_converted_from_other_files_is_not_topped_up_from_these(release: Path, tmp_path: Path) -> None:
    """A second release converted into a folder that misses a file got that file in beside the
    first release's others, silently: one model from two releases."""
    out = tmp_path / "converted"
    assert _convert(release, out).exit_code == 0
    copy = tmp_path / "downloaded again"  # the same files elsewhere, with new times
    shutil.copytree(release, copy)
    (out / "hyportrait" / "headpose.safetensors").unlink()
    assert _convert(copy, out).exit_code == 0 and (out / "hyportrait" / "headpose.safetensors").exists()

    other = tmp_path / "other"
    shutil.copytree(release, other)
    (other / "hyportrait" / "unet.pth").write_bytes(_checkpoint(99))
    assert _convert(other, out).exit_code == 2  # complete, it is still not the other release's ("already complete")
    (out / "hyportrait" / "headpose.safetensors").unlink()
    refused = _convert(other, out)
    said = " ".join(refused.output.replace("│", " ").split())
    assert refused.exit_code == 2 and "holds hyportrait/unet.safetensors converted from other files than these" in said
    assert not (out / "hyportrait" / "headpose.safetensors").exists()
    (out / "hyportrait" / "unet.safetensors").unlink()  # what the message says to do
    assert _convert(other, out).exit_code == 0
