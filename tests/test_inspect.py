"""`portraitflow inspect` checks that the shards hold what clips.parquet and the index list: a
deleted shard, or a run killed between packing and rewriting the index, exits 1 naming what is
missing or unexpected, and the rerun the message advises repairs it. The driver runs in-process
(no Ray, no video read), as in test_curate_damaged_shards.py."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from portraitflow.jobs.cli import app
from portraitflow.jobs.config import load_config
from portraitflow.operators.shards import shard_paths, whole_shard_keys
from test_curate_damaged_shards import _curate_one_by_one, _members
from test_curate_driver import QUIET, _scan

ONE_PER_SHARD = QUIET + ["curate.shard_max_samples=1"]


def _prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str]) -> tuple[Path, list[str]]:
    """Inputs of one clip each, scanned into `tmp_path/out`, whose curation stages their sample:
    (out, uris). A run packs each sample into a shard of its own."""
    from portraitflow.jobs.curate import Layout
    from portraitflow.operators.inputs import clip_key

    out = tmp_path / "out"
    layout = Layout(out)
    layout.make()
    uris = [str(tmp_path / f"{name}.mp4") for name in names]
    samples = {}
    for seed, uri in enumerate(uris):
        members = _members(0, 50, seed)
        identity = (np.load(io.BytesIO(members["id.npy"])), np.load(io.BytesIO(members["signature.npy"])))
        key = _scan(layout.scans, uri, [(0, 50, None, identity)])
        samples[key] = [(clip_key(key, 0, 2.0), members)]
    _curate_one_by_one(monkeypatch, samples)
    return out, uris


def _inspect(out: Path):
    return CliRunner().invoke(app, ["inspect", str(out)], env={"COLUMNS": "400"})


def test_a_deleted_shard_exits_1_and_the_advised_rerun_repairs_it(tmp_path: Path, monkeypatch) -> None:
    from portraitflow.jobs.curate import run_curation

    out, uris = _prepared(tmp_path, monkeypatch, ["anna", "ben", "carl"])
    run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    assert _inspect(out).exit_code == 0
    shard = out / "shards" / "000001.tar"
    [lost] = whole_shard_keys(shard)[0]
    shard.unlink()

    result = _inspect(out)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["clips"] == {"accepted": 3}  # what the manifest still says
    assert summary["mismatches"] == {"missing_shards": {"count": 1, "first": ["shards/000001.tar"]},
                                     "missing_keys": {"count": 1, "first": [lost]}}
    assert "1 shard(s) the index lists are missing: shards/000001.tar" in result.stderr
    assert f"1 accepted clip(s) in clips.parquet are in no shard: {lost}" in result.stderr
    assert f"rerun `portraitflow curate` with the same inputs and --out {out}" in result.stderr

    run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    repaired = _inspect(out)
    assert repaired.exit_code == 0, repaired.output
    assert json.loads(repaired.stdout)["mismatches"] == {}
    assert [p.name for p in shard_paths(out / "shards")] == ["000000.tar", "000002.tar", "000003.tar"]


def test_a_quick_inspection_reads_the_notes_of_unchanged_shards_and_writes_none(tmp_path: Path, monkeypatch) -> None:
    """Reading every header of 50,000 shards takes about 34 min; `--quick` takes the keys the run
    that packed them noted, and reads only a shard changed since (here one cut short)."""
    from portraitflow.jobs.curate import run_curation
    from portraitflow.operators import shards

    out, uris = _prepared(tmp_path, monkeypatch, ["anna", "ben", "carl"])
    run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    notes = sorted((out / ".state" / "shard_keys").glob("*.json"))
    assert [n.stem for n in notes] == ["000000", "000001", "000002"]
    cut = out / "shards" / "000002.tar"
    cut.write_bytes(cut.read_bytes()[:2048])
    reads = []
    monkeypatch.setattr(shards, "iter_shard_keys", lambda p: reads.append(p.name) or iter(()))
    monkeypatch.setattr(shards, "_READ_WHOLE", {})
    result = CliRunner().invoke(app, ["inspect", "--quick", str(out)], env={"COLUMNS": "400"})
    assert reads == ["000002.tar"] and result.exit_code == 1  # the cut one is read, and found short
    assert json.loads(result.stdout)["mismatches"]["missing_keys"]["count"] == 1
    assert sorted((out / ".state" / "shard_keys").glob("*.json")) == notes and notes[2].stat().st_size > 0


def test_a_run_killed_before_it_rewrote_the_index_and_tables_exits_1_until_rerun(tmp_path: Path, monkeypatch) -> None:
    """Its packed shard is not in the index and its sample in no table: a loader reading the index
    misses it, one reading shards/ trains on a clip the manifest does not list."""
    from portraitflow.jobs import curate as job

    out, uris = _prepared(tmp_path, monkeypatch, ["anna", "ben", "dora"])
    job.run_curation(load_config(None, ONE_PER_SHARD), uris[:2], out)
    assert _inspect(out).exit_code == 0

    class Killed(Exception):
        pass

    def killed(*args, **kwargs) -> None:
        raise Killed

    with monkeypatch.context() as patched, pytest.raises(Killed):
        patched.setattr(job, "write_index", killed)
        job.run_curation(load_config(None, ONE_PER_SHARD), uris, out)  # dora's sample is packed, then the kill
    [added] = whole_shard_keys(out / "shards" / "000002.tar")[0]
    assert added.startswith("dora-")

    result = _inspect(out)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["mismatches"] == {"unindexed_shards": {"count": 1, "first": ["shards/000002.tar"]},
                                                       "unexpected_keys": {"count": 1, "first": [added]}}
    assert "1 shard(s) in shards/ are not in the index: shards/000002.tar" in result.stderr
    assert f"1 sample(s) in the shards are no accepted clip in clips.parquet: {added}" in result.stderr

    job.run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    assert _inspect(out).exit_code == 0


def test_an_index_that_cannot_be_read_is_named_and_a_rerun_writes_it_again(tmp_path: Path, monkeypatch) -> None:
    """An overwritten index read as listing no shard: inspect said every shard was "not in the
    index", and the user went looking for shards that were there."""
    from portraitflow.jobs.curate import run_curation

    out, uris = _prepared(tmp_path, monkeypatch, ["anna"])
    run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    (out / "index.wids.json").write_text("junk")
    result = _inspect(out)
    assert result.exit_code == 1 and json.loads(result.stdout)["mismatches"] == {}
    assert "index.wids.json cannot be read as a shard index (JSONDecodeError" in result.stderr
    assert "rerun `portraitflow curate` with the same inputs" in result.stderr
    run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    assert _inspect(out).exit_code == 0


@pytest.mark.parametrize("table", ["manifest.parquet", "clips.parquet"])
def test_a_damaged_table_is_named_in_one_line_with_the_repair(tmp_path: Path, monkeypatch, table: str) -> None:
    """A table cut short gave pyarrow's 60-line traceback."""
    from portraitflow.jobs.curate import run_curation

    out, uris = _prepared(tmp_path, monkeypatch, ["anna"])
    run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    (out / table).write_bytes((out / table).read_bytes()[:100])
    result = _inspect(out)
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = " ".join(result.output.replace("│", " ").split())
    assert f"{table} cannot be read" in message and "rerun the same `portraitflow curate` command" in message


def test_a_run_names_a_shard_copied_in_from_another_corpus(tmp_path: Path, monkeypatch, caplog) -> None:
    """It was added to the index with exit 0 and no word: a loader reads its samples as this corpus's."""
    import logging
    import shutil

    from portraitflow.jobs.curate import run_curation

    other, other_uris = _prepared(tmp_path / "other", monkeypatch, ["zoe"])
    run_curation(load_config(None, ONE_PER_SHARD), other_uris, other)
    out, uris = _prepared(tmp_path, monkeypatch, ["anna"])
    run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    shutil.copy(other / "shards" / "000000.tar", out / "shards" / "000001.tar")
    with caplog.at_level(logging.WARNING, logger="portraitflow.jobs.curate"):
        run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    [warning] = [r.getMessage() for r in caplog.records if "no clip of this corpus" in r.getMessage()]
    assert warning.startswith("1 sample(s) in shards/ 000001.tar are no clip of this corpus")


def test_verify_names_samples_damaged_in_place_and_the_shards_to_delete(tmp_path: Path, monkeypatch) -> None:
    """A member changed in place (size and time kept) or one missing passed inspect (exit 0), and a
    rerun of curate kept the shard: training skipped the clip every epoch. Both are found by
    `_damaged_samples`; through the command, samples missing members (the staged stand-ins')."""
    import hashlib

    from portraitflow.jobs.curate import run_curation
    from portraitflow.jobs.inspect_cmd import _damaged_samples
    from synthetic_shards import clip_members, write_shard

    members = clip_members(8, 0, tmp_path)
    meta = json.loads(members["json"])
    meta["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items() if name != "json"}
    members["json"] = json.dumps(meta).encode()
    flipped = {**members, "kps.npy": members["kps.npy"][:-1] + bytes([members["kps.npy"][-1] ^ 1])}
    without = {name: data for name, data in members.items() if name != "pose.npy"}
    write_shard(tmp_path / "000000.tar", {"good": members, "flipped": flipped, "without": without})
    assert [entry.split(" (")[0] for entry in _damaged_samples(tmp_path / "000000.tar")] == ["flipped", "without"]

    out, uris = _prepared(tmp_path, monkeypatch, ["anna"])  # staged samples lack landmarks, kps and pose
    run_curation(load_config(None, ONE_PER_SHARD), uris, out)
    assert _inspect(out).exit_code == 0  # headers alone do not see it
    result = CliRunner().invoke(app, ["inspect", str(out), "--verify"], env={"COLUMNS": "400"})
    assert result.exit_code == 1 and json.loads(result.stdout)["samples_damaged"] == 1
    assert "1 sample(s) in 1 shard(s) damaged since curation: anna-" in result.stderr
    assert f"rm {out / 'shards' / '000000.tar'}" in result.stderr
