"""CLI options shared by every verb, so each flag means the same thing everywhere."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from portraitflow.jobs.config import PortraitFlowConfig, load_config

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="YAML file with config sections.", exists=True, dir_okay=False),
]
SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field: section.field=value (repeatable); a text field "
                 "takes the value as written, others read it as YAML."),
]
RayAddressOption = Annotated[
    Optional[str], typer.Option("--ray-address", help="Ray cluster to join; default RAY_ADDRESS or local.")
]
MlflowUriOption = Annotated[
    Optional[str],
    typer.Option("--mlflow-uri", help="MLflow tracking URI; default MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
                 "in the current directory."),
]


def resolve_config(
    config: Path | None,
    overrides: list[str] | None,
    ray_address: str | None = None,
    mlflow_uri: str | None = None,
    flags: dict[str, Any] | None = None,
) -> PortraitFlowConfig:
    """Load the config, then set the dedicated flags (`flags`: dotted key -> value, None when not
    given) as typed values, so a flag's string is kept whole rather than parsed as YAML (flags win)."""
    given = {"ray.address": ray_address or None, "mlflow.tracking_uri": mlflow_uri or None, **(flags or {})}
    try:
        return load_config(config, overrides, {k: v for k, v in given.items() if v is not None})
    except ValueError as exc:  # pydantic's ValidationError is a ValueError, so are unreadable files and bad YAML
        raise typer.BadParameter(str(exc)) from exc


def refuse_missing_face_models(cfg: PortraitFlowConfig) -> None:
    """A face backend whose model files are missing is a usage error naming what to download and
    where to put it, before Ray starts, instead of an actor dying of it (curate) or every job
    failing (animate, sweep, evaluate). Local Ray only: on a cluster the workers' files count."""
    from portraitflow.jobs.runtime import ray_address
    from portraitflow.models.face.factory import check_model_files
    from portraitflow.models.face.model_files import ModelFilesMissing

    if ray_address(cfg.ray):
        return
    try:
        check_model_files(cfg.face)
    except ModelFilesMissing as exc:
        raise typer.BadParameter(str(exc), param_hint="face.backend") from exc


def refuse_mlflow_disabled(cfg: PortraitFlowConfig) -> None:
    """`mlflow.enabled=false` is a usage error for the verbs whose results are MLflow runs (evaluate,
    sweep, report): they would record or read runs anyway, the setting silently ignored."""
    if not cfg.mlflow.enabled:
        raise typer.BadParameter("false: evaluate, sweep and report keep their results in MLflow runs (only curate "
                                 "and animate run without MLflow); drop mlflow.enabled=false", param_hint="mlflow.enabled")


def refuse_unreachable_services(cfg: PortraitFlowConfig, ray: bool = True) -> None:
    """A Ray cluster or MLflow server nothing answers on is a usage error said in one line within
    seconds, before anything is written: Ray retries for minutes, MLflow's client for about four,
    and both end in long tracebacks."""
    from portraitflow.jobs.runtime import ServiceUnreachable, check_mlflow_reachable, check_ray_reachable

    checks = ([(check_ray_reachable, cfg.ray, "--ray-address")] if ray else []) + [
        (check_mlflow_reachable, cfg.mlflow, "--mlflow-uri")]
    for check, settings, flag in checks:
        try:
            check(settings)
        except ServiceUnreachable as exc:
            raise typer.BadParameter(str(exc), param_hint=flag) from None


def check_out_folder(out: Path, flow: str) -> None:
    """Refuse an --out that cannot become a folder (it, or a folder above it, is a file) before
    anything starts: found later, an MLflow run would already be made and left FAILED. Refuse one
    inside a submitted job's working directory too (a relative --out under `ray job submit`): Ray's
    temporary copy, which it deletes, which later jobs share, and which other nodes' workers do not
    see; and one holding another verb's outputs (`check_folder_owner`), whose files `flow` would mix with its own."""
    from portraitflow.jobs.runtime import FolderOfAnotherFlow, check_folder_owner, in_submitted_working_dir

    if in_submitted_working_dir(out):
        raise typer.BadParameter(
            f"{out} is inside Ray's temporary copy of --working-dir ({out.resolve()}): "
            "give a path on storage every node sees, such as the shared mount (docs/cluster.md)", param_hint="--out")
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                raise typer.BadParameter(f"{path} is a file, not a folder" if path == out else
                                         f"{out}: {path} is a file, not a folder", param_hint="--out")
            break
    try:
        check_folder_owner(out, flow)
    except FolderOfAnotherFlow as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
