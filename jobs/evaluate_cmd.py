"""`portraitflow evaluate`, `portraitflow sweep` and `portraitflow report`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from portraitflow.jobs.config import parse_override
from portraitflow.jobs.config.evaluate import EvaluateConfig
from portraitflow.jobs.options import (ConfigOption, MlflowUriOption, RayAddressOption, SetOption,
                                      check_out_folder, refuse_missing_face_models, refuse_mlflow_disabled,
                                      refuse_unreachable_services, resolve_config)
from portraitflow.operators.job_status import OK, SKIPPED

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created).")]
#: the config's own choices, so the flag offers (and checks) exactly what the config accepts
Protocol = EvaluateConfig.model_fields["protocol"].annotation


def evaluate(
    results: Annotated[Path, typer.Argument(
        metavar="RESULTS", help="Generation results (results.parquet) or a jobs file with an `output` column; relative paths "
        "are taken from its folder.", exists=True)],
    out: OutOption,
    jobs: Annotated[Optional[Path], typer.Option(
        "--jobs", help="The jobs file given to `animate`, for `ref` and `driving` when RESULTS lacks them "
        "(job ids as animate gave them: `job_id`, else derived from ref and driving).", exists=True)] = None,
    protocol: Annotated[Optional[Protocol], typer.Option(
        "--protocol", help="self: each output against its own driving clip (the reference is the clip's first "
        "frame); cross: a portrait driven by another video (evaluate.protocol, default "
        f"{EvaluateConfig.model_fields['protocol'].default}).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    ray_address: RayAddressOption = None,
    mlflow_uri: MlflowUriOption = None,
) -> None:
    """Score existing outputs in one MLflow run and write a static HTML report to OUT/report;
    exit 1 when no job could be scored."""
    from portraitflow.jobs.sweep import check_rank_by, evaluate_results, report_from_run
    from portraitflow.operators.paths import safe_stem

    cfg = resolve_config(config, overrides, ray_address, mlflow_uri, {"evaluate.protocol": protocol})
    check_out_folder(out, "evaluate")
    refuse_mlflow_disabled(cfg)
    refuse_unreachable_services(cfg)
    refuse_missing_face_models(cfg)
    try:
        check_rank_by(cfg.evaluate.rank_by, "evaluate.rank_by")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="evaluate.rank_by") from exc
    table = _read_table(results)
    # every metric file, side-by-side video and merge is keyed by the id's file stem (`safe_stem`)
    ids_by_stem: dict[str, list[str]] = {}
    for job_id in table["job_id"] if "job_id" in table else []:
        ids_by_stem.setdefault(safe_stem(str(job_id)), []).append(str(job_id))
    repeated = [stem for stem, ids in ids_by_stem.items() if len(ids) > 1]
    if repeated:
        ids = list(dict.fromkeys(ids_by_stem[repeated[0]]))
        same = f"job_id {ids[0]!r} is on more than one row" if len(ids) == 1 else \
            f"job_ids {', '.join(map(repr, ids))} name the same files ({repeated[0]})"
        raise typer.BadParameter(f"{results}: {same}{f' (and {len(repeated) - 1} more ids)' if len(repeated) > 1 else ''}; "
                                 "job ids must be unique", param_hint="RESULTS")
    if jobs is not None and "job_id" in table:  # ids as animate gave them: strings, unique
        table = table.drop(columns=[c for c in ("ref", "driving") if c in table]).astype({"job_id": str}).merge(
            _animate_jobs(jobs), on="job_id", how="left", validate="one_to_one", indicator=True)
        unmatched = table.loc[table.pop("_merge") == "left_only", "job_id"].tolist()
        if unmatched:
            raise typer.BadParameter(f"job ids of {results} not in {jobs}: {', '.join(map(repr, unmatched[:3]))}"
                                     f"{' ...' if len(unmatched) > 3 else ''} (give the jobs file animate was given)",
                                     param_hint="--jobs")
    missing = {"job_id", "ref", "driving", "output"} - set(table.columns)
    if missing:
        raise typer.BadParameter(f"{results}: missing columns {sorted(missing)} (give --jobs for ref and driving)")
    if table.empty:  # before Ray and a FAILED run, as sweep refuses a jobs file with no row
        raise typer.BadParameter(f"{results} has no row: nothing to score", param_hint="RESULTS")
    if "status" in table:
        table = table.assign(status=table["status"].replace({SKIPPED: OK}))
    table = table.assign(job_id=[safe_stem(str(j)) for j in table["job_id"]])  # ids name files under OUT
    # named by its folder (animate's --out), and by the file too where it is not animate's: two tables
    # of one folder made two runs and pages of one name
    name = results.parent.name if results.name == "results.parquet" else f"{results.parent.name}/{results.name}"
    run_id = evaluate_results(table, cfg, out, name=name.strip("/") or "evaluate", results=results)
    page = report_from_run(run_id, cfg, out / "report")
    typer.echo(f"run {run_id}\nreport {page}")
    _refuse_nothing_scored(out / "per_video.parquet", results)


def sweep(
    sweep_file: Annotated[Path, typer.Argument(
        metavar="SWEEP_FILE", help="Sweep YAML: dataset, grid and/or configs, evaluate overrides.", exists=True, dir_okay=False)],
    out: OutOption,
    max_parallel: Annotated[Optional[int], typer.Option(
        "--max-parallel", help="Configs run at the same time (evaluate.max_parallel).", min=1)] = None,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Run again each config with a failed video, generating only what is missing "
        "(a failure on unchanged inputs is otherwise kept: it would fail again).")] = False,
    config: ConfigOption = None,
    overrides: SetOption = None,
    ray_address: RayAddressOption = None,
    mlflow_uri: MlflowUriOption = None,
) -> None:
    """Generate and evaluate every config of SWEEP_FILE: one parent MLflow run, one nested run per
    config. Rerunning resumes: finished configs are not redone. Exit 1 when no config scored a video."""
    import yaml

    from portraitflow.jobs.runtime import NotEnoughResources
    from portraitflow.jobs.sweep import InvalidSweep, run_sweep, store_of_earlier_sweep
    from portraitflow.operators.atomic import FolderBusy
    from portraitflow.jobs.sweep_spec import load_sweep

    cfg = resolve_config(config, overrides, ray_address, mlflow_uri)
    if not cfg.mlflow.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI") and (earlier := store_of_earlier_sweep(out)):
        typer.echo(f"resuming with the MLflow store the sweep into {out} used: {earlier}", err=True)
        cfg.mlflow.tracking_uri = earlier  # the default, ./mlflow.db, would be another store from another folder
    check_out_folder(out, "sweep")
    refuse_mlflow_disabled(cfg)
    refuse_unreachable_services(cfg)
    refuse_missing_face_models(cfg)
    try:
        spec = load_sweep(sweep_file)
        # the command line wins over the file's `evaluate:`, as over any config file (the file's won silently)
        given = {path[1]: value for path, value in map(parse_override, overrides or []) if path[0] == "evaluate"
                 and len(path) == 2} | ({"max_parallel": max_parallel} if max_parallel else {})
        spec = spec.model_copy(update={"evaluate": {**spec.evaluate, **given}})
    except (ValueError, yaml.YAMLError) as exc:  # pydantic's ValidationError is a ValueError
        raise typer.BadParameter(f"{sweep_file}: {_error_line(exc, sweep_file)}", param_hint="SWEEP_FILE") from exc
    try:
        run_id = run_sweep(spec, cfg, out, retry_failed)  # checks the sweep whole before anything starts
    except InvalidSweep as exc:
        raise typer.BadParameter(f"{sweep_file}: {_error_line(exc, sweep_file)}", param_hint="SWEEP_FILE") from exc
    except NotEnoughResources as exc:
        raise typer.BadParameter(str(exc)) from exc
    except FolderBusy as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from exc
    typer.echo(f"parent run {run_id}\nsummary {out / 'summary.csv'}\nreport {out / 'report' / 'index.html'}")
    if not retry_failed:
        _say_failures_kept(out / "summary.csv")
    _refuse_sweep_scored_nothing(out / "summary.csv", sweep_file)


def report(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="A sweep's parent run id, or an evaluation run id.")],
    out: OutOption,
    rank_by: Annotated[Optional[str], typer.Option(
        "--rank-by", help="Metric sorting the summary (default: the one the run ranked by, else evaluate.rank_by).")] = None,
    config: ConfigOption = None,
    overrides: SetOption = None,
    mlflow_uri: MlflowUriOption = None,
) -> None:
    """Write a static HTML page (summary, plots, side-by-side videos) of a run to OUT; no server needed."""
    from mlflow.exceptions import MlflowException

    from portraitflow.jobs.runtime import mlflow_tracking_uri, without_credentials
    from portraitflow.jobs.sweep import check_rank_by, report_from_run

    cfg = resolve_config(config, overrides, None, mlflow_uri)
    check_out_folder(out, "report")
    refuse_mlflow_disabled(cfg)
    refuse_unreachable_services(cfg, ray=False)
    try:
        if rank_by is not None:  # the run's own is checked once it is read
            check_rank_by(rank_by, "--rank-by")
    except ValueError as exc:  # a sweep param or a typo, which would be ranked with a made-up direction
        raise typer.BadParameter(str(exc), param_hint="--rank-by") from exc
    try:
        page = report_from_run(run_id, cfg, out, rank_by)
    except MlflowException as exc:  # an unknown run id is a user's mistake, not a crash
        raise typer.BadParameter(f"run {run_id} in {without_credentials(mlflow_tracking_uri(cfg.mlflow))}: {exc.message}",
                                 param_hint="RUN_ID") from exc
    except ValueError as exc:  # a run of another flow (a curation's)
        raise typer.BadParameter(str(exc), param_hint="RUN_ID") from exc
    typer.echo(str(page))


def _animate_jobs(path: Path):
    """job_id, ref, driving of a jobs file read as `animate` reads it, so ids (derived when the
    file has none) and paths match its results."""
    import pandas as pd

    from portraitflow.operators.generation_jobs import load_jobs

    try:
        jobs = load_jobs(path)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--jobs") from exc
    return pd.DataFrame([(j.job_id, j.ref, j.driving) for j in jobs], columns=["job_id", "ref", "driving"])


def _read_table(path: Path):
    """RESULTS as written: a CSV or JSONL read as `load_jobs` reads a jobs file (`read_table`), so
    text cells stay text (a job id such as `007` keeps its zeros and matches its jobs file and output
    names), and a CSV row with a field more than its header (a trailing or unquoted comma), which
    would shift every column, is refused, named; relative `ref`, `driving` and `output` paths are
    taken from RESULTS' folder, as `load_jobs` takes a jobs file's."""
    import pandas as pd

    from portraitflow.operators.generation_jobs import local_path, read_table

    if path.suffix.lower() == ".parquet":
        table = pd.read_parquet(path)
    else:
        try:
            columns, rows = read_table(path)
        except ValueError as exc:  # a JSON error, a shifted row, a suffix of no table
            raise typer.BadParameter(str(exc), param_hint="RESULTS") from exc
        table = pd.DataFrame(rows, columns=columns)
    for column in ("ref", "driving", "output"):
        if column in table:  # a missing cell (None, NaN) stays missing: its row fails with its reason
            table[column] = [local_path(v, path.parent) if isinstance(v, str) else v for v in table[column]]
    return table


def _refuse_nothing_scored(per_video: Path, results: Path) -> None:
    """Exit 1 naming the reasons when no job of RESULTS was scored: the run and report exist, but a
    zero exit would pass off an empty evaluation (every output path wrong, say) as a result."""
    import pandas as pd

    from portraitflow.operators.evaluate_video import (NO_OUTPUT, REFERENCE_NOT_DRIVER_FRAME, REFERENCE_SIZE_MISMATCH,
                                                       UNREADABLE)

    table = pd.read_parquet(per_video)
    if (table["status"] == OK).any():
        return
    reasons = table["reason"].fillna("unknown").value_counts() if "reason" in table else pd.Series(dtype=int)
    hints = []
    if {REFERENCE_SIZE_MISMATCH, REFERENCE_NOT_DRIVER_FRAME} & set(reasons.index):
        hints.append("A portrait animated by another person's or another clip's video has no ground truth: "
                     "score it with --protocol cross.")
    if {NO_OUTPUT, UNREADABLE} & set(reasons.index):
        hints.append(f"Relative ref, driving and output paths are taken from {results.parent.resolve()}.")
    typer.echo(f"error: no job of {results} could be scored ({len(table)} job(s): "
               f"{', '.join(f'{count} {reason}' for reason, count in reasons.items()) or 'none'}; see {per_video}). "
               + " ".join(hints), err=True)
    raise typer.Exit(1)


def _say_failures_kept(summary_csv: Path) -> None:
    """Name the configs a resume took from earlier runs with failed videos: failures on unchanged
    inputs are not retried, and after a full disk a plain rerun exited 0 with a config of 0 videos."""
    import pandas as pd

    summary = pd.read_csv(summary_csv)
    if not {"reused", "jobs_failed"} <= set(summary.columns):
        return
    kept = summary[summary["reused"].astype(bool) & (summary["jobs_failed"].fillna(0) > 0)]
    if len(kept):
        named = ", ".join(f"{config} ({int(failed)} failed)" for config, failed in zip(kept["config"], kept["jobs_failed"]))
        typer.echo(f"kept from earlier runs with failed videos: {named}; failures on unchanged inputs are not "
                   "retried: --retry-failed runs them again (their reasons are in each config's per_video table)",
                   err=True)


def _refuse_sweep_scored_nothing(summary_csv: Path, sweep_file: Path) -> None:
    """Exit 1 naming the reasons when no config scored a video (`scored_any`). The runs, summary and
    report exist, but a zero exit would tell a script or CI that a sweep with no result worked,
    where `evaluate` exits 1 alike."""
    import pandas as pd

    from portraitflow.jobs.sweep import failed_configs, scored_any

    summary = pd.read_csv(summary_csv)
    if scored_any(summary):
        return
    failed = failed_configs(summary)
    reasons = [f"{count} x {error}" for error, count in summary.loc[failed, "error"].value_counts().items()] \
        if failed.any() else []  # the column is there only when a config failed whole
    if (~failed).any():
        reasons.append(f"{int((~failed).sum())} finished with every job failed (their per_video tables say why)")
    typer.echo(f"error: no config of {sweep_file} scored a video ({len(summary)} config(s): {'; '.join(reasons)}; "
               f"see {summary_csv}).", err=True)
    raise typer.Exit(1)


def _error_line(exc: Exception, path: Path) -> str:
    """What is wrong with a sweep file, on one line: where invalid YAML breaks, each invalid field
    (pydantic) by its place in the file, anything else as its message without `path` repeated."""
    import yaml
    from pydantic import ValidationError

    from portraitflow.jobs.config import validation_problems

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"not valid YAML: {exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(exc, ValidationError):
        return validation_problems(exc)
    text = " ".join(str(exc).split())
    return text.removeprefix(f"{path}: ")
