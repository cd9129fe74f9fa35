"""A damaged shard in a curated folder (cut short by a full disk or an interrupted copy): the shard
readers find its whole samples, and a rerun of `curate` repairs it, keeps those samples and curates
again the inputs whose samples were lost, instead of stopping on a traceback. The driver runs
in-process (no Ray, no video read), as in test_curate_driver.py."""
from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import typer

from portraitflow.jobs.config import load_config
from portraitflow.operators.shards import (INDEX_NAME, iter_shard_keys, npy_bytes, pack_shards, rewrite_whole,
                                           shard_paths, stage_sample, staged_whole, whole_shard_keys)
from test_curate_driver import FPS, QUIET, SCANNED, _rows, _scan


def _members(start: int, end: int, seed: int) -> dict[str, bytes]:
    """A sample as rendering stages it (what the driver reads back of a committed clip), with an
    mp4 big enough that a cut lands inside it."""
    from portraitflow.models.face.base import l2_normalise
    from portraitflow.operators.overlap import content_signature

    rng = np.random.default_rng(seed)
    meta = {"start_s": start / FPS, "end_s": end / FPS, "scores": {"face_side_px": 200.0}}
    return {"json": json.dumps(meta).encode(), "mp4": rng.bytes(20_000),
            "id.npy": npy_bytes(l2_normalise(rng.normal(size=128)).astype(np.float32)),
            "signature.npy": npy_bytes(content_signature(rng.uniform(0, 255, (50, 16, 16))).astype(np.float16))}


def _shard(tmp_path: Path, samples: int = 3) -> tuple[Path, list[str]]:
    staging = tmp_path / "staging"
    keys = [f"k{i}" for i in range(samples)]
    for i, key in enumerate(keys):
        stage_sample(staging, key, _members(0, 50, i))
    [path] = pack_shards(staging, tmp_path / "shards", 100, 1 << 30)
    return path, keys


def _offsets(path: Path) -> dict[str, tuple[int, int]]:
    """Each member's header offset and the end of its data's blocks."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data + -(-m.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE) for m in tar}


def _cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


@pytest.mark.parametrize("where", ["inside_data", "inside_a_header", "between_members", "after_the_last_member"])
def test_a_cut_shard_yields_its_whole_samples_then_says_why(where: str, tmp_path: Path) -> None:
    """tarfile alone takes a cut inside a header or between two members for the archive's end: the
    sample cut there would pass for whole with members missing."""
    path, keys = _shard(tmp_path)
    offsets = _offsets(path)
    size = {"inside_data": offsets["k1.mp4"][0] + 5000, "inside_a_header": offsets["k1.mp4"][0] + 100,
            "between_members": offsets["k1.mp4"][0], "after_the_last_member": offsets["k2.signature.npy"][1]}[where]
    _cut(path, size)
    whole = keys[:2] if where == "after_the_last_member" else keys[:1]
    found, damage = whole_shard_keys(path)
    assert found == whole and isinstance(damage, tarfile.ReadError)
    with pytest.raises(tarfile.ReadError):
        list(iter_shard_keys(path))

    assert rewrite_whole(path) == whole
    assert whole_shard_keys(path) == (whole, None)
    with tarfile.open(path) as tar:
        assert {name.split(".", 1)[0] for name in tar.getnames()} == set(whole)
        assert tar.extractfile("k0.mp4").read() == _members(0, 50, 0)["mp4"]


def test_a_shard_read_whole_is_not_read_again_until_it_changes(tmp_path: Path, monkeypatch) -> None:
    from portraitflow.operators import shards

    path, keys = _shard(tmp_path)
    notes = tmp_path / "notes"
    reads = []
    monkeypatch.setattr(shards, "iter_shard_keys", lambda p: reads.append(p) or iter_shard_keys(p))
    monkeypatch.setattr(shards, "_READ_WHOLE", {})  # a new process: the notes in the folder remain
    assert whole_shard_keys(path, notes) == (keys, None) and len(reads) == 1
    monkeypatch.setattr(shards, "_READ_WHOLE", {})
    assert whole_shard_keys(path, notes) == (keys, None) and len(reads) == 1  # the next run reads no header
    _cut(path, _offsets(path)["k1.mp4"][0] + 5000)  # cut short: another size, so read again
    found, damage = whole_shard_keys(path, notes)
    assert found == keys[:1] and isinstance(damage, tarfile.ReadError) and len(reads) == 2


def test_the_run_that_packs_a_shard_notes_its_keys_so_the_next_never_reads_its_headers(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    """Notes were written only for shards read back from disk, so the first resume after a large
    run read every header of every shard it had just written (41 ms a 100-sample shard)."""
    from portraitflow.operators import shards

    staging, notes = tmp_path / "staging", tmp_path / "notes"
    keys = [f"k{i}" for i in range(5)]
    for i, key in enumerate(keys):
        stage_sample(staging, key, _members(0, 50, i))
    written = pack_shards(staging, tmp_path / "shards", 2, 1 << 30, remember_in=notes)
    assert [p.name for p in written] == ["000000.tar", "000001.tar", "000002.tar"]
    assert sorted(p.name for p in notes.glob("*.json")) == ["000000.json", "000001.json", "000002.json"]
    reads = []
    monkeypatch.setattr(shards, "iter_shard_keys", lambda p: reads.append(p) or iter_shard_keys(p))
    monkeypatch.setattr(shards, "_READ_WHOLE", {})  # the next run: a new process
    assert [k for path in written for k in whole_shard_keys(path, notes)[0]] == keys and not reads


def test_a_note_that_cannot_be_written_does_not_stop_packing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The note only saves a read: a shard durable on disk is not given up for it."""
    staging, blocked = tmp_path / "staging", tmp_path / "notes"
    blocked.write_text("a file where the notes' folder would be")
    stage_sample(staging, "k0", _members(0, 50, 0))
    [path] = pack_shards(staging, tmp_path / "shards", 100, 1 << 30, remember_in=blocked)
    assert whole_shard_keys(path) == (["k0"], None) and "could not note the keys" in caplog.text


def test_a_shard_cut_inside_its_end_blocks_is_whole(tmp_path: Path) -> None:
    path, keys = _shard(tmp_path)
    _cut(path, _offsets(path)["k2.signature.npy"][1] + 10)
    assert whole_shard_keys(path) == (keys, None)


def _curate_one_by_one(monkeypatch: pytest.MonkeyPatch, samples: dict[str, list[tuple[str, dict]]]) -> list[str]:
    """The curation stage as a worker runs it, one input after another: it stages the samples of
    the clips its input's scan kept (`samples[input_key]`), not those staged already. Returns the
    input keys it is given, run after run."""
    from portraitflow.pipelines import curate as pipeline

    given: list[str] = []

    def curate_inputs(rows, cfg, scan_dir, staging_dir, attempts_dir):
        for row in rows:
            given.append(row["input_key"])
            for key, members in samples[row["input_key"]]:
                if not staged_whole(staging_dir, key):  # as a worker renders what is not staged whole
                    stage_sample(staging_dir, key, members)
        return [dict(row, **SCANNED, timings="{}", render_errors="{}", rendered=1) for row in rows], ""

    monkeypatch.setattr(pipeline, "curate_inputs", curate_inputs)
    monkeypatch.setattr("portraitflow.jobs.runtime.init_ray", lambda *args, **kwargs: None)
    monkeypatch.setattr("portraitflow.jobs.runtime.require_resource", lambda *args, **kwargs: None)  # no actor to place
    return given


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Three inputs of one clip each, curated into one shard: (out, uris, clip keys, given)."""
    from portraitflow.jobs.curate import Layout, run_curation
    from portraitflow.operators.inputs import clip_key

    out = tmp_path / "out"
    layout = Layout(out)
    layout.make()
    uris = [str(tmp_path / f"{name}.mp4") for name in ("anna", "ben", "carl")]
    samples, clip_keys = {}, []
    for seed, uri in enumerate(uris):
        members = _members(0, 50, seed)
        embedding = np.load(io.BytesIO(members["id.npy"]))
        signature = np.load(io.BytesIO(members["signature.npy"]))
        key = _scan(layout.scans, uri, [(0, 50, None, (embedding, signature))])
        clip_keys.append(clip_key(key, 0, 2.0))
        samples[key] = [(clip_keys[-1], members)]
    given = _curate_one_by_one(monkeypatch, samples)
    run_curation(load_config(None, QUIET), uris, out)
    assert [p.name for p in shard_paths(layout.shards)] == ["000000.tar"]
    given.clear()
    return out, uris, clip_keys, given


def _manifest(out: Path) -> dict[str, dict]:
    return {row["path"]: row for row in _rows(out / "manifest.parquet")}


def _shard_keys(out: Path) -> dict[str, list[str]]:
    return {path.name: whole_shard_keys(path)[0] for path in shard_paths(out / "shards")}


def test_a_rerun_repairs_a_cut_shard_and_curates_again_the_inputs_it_lost(corpus, caplog) -> None:
    from portraitflow.jobs.curate import run_curation

    out, uris, keys, given = corpus
    shard = out / "shards" / "000000.tar"
    _cut(shard, _offsets(shard)[f"{keys[1]}.mp4"][0] + 5000)  # inside ben's sample: ben and carl are lost
    with caplog.at_level(logging.WARNING):
        run_curation(load_config(None, QUIET), uris, out)

    assert sorted(given) == sorted(key.rsplit("_", 2)[0] for key in keys[1:])
    assert _shard_keys(out) == {"000000.tar": keys[:1], "000001.tar": keys[1:]}
    index = json.loads((out / INDEX_NAME).read_text())
    assert [(e["url"], e["nsamples"], e["filesize"]) for e in index["shardlist"]] == [
        (f"shards/{p.name}", 1 if p.name == "000000.tar" else 2, p.stat().st_size) for p in shard_paths(out / "shards")]
    manifest = _manifest(out)
    assert [manifest[uri]["status"] for uri in uris] == ["accepted"] * 3
    assert [manifest[uri]["clips_accepted"] for uri in uris] == [1] * 3
    assert {row["key"]: row["decision"] for row in _rows(out / "clips.parquet")} == dict.fromkeys(keys, "accepted")
    log = caplog.text
    assert f"{shard} could not be read whole" in log and "rewrote it with its 1 whole sample(s), lost 2 of the 3" in log
    assert all(f"{uri}: 1 clip(s) no longer in the shards" in log and keys[i] in log for i, uri in
               enumerate(uris) if i)

    given.clear()
    before = {p.name: p.read_bytes() for p in shard_paths(out / "shards")}
    run_curation(load_config(None, QUIET), uris, out)  # and then it is done
    assert given == [] and {p.name: p.read_bytes() for p in shard_paths(out / "shards")} == before


def test_an_input_whose_clips_were_lost_fails_until_a_run_is_given_it(corpus) -> None:
    """A rerun given other inputs still repairs the shard; the input that lost its clip is not
    reported accepted with its clip missing: it fails, naming the clip, until a run curates it."""
    from portraitflow.jobs.curate import run_curation

    out, uris, keys, given = corpus
    shard = out / "shards" / "000000.tar"
    _cut(shard, _offsets(shard)[f"{keys[2]}.json"][0] + 100)  # inside a header of carl's sample
    run_curation(load_config(None, QUIET), uris[:2], out)
    assert given == [] and _shard_keys(out) == {"000000.tar": keys[:2]}
    carl = _manifest(out)[uris[2]]
    assert carl["status"] == "failed" and carl["clips_accepted"] == 0
    assert carl["error"] == f"1 clip(s) no longer in the shards (a shard that is missing or damaged lost them): {keys[2]}"
    clip = {row["key"]: row for row in _rows(out / "clips.parquet")}[keys[2]]
    assert (clip["decision"], clip["reason"]) == ("failed", "render_failed")

    run_curation(load_config(None, QUIET), uris, out)
    assert given == [keys[2].rsplit("_", 2)[0]] and _shard_keys(out) == {"000000.tar": keys[:2], "000001.tar": keys[2:]}
    assert [row["status"] for row in _manifest(out).values()] == ["accepted"] * 3


def test_a_shard_without_a_whole_sample_is_removed_and_a_dry_run_repairs_nothing(corpus, capsys) -> None:
    from portraitflow.jobs.curate import run_curation

    out, uris, keys, given = corpus
    shard = out / "shards" / "000000.tar"
    _cut(shard, 700)
    cut = shard.read_bytes()
    run_curation(load_config(None, QUIET), uris, out, dry_run=True)
    assert "3 of 3 input(s) would be processed" in capsys.readouterr().out and shard.read_bytes() == cut

    run_curation(load_config(None, QUIET), uris, out)
    assert len(given) == 3 and _shard_keys(out) == {"000000.tar": keys}  # packed again under the freed name
    assert [row["status"] for row in _manifest(out).values()] == ["accepted"] * 3


@pytest.mark.parametrize("refused", ["rewrite", "read"])
def test_a_shard_that_cannot_be_repaired_stops_the_run_with_what_to_do(refused: str, corpus, monkeypatch) -> None:
    """A folder that refuses the rewrite, or a shard the system refuses to read (nothing to judge
    it by, so it is left alone): one line naming the shard and what to do, not a traceback."""
    from portraitflow.jobs import curate as job

    out, uris, keys, given = corpus
    shard = out / "shards" / "000000.tar"
    _cut(shard, _offsets(shard)[f"{keys[1]}.mp4"][0] + 5000)
    cut = shard.read_bytes()

    def refuse_rewrite(path: Path) -> list[str]:
        raise OSError(5, "Input/output error", str(path))

    if refused == "rewrite":
        monkeypatch.setattr(job, "rewrite_whole", refuse_rewrite)
        expected = "cannot be read whole .* could not be rewritten"
    else:
        monkeypatch.setattr(job, "whole_shard_keys", lambda path, remember_in=None: ([], OSError(5, "Input/output error")))
        expected = r"cannot be read \(\[Errno 5\] Input/output error\)"
    with pytest.raises(typer.BadParameter, match=f"{shard} {expected}.*: move it out of the folder and rerun"):
        job.run_curation(load_config(None, QUIET), uris, out)
    assert given == [] and shard.read_bytes() == cut


def test_a_staged_sample_a_killed_run_left_cut_short_is_rendered_again(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A staged sample cut short (a copy of the folder interrupted, a disk error) stopped packing,
    and so every later run, in a traceback: the worker that finds it renders it again."""
    from portraitflow.jobs.curate import Layout, run_curation
    from portraitflow.operators.inputs import clip_key
    from portraitflow.operators.shards import stage_sample, staged_path

    out = tmp_path / "out"
    layout = Layout(out)
    layout.make()
    uri = str(tmp_path / "anna.mp4")
    members = _members(0, 50, 0)
    identity = (np.load(io.BytesIO(members["id.npy"])), np.load(io.BytesIO(members["signature.npy"])))
    key = _scan(layout.scans, uri, [(0, 50, None, identity)])
    sample = clip_key(key, 0, 2.0)
    stage_sample(layout.staging, sample, members)  # as a killed run left it, then cut short
    staged = staged_path(layout.staging, sample)
    staged.write_bytes(staged.read_bytes()[:5000])
    _curate_one_by_one(monkeypatch, {key: [(sample, members)]})
    run_curation(load_config(None, QUIET), [uri], out)
    [row] = _manifest(out).values()
    assert row["status"] == "accepted" and list(iter_shard_keys(out / "shards" / "000000.tar")) == [sample]
