"""The HunyuanPortrait release's files on disk: which the official layout holds, which are missing,
cut short or corrupt, and their sizes. Torch-free, so the CLI refuses a wrong `--weights` in a
second rather than after importing the models (weights.py loads them).

    DIR/hyportrait/{unet,pose_guider,dino,image_proj,expression,headpose,motion_proj}.pth
    DIR/vae/config.json + diffusion_pytorch_model[.fp16].safetensors   (SVD-XT)
    DIR/unet/config.json                                               (SVD-XT)
    DIR/scheduler/scheduler_config.json                                (SVD-XT)
    DIR/arcface.onnx                                                   (optional)
"""
from __future__ import annotations

import zipfile
from pathlib import Path

#: `--weights tiny`: random tiny modules, for plumbing tests
TINY_WEIGHTS = "tiny"
HYPORTRAIT_MODULES = ("unet", "pose_guider", "dino", "image_proj", "expression", "headpose", "motion_proj")
VAE_WEIGHTS = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors")
CONFIG_FILES = ("vae/config.json", "unet/config.json", "scheduler/scheduler_config.json")
ARCFACE = "arcface.onnx"

class WeightsMissing(FileNotFoundError):
    """Files of the official layout are missing; the message lists each one and where to get them."""


class WeightsUnreadable(ValueError):
    """A weights file is there but cannot be read: corrupt, or cut short by a failed download."""


def module_file(weights_dir: Path, name: str) -> Path | None:
    for suffix in (".safetensors", ".pth"):
        path = weights_dir / "hyportrait" / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def vae_file(weights_dir: Path) -> Path | None:
    return next((weights_dir / "vae" / n for n in VAE_WEIGHTS if (weights_dir / "vae" / n).is_file()), None)


def missing_files(weights_dir: Path) -> list[str]:
    """Each required path that is absent, as the user would have to create it."""
    missing = [f"{weights_dir / 'hyportrait' / name}.pth" for name in HYPORTRAIT_MODULES
               if module_file(weights_dir, name) is None]
    missing += [str(weights_dir / name) for name in CONFIG_FILES if not (weights_dir / name).is_file()]
    if vae_file(weights_dir) is None:
        missing.append(f"{weights_dir / 'vae' / VAE_WEIGHTS[0]} (or {VAE_WEIGHTS[1]})")
    return missing


def checkpoint_sizes(weights_dir: str | Path) -> list[int]:
    """Bytes of each checkpoint `load_models` reads into host memory, one at a time, before its
    module moves to its device."""
    weights_dir = Path(weights_dir).expanduser()
    files = [module_file(weights_dir, name) for name in HYPORTRAIT_MODULES] + [vae_file(weights_dir)]
    return [path.stat().st_size for path in filter(None, files)]


def unreadable_files(weights_dir: Path) -> list[str]:
    """Each weights file present that cannot be a checkpoint, judged from its index alone (a
    safetensors header and its data's length, a zip-format .pth's central directory, which sit at
    the ends a cut download loses): found here in milliseconds, not once every job is prepared."""
    from safetensors import safe_open

    files = [module_file(weights_dir, name) for name in HYPORTRAIT_MODULES] + [vae_file(weights_dir)]
    unreadable = []
    for path in filter(None, files):
        try:
            if path.suffix == ".safetensors":
                with safe_open(path, "pt"):
                    pass
            elif zipfile.is_zipfile(path):
                zipfile.ZipFile(path).close()
            else:
                with open(path, "rb") as handle:
                    if handle.read(1) != b"\x80":  # neither torch's zip format nor its legacy pickle stream
                        raise ValueError("not a torch checkpoint")
        except Exception as exc:  # noqa: BLE001 - safetensors, zipfile and OSError fail in their own ways
            unreadable.append(f"{path} ({type(exc).__name__}: {str(exc)[:120]})")
    return unreadable


def check_weights_dir(weights_dir: str | Path) -> Path:
    """`weights_dir`, or WeightsMissing naming each missing file (a mistyped folder: the folder
    alone) and where to download it."""
    weights_dir = Path(weights_dir).expanduser()
    download = ("Download the release's hyportrait/*.pth and arcface.onnx (Tencent-Hunyuan/HunyuanPortrait) and the "
                "vae/, unet/config.json and scheduler/ folders of stabilityai/stable-video-diffusion-img2vid-xt into "
                "that folder, keeping this layout.")
    if not weights_dir.is_dir():
        problem = "is a file, not a folder" if weights_dir.exists() else "does not exist"
        raise WeightsMissing(f"HunyuanPortrait weights folder {weights_dir} {problem}. {download}")
    missing = missing_files(weights_dir)
    if missing:
        listing = "\n".join(f"  - {path}" for path in missing)
        raise WeightsMissing(f"HunyuanPortrait weights are incomplete in {weights_dir}; missing:\n{listing}\n{download}")
    return weights_dir


def check_weights_readable(weights_dir: Path) -> None:
    """WeightsUnreadable naming each weights file of a complete folder that is cut short or corrupt
    (`unreadable_files`): said before a job runs, where the actors would fail once every job is
    prepared. `convert-weights` does without it: it names a cut file as it reaches it and keeps
    what it converted before."""
    unreadable = unreadable_files(weights_dir)
    if unreadable:
        listing = "\n".join(f"  - {path}" for path in unreadable)
        raise WeightsUnreadable(f"HunyuanPortrait weights in {weights_dir} are cut short or corrupt (a failed "
                                f"download?); download these again:\n{listing}")
