"""The corpus ledger kept between runs (operators/corpus_ledger.py): reopened, it decides as the
ledger that was saved, less the clips the shards do not hold, and a resume reads the scans of only
the committed clips it lacks."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import l2_normalise
from portraitflow.operators import filters
from portraitflow.operators import overlap
from portraitflow.operators.corpus_ledger import TABLE_NAME, CorpusLedger
from portraitflow.operators.overlap import OverlapRule, content_signature
from synthetic_footage import footage, re_encoded

PERSONS = l2_normalise(np.random.default_rng(0).normal(size=(4, 16)))


def _clip(number: int, person: int, frames: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    noise = np.random.default_rng(number).normal(0, 0.05, 16)
    return f"in{number}_00000000_{len(frames) * 40:08d}", l2_normalise(PERSONS[person] + noise), \
        content_signature(frames), frames


def _clips(count: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Clips of 4 people, each of its own footage but every eighth a re-encode of its person's previous clip."""
    clips = []
    for i in range(count):
        frames = re_encoded(clips[i - 4][3], seed=i) if i % 8 == 7 else footage(i, 60 + 5 * (i % 6))
        clips.append(_clip(i, i % 4, frames))
    return clips


CLIPS = _clips(24)


def _ledger(folder: Path | None, **settings: float) -> CorpusLedger:
    cfg = CurateConfig(**({"max_clips_per_identity": 4} | settings))
    return CorpusLedger(0.5, cfg.max_clips_per_identity, cfg.duplicate_similarity, OverlapRule.from_config(cfg), folder)


def _reopen(folder: Path, committed, same_person: float = 0.5, **settings: float) -> CorpusLedger:
    cfg = CurateConfig(**({"max_clips_per_identity": 4} | settings))
    return CorpusLedger.reopen(folder, committed, same_person, cfg.max_clips_per_identity, cfg.duplicate_similarity,
                               OverlapRule.from_config(cfg))


def _decide_all(ledger: CorpusLedger, clips: list) -> list[tuple[str | None, dict[str, float]]]:
    """Each clip decided in turn, the kept ones kept: what the corpus decisions do."""
    decided = []
    for key, embedding, signature, thumbnails in clips:
        measures: dict[str, float] = {}
        reason = ledger.decide(embedding, signature, thumbnails, measures).reason
        if reason is None:
            ledger.keep(key, embedding, signature, thumbnails)
        decided.append((reason, measures))
    return decided


def _reopen_committed(folder: Path, ledger: CorpusLedger, lost: set[str] = frozenset()) -> CorpusLedger:
    """`ledger` saved and closed, and reopened with every clip it kept in the shards but `lost`."""
    ledger.save()
    ledger.close()
    return _reopen(folder, committed=set(ledger.keys) - lost)


def test_a_reopened_ledger_decides_as_the_one_that_was_saved(tmp_path: Path) -> None:
    in_memory, saved = _ledger(None), _ledger(tmp_path)
    first = _decide_all(saved, CLIPS[:16])
    assert {reason for reason, _ in first} == {None, filters.DUPLICATE}  # the re-encodes are caught
    assert _decide_all(in_memory, CLIPS[:16]) == first
    reopened = _reopen_committed(tmp_path, saved)
    assert reopened.keys == in_memory.keys
    later = _decide_all(in_memory, CLIPS[16:])
    assert _decide_all(reopened, CLIPS[16:]) == later  # reasons and every measure, exactly
    assert filters.IDENTITY_OVER_CAP in {reason for reason, _ in later}
    assert _reopen_committed(tmp_path, reopened).keys == in_memory.keys  # saved again, with what it added


def test_clips_the_shards_lack_are_left_out_as_if_never_kept(tmp_path: Path) -> None:
    """A clip kept but never packed (its render failed, the run was stopped) or cut from a damaged
    shard leaves the ledger; a person all of whose clips left it starts afresh."""
    saved = _ledger(tmp_path)
    _decide_all(saved, CLIPS[:16])
    lost = {key for key, *_ in CLIPS[:16:4]} | {CLIPS[2][0]}  # every clip of person 0, and one of person 2
    reopened = _reopen_committed(tmp_path, saved, lost)
    assert reopened.keys == [key for key in saved.keys if key not in lost]
    never_lost = _ledger(None)
    for key, embedding, signature, thumbnails in CLIPS[:16]:
        if key in reopened.keys:
            never_lost.keep(key, embedding, signature, thumbnails)
    assert _decide_all(reopened, CLIPS[16:]) == _decide_all(never_lost, CLIPS[16:])
    copy_of_lost = _clip(99, 0, re_encoded(CLIPS[0][3], seed=99))
    (reason, _), = _decide_all(_reopen_committed(tmp_path, reopened), [copy_of_lost])
    assert reason is None  # its original is no longer in the corpus


def test_a_clip_left_out_that_joined_two_people_leaves_them_apart(tmp_path: Path) -> None:
    """Greedy clustering chains: `a` (39 degrees from both) joined `b` and `c` (78 degrees apart: two
    people) into one cluster. Left out, they are clustered again without it, so a clip of `c`'s
    person is held to `c`'s cap alone, as a ledger that never kept `a` holds it."""
    def at(degrees: float) -> np.ndarray:
        return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))], np.float32)

    clips = {name: (f"{name}_00000000_00004000", at(degrees), None, None)
             for name, degrees in (("a", 39), ("b", 0), ("c", 78), ("d", 80))}
    saved = _ledger(tmp_path, max_clips_per_identity=2)
    for name in "abc":
        saved.keep(*clips[name])
    assert saved.decide(*clips["d"][1:]).reason == filters.IDENTITY_OVER_CAP  # one cluster of three
    reopened = _reopen_committed(tmp_path, saved, lost={clips["a"][0]})
    never_kept = _ledger(None, max_clips_per_identity=2)
    for name in "bc":
        never_kept.keep(*clips[name])
    assert reopened.decide(*clips["d"][1:]).reason is never_kept.decide(*clips["d"][1:]).reason is None


def test_the_rows_of_clips_left_out_at_the_end_are_written_over(tmp_path: Path) -> None:
    """The usual loss (a run stopped before packing, renders that failed) is the last clips kept:
    their rows are taken back, and the table saved at once, so it never vouches for rows written over."""
    saved = _ledger(tmp_path)
    _decide_all(saved, CLIPS[:8])
    windows_of_six = saved._clips.view()[5, 4]  # the end of the sixth clip's windows
    reopened = _reopen_committed(tmp_path, saved, lost=set(saved.keys[6:]))
    assert reopened._rows["windows"].count == windows_of_six and reopened._rows["embeddings"].count == 6
    _decide_all(reopened, CLIPS[8:12])  # kept over the rows taken back; never saved (the run stops)
    reopened.close()
    again = _reopen(tmp_path, committed=set(saved.keys[:6]))
    assert again.keys == saved.keys[:6]
    in_memory = _ledger(None)
    for clip in CLIPS[:8]:
        if clip[0] in again.keys:
            in_memory.keep(*clip)
    assert _decide_all(again, CLIPS[8:]) == _decide_all(in_memory, CLIPS[8:])


def test_a_write_that_stops_short_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.pwrite may write less than it was given (a disk that fills up and frees): the rest is
    written too, not left a hole of zeros that the table would vouch for."""
    real = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real(fd, bytes(data)[:max(1, len(data) // 3)], offset))
    saved = _ledger(tmp_path)
    _decide_all(saved, CLIPS[:8])
    monkeypatch.undo()
    reopened = _reopen_committed(tmp_path, saved)
    in_memory = _ledger(None)
    _decide_all(in_memory, CLIPS[:8])
    assert _decide_all(reopened, CLIPS[8:]) == _decide_all(in_memory, CLIPS[8:])


@pytest.mark.parametrize("change", ["same_person", "fps", "geometry", "table", "row_file_gone", "row_file_short",
                                    "none"])
def test_a_ledger_of_other_settings_or_damaged_is_made_anew(change: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    saved = _ledger(tmp_path)
    _decide_all(saved, CLIPS[:8])
    saved.save()
    saved.close()
    windows = tmp_path / f"windows-{saved.id}.bin"
    if change == "table":
        (tmp_path / TABLE_NAME).write_bytes((tmp_path / TABLE_NAME).read_bytes()[:100])
    if change == "row_file_gone":  # another folder's ledger files copied in, say
        windows.rename(tmp_path / "windows-0123456789abcdef.bin")
    if change == "row_file_short":
        with open(windows, "r+b") as rows:
            rows.truncate(1000)
    if change == "geometry":  # a release that changed how windows are made
        monkeypatch.setattr(overlap, "WINDOW_STEPS", 4)
    reopened = _reopen(tmp_path, set(saved.keys), same_person=0.6 if change == "same_person" else 0.5,
                       **({"fps": 30.0} if change == "fps" else {}))
    assert reopened.keys == (saved.keys if change == "none" else [])
    assert ("made again" in caplog.text) == (change != "none")
    monkeypatch.undo()
    reason, _ = _decide_all(reopened, CLIPS[:1])[0]  # the first clip again
    assert reason == (filters.DUPLICATE if change == "none" else None)
    if change != "none":  # the damaged ledger stays until the new one is saved, then its files go
        reopened.save()
        assert sorted(p.name for p in tmp_path.glob("*.bin")) == [f"{n}-{reopened.id}.bin" for n in
                                                                     ("embeddings", "signatures", "windows")]


def test_a_resume_reads_only_the_committed_clips_its_saved_ledger_lacks(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, every resume read every committed clip's arrays from its input's scan (56.5 s and
    2.3 GB for 20,000 clips); now those the last decisions saved are reopened, and a clip packed
    that the ledger never held (a folder curated before it was kept) is read and added."""
    from portraitflow.jobs import curate

    def clip(number: int, frames: np.ndarray) -> dict:
        key, embedding, signature, thumbnails = _clip(number, number % 4, frames)
        return {"key": key, "start": 0, "end": len(frames), "reason": None, "measures": {}, "same_person": 0.5,
                "identity": (embedding, signature, thumbnails)}

    pending = {f"in{i}": [clip(i, footage(i, 80))] for i in range(3)}
    monkeypatch.setattr(curate, "_input_clips", lambda row, *_: pending[row["input_key"]])
    read = []
    monkeypatch.setattr(curate, "_committed_clips", lambda layout, key, samples, *_: read.append(key) or
                        [clip(int(key[2:]), footage(int(key[2:]), 80))])
    layout, cfg = curate.Layout(tmp_path), load_config(None, [])
    curate._decide_corpus(cfg, [{"input_key": key} for key in pending], layout, {})
    assert read == []  # nothing committed yet
    in_shards = {c["key"]: Path("shard") for clips in pending.values() for c in clips}
    in_shards[clip(7, footage(7, 80))["key"]] = Path("shard")  # packed, but never in the saved ledger
    pending = {"in8": [clip(8, re_encoded(footage(0, 80)))]}  # a re-upload of in0's clip
    decided = curate._decide_corpus(cfg, [{"input_key": "in8"}], layout, in_shards)
    assert read == ["in7"] and decided["in8"][0]["reason"] == filters.DUPLICATE
    assert set(_reopen(layout.corpus, in_shards).keys) == set(in_shards)  # saved again, in7 added


def test_a_ledger_none_of_whose_clips_was_packed_takes_other_embeddings(tmp_path: Path) -> None:
    """A first run stopped before it packed anything leaves a ledger and nothing finished, so the
    next may change the face model: embeddings of another size start a new ledger, not a failure
    on every later run."""
    saved = _ledger(tmp_path)
    _decide_all(saved, CLIPS[:4])
    reopened = _reopen_committed(tmp_path, saved, lost=set(saved.keys))
    wider = np.random.default_rng(5).normal(size=512)
    reopened.keep("other_00000000_00004000", wider, None)
    assert _reopen_committed(tmp_path, reopened).keys == ["other_00000000_00004000"]
