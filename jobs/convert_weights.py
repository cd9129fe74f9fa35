"""`portraitflow convert-weights DIR --out OUT`: the HunyuanPortrait release as safetensors, once.

Later loads from OUT are pickle-free and memory-mapped; the layout stays the official one.
"""
from __future__ import annotations

from pathlib import Path

import typer


def convert_weights(
    weights_dir: Path = typer.Argument(..., help="Folder in the official layout (hyportrait/*.pth, vae/, unet/, scheduler/)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder to write (same layout, every .pth as .safetensors)."),
) -> None:
    """Convert the release's .pth checkpoints (read with weights_only=True) to safetensors.

    OUT appears (or gets its missing files) only once every file is converted; until then they
    wait in OUT.partial (OUT/.partial when OUT exists), from which a rerun resumes."""
    from portraitflow.models.hunyuan.weights import WeightsMissing, WeightsUnreadable, convert_weights as convert

    try:
        written = convert(weights_dir, out_dir)
    except (WeightsMissing, WeightsUnreadable) as exc:  # a usage error, as animate reports it
        raise typer.BadParameter(str(exc), param_hint="WEIGHTS_DIR") from exc
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"{len(written)} file(s) written to {out_dir}" if written else f"{out_dir} is already complete")
