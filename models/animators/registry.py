"""Which animator a job runs on, the settings it reads, built inside the actor that holds it."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from portraitflow.jobs.config.animate import PIPELINE_FIELDS, AnimateConfig
from portraitflow.models.animators.base import Animator


def resolve_backend(cfg: AnimateConfig) -> str:
    """`auto` means hunyuan when weights are given, else the CPU `warp` animator."""
    if cfg.backend == "auto":
        return "hunyuan" if cfg.weights else "warp"
    return cfg.backend


def animator_class(backend: str) -> type[Animator]:
    """The animator class of `backend`, imported only when asked for (hunyuan's imports torch)."""
    if backend == "warp":
        from portraitflow.models.animators.warp import WarpAnimator

        return WarpAnimator
    if backend == "still":
        from portraitflow.models.animators.still import StillAnimator

        return StillAnimator
    if backend == "hunyuan":
        from portraitflow.models.hunyuan.animator import HunyuanAnimator

        return HunyuanAnimator
    raise ValueError(f"unknown animator backend {backend!r}")


def backend_settings(backend: str) -> frozenset[str]:
    """Every animate setting `backend` reads: every backend's (`PIPELINE_FIELDS`) but those its
    animator leaves `unread`, and its animator's `params`."""
    animator = animator_class(backend)
    return (frozenset(PIPELINE_FIELDS) - frozenset(animator.unread)) | frozenset(animator.params)


def check_settings(backend: str, names: Iterable[str]) -> None:
    """ValueError naming each setting in `names` that `backend` does not read: given, it would be
    silently ignored (and, in a sweep, cost a run that only repeats another)."""
    unused = sorted(set(names) - backend_settings(backend))
    if unused:
        shared = ", ".join(name for name in PIPELINE_FIELDS if name != "backend" and name not in animator_class(backend).unread)
        own = ", ".join(animator_class(backend).params)
        reads = f"{own}, besides the settings of every backend" if own else "only the settings of every backend"
        raise ValueError(f"backend {backend} does not use {', '.join(unused)}: {backend} reads {reads} ({shared})")


def animator_params(backend: str, params: dict[str, Any]) -> dict[str, Any]:
    """A job's params in the form its animator reads: hunyuan's guidance scales are (first step,
    last step) pairs, a single config value meaning constant; unset sampling options are left out."""
    out = {k: v for k, v in params.items() if v is not None}
    if backend == "hunyuan":
        out.update({k: (float(out[k]), float(out[k])) for k in ("appearance_scale", "motion_scale") if k in out})
    return out


def check_backend(backend: str, cfg: AnimateConfig) -> None:
    """Raise what would fail every actor of `backend` (ValueError; WeightsMissing naming each missing
    file, WeightsUnreadable each cut, corrupt or foreign one), so the driver refuses it before Ray starts."""
    if backend != "hunyuan":
        return
    from portraitflow.models.hunyuan.checkpoints import TINY_WEIGHTS, check_weights_dir, check_weights_readable

    if not cfg.weights:
        raise ValueError("the hunyuan animator needs --weights (animate.weights): a folder in the official "
                         "layout, or `tiny`")
    if cfg.weights != TINY_WEIGHTS:
        from portraitflow.models.hunyuan.weights import check_weights_loadable

        check_weights_readable(check_weights_dir(cfg.weights))  # a cut download, named from its index
        check_weights_loadable(cfg.weights)


def identity_notice(backend: str, cfg: AnimateConfig, face_backend: str) -> str | None:
    """What to tell a user whose hunyuan weights hold no `arcface.onnx`: the identity adapter then
    takes the face layer's embedding only where it is 512-d (an insightface ArcFace pack, itself
    another network than the release's), else zeros; said only in each job's `model` record, it
    went unnoticed. None where there is nothing to say."""
    from portraitflow.models.hunyuan.checkpoints import ARCFACE, TINY_WEIGHTS

    if backend != "hunyuan" or not cfg.weights or cfg.weights == TINY_WEIGHTS \
            or (Path(cfg.weights).expanduser() / ARCFACE).is_file():
        return None
    widths = "gives 512-d embeddings only with an ArcFace pack" if face_backend == "insightface" else "gives 128-d ones"
    return (f"{cfg.weights} holds no {ARCFACE}: the identity adapter takes the face layer's embedding where it is "
            f"512-d, else zeros (no identity conditioning, as the release does for a portrait without a face), and "
            f"face.backend {face_backend} {widths}; put the release's {ARCFACE} there (each job's `model.identity` "
            "in results.parquet says what it used)")


#: a hunyuan actor's runtime beside the base every actor declares: torch, diffusers and the
#: sampler's host tensors. With `tiny` weights on CPU the actor peaked at 782-799 MiB (Ray's USS, review
#: s20) where it declared 798 MiB, no more than warp's; so 384 MiB, about half again that excess
#: and the unmeasured rest (a CUDA context's host side is not measured: no GPU in that review).
HUNYUAN_RUNTIME_MEMORY = 384 * 1024**2


def model_host_bytes(backend: str, cfg: AnimateConfig) -> int:
    """Host memory an actor of `backend` holds for its model, for Ray's memory declaration: 0 for
    the other backends; hunyuan's runtime (HUNYUAN_RUNTIME_MEMORY) and its checkpoints, which pass
    through host memory one at a time as they load onto a GPU (the largest, the UNet's, counts), and
    on CPU (`gpus` 0) all stay there as float32, up to twice a 16-bit file (`tiny`: none)."""
    from portraitflow.models.hunyuan.checkpoints import TINY_WEIGHTS, checkpoint_sizes

    if backend != "hunyuan":
        return 0
    if not cfg.weights or cfg.weights == TINY_WEIGHTS:
        return HUNYUAN_RUNTIME_MEMORY
    sizes = checkpoint_sizes(cfg.weights)
    return HUNYUAN_RUNTIME_MEMORY + (max(sizes, default=0) if cfg.gpus else 2 * sum(sizes))


def create_animator(backend: str, cfg: AnimateConfig) -> Animator:
    """Load the backend's model once; actors call this in __init__ so nothing is pickled. Only
    hunyuan holds weights; the others are built from their class alone."""
    if backend == "hunyuan":
        from portraitflow.models.hunyuan.animator import HunyuanAnimator

        check_backend(backend, cfg)
        return HunyuanAnimator.create(cfg.weights, compile_mode=cfg.compile_mode, windows_per_call=cfg.windows_per_call)
    return animator_class(backend)()
