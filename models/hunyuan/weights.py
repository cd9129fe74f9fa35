"""Loading HunyuanPortrait from a local folder in the official layout, pickle-free.

    DIR/hyportrait/{unet,pose_guider,dino,image_proj,expression,headpose,motion_proj}.pth
    DIR/vae/config.json + diffusion_pytorch_model[.fp16].safetensors   (SVD-XT)
    DIR/unet/config.json                                               (SVD-XT)
    DIR/scheduler/scheduler_config.json                                (SVD-XT)
    DIR/arcface.onnx                                                   (optional)

`.pth` files are read with `torch.load(weights_only=True)`; `convert_weights` writes each as a
`.safetensors` next to the same layout once, and later loads prefer those. Every module is built
on the `meta` device and loaded with `strict=True, assign=True`, so no memory is spent on an
initialisation that is thrown away. Random-weight builds (`random_models`) serve tests and the
benchmark: `full` has the release's shapes and FLOPs, `tiny` runs the same flow on a CPU.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLTemporalDecoder
from portraitflow.models.hunyuan.checkpoints import (
    ARCFACE,
    CONFIG_FILES,
    HYPORTRAIT_MODULES,
    WeightsUnreadable,
    check_weights_dir,
    module_file,
    vae_file,
)
from portraitflow.models.hunyuan.dino import DinoV2WithIdAdapters
from portraitflow.models.hunyuan.expression import HeadExpression
from portraitflow.models.hunyuan.headpose import HeadPose
from portraitflow.models.hunyuan.image_proj import ImageProjector
from portraitflow.models.hunyuan.motion_proj import IntensityAwareMotionRefiner
from portraitflow.models.hunyuan.pipeline import HunyuanPipeline
from portraitflow.models.hunyuan.pose_guider import PoseGuider
from portraitflow.models.hunyuan.unet import (
    SVD_XT_UNET_CONFIG,
    TINY_UNET_CONFIG,
    HunyuanUNet,
)
from portraitflow.operators.atomic import atomic_target, atomic_write, is_unfinished
from portraitflow.operators.generation_jobs import input_fingerprint
from portraitflow.operators.job_status import clipped
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

#: in a conversion's staging folder: which source file (path, size, mtime) each staged file came from
STAGED_FROM = ".staged_from.json"
#: in a converted folder: the sampled fingerprint (size, first and last 64 KiB) of the source of each
#: file a conversion wrote there, so that converting other files into it is refused instead of
#: mixing two releases
CONVERTED_FROM = ".converted_from.json"
#: the objects a training script saves beside a model's tensors (a whole `torch.nn` module, an
#: argparse namespace, numpy arrays, an OmegaConf config), by their whole names: a file holding one
#: gets the recipe for converting it from a trusted copy. Any other global gets none (a package's
#: name is not enough: `torch.fx.graph_module._exec_with_source` runs code, and a dotted name can
#: reach through a module's imports to anything)
_CHECKPOINT_OBJECT = re.compile(r"torch\.nn\.modules\.[a-z_]+\.[A-Z][A-Za-z0-9]*|argparse\.Namespace"
                                r"|collections\.(?:OrderedDict|defaultdict)|numpy\.(?:ndarray|dtype)"
                                r"|numpy\.(?:_core|core)\.multiarray\.(?:_reconstruct|scalar)"
                                r"|omegaconf\.(?:dictconfig\.DictConfig|listconfig\.ListConfig)")
#: torch's weights-only unpickler refusing a Python object (a module, an argparse.Namespace, ...)
_PICKLED_OBJECT = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")

#: SVD-XT `vae/config.json` (diffusers layout).
SVD_XT_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}
TINY_VAE_CONFIG: dict = {**SVD_XT_VAE_CONFIG, "down_block_types": ["DownEncoderBlock2D"] * 3,
                         "block_out_channels": [32, 32, 32], "layers_per_block": 1, "sample_size": 64}


@dataclass(frozen=True)
class ModelSize:
    """Constructor arguments of every module, the crop size and the motion-crop size."""

    unet: dict
    vae: dict
    pose_guider: dict
    dino: dict
    expression: dict
    motion_proj: dict
    resolution: int
    motion_resolution: int


FULL = ModelSize(
    unet=SVD_XT_UNET_CONFIG, vae=SVD_XT_VAE_CONFIG, pose_guider={}, dino={}, expression={}, motion_proj={},
    resolution=512, motion_resolution=256,
)
TINY = ModelSize(
    unet=TINY_UNET_CONFIG, vae=TINY_VAE_CONFIG,
    pose_guider={"conditioning_embedding_channels": 32, "block_out_channels": (16, 32, 64)},
    dino={"embed_dim": 32, "depth": 2, "num_heads": 1, "add_adapter_layer": (1,), "visual_adapter_dim": 64},
    expression={"blocks_per_stage": (1, 1, 1, 1)},
    # motion tokens are [refined | 3 rotation | 3 translation] = the UNet's cross-attention width
    motion_proj={"output_dim": TINY_UNET_CONFIG["cross_attention_dim"] - 6, "intensity_embed_dim": 32,
                 "width": 32, "layers": 1, "heads": 2},
    resolution=64, motion_resolution=64,
)
SIZES = {"full": FULL, "tiny": TINY}


@dataclass
class HunyuanModels:
    """Every module of the release, placed and typed as the release runs them (SPEC 9)."""

    pipeline: HunyuanPipeline
    expression: HeadExpression
    headpose: HeadPose
    motion_proj: IntensityAwareMotionRefiner
    resolution: int
    motion_resolution: int
    arcface: Path | None = None
    source: str = "random"


def _builders(size: ModelSize, unet_config: dict, vae_config: dict) -> dict[str, Callable[[], nn.Module]]:
    return {
        "unet": lambda: HunyuanUNet.from_config(unet_config),
        "vae": lambda: AutoencoderKLTemporalDecoder.from_config(vae_config),
        "pose_guider": lambda: PoseGuider(**size.pose_guider),
        "dino": lambda: DinoV2WithIdAdapters(**size.dino),
        "image_proj": lambda: ImageProjector(),
        "expression": lambda: HeadExpression(**size.expression),
        "headpose": lambda: HeadPose(),
        "motion_proj": lambda: IntensityAwareMotionRefiner(**size.motion_proj),
    }


def _placed(name: str, module: nn.Module, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """`module` frozen on `device`: fp32 for the VAE encoder and the motion nets (as the release),
    `dtype` for the rest. Each module is placed as soon as it is loaded, so host memory holds one
    checkpoint at a time on its way to a GPU, not all of them."""
    module.eval().requires_grad_(False)
    # nn.Module.to: diffusers' override warns about fp32 modules these models do not have
    nn.Module.to(module, device=device, dtype=torch.float32 if name in ("expression", "headpose", "motion_proj") else dtype)
    if name == "vae":
        module.encoder.float()
        module.quant_conv.float()
    return module


def _assemble(modules: dict[str, nn.Module], size: ModelSize, scheduler_config: dict | None, arcface: Path | None,
              source: str) -> HunyuanModels:
    pipeline = HunyuanPipeline(modules["unet"], modules["vae"], modules["pose_guider"], modules["dino"],
                               modules["image_proj"], scheduler_config=scheduler_config)
    return HunyuanModels(pipeline, modules["expression"], modules["headpose"], modules["motion_proj"],
                         size.resolution, size.motion_resolution, arcface=arcface, source=source)


def random_models(size: str = "tiny", device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> HunyuanModels:
    """Every module with random weights: `full` has the release's shapes (and FLOPs), `tiny` runs on a CPU."""
    spec = SIZES[size]
    torch.manual_seed(seed)
    with torch.device(device):
        modules = {name: _placed(name, build(), device, dtype) for name, build in _builders(spec, spec.unet, spec.vae).items()}
    return _assemble(modules, spec, None, None, f"random:{size}:{seed}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` or, never unpickling code, from a `.pth` (weights_only).

    A file that cannot be read raises WeightsUnreadable naming it: torch's own error names
    neither the file nor the likely cause, a partial download."""
    try:
        if path.suffix == ".safetensors":
            return load_file(path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # the pre-zip format cannot be mapped
    except Exception as exc:  # a cut or corrupt file fails in many ways (zip, unpickler, safetensors header)
        # by name: importing `pickle` is what tests/test_security.py rules out
        pickled = _PICKLED_OBJECT.search(str(exc)) if type(exc).__name__ == "UnpicklingError" else None
        if pickled and not _CHECKPOINT_OBJECT.fullmatch(pickled[1]):
            raise WeightsUnreadable(
                f"{path} holds {pickled[1]}, which only unpickling could rebuild and no plain checkpoint of tensors "
                "needs; unpickling it can run code, so it is not loaded here and should not be elsewhere unless you "
                "know what it is: get the release's files from its official source") from exc
        if pickled:  # an intact file that a new download would not change
            raise WeightsUnreadable(
                f"{path} is not a plain tensor state dict: it holds {pickled[1]} (the first such object), which only "
                "unpickling could rebuild, and PortraitFlow does not unpickle (it can run arbitrary code). From a copy "
                "you trust (the release's, checked against its published checksum), "
                "convert it yourself: obj = torch.load(PATH, weights_only=False), then torch.save(obj.state_dict(), "
                "PATH) for a whole module, or torch.save of the dict that holds its tensors (e.g. obj['state_dict'])"
            ) from exc
        first_sentence = " ".join(str(exc).split()).split(". ")[0]
        raise WeightsUnreadable(
            f"{path} is unreadable or incomplete; download it again ({type(exc).__name__}: {first_sentence})"
        ) from exc


def _read_json(path: Path) -> dict:
    """A config file, or WeightsUnreadable naming it (json's own error names no file)."""
    try:
        return json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bytes that are not text, nesting too deep
        raise WeightsUnreadable(f"{path} is not valid JSON ({clipped(str(exc), 200)}); download it again") from exc


def _load_strict(module: nn.Module, path: Path, name: str) -> None:
    """`path` into `module`, every key and shape as the release's; a file of another module or
    release raises WeightsUnreadable naming it (torch's own error names neither)."""
    try:
        module.load_state_dict(read_state_dict(path), strict=True, assign=True)
    except RuntimeError as exc:
        problem = " ".join(str(exc).split())[:300]
        raise WeightsUnreadable(f"{path} is not the release's {name} checkpoint ({problem})") from exc
    left = [key for key, value in {**dict(module.named_parameters()), **dict(module.named_buffers())}.items()
            if value.is_meta]
    if left:
        raise WeightsUnreadable(f"{path} does not set these {name} tensors: {left[:5]}")


def load_models(weights_dir: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float16,
                size: str = "full") -> HunyuanModels:
    """The release's modules from `weights_dir` (official layout, `.pth` or converted `.safetensors`).

    `size` picks the constructor arguments of the modules without a config file (`tiny` for tests).
    """
    root = check_weights_dir(weights_dir)
    unet_config = _read_json(root / "unet" / "config.json")
    vae_config = _read_json(root / "vae" / "config.json")
    scheduler_config = _read_json(root / "scheduler" / "scheduler_config.json")
    modules: dict[str, nn.Module] = {}
    spec = SIZES[size]
    for name, build in _builders(spec, unet_config, vae_config).items():
        with torch.device("meta"):
            module = build()
        path = vae_file(root) if name == "vae" else module_file(root, name)
        _load_strict(module, path, name)
        modules[name] = _placed(name, module, device, dtype)
    arcface = root / ARCFACE
    return _assemble(modules, spec, scheduler_config, arcface if arcface.is_file() else None, str(root))


def check_weights_loadable(weights_dir: str | Path, size: str = "full") -> None:
    """WeightsUnreadable listing every file of a complete folder that `load_models` would fail on:
    a config that is not JSON or builds no module, a checkpoint whose keys or shapes are not the
    release's (another module's file, a `{"state_dict": ..., "epoch": ...}` wrapper), one holding
    a pickled object or no tensors, an `arcface.onnx` that does not parse. The modules are built
    on the `meta` device and the checkpoints read lazily (safetensors' header, `.pth` memory-mapped),
    so the driver says it in seconds, before Ray starts: found by the actors, every job had been
    prepared and the run ended in Ray's tracebacks, with no row. `size` as for `load_models`."""
    root = check_weights_dir(weights_dir)
    problems: list[str] = []
    configs: dict[str, dict] = {}
    for name, relative in (("unet", "unet/config.json"), ("vae", "vae/config.json"),
                           ("scheduler", "scheduler/scheduler_config.json")):
        try:
            configs[name] = _read_json(root / relative)
        except WeightsUnreadable as exc:
            problems.append(str(exc))
    if "unet" in configs and "vae" in configs:
        for name, build in _builders(SIZES[size], configs["unet"], configs["vae"]).items():
            path = vae_file(root) if name == "vae" else module_file(root, name)
            try:
                with torch.device("meta"):
                    module = build()
            except Exception as exc:  # noqa: BLE001 - a config diffusers cannot build from
                problems.append(f"{root / name / 'config.json'} builds no {name} ({type(exc).__name__}: {exc})")
                continue
            try:
                problem = _shape_mismatch({k: tuple(v.shape) for k, v in module.state_dict().items()}, _tensor_shapes(path))
            except WeightsUnreadable as exc:
                problems.append(str(exc))
                continue
            if problem:
                problems.append(f"{path} is not the release's {name} checkpoint ({problem})")
    arcface = root / ARCFACE
    if arcface.is_file():
        try:
            _check_onnx(arcface)
        except WeightsUnreadable as exc:
            problems.append(str(exc))
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise WeightsUnreadable(f"HunyuanPortrait weights in {root} cannot be loaded:\n{listing}")


def _tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape in a checkpoint, its data unread where the format allows; WeightsUnreadable
    for a file that is no state dict of tensors."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt") as checkpoint:
                return {key: tuple(checkpoint.get_slice(key).get_shape()) for key in checkpoint.keys()}
        except Exception as exc:  # noqa: BLE001 - a header that does not parse
            raise WeightsUnreadable(f"{path} is unreadable or incomplete; download it again ({exc})") from exc
    state = read_state_dict(path)
    _refuse_non_tensors(state, str(path))
    return {str(key): tuple(value.shape) for key, value in state.items()}


def _check_onnx(path: Path) -> None:
    """WeightsUnreadable for a file that is no ONNX model (cut short, another file under its name)."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's errors for a file that is no model
        raise WeightsUnreadable(f"{path} is no ONNX model ({type(exc).__name__}); download it again") from exc


def _check_copied(path: Path) -> None:
    """WeightsUnreadable for a file `convert_weights` copies as it is that its reader would refuse:
    copied unread, a corrupt VAE or config made a converted folder that looked complete."""
    if path.suffix == ".json":
        _read_json(path)
    elif path.suffix == ".safetensors":
        _tensor_shapes(path)
    elif path.suffix == ".onnx":
        _check_onnx(path)


def _refuse_non_tensors(state: object, where: str) -> None:
    """WeightsUnreadable for a checkpoint that is no dict of tensors: a training checkpoint's
    wrapper (`{"state_dict": ..., "epoch": 3}`) loads without pickle, and neither safetensors nor
    a module takes it."""
    others = [str(key) for key, value in state.items() if not isinstance(value, torch.Tensor)] \
        if isinstance(state, dict) else ["(not a dict)"]
    if others:
        raise WeightsUnreadable(f"{where} holds entries that are no tensors: {', '.join(others[:5])} (a training "
                                "checkpoint? save the dict of its tensors, e.g. obj['state_dict'])")


def _shape_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str | None:
    """What keeps `found` from loading into a module of `expected` with strict=True, or None."""
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    shapes = [f"{key} {list(found[key])} not {list(expected[key])}" for key in sorted(expected.keys() & found.keys())
              if found[key] != expected[key]]
    parts = [f"{len(missing)} missing, e.g. {missing[:3]}" if missing else "",
             f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}" if unexpected else "",
             f"{len(shapes)} of other shapes, e.g. {shapes[:2]}" if shapes else ""]
    return "; ".join(part for part in parts if part) or None


def _atomic_copy(source: Path, target: Path) -> None:
    with atomic_target(target) as temporary:
        shutil.copyfile(source, temporary)


def _atomic_save(state_dict: dict[str, torch.Tensor], target: Path, source: Path, root: Path) -> None:
    """`state_dict`, read from `source` in the release folder `root`, as safetensors at `target`;
    the metadata names `source` in the release's layout."""
    _refuse_non_tensors(state_dict, str(source))  # safetensors holds tensors only: the save crashed on them
    seen: set[int] = set()
    tensors = {}
    for key, value in state_dict.items():
        value = value.contiguous()
        if value.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        tensors[key] = value
    with atomic_target(target) as temporary:
        save_file(tensors, temporary, metadata={"source": source.relative_to(root).as_posix()})


def convert_weights(weights_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the official layout to `out_dir` with every `.pth` as `.safetensors`; returns the files written.

    Files already in `out_dir` are kept. The others are written to a staging folder first (see
    `_staging_dir`) and moved into `out_dir` only once all of them are there, so a conversion
    that fails (an unreadable file) or is killed never leaves a partial `out_dir`; its rerun
    resumes from the staging folder, keeping only what was staged from the same source files.
    """
    root = check_weights_dir(weights_dir)
    out = Path(out_dir).expanduser()
    saves = {Path("hyportrait") / f"{name}.safetensors": module_file(root, name) for name in HYPORTRAIT_MODULES}
    copies = [root / name for name in CONFIG_FILES] + [vae_file(root)]
    if (root / ARCFACE).is_file():
        copies.append(root / ARCFACE)
    sources = saves | {source.relative_to(root): source for source in copies}
    converted = _refuse_other_sources(out, sources)
    pending = {relative: source for relative, source in sources.items() if not (out / relative).exists()}
    if not pending:
        return []
    staging = _staging_dir(out)
    fingerprints = {relative.as_posix(): _fingerprint(source) for relative, source in pending.items()}
    staged = _resumable(staging, fingerprints)
    atomic_write(staging / STAGED_FROM, json.dumps(staged))  # first: the folder is a conversion's from the start
    for relative, source in pending.items():
        key = relative.as_posix()
        if key in staged:  # by an interrupted run, from these very files
            continue
        if relative in saves:
            _atomic_save(read_state_dict(source), staging / relative, source, root)
        else:
            _check_copied(source)
            _atomic_copy(source, staging / relative)
        staged[key] = fingerprints[key]
        atomic_write(staging / STAGED_FROM, json.dumps(staged))
    if out.exists():
        for relative in pending:
            (out / relative).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, out / relative)
        shutil.rmtree(staging)
    else:
        os.replace(staging, out)
        (out / STAGED_FROM).unlink()
    converted |= {relative.as_posix(): input_fingerprint(str(source)) for relative, source in pending.items()}
    atomic_write(out / CONVERTED_FROM, json.dumps(converted, indent=1, sort_keys=True))
    return [out / relative for relative in pending]


def _refuse_other_sources(out: Path, sources: dict[Path, Path]) -> dict[str, str]:
    """What `out` records of the files a conversion wrote there (relative path -> the sampled
    fingerprint of its source, `input_fingerprint`); FileExistsError where one of them is still there and its source in
    this release differs, since converting the rest in beside it would mix two releases silently
    (the same files downloaded again, or moved, are the same content)."""
    try:
        converted = json.loads((out / CONVERTED_FROM).read_text())
    except (OSError, ValueError, RecursionError):  # none yet (or damaged): nothing to compare with
        return {}
    converted = converted if isinstance(converted, dict) else {}
    others = sorted(relative for relative, fingerprint in converted.items()
                    if (out / relative).exists() and Path(relative) in sources
                    and input_fingerprint(str(sources[Path(relative)])) != fingerprint)
    if others:
        raise FileExistsError(f"{out} holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''} converted from "
                              "other files than these: give another OUT, or delete those to convert them again")
    return converted


def _fingerprint(source: Path) -> list:
    """Which version of which file `source` is: another folder, or a download made again, differs."""
    stat = source.stat()
    return [str(source.resolve()), stat.st_size, stat.st_mtime_ns]


def _resumable(staging: Path, fingerprints: dict[str, list]) -> dict[str, list]:
    """The files in `staging` that an interrupted run made from the sources that `fingerprints`
    describe now; every other file there (staged from another folder or an older download, or a
    write cut short) is deleted, or a resume would install it as this conversion's. FileExistsError
    when `staging` holds files but no record: no conversion made it, and they are someone's."""
    record = staging / STAGED_FROM
    if record.is_file():
        recorded = _staged_record(record)
    else:
        foreign = [path for path in staging.rglob("*") if path.is_file() and not is_unfinished(path)]
        if foreign:
            raise FileExistsError(f"{staging} holds files no conversion staged (e.g. {foreign[0]}): it is where "
                                  "convert-weights stages its output; move it aside, or give another OUT")
        recorded = {}
    kept = {relative: fingerprint for relative, fingerprint in recorded.items()
            if fingerprints.get(relative) == fingerprint and (staging / relative).is_file()}
    for path in staging.rglob("*"):
        if path.is_file() and path != record and path.relative_to(staging).as_posix() not in kept:
            path.unlink()
    return kept


def _staged_record(record: Path) -> dict[str, list]:
    """What an interrupted conversion recorded as staged; nothing (all staged again) when the record
    is damaged, rather than a traceback on every rerun."""
    try:
        recorded = json.loads(record.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("%s cannot be read (%s): every file is converted again", record, clipped(str(exc), 200))
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _staging_dir(out: Path) -> Path:
    """Where a conversion writes until it is complete: `OUT.partial` beside a new `out` (renamed
    to it at the end), `OUT/.partial` inside an existing one (on its filesystem, files move in)."""
    if out.is_dir():
        return out / ".partial"
    resolved = out.resolve()
    return resolved.with_name(f"{resolved.name}.partial")
