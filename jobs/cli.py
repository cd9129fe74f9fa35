"""The `portraitflow` command. Each verb lives in its own module under jobs/ and is added here."""
from __future__ import annotations

import errno
import os
import signal

import typer

from portraitflow.jobs import animate, config_cmd, convert_weights, curate, doctor, evaluate_cmd, inspect_cmd, samples

app = typer.Typer(
    name="portraitflow",
    help="Curate talking-head corpora, animate portraits in batch, and evaluate, on Ray Data + MLflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: it wraps at any width, where rich's table cut option text at 80 columns
    context_settings={"max_content_width": 120},
)
app.command("doctor")(doctor.doctor)
app.command("curate")(curate.curate)
app.command("inspect")(inspect_cmd.inspect)
app.command("samples")(samples.samples)
app.command("animate")(animate.animate)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("sweep")(evaluate_cmd.sweep)
app.command("report")(evaluate_cmd.report)
app.command("convert-weights")(convert_weights.convert_weights)
app.add_typer(config_cmd.app, name="config")


#: a write refused for room, not for anything about the inputs: said in one line, and resumable
OUT_OF_ROOM = (errno.ENOSPC, errno.EDQUOT)


def main() -> None:
    """The console script: `app`, with a cluster that refuses this driver past the checks each verb
    makes first (token authentication, say), or a deleted MLflow experiment, said in one line (exit
    2), as those checks say theirs; a full disk too; and a stop by SIGTERM or Ctrl-C said with what it leaves."""
    from portraitflow.jobs.runtime import ExperimentDeleted, ServiceUnreachable, Terminated, stop_on_sigterm

    stop_on_sigterm()  # also for a verb that never starts Ray (a finished folder, `report`)
    # a bar per artifact a sweep or report downloads buried the lines that matter; a user's setting stands
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        app()
    except (ServiceUnreachable, ExperimentDeleted) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise SystemExit(2) from None
    except Terminated:
        typer.echo("Terminated (SIGTERM): finished work is kept; rerun the same command to resume", err=True)
        raise SystemExit(128 + signal.SIGTERM) from None
    except OSError as exc:
        if exc.errno not in OUT_OF_ROOM:
            raise
        typer.echo(f"Error: {exc.strerror} writing {exc.filename or 'the output'}: finished work is kept; free "
                   "room and rerun the same command to resume", err=True)
        raise SystemExit(2) from None
    except SystemExit as exc:  # typer ends a Ctrl-C (KeyboardInterrupt) so, silently
        if exc.code == 128 + signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut Ray's shutdown into a traceback
            typer.echo("Interrupted (Ctrl-C): finished work is kept; rerun the same command to resume", err=True)
        raise


if __name__ == "__main__":
    main()
