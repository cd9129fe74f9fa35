"""`portraitflow inspect DIR`: what a curated output holds, without Ray or models."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from portraitflow.operators.shards import INDEX_NAME, shard_paths, whole_shard_keys


def summarise(out: Path, samples: int = 5) -> dict:
    """Inputs per status, clips per decision and reason, shard sizes, a few sample keys and the
    first failed inputs (`failed_shown` says how many of all). A shard that cannot be read whole
    counts its intact samples and says why in `error`; `shards_unreadable` counts such shards."""
    import pyarrow.parquet as pq

    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    clips = pq.read_table(out / "clips.parquet").to_pandas()
    shards, keys = [], []
    for path in shard_paths(out / "shards"):
        entry, intact_keys = _read_shard(path)
        shards.append(entry)
        keys = keys or intact_keys[:samples]
    failed = manifest[manifest.status == "failed"]
    return {
        "inputs": {str(k): int(v) for k, v in manifest.status.value_counts().sort_index().items()},
        "clips": {str(k): int(v) for k, v in clips.decision.value_counts().sort_index().items()},
        "rejected_by_reason": {
            str(k): int(v) for k, v in clips[clips.decision != "accepted"].reason.value_counts().sort_index().items()
        },
        "hours_accepted": round(float(manifest.seconds_accepted.sum()) / 3600, 4),
        "shards": shards,
        "shards_unreadable": sum("error" in entry for entry in shards),
        "index": INDEX_NAME if (out / INDEX_NAME).exists() else None,
        "sample_keys": keys,
        "failed": failed[["path", "error"]].to_dict("records")[:samples],
        "failed_shown": f"{min(samples, len(failed))} of {len(failed)}",
    }


def _read_shard(path: Path) -> tuple[dict, list[str]]:
    """A shard's summary entry and the keys of its intact samples (those before a break)."""
    keys, damage = whole_shard_keys(path)
    entry = {"name": path.name, "samples": len(keys), "mb": round(path.stat().st_size / 2**20, 2)}
    if damage is not None:
        entry["error"] = f"unreadable: {damage}"
    return entry, keys


def inspect(out: Annotated[Path, typer.Argument(help="A folder written by `portraitflow curate`.", exists=True)]) -> None:
    """Summarise a curated output: counts per status and reason, shard sizes, sample keys.

    Exits 1, after the summary, when a shard cannot be read whole."""
    for table in (out / "manifest.parquet", out / "clips.parquet"):
        if not table.is_file():
            raise typer.BadParameter(f"{table} not found: not a folder written by `portraitflow curate`", param_hint="OUT")
    summary = summarise(out)
    typer.echo(json.dumps(summary, indent=1))
    if summary["shards_unreadable"]:
        broken = [entry["name"] for entry in summary["shards"] if "error" in entry]
        typer.echo(f"{len(broken)} of {len(summary['shards'])} shards unreadable: {', '.join(broken)}", err=True)
        raise typer.Exit(1)
