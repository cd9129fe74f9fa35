"""Connecting to Ray and MLflow: local embedded defaults, the same code on a cluster."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from portraitflow.jobs.config.runtime import MLflowConfig, RayConfig

DEFAULT_MLFLOW_DB = "mlflow.db"


def ray_address(cfg: RayConfig) -> str | None:
    """The cluster to join, or None for a local Ray."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def init_ray(cfg: RayConfig) -> None:
    """Join the configured cluster, or start Ray in-process; a no-op when already connected.

    Workers get PORTRAITFLOW_* and MLFLOW_* variables through the runtime_env so settings given
    to the driver (model roots, tracking URI) hold on every node.
    """
    import ray

    if ray.is_initialized():
        return
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(("PORTRAITFLOW_", "MLFLOW_"))}
    runtime_env = {"env_vars": env_vars} if env_vars else None
    address = ray_address(cfg)
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    object_store = cfg.object_store_memory_mb * 1024 * 1024 if cfg.object_store_memory_mb else None
    ray.init(
        num_cpus=cfg.num_cpus,
        object_store_memory=object_store,
        include_dashboard=False,
        runtime_env=runtime_env,
    )


def mlflow_tracking_uri(cfg: MLflowConfig) -> str:
    """Explicit URI, else MLFLOW_TRACKING_URI, else an sqlite store in the working directory."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / DEFAULT_MLFLOW_DB}"


@contextlib.contextmanager
def mlflow_run(
    cfg: MLflowConfig, experiment: str, run_name: str | None = None, nested: bool = False
) -> Iterator[object | None]:
    """An MLflow run with the tracking URI resolved; yields None when tracking is disabled."""
    if not cfg.enabled:
        yield None
        return
    import mlflow

    mlflow.set_tracking_uri(mlflow_tracking_uri(cfg))
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, nested=nested) as run:
        yield run
