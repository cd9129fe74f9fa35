"""`portraitflow convert-weights DIR OUT`: the HunyuanPortrait release as safetensors, once.

Later loads from OUT are pickle-free and memory-mapped; the layout stays the official one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def convert_weights(
    weights_dir: Annotated[Path, typer.Argument(metavar="DIR", show_default=False, exists=True, file_okay=False,
                                                help="Folder in the official layout (hyportrait/*.pth, vae/, unet/, scheduler/).")],
    out: Annotated[Optional[Path], typer.Argument(metavar="OUT", show_default=False,
                                                  help="Folder to write (same layout, every .pth as .safetensors).")] = None,
    out_option: Annotated[Optional[Path], typer.Option("--out", "-o", show_default=False,
                                                       help="OUT as an option, as the other verbs take it.")] = None,
) -> None:
    """Convert the release's .pth checkpoints (read with weights_only=True) to safetensors.

    OUT appears (or gets its missing files) only once every file is converted; until then they
    wait in OUT.partial (OUT/.partial when OUT exists), from which a rerun resumes; what was
    staged from another DIR, or from a file downloaded again since, is converted again. An OUT
    holding files converted from other files than DIR's (another release) is refused, not topped up."""
    from portraitflow.models.hunyuan.checkpoints import WeightsMissing, WeightsUnreadable
    from portraitflow.models.hunyuan.weights import convert_weights as convert

    if out is None and out_option is None:
        raise typer.BadParameter("give the folder to write, as OUT or --out OUT", param_hint="OUT")
    if out is not None and out_option is not None and out != out_option:
        raise typer.BadParameter(f"OUT {out} and --out {out_option} differ; give one", param_hint="OUT")
    out_dir = out or out_option
    try:
        written = convert(weights_dir, out_dir)
    except (WeightsMissing, WeightsUnreadable) as exc:  # a usage error, as animate reports it
        raise typer.BadParameter(str(exc), param_hint="DIR") from exc
    except FileExistsError as exc:  # its staging folder is taken by files of another's
        raise typer.BadParameter(str(exc), param_hint="OUT") from exc
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"{len(written)} file(s) written to {out_dir}" if written else f"{out_dir} is already complete")
