"""`convert-weights` on a release folder with a corrupt or partly downloaded checkpoint."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from portraitflow.jobs.cli import app
from portraitflow.models.hunyuan import weights
from portraitflow.models.hunyuan.weights import CONFIG_FILES, HYPORTRAIT_MODULES, VAE_WEIGHTS

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
    for name in [*CONFIG_FILES, f"vae/{VAE_WEIGHTS[0]}"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}")
    return root


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
                       torch.load(io.BytesIO(whole))["weight"])


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
