"""CLI options shared by every verb, so each flag means the same thing everywhere."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from portraitflow.jobs.config import PortraitFlowConfig, load_config

ConfigOption = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML file with config sections.", exists=True)
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field: section.field=value (repeatable)."),
]
RayAddressOption = Annotated[
    Optional[str], typer.Option("--ray-address", help="Ray cluster to join; default RAY_ADDRESS or local.")
]
MlflowUriOption = Annotated[
    Optional[str], typer.Option("--mlflow-uri", help="MLflow tracking URI; default sqlite:///mlflow.db.")
]


def resolve_config(
    config: Path | None,
    overrides: list[str] | None,
    ray_address: str | None = None,
    mlflow_uri: str | None = None,
) -> PortraitFlowConfig:
    """Load the config and fold the dedicated flags in as ordinary overrides (flags win)."""
    sets = list(overrides or [])
    if ray_address:
        sets.append(f"ray.address={ray_address}")
    if mlflow_uri:
        sets.append(f"mlflow.tracking_uri={mlflow_uri}")
    try:
        return load_config(config, sets)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise typer.BadParameter(str(exc)) from exc
