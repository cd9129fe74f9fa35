"""`portraitflow inspect DIR`: what a curated output holds, without Ray or models."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Annotated

import typer

from portraitflow.operators import ledger
from portraitflow.operators.job_status import one_line
from portraitflow.operators.shards import (INDEX_NAME, indexed_shards, iter_samples, shard_note, shard_notes, shard_paths,
                                           whole_shard_keys)


#: what each kind of mismatch between the shards and the tables or index means, for the message
MISMATCHES = {
    "missing_shards": "shard(s) the index lists are missing",
    "unindexed_shards": "shard(s) in shards/ are not in the index",
    "missing_keys": "accepted clip(s) in clips.parquet are in no shard",
    "unexpected_keys": "sample(s) in the shards are no accepted clip in clips.parquet",
}


class DamagedTable(ValueError):
    """A table of the folder cannot be read (cut short, overwritten)."""


def _read_table(path: Path):
    """A table of the folder as pandas; DamagedTable naming it when it cannot be read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise DamagedTable(f"{path} cannot be read ({one_line(str(exc), 200)})") from exc


def summarise(out: Path, samples: int = 5, quick: bool = False, verify: bool = False) -> dict:
    """Inputs per status, clips per decision and reason, shard sizes, a few sample keys and the
    first failed inputs (`failed_shown` says how many of all). A shard that cannot be read whole
    counts its intact samples and says why in `error`; `shards_unreadable` counts such shards.
    `mismatches` holds what the tables and the index promise that the shards do not hold, and the
    reverse (`_mismatches`): empty when they agree; `index_error` says why an index that is there
    cannot be read (its shards are then not compared). `quick` takes the keys the run that wrote a
    shard noted (`.state/shard_keys/`) while its size and time are unchanged, instead of reading
    every header (41 ms a 100-sample shard: 34 min for 50,000); damage in place that keeps both
    is then not seen. `verify` reads every member too (`_damaged_samples`): each shard entry
    lists its samples damaged since curation under `damaged`, counted in `samples_damaged`."""
    manifest, clips = (_read_table(out / name) for name in ("manifest.parquet", "clips.parquet"))
    shards, keys, held = [], [], {}
    for path in shard_paths(out / "shards"):
        entry, intact_keys = _read_shard(path, shard_notes(out) if quick else None)
        if verify and (damaged := _damaged_samples(path)):
            entry["damaged"] = damaged
        shards.append(entry)
        held[str(path.relative_to(out))] = intact_keys
        keys = keys or intact_keys[:samples]
    failed = manifest[manifest.status == ledger.FAILED]
    try:
        listed, index_error = set(indexed_shards(out)), None
    except FileNotFoundError:
        listed, index_error = set(), None
    except (OSError, ValueError) as exc:
        listed, index_error = None, str(exc)
    return {
        "inputs": {str(k): int(v) for k, v in manifest.status.value_counts().sort_index().items()},
        "clips": {str(k): int(v) for k, v in clips.decision.value_counts().sort_index().items()},
        "rejected_by_reason": {
            str(k): int(v) for k, v in clips[clips.decision != "accepted"].reason.value_counts().sort_index().items()
        },
        "hours_accepted": round(float(manifest.seconds_accepted.sum()) / 3600, 4),
        "shards": shards,
        "shards_unreadable": sum("error" in entry for entry in shards),
        **({"samples_damaged": sum(len(entry.get("damaged", [])) for entry in shards)} if verify else {}),
        "index": INDEX_NAME if (out / INDEX_NAME).exists() else None,
        **({"index_error": index_error} if index_error else {}),
        "mismatches": _mismatches(listed, set(clips.key[clips.decision == "accepted"]), held, samples),
        "sample_keys": keys,
        "failed": failed[["path", "error"]].to_dict("records")[:samples],
        "failed_shown": f"{min(samples, len(failed))} of {len(failed)}",
    }


def _mismatches(listed: set[str] | None, accepted: set[str], held: dict[str, list[str]],
                samples: int) -> dict[str, dict]:
    """Each kind of `MISMATCHES` found, as its count and first `samples` names: the shards the
    index lists (a missing index lists none; None, one that cannot be read, is not compared)
    against those in shards/ (`held`: url -> the keys of its whole samples), the accepted keys of
    clips.parquet against the keys in them. A deleted shard passes every other check, and a
    loader fails on it or trains on fewer clips than the manifest says. Names only: the tar
    headers are read, no video."""
    in_shards = {key for keys in held.values() for key in keys}
    found = {
        "missing_shards": set() if listed is None else listed - held.keys(),
        "unindexed_shards": set() if listed is None else held.keys() - listed,
        "missing_keys": accepted - in_shards,
        "unexpected_keys": in_shards - accepted,
    }
    return {kind: {"count": len(names), "first": sorted(names)[:samples]} for kind, names in found.items() if names}


def _damaged_samples(path: Path) -> list[str]:
    """`key (why)` for each sample of a shard that lacks a member training needs or holds one that
    no longer matches the SHA-256 its json records (samples curated before digests: members only).
    Reads every member; a shard's break is reported by its headers' read."""
    from portraitflow.operators.train_sample import REQUIRED_MEMBERS, SampleSkipped, check_digests, sample_meta

    damaged = []
    try:
        for key, fields in iter_samples(path):
            missing = [name for name in (*REQUIRED_MEMBERS, "json") if not fields.get(name)]
            sample = {"__key__": key, **fields}
            try:
                if missing:
                    raise SampleSkipped("missing_member", f"lacks {missing}")
                check_digests(sample, sample_meta(sample))
            except SampleSkipped as exc:
                damaged.append(f"{key} ({exc})")
    except (tarfile.TarError, OSError):
        pass
    return damaged


def _read_shard(path: Path, notes: Path | None) -> tuple[dict, list[str]]:
    """A shard's summary entry and the keys of its intact samples (those before a break), read from
    its headers, or from `notes` where they hold the shard as it is."""
    keys, damage = whole_shard_keys(path, notes, read_only=True)  # inspecting writes nothing
    entry = {"name": path.name, "samples": len(keys), "mb": round(path.stat().st_size / 2**20, 2)}
    if damage is not None:
        entry["error"] = f"unreadable: {damage}"
    return entry, keys


def inspect(
    out: Annotated[Path, typer.Argument(metavar="OUT", help="A folder written by `portraitflow curate`.", exists=True)],
    quick: Annotated[bool, typer.Option("--quick", help="Take each shard's keys from the note its run wrote while the shard's size and time are unchanged, instead of reading every header (a large corpus: minutes, not tens of minutes); damage in place that keeps both is then not seen.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Also read every member: a sample lacking one training needs, or holding one that no longer matches the SHA-256 its json records (damage in place, bit rot), is named (about a second per GB).")] = False,
) -> None:
    """Summarise a curated output: counts per status and reason, shard sizes, sample keys.

    Exits 1, after the summary, when a shard cannot be read whole or the shards do not hold what
    clips.parquet and the index list (`mismatches`), each problem named on stderr with the repair."""
    from portraitflow.jobs.runtime import folder_owner

    rerun = f"rerun the same `portraitflow curate` command (--out {out}): it resumes a stopped curation and writes " \
            "the tables again from its completion records"
    for table in (out / "manifest.parquet", out / "clips.parquet"):
        if not table.is_file():
            why = (f"no curation into it has finished, or the table was removed: {rerun}" if folder_owner(out) == "curate"
                   else "not a folder written by `portraitflow curate`")
            raise typer.BadParameter(f"{table} not found: {why}", param_hint="OUT")
    try:
        summary = summarise(out, quick=quick, verify=verify)
    except DamagedTable as exc:
        raise typer.BadParameter(f"{exc}: {rerun}", param_hint="OUT") from None
    typer.echo(json.dumps(summary, indent=1))
    problems = [summary["index_error"]] if "index_error" in summary else []
    if summary["shards_unreadable"]:
        broken = [entry["name"] for entry in summary["shards"] if "error" in entry]
        problems.append(f"{len(broken)} of {len(summary['shards'])} shards unreadable: {', '.join(broken)}")
    for kind, found in summary["mismatches"].items():
        more = ", ..." if found["count"] > len(found["first"]) else ""
        problems.append(f"{found['count']} {MISMATCHES[kind]}: {', '.join(found['first'])}{more}")
    damaged = [entry for entry in summary["shards"] if "damaged" in entry]
    if damaged:
        named = [sample for entry in damaged for sample in entry["damaged"]]
        problems.append(f"{len(named)} sample(s) in {len(damaged)} shard(s) damaged since curation: "
                        f"{'; '.join(named[:5])}{'; ...' if len(named) > 5 else ''}")
    if problems:
        typer.echo("\n".join(problems), err=True)
        # a shard damaged in place keeps the size and time its note names, and curate trusts the note
        notes = [note for entry in summary["shards"] if "error" in entry
                 if (note := shard_note(Path(entry["name"]), shard_notes(out))).is_file()]
        first = f"delete the notes that vouch for the unreadable shards (rm {' '.join(map(str, notes))}), then " \
            if notes else ""
        if damaged:  # they read whole: curate keeps them, so they go, and their inputs are curated again
            doomed = [out / "shards" / entry["name"] for entry in damaged]
            doomed += [note for path in doomed if (note := shard_note(path, shard_notes(out))).is_file()]
            first += f"delete the shards holding damaged samples and their notes (rm {' '.join(map(str, doomed))}), then "
        typer.echo(f"to repair it, {first}rerun `portraitflow curate` with the same inputs and --out {out}: it "
                   "rewrites damaged shards, curates again the inputs whose clips were lost, and rewrites the index "
                   "and the tables (move out first any shard copied in from another corpus)", err=True)
        raise typer.Exit(1)

