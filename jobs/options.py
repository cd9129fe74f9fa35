"""CLI options shared by every verb, so each flag means the same thing everywhere."""
from __future__ import annotations

import json
import os
import tempfile
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
    where to put it, before any work starts, instead of an actor dying of it in Ray's long
    traceback (curate) or every job failing (animate, sweep, evaluate). On a cluster (which must
    answer: call `refuse_unreachable_services` first) the files of each node with CPUs count,
    where its workers load them (`node_model_problem`)."""
    from portraitflow.jobs.runtime import ray_address
    from portraitflow.models.face.factory import check_model_files
    from portraitflow.models.face.model_files import ModelFilesMissing

    if ray_address(cfg.ray):
        if problem := node_model_problem(cfg):
            raise typer.BadParameter(problem, param_hint="face.backend")
        return
    try:
        check_model_files(cfg.face)
    except ModelFilesMissing as exc:
        raise typer.BadParameter(str(exc), param_hint="face.backend") from exc


#: nodes named in a message, the rest counted
NODES_NAMED = 3


def node_model_problem(cfg: PortraitFlowConfig) -> str | None:
    """What keeps the cluster's nodes from running `cfg.face` alike, None when nothing: nodes
    lacking a model file, or holding other files than the others (their embeddings would not
    compare: one corpus, two identity spaces), or than this driver where it has them (a corpus
    records the driver's digests). Joins the cluster."""
    from portraitflow.jobs.runtime import init_ray, on_each_node
    from portraitflow.models.face.factory import model_digests
    from portraitflow.models.face.model_files import ModelFilesMissing

    init_ray(cfg.ray)
    answers = on_each_node(_node_model_digests, cfg.face.model_dump(mode="json"))
    failed: dict[str, list[str]] = {}
    for node, answer in answers.items():
        if not isinstance(answer, dict):
            failed.setdefault(str(answer), []).append(node)
    if failed:
        return (f"{sum(map(len, failed.values()))} of {len(answers)} Ray node(s) cannot load the face models of "
                f"face.backend={cfg.face.backend}: "
                + "; ".join(f"{_named(nodes)}: {why}" for why, nodes in failed.items()))
    try:
        answers["this driver"] = model_digests(cfg.face)
    except ModelFilesMissing:  # a driver that only submits work need not hold them
        pass
    holders: dict[str, list[str]] = {}
    for node, digests in answers.items():
        holders.setdefault(json.dumps(digests, sort_keys=True), []).append(node)
    if len(holders) < 2:
        return None
    versions = {json.dumps(digests, sort_keys=True): digests for digests in answers.values()}
    roles = sorted({role for digests in versions.values() for role in digests
                    if len({version.get(role) for version in versions.values()}) > 1})
    files = "; ".join(f"{_named(nodes)}: " + ", ".join(f"{role} {versions[held].get(role, '-')[:12]}" for role in roles)
                      for held, nodes in holders.items())
    return (f"the Ray nodes hold different face model files (sha256 by role: {files}); embeddings of other files do "
            "not compare, nor are they the files the corpus records: give every node and the driver the same files")


def worker_lacking_models(exc: BaseException) -> str | None:
    """One line for a run that died of a Ray worker without the face models (a node the
    autoscaler added after `node_model_problem` asked the others), None for any other error: Ray
    passes the worker's error on as text inside its own, after several hundred lines."""
    import re

    text = str(exc)
    marker = "ModelFilesMissing: "
    if marker not in text:
        return None
    missing = text[text.rindex(marker) + len(marker):].splitlines()[0]
    node = re.search(r"\bip=([0-9a-fA-F.:]+)", text)
    where = f"the Ray node at {node.group(1)}" if node else "a Ray node"
    return (f"a worker on {where} cannot load the face models: {missing}. What finished is kept: rerun once every "
            "node holds the same files (`portraitflow doctor --ray-address ...` checks the nodes up now)")


def _named(nodes: list[str]) -> str:
    more = len(nodes) - NODES_NAMED
    return ", ".join(nodes[:NODES_NAMED]) + (f" and {more} more" if more > 0 else "")


def _node_model_digests(face_settings: dict[str, Any]) -> dict[str, str] | str:
    """On a node: its face model files' digests by role, or what is missing (a Ray task)."""
    from portraitflow.jobs.config.face import FaceConfig
    from portraitflow.models.face.factory import model_digests
    from portraitflow.models.face.model_files import ModelFilesMissing

    try:
        return model_digests(FaceConfig.model_validate(face_settings))
    except ModelFilesMissing as exc:
        return str(exc)


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

    from_env = not cfg.mlflow.tracking_uri and os.environ.get("MLFLOW_TRACKING_URI")  # the option was not given
    checks = ([(check_ray_reachable, cfg.ray, "--ray-address")] if ray else []) + [
        (check_mlflow_reachable, cfg.mlflow, "MLFLOW_TRACKING_URI" if from_env else "--mlflow-uri")]
    for check, settings, flag in checks:
        try:
            check(settings)
        except ServiceUnreachable as exc:
            raise typer.BadParameter(str(exc), param_hint=flag) from None


def check_out_folder(out: Path, flow: str) -> None:
    """Refuse an --out that cannot become a folder (it, or a folder above it, is a file; the folder
    it would be made in, or it, cannot be written in) before
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
            try:  # what the run would write first: a folder in it (a read-only mount, another user's folder)
                os.rmdir(tempfile.mkdtemp(prefix=".portraitflow-probe-", dir=path))
            except OSError as exc:
                raise typer.BadParameter(f"{out}: cannot write in {path} ({exc.strerror or exc})", param_hint="--out") from None
            break
    try:
        check_folder_owner(out, flow)
    except FolderOfAnotherFlow as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None


#: failed inputs or jobs named on the console after a run (its table holds them all)
FAILED_SHOWN = 10


def say_failures(failures: list[tuple[str, str]], table: str) -> None:
    """The first `FAILED_SHOWN` (name, reason) pairs of a run, on stderr, so a script reading the
    summary on stdout is not flooded by a batch where every job failed; `table` says where the rest are."""
    for name, reason in failures[:FAILED_SHOWN]:
        typer.echo(f"  failed {name}: {reason}", err=True)
    if len(failures) > FAILED_SHOWN:
        typer.echo(f"  ... {len(failures) - FAILED_SHOWN} more failed ({table} says why)", err=True)
