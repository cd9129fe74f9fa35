"""Where work runs (Ray) and where it is recorded (MLflow)."""
from __future__ import annotations

from pydantic import Field

from portraitflow.jobs.config.fields import ConfigModel


class RayConfig(ConfigModel):
    """Where work runs: a local Ray started in-process, or a cluster to join."""


    address: str | None = Field(
        None,
        description="Ray cluster to join (`auto`, `HOST:6379`; not a Ray Client `ray://` address, on which Ray Data fails). Empty: the RAY_ADDRESS "
        "environment variable if set, else a local Ray started in-process (never a `ray start` cluster on "
        "this machine: give `auto` for that).",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs for a local Ray (every flow's tasks and actors need one); empty means all cores."
    )
    object_store_memory_mb: int | None = Field(
        None, ge=75, description="Object store size, in MB, for a local Ray (Ray's minimum is 75); empty lets Ray choose."
    )
    ship_code: bool = Field(
        True,
        description="On a cluster, send the driver's portraitflow code to every worker (runtime_env "
        "py_modules) so workers run the driver's version whatever their image holds.",
    )


class MLflowConfig(ConfigModel):
    """Where runs are recorded: an sqlite store in the working directory, or a tracking server."""

    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (a server `http://...` or a store `sqlite:///...`). Empty: "
        "MLFLOW_TRACKING_URI if set, else `sqlite:///mlflow.db` in the working directory.",
    )
    enabled: bool = Field(
        True,
        description="Record runs in MLflow. `false` is for curate and animate; evaluate, sweep and report keep "
        "their results in MLflow runs and refuse it.",
    )
