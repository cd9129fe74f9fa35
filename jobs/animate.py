"""`portraitflow animate`: animate portraits with driving videos, in batch, to mp4s with audio."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from portraitflow.jobs.config import PortraitFlowConfig
from portraitflow.jobs.config.animate import AnimateConfig
from portraitflow.jobs.options import (ConfigOption, MlflowUriOption, RayAddressOption, SetOption,
                                      check_out_folder, refuse_missing_face_models, refuse_unreachable_services,
                                      resolve_config, say_failures)
from portraitflow.operators.job_status import FAILED

if TYPE_CHECKING:
    from portraitflow.operators.generation_jobs import Job

#: the config's own choices, so the flags offer (and check) exactly what the config accepts.
Backend = AnimateConfig.model_fields["backend"].annotation
Motion = AnimateConfig.model_fields["motion"].annotation


def _setting(name: str) -> str:
    """Where a flag's value lives in the config, and its default there, for the flag's help."""
    return f"(animate.{name}, default {AnimateConfig.model_fields[name].default})"


def animate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: videos, results.parquet, preview.png.")],
    ref: Annotated[Optional[Path], typer.Option(
        "--ref", exists=True, dir_okay=False, help="Reference portrait image (with --driving).")] = None,
    driving: Annotated[Optional[Path], typer.Option(
        "--driving", exists=True, dir_okay=False, help="Driving video (with --ref).")] = None,
    jobs: Annotated[Optional[Path], typer.Option(
        "--jobs", exists=True, dir_okay=False,
        help="CSV, JSONL or parquet: ref, driving, optional job_id and per-job params.")] = None,
    refs: Annotated[Optional[Path], typer.Option(
        "--refs", exists=True, file_okay=False, help="Folder of portraits (with --drivers): every pair is a job.")] = None,
    drivers: Annotated[Optional[Path], typer.Option(
        "--drivers", exists=True, file_okay=False, help="Folder of driving videos (with --refs).")] = None,
    backend: Annotated[Optional[Backend], typer.Option(help=f"Animator {_setting('backend')}.")] = None,
    weights: Annotated[Optional[str], typer.Option(
        help="HunyuanPortrait weights folder, or `tiny` for random tiny modules (plumbing tests) (animate.weights).")] = None,
    actors: Annotated[Optional[int], typer.Option(
        help=f"Most animation actors for CPU backends; the pool grows from 1 {_setting('actors')}.")] = None,
    gpus: Annotated[Optional[int], typer.Option(
        help=f"Most GPUs for hunyuan, one actor each; 0 runs hunyuan on CPU actors in float32 {_setting('gpus')}.")] = None,
    motion: Annotated[Optional[Motion], typer.Option(help=f"Motion transfer {_setting('motion')}.")] = None,
    pose_multiplier: Annotated[Optional[float], typer.Option(help=f"Head motion gain {_setting('pose_multiplier')}.")] = None,
    expression_multiplier: Annotated[Optional[float], typer.Option(
        help=f"Expression gain {_setting('expression_multiplier')}.")] = None,
    paste_back: Annotated[Optional[bool], typer.Option(
        "--paste-back/--crop-only",
        help="Composite onto the full portrait, or write the crop (animate.paste_back; default: the crop).")] = None,
    resume: Annotated[bool, typer.Option(help="Skip jobs whose complete output exists.")] = True,
    config: ConfigOption = None,
    overrides: SetOption = None,
    ray_address: RayAddressOption = None,
    mlflow_uri: MlflowUriOption = None,
) -> None:
    """Animate each reference portrait with its driving video; one MLflow run per invocation.
    Every job runs; the exit status is 1 when any failed (results.parquet says why), so a scheduler sees it."""
    from portraitflow.jobs.generation import run_generation
    from portraitflow.jobs.runtime import NotEnoughResources
    from portraitflow.operators.atomic import FolderBusy

    forms = [ref is not None or driving is not None, jobs is not None, refs is not None or drivers is not None]
    if sum(forms) != 1 or (forms[0] and not (ref and driving)) or (forms[2] and not (refs and drivers)):
        raise typer.BadParameter("give exactly one of: --ref with --driving, --jobs, or --refs with --drivers")
    flags = {"backend": backend, "weights": weights, "actors": actors, "gpus": gpus, "motion": motion,
             "pose_multiplier": pose_multiplier, "expression_multiplier": expression_multiplier, "paste_back": paste_back}
    check_out_folder(out, "animate")
    for flag, folder in (("--refs", refs), ("--drivers", drivers)):
        if folder is not None and out.resolve() == folder.resolve():  # listed flat: a folder inside it is not read
            raise typer.BadParameter(f"{out} is the {flag} folder: a rerun would take this run's videos and preview "
                                     "for inputs; give another --out (a folder inside it will do)", param_hint="--out")
    cfg = resolve_config(config, overrides, ray_address, mlflow_uri, {f"animate.{k}": v for k, v in flags.items()})
    check_weights(cfg.animate)  # first: it reads no model code, so a wrong --weights is said in a second
    check_job_options(cfg.animate, [k for k, v in flags.items() if v is not None] + _animate_overrides(overrides))
    refuse_unreachable_services(cfg)
    refuse_missing_face_models(cfg)
    job_list = _job_list(ref, driving, jobs, refs, drivers)
    try:
        table = run_generation(job_list, out, cfg, resume=resume)
    except NotEnoughResources as exc:
        raise typer.BadParameter(str(exc)) from exc
    except FolderBusy as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from exc
    counts = table.status.value_counts().to_dict()
    typer.echo(f"{len(table)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; results in {out / 'results.parquet'}")
    if cfg.mlflow.enabled:  # as curate, sweep and evaluate name theirs
        _say_run(cfg, out)
    failed = table[table.status == FAILED]
    say_failures(list(zip(failed.job_id, failed.reason)), "results.parquet's `reason`")
    if len(failed):
        raise typer.Exit(1)


def _job_list(ref: Path | None, driving: Path | None, jobs: Path | None, refs: Path | None,
              drivers: Path | None) -> list[Job]:
    """The jobs of whichever form was given (one pair, a jobs file, every pair of two folders)."""
    from portraitflow.operators.generation_jobs import cross_jobs, load_jobs, pair_jobs

    if jobs is not None:
        try:
            job_list = load_jobs(jobs)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--jobs") from exc
        if not job_list:  # a header alone: nothing would run, and a zero exit would say it worked
            raise typer.BadParameter(f"{jobs} has no jobs (no row below its header)", param_hint="--jobs")
        return job_list
    if ref is not None:
        _refuse_swapped(ref, driving)
        return pair_jobs(str(ref), str(driving))
    try:
        return cross_jobs(str(refs), str(drivers))
    except (ValueError, OSError) as exc:  # none of its kind; a folder that cannot be listed
        raise typer.BadParameter(str(exc), param_hint="--refs/--drivers") from exc


def _say_run(cfg: PortraitFlowConfig, out: Path) -> None:
    """The MLflow run this invocation recorded: the latest into `out` (`mlflow_run` tags it with the
    folder), looked up in the store rather than taken from MLflow's process-wide last run; nothing
    where the store has failed since (the run's recording warned of it)."""
    from portraitflow.jobs.runtime import (latest_run_into, mlflow_client, mlflow_tracking_uri, sqlite_store_path,
                                           store_failed, without_credentials)

    database = sqlite_store_path(mlflow_tracking_uri(cfg.mlflow))
    if database is not None and not database.exists():  # nothing was recorded; opening it would make it
        return
    try:
        client = mlflow_client(cfg.mlflow, writing=False)
        run_id = latest_run_into(client, out, finished=False)  # failed jobs end it FAILED
    except Exception as exc:
        if not store_failed(exc):
            raise
        return
    if run_id:
        typer.echo(f"run {run_id} ({without_credentials(str(client.tracking_uri))})")


def _refuse_swapped(ref: Path, driving: Path) -> None:
    """A video given as --ref with a photo as --driving: the job would start Ray and fail in its
    preparation (`not_an_image`) half a minute later. A GIF is both, so it is never refused."""
    from portraitflow.operators.paths import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    if ref.suffix.lower() in VIDEO_SUFFIXES - IMAGE_SUFFIXES and driving.suffix.lower() in IMAGE_SUFFIXES - VIDEO_SUFFIXES:
        raise typer.BadParameter(f"{ref} is a video and {driving} a photo: swap them (--ref is the portrait, "
                                 "--driving the video)", param_hint="--ref/--driving")


def _animate_overrides(overrides: list[str] | None) -> list[str]:
    """The animate fields that `--set animate.FIELD=VALUE` overrides name."""
    fields = (item.split("=", 1)[0].strip() for item in overrides or [])
    return [field.removeprefix("animate.") for field in fields if field.startswith("animate.")]


def check_job_options(cfg: AnimateConfig, given: list[str]) -> None:
    """Refuse a setting given on the command line, by flag or `--set`, that the backend does not
    read, such as `--motion` for hunyuan, `animate.seed` or `--gpus` for warp: every job would
    ignore it. A config file is not checked, since one file may serve several backends."""
    from portraitflow.models.animators.registry import check_settings, resolve_backend

    try:
        check_settings(resolve_backend(cfg), set(given))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


def check_weights(cfg: AnimateConfig) -> None:
    """Refuse missing HunyuanPortrait weights as a usage error: the flow would refuse them too,
    only with a traceback."""
    from portraitflow.models.animators.registry import check_backend, resolve_backend

    try:
        check_backend(resolve_backend(cfg), cfg)
    except (ValueError, FileNotFoundError) as exc:  # no weights given; WeightsMissing lists the missing files
        raise typer.BadParameter(str(exc), param_hint="--weights") from exc

