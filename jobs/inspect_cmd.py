"""`portraitflow inspect DIR`: what a curated output holds, without Ray or models."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from portraitflow.operators.shards import INDEX_NAME, shard_keys, shard_paths


def summarise(out: Path, samples: int = 5) -> dict:
    """Inputs per status, clips per decision and reason, shard sizes, a few sample keys and the
    first failed inputs (`failed_shown` says how many of all)."""
    import pyarrow.parquet as pq

    manifest = pq.read_table(out / "manifest.parquet").to_pandas()
    clips = pq.read_table(out / "clips.parquet").to_pandas()
    shards = shard_paths(out / "shards")
    keys = [k for path in shards[:1] for k in shard_keys(path)][:samples]
    failed = manifest[manifest.status == "failed"]
    return {
        "inputs": {str(k): int(v) for k, v in manifest.status.value_counts().sort_index().items()},
        "clips": {str(k): int(v) for k, v in clips.decision.value_counts().sort_index().items()},
        "rejected_by_reason": {
            str(k): int(v) for k, v in clips[clips.decision != "accepted"].reason.value_counts().sort_index().items()
        },
        "hours_accepted": round(float(manifest.seconds_accepted.sum()) / 3600, 4),
        "shards": [{"name": p.name, "samples": len(shard_keys(p)), "mb": round(p.stat().st_size / 2**20, 2)} for p in shards],
        "index": INDEX_NAME if (out / INDEX_NAME).exists() else None,
        "sample_keys": keys,
        "failed": failed[["path", "error"]].to_dict("records")[:samples],
        "failed_shown": f"{min(samples, len(failed))} of {len(failed)}",
    }


def inspect(out: Annotated[Path, typer.Argument(help="A folder written by `portraitflow curate`.", exists=True)]) -> None:
    """Summarise a curated output: counts per status and reason, shard sizes, sample keys."""
    for table in (out / "manifest.parquet", out / "clips.parquet"):
        if not table.is_file():
            raise typer.BadParameter(f"{table} not found: not a folder written by `portraitflow curate`", param_hint="OUT")
    typer.echo(json.dumps(summarise(out), indent=1))
