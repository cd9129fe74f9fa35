"""`portraitflow config show`: the effective configuration, as YAML that can be fed back."""
from __future__ import annotations

import typer
import yaml

from portraitflow.jobs.options import ConfigOption, SetOption, resolve_config

app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)


@app.command("show")
def show(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Print the effective config (defaults, then the YAML file, then --set overrides)."""
    cfg = resolve_config(config, set_)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
