"""The corpus ledger kept between runs (operators/corpus_ledger.py): reopened, it decides as the
ledger that was saved, less the clips the shards do not hold, and a resume reads the scans of only
the committed clips it lacks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import l2_normalise
from portraitflow.operators import filters
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
        reason = ledger.decide(embedding, signature, thumbnails, measures)
        if reason is None:
            ledger.keep(key, embedding, signature, thumbnails)
        decided.append((reason, measures))
    return decided


def test_a_reopened_ledger_decides_as_the_one_that_was_saved(tmp_path: Path) -> None:
    saved = _ledger(tmp_path)
    first = _decide_all(saved, CLIPS[:16])
    assert {reason for reason, _ in first} == {None, filters.DUPLICATE}  # the re-encodes are caught
    saved.save()
    reopened = _reopen(tmp_path, committed=set(saved.keys))
    assert reopened.keys == saved.keys
    later = _decide_all(saved, CLIPS[16:])
    assert _decide_all(reopened, CLIPS[16:]) == later  # reasons and every measure, exactly
    assert filters.IDENTITY_OVER_CAP in {reason for reason, _ in later}
    reopened.save()
    assert _reopen(tmp_path, committed=set(reopened.keys)).keys == saved.keys  # saved again, with what it added


def test_clips_the_shards_lack_are_left_out_as_if_never_kept(tmp_path: Path) -> None:
    """A clip kept but never packed (its render failed, the run was stopped) or cut from a damaged
    shard leaves the ledger; a person all of whose clips left it starts afresh."""
    saved = _ledger(tmp_path)
    _decide_all(saved, CLIPS[:16])
    saved.save()
    lost = {key for key, *_ in CLIPS[:16:4]} | {CLIPS[2][0]}  # every clip of person 0, and one of person 2
    reopened = _reopen(tmp_path, committed=set(saved.keys) - lost)
    assert reopened.keys == [key for key in saved.keys if key not in lost]
    never_lost = _ledger(None)
    for key, embedding, signature, thumbnails in CLIPS[:16]:
        if key in reopened.keys:
            never_lost.keep(key, embedding, signature, thumbnails)
    assert _decide_all(reopened, CLIPS[16:]) == _decide_all(never_lost, CLIPS[16:])
    copy_of_lost = _clip(99, 0, re_encoded(CLIPS[0][3], seed=99))
    assert _decide_all(_reopen(tmp_path, committed=set(reopened.keys)), [copy_of_lost]) == [(None, {})]


@pytest.mark.parametrize("change", ["same_person", "fps", "table", "row_file", "none"])
def test_a_ledger_of_other_settings_or_damaged_is_started_anew(change: str, tmp_path: Path) -> None:
    saved = _ledger(tmp_path)
    _decide_all(saved, CLIPS[:8])
    saved.save()
    if change == "table":
        (tmp_path / TABLE_NAME).write_bytes((tmp_path / TABLE_NAME).read_bytes()[:100])
    if change == "row_file":
        with open(tmp_path / "windows.bin", "r+b") as rows:
            rows.truncate(1000)
    reopened = _reopen(tmp_path, set(saved.keys), same_person=0.6 if change == "same_person" else 0.5,
                       **({"fps": 30.0} if change == "fps" else {}))
    assert reopened.keys == (saved.keys if change == "none" else [])
    assert (tmp_path / TABLE_NAME).exists() == (change == "none")  # its rows are to be replaced
    reason, _ = _decide_all(reopened, CLIPS[:1])[0]  # the first clip again
    assert reason == (filters.DUPLICATE if change == "none" else None)


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
