"""Near-duplicates that share only a stretch of footage (operators/overlap.py, the CorpusLedger):
caught as `partial_duplicate` with what was measured in the clip's row, on footage the tests make."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from portraitflow.jobs.config import load_config
from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import l2_normalise
from portraitflow.operators import filters
from portraitflow.operators.overlap import content_signature
from portraitflow.operators.corpus_ledger import CorpusLedger
from portraitflow.operators.overlap import KEPT_HOP_SECONDS, OverlapRule
from synthetic_footage import footage, re_encoded

FPS = 25.0
PERSON = l2_normalise(np.arange(1.0, 9.0))


def _ledger(**settings: float) -> CorpusLedger:
    cfg = CurateConfig(**settings)
    return CorpusLedger(0.5, cfg.max_clips_per_identity, cfg.duplicate_similarity, OverlapRule.from_config(cfg))


def _decide(ledger: CorpusLedger, thumbnails: np.ndarray) -> tuple[str | None, dict[str, float]]:
    measures: dict[str, float] = {}
    return ledger.decide(PERSON, content_signature(thumbnails), thumbnails, measures).reason, measures


def _keep(ledger: CorpusLedger, thumbnails: np.ndarray) -> None:
    ledger.keep("clip1", PERSON, content_signature(thumbnails), thumbnails)


KEPT = footage(1, 250)  # a 10-s clip


def _measured(overlap_s: float, shared_s: float) -> bool:
    """Whether a measured overlap fits a stretch of `shared_s`: kept windows start every
    KEPT_HOP_SECONDS, so a stretch that ends inside both clips is seen up to a hop short at each end."""
    return shared_s - 2 * KEPT_HOP_SECONDS - 1 / FPS <= overlap_s <= shared_s + 1 / FPS


@pytest.mark.parametrize(("new", "shared_s"), [
    (KEPT[:125], 5.0),  # its first half
    (re_encoded(KEPT[37:213]), 7.04),  # re-uploaded, trimmed at both ends
    (re_encoded(np.concatenate([footage(2, 30), KEPT[100:200], footage(3, 20)])), 4.0),  # holds a stretch of it
])
def test_a_clip_sharing_a_stretch_with_a_kept_clip_is_a_partial_duplicate(new: np.ndarray, shared_s: float) -> None:
    """The whole-clip signature misses each of them; the windows aligned in time find the stretch,
    and the clip's measures say how long it is."""
    ledger = _ledger()
    _keep(ledger, KEPT)
    reason, measures = _decide(ledger, new)
    assert measures["duplicate_similarity"] < CurateConfig().duplicate_similarity  # what the old check saw
    assert reason == filters.PARTIAL_DUPLICATE
    assert _measured(measures["overlap_s"], shared_s)
    assert measures["overlap_share"] == pytest.approx(measures["overlap_s"] * FPS / min(len(new), len(KEPT)))


def test_a_trimmed_copy_of_a_long_source_is_a_partial_duplicate_where_its_pieces_straddle_the_kept_ones() -> None:
    """A 40-s source kept as 10-s pieces, and a copy trimmed 5 s at each end, cut the same way: each
    of its pieces is half of one kept piece and half of the next, under 0.5 of either, but all of
    it is kept footage (the longest stretch shared with one kept clip let all of them through)."""
    source = footage(9, 1000)
    ledger = _ledger()
    for start in range(0, len(source), 250):
        _keep(ledger, source[start:start + 250])
    copy = re_encoded(source[125:875])
    for start in range(0, len(copy), 250):
        reason, measures = _decide(ledger, copy[start:start + 250])
        assert reason == filters.PARTIAL_DUPLICATE and _measured(measures["overlap_s"], 10.0)
        assert measures["overlap_share"] == pytest.approx(measures["overlap_s"] / 10)


def test_an_original_after_its_kept_excerpt_keeps_its_own_footage() -> None:
    """A 7.2-s original curated after its 3.5-s excerpt was kept (review s20, `liveportrait_d18`)
    was rejected whole, its footage outside the excerpt lost: 0.49 of it is kept footage, under the
    share, so it is kept (the excerpt's frames then twice in the corpus). Decided in one run, the
    original comes first and the excerpt is the one rejected."""
    ledger = _ledger()
    _keep(ledger, KEPT[50:150])
    reason, measures = _decide(ledger, re_encoded(KEPT))
    assert reason is None and _measured(measures["overlap_s"], 4.0)
    assert measures["overlap_share"] == pytest.approx(measures["overlap_s"] / 10)


def test_a_partial_duplicate_names_the_kept_clip_it_repeats_most() -> None:
    """A curator auditing a rejection had nothing to join on: the row names the kept clip."""
    ledger = _ledger()
    ledger.keep("first", PERSON, content_signature(KEPT[:100]), KEPT[:100])
    ledger.keep("second", PERSON, content_signature(KEPT[100:]), KEPT[100:])
    copy = re_encoded(KEPT[60:250])  # 40 frames of the first, all 150 of the second
    decision = ledger.decide(PERSON, content_signature(copy), copy)
    assert decision[:2] == (filters.PARTIAL_DUPLICATE, "second") and decision.covered[40 + 13:].all()  # the second's footage


@pytest.mark.parametrize("frames", [110, 133, 160])
def test_the_shared_footage_is_never_longer_than_the_clip(frames: int) -> None:
    """A copy played 3% fast (a frame dropped every 33) matches kept windows further apart than its
    own length: measured on the kept clip, 133 frames read 134 frames (5.36 s) in a clip of 130."""
    new = re_encoded(KEPT[np.arange(0, frames, 1.03).round().astype(np.int64)])
    ledger = _ledger()
    _keep(ledger, KEPT)
    reason, measures = _decide(ledger, new)
    assert reason == filters.PARTIAL_DUPLICATE
    assert round(measures["overlap_s"] * FPS) <= len(new) and measures["overlap_share"] <= 1.0


def test_other_footage_of_the_same_set_and_the_same_identity_is_kept() -> None:
    """Another take on the same set, and a stretch of the kept clip's shot after it, share no
    footage with it: kept, with the overlap they were measured at (none)."""
    ledger = _ledger()
    shot = footage(1, 500)
    _keep(ledger, shot[:250])
    for new in (footage(4, 250, background_seed=1), shot[250:]):
        reason, measures = _decide(ledger, new)
        assert reason is None
        assert measures["overlap_s"] == 0.0 and measures["overlap_share"] == 0.0


def test_a_whole_copy_is_still_a_duplicate() -> None:
    ledger = _ledger()
    _keep(ledger, KEPT)
    reason, measures = _decide(ledger, re_encoded(KEPT))
    assert reason == filters.DUPLICATE
    assert measures["duplicate_similarity"] > 0.95 and measures["overlap_share"] == pytest.approx(1.0)


def test_the_shared_stretch_counts_by_its_share_of_the_shorter_clip_or_by_its_length() -> None:
    """A 10-s clip whose first 3 s end the kept one: 30% of either, below the default share."""
    new = re_encoded(np.concatenate([KEPT[175:], footage(5, 175)]))
    for settings, expected in [({}, None), ({"duplicate_overlap_share": 0.25}, filters.PARTIAL_DUPLICATE),
                               ({"duplicate_overlap_seconds": 2.5}, filters.PARTIAL_DUPLICATE),
                               ({"duplicate_overlap_seconds": 3.5}, None)]:
        ledger = _ledger(**settings)
        _keep(ledger, KEPT)
        reason, measures = _decide(ledger, new)
        assert reason == expected, settings
        assert _measured(measures["overlap_s"], 3.0)
        assert measures["overlap_share"] == pytest.approx(measures["overlap_s"] / 10)


def test_a_faded_or_regraded_stretch_is_still_the_samefootage() -> None:
    """A re-upload with other brightness and contrast, fading out: each frame is standardised."""
    graded = KEPT[50:200] * 0.7 + 30
    faded = graded * np.linspace(1.0, 0.4, len(graded))[:, None, None]
    ledger = _ledger()
    _keep(ledger, KEPT)
    reason, measures = _decide(ledger, faded.round().astype(np.uint8))
    assert reason == filters.PARTIAL_DUPLICATE and _measured(measures["overlap_s"], 6.0)


def test_a_partial_duplicate_is_judged_within_the_identity_only() -> None:
    ledger = _ledger()
    _keep(ledger, KEPT)
    measures: dict[str, float] = {}
    other_person = l2_normalise(np.arange(8.0, 0.0, -1.0) * np.array([1, -1] * 4))
    assert ledger.decide(other_person, content_signature(KEPT[:125]), KEPT[:125], measures).reason is None
    assert measures == {}  # compared with no kept clip


def test_kept_clips_without_thumbnails_are_compared_whole_and_still_count_for_the_cap() -> None:
    """Samples and scans written before thumbnails: their clips match no partial duplicate."""
    ledger = _ledger(max_clips_per_identity=2)
    ledger.keep("clip2", PERSON, content_signature(KEPT), None)
    reason, measures = _decide(ledger, KEPT[:125])
    assert reason is None and "overlap_share" not in measures and "duplicate_similarity" in measures
    assert _decide(ledger, KEPT)[0] == filters.DUPLICATE
    _keep(ledger, footage(6, 250))
    assert _decide(ledger, footage(7, 250))[0] == filters.IDENTITY_OVER_CAP


def test_a_clip_shorter_than_a_window_is_compared_whole_only() -> None:
    ledger = _ledger(min_clip_seconds=1.0)
    _keep(ledger, KEPT)
    reason, measures = _decide(ledger, KEPT[:40])
    assert reason is None and "overlap_s" not in measures


def test_decisions_are_the_same_from_thumbnails_read_back_from_a_scan_or_a_sample(tmp_path: Path) -> None:
    """What the ledger compares round-trips exactly through the scan file and the sample's npy, so
    a resumed run, which reads kept clips back from either, decides as the uninterrupted one."""
    import io

    from portraitflow.operators.face_scan import Candidate
    from portraitflow.operators.scan_store import load_clip_arrays, save_scan
    from portraitflow.operators.shards import npy_bytes

    arrays = {"embedding": PERSON.astype(np.float32), "signature": content_signature(KEPT), "thumbnails": KEPT}
    save_scan(tmp_path / "scan.npz", {"fingerprint": ""}, [Candidate(0, 250, None, {}, arrays)])
    from_scan = load_clip_arrays(tmp_path / "scan.npz", 0, ("thumbnails",))["thumbnails"]
    from_sample = np.load(io.BytesIO(npy_bytes(KEPT)), allow_pickle=False)
    new = re_encoded(KEPT[20:160])
    decided = []
    for thumbnails in (KEPT, from_scan, from_sample):
        assert thumbnails.dtype == np.uint8 and np.array_equal(thumbnails, KEPT)
        ledger = _ledger()
        ledger.keep("clip3", PERSON, content_signature(KEPT), thumbnails)
        decided.append(_decide(ledger, new))
    assert decided[0] == decided[1] == decided[2] and decided[0][0] == filters.PARTIAL_DUPLICATE


def test_the_clip_row_reports_the_duplicate_measures_and_older_markers_still_make_the_tables() -> None:
    from portraitflow.operators import ledger

    row = {"uri": "/in/a.mp4", "input_key": "a"}
    measured = ledger.clip_row("a_1", row, {"start": 0, "end": 125, "reason": filters.PARTIAL_DUPLICATE,
                                            "matched_key": "b_7", "measures": {"duplicate_similarity": 0.29,
                                                                               "overlap_s": 4.9, "overlap_share": 0.98}}, FPS)
    assert (measured["reason"], measured["overlap_share"], measured["overlap_s"]) == ("partial_duplicate", 0.98, 4.9)
    assert measured["matched_key"] == "b_7"
    unmeasured = ledger.clip_row("a_2", row, {"start": 125, "end": 250, "reason": None, "measures": {}}, FPS)
    assert math.isnan(unmeasured["overlap_share"]) and math.isnan(unmeasured["duplicate_similarity"])
    older = {k: v for k, v in unmeasured.items()
             if k not in ("duplicate_similarity", "overlap_s", "overlap_share", "matched_key")}
    input_row = ledger.input_row(dict(row, status="scanned", duration_s=10.0), [measured, older])
    _, clips = ledger._tables({"a": {"input": input_row, "clips": [measured, older]}})
    assert clips.column("overlap_share").to_pylist() == [0.98, None]
    assert clips.column("matched_key").to_pylist() == ["b_7", None]  # markers from before it say nothing
    assert input_row["clips_rejected"] == {"partial_duplicate": 1}


def test_the_overlap_settings_leave_scans_valid_and_an_older_folder_resumes_with_them(tmp_path: Path) -> None:
    """They decide after the scan, like `duplicate_similarity`; a folder curated before they existed
    counts them at their defaults instead of refusing to resume."""
    from portraitflow.jobs.curate import Layout, check_corpus_settings, corpus_settings
    from portraitflow.operators import ledger
    from portraitflow.operators.scan_store import scan_fingerprint

    names = ("duplicate_overlap_share", "duplicate_overlap_seconds", "duplicate_window_similarity")
    changed = load_config(None, ["curate.duplicate_overlap_share=0.8", "curate.duplicate_overlap_seconds=3",
                                 "curate.duplicate_window_similarity=0.95", "curate.duplicate_mirrored=false"])
    assert scan_fingerprint(changed) == scan_fingerprint(load_config(None, []))
    layout = Layout(tmp_path)
    layout.make()
    older = corpus_settings(load_config(None, []))
    for name in names:
        del older["curate"][name]
    layout.settings.write_text(json.dumps(older))
    ledger.write_marker(layout.done, {"input_key": "talk", "status": "rejected"}, [])
    assert check_corpus_settings(load_config(None, []), layout) == []


def _decoded(path: Path, fps: float, start_s: float = 0.0, end_s: float | None = None,
             size: tuple[int, int] | None = None) -> np.ndarray:
    from portraitflow.operators.decode import iter_frame_chunks

    return np.concatenate([c.frames for c in iter_frame_chunks(str(path), fps, start_s, end_s, size=size)])


def test_a_trimmed_re_encode_at_another_frame_rate_is_a_partial_duplicate(media_dir: Path, tmp_path: Path) -> None:
    """A 30-fps talking video re-encoded at 24 fps, 320 px, crf 30, then cut 3.2 s from inside a
    kept 10-s clip: both are resampled to 25 fps, so their windows line up; the whole-clip
    signatures do not match, and the stretch of the shot after the kept clip is no duplicate."""
    from portraitflow.operators.overlap import frame_thumbnails
    from portraitflow.operators.video_writer import write_h264

    source = media_dir / "liveportrait_d9.mp4"
    write_h264(tmp_path / "reupload.mp4", [_decoded(source, 24.0, 3.0, 14.0, (320, 320))], 24, crf=30)
    original = frame_thumbnails(_decoded(source, FPS)).astype(np.uint8)
    reupload = frame_thumbnails(_decoded(tmp_path / "reupload.mp4", FPS)).astype(np.uint8)
    kept = original[90:340]  # 3.6-13.6 s of the source
    ledger = _ledger()
    _keep(ledger, kept)
    reason, measures = _decide(ledger, reupload[25:105])  # 4.0-7.2 s of the source
    assert measures["duplicate_similarity"] < 0.5
    assert reason == filters.PARTIAL_DUPLICATE and measures["overlap_share"] > 0.85
    reason, measures = _decide(ledger, original[340:])
    assert reason is None and measures["overlap_s"] == 0.0


def test_stretches_that_are_apart_in_the_new_clip_count_their_own_frames_only() -> None:
    """Two neighbouring windows of the kept clip found 4 s apart in the new one are the new clip's
    frames in those two windows, 4 s of its 6.8: not the 2.5 s between the kept windows' ends, nor
    the new footage between the two stretches."""
    new = re_encoded(np.concatenate([KEPT[:58], footage(8, 50), KEPT[8:70]]))
    ledger = _ledger(duplicate_overlap_share=1.0)
    _keep(ledger, KEPT)
    reason, measures = _decide(ledger, new)
    assert measures["overlap_s"] == pytest.approx(4.0)
    assert measures["overlap_share"] == pytest.approx(4.0 * FPS / len(new))
    assert reason is None


@pytest.mark.parametrize(("new", "expected"), [
    (re_encoded(np.flip(KEPT, axis=2)), filters.DUPLICATE),  # a flipped re-upload of the whole clip
    (re_encoded(np.flip(KEPT[37:213], axis=2)), filters.PARTIAL_DUPLICATE),  # flipped and trimmed
])
def test_a_mirrored_copy_is_a_duplicate_unless_switched_off(new: np.ndarray, expected: str) -> None:
    ledger = _ledger(duplicate_overlap_share=0.5)
    _keep(ledger, KEPT)
    reason, measures = _decide(ledger, new)
    assert reason == expected
    assert measures["overlap_share"] > 0.9
    unmirrored = _ledger(duplicate_mirrored=False)
    _keep(unmirrored, KEPT)
    reason, measures = _decide(unmirrored, new)
    assert reason is None  # as it is, the mirror image shares no footage with the kept clip
    assert measures["duplicate_similarity"] < 0.5 and measures["overlap_share"] == 0.0


def test_the_mirrored_signature_is_the_signature_of_the_mirror_image() -> None:
    from portraitflow.operators.overlap import mirrored_signature

    thumbnails = footage(6, 60)
    mirrored = mirrored_signature(content_signature(thumbnails), thumbnails.shape[2])
    np.testing.assert_allclose(mirrored, content_signature(np.flip(thumbnails, axis=2)), atol=1e-6)


def test_footage_found_in_either_view_counts_together() -> None:
    """The clip's first 6 s are a kept clip's as they are, its last 3 s most of a short kept clip's
    mirror image (0.82 of it): neither view alone finds 0.85 of either clip, both together do, and
    the row reports the footage that rejected it."""
    tail = footage(7, 100)
    new = re_encoded(np.concatenate([KEPT[:150], tail]))
    for mirrored, expected, shared_s in ((True, filters.PARTIAL_DUPLICATE, 9.0), (False, None, 6.0)):
        ledger = _ledger(duplicate_overlap_share=0.85, duplicate_mirrored=mirrored)
        _keep(ledger, KEPT)
        _keep(ledger, np.flip(np.concatenate([tail[:75], footage(8, 15)]), axis=2))
        reason, measures = _decide(ledger, new)
        assert reason == expected
        assert _measured(measures["overlap_s"], shared_s)
        assert measures["overlap_share"] == pytest.approx(measures["overlap_s"] * FPS / len(new))


@pytest.mark.parametrize("excerpt_name", ["a_excerpt", "z_excerpt"])
def test_an_excerpt_decided_with_its_original_is_rejected_whatever_the_names(
        excerpt_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clips were decided in key order: an excerpt whose name sorted first rejected the whole of
    its longer original, footage found nowhere else included."""
    from portraitflow.jobs import curate

    original, excerpt = KEPT, KEPT[50:150]
    clips = {name: {"key": f"{name}_00000000_{len(frames) * 40:08d}", "start": 0, "end": len(frames), "reason": None,
                    "measures": {}, "same_person": 0.5,
                    "identity": (PERSON, content_signature(frames), frames)}
             for name, frames in (("m_original", original), (excerpt_name, excerpt))}
    monkeypatch.setattr(curate, "_input_clips", lambda row, *_: [clips[row["input_key"]]])
    decided = curate._decide_corpus(load_config(None, []), [{"input_key": name} for name in sorted(clips)],
                                    curate.Layout(tmp_path), {})
    assert decided["m_original"][0]["reason"] is None
    assert decided[excerpt_name][0]["reason"] == filters.PARTIAL_DUPLICATE
    assert decided[excerpt_name][0]["matched_key"] == clips["m_original"]["key"]  # what its row names


def test_a_re_upload_is_compared_with_every_cluster_of_its_person_not_only_the_nearest() -> None:
    """A person split in two clusters (a first clip at an odd pose starts its own): a copy of a
    clip of one cluster, embedded nearer the other's centroid, was compared with that one only."""
    def at(degrees: float) -> np.ndarray:
        return np.array([math.cos(math.radians(degrees)), math.sin(math.radians(degrees))])

    ledger = _ledger()
    ledger.keep("clip4", at(0), content_signature(KEPT), KEPT)
    other = footage(5, 250)
    ledger.keep("clip5", at(70), content_signature(other), other)  # 0.34 to the first centroid: a second cluster
    copy = re_encoded(KEPT)
    assert ledger.decide(at(45), content_signature(copy), copy).reason == filters.DUPLICATE  # 0.91 to the second, 0.71 to the first


def test_deciding_longest_first_reads_each_clip_once_as_it_is_decided(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Clips of many inputs are decided longest first, one input's then another's. A cache one input
    deep read a scan again for nearly every clip (865 reads for 20 inputs); reading every scan ahead
    held every undecided clip's signature and thumbnails at once (208 KB a 10-s clip: 1 TB for 5
    million); opening a scan for each clip cost its whole directory each time. Each clip's own
    arrays are read once, just before it is decided, and each scan is opened once."""
    from types import SimpleNamespace

    from portraitflow.jobs import curate
    from portraitflow.operators.corpus_decisions import Identities
    from portraitflow.operators.corpus_ledger import CorpusLedger

    lengths = {f"in{i}": [50 + 7 * ((i * 5 + j * 3) % 11) for j in range(4)] for i in range(5)}
    monkeypatch.setattr(curate, "_input_clips", lambda row, *_: [
        {"key": f"{row['input_key']}_{j}", "start": 0, "end": n, "reason": None, "measures": {}, "same_person": 0.5,
         "index": j} for j, n in enumerate(lengths[row["input_key"]])])
    reads, opened, read_when_decided = [], [], []

    class Scan:  # an npz's members, read lazily as np.load's are
        def __init__(self, key: str) -> None:
            self.key = key

        def __getitem__(self, member: str) -> np.ndarray:
            index, name = member[1:].split("_", 1)
            if name == "embedding":
                reads.append((self.key, int(index)))
            frames = footage(len(reads), 60)
            return {"embedding": l2_normalise(np.eye(8)[len(reads) % 8] + 0.1), "signature": content_signature(frames),
                    "thumbnails": frames}[name]

        def close(self) -> None:
            pass

    def scan(self, input_key):
        if input_key not in self._open:
            opened.append(input_key)
            self._open[input_key] = (Scan(input_key), {f"c{j}_{n}" for j in range(4) for n in Identities.NAMES})
        return self._open[input_key]

    decide = CorpusLedger.decide
    monkeypatch.setattr(CorpusLedger, "decide", lambda self, *a, **k: read_when_decided.append(len(reads))
                        or decide(self, *a, **k))
    monkeypatch.setattr(Identities, "_scan", scan)
    curate._decide_corpus(load_config(None, []), [{"input_key": key} for key in lengths], SimpleNamespace(scans=Path("s"), corpus=tmp_path), {})
    assert len(reads) == len(set(reads)) == sum(map(len, lengths.values()))
    assert sorted(opened) == sorted(lengths)  # each scan opened once
    assert read_when_decided == list(range(1, len(reads) + 1))  # none read ahead of its decision


def test_identities_read_each_clips_own_arrays_from_the_scans_kept_open(tmp_path: Path, monkeypatch) -> None:
    """Interleaved inputs beyond the open scans are opened again; every clip gets its own arrays."""
    from portraitflow.operators.corpus_decisions import Identities
    from portraitflow.operators.face_scan import Candidate
    from portraitflow.operators.scan_store import save_scan, scan_path

    made = {}
    for i in range(3):
        candidates = []
        for j in range(2):
            frames = footage(10 * i + j, 30)
            arrays = {"embedding": l2_normalise(np.eye(8)[(i + j) % 8] + 0.1).astype(np.float32),
                      "signature": content_signature(frames), "thumbnails": frames}
            candidates.append(Candidate(0, 30, None, {}, arrays))
            made[(f"in{i}", j)] = arrays
        save_scan(scan_path(tmp_path, f"in{i}"), {"fingerprint": ""}, candidates)
    monkeypatch.setattr(Identities, "OPEN_SCANS", 2)
    identities = Identities(tmp_path)
    for key, index in [("in0", 0), ("in1", 0), ("in2", 0), ("in0", 1), ("in2", 1), ("in1", 1)]:
        embedding, signature, thumbnails = identities(key, {"index": index})
        expected = made[(key, index)]
        assert np.array_equal(embedding, expected["embedding"]) and np.array_equal(thumbnails, expected["thumbnails"])
        assert np.array_equal(signature, expected["signature"]) and len(identities._open) <= 2
    identities.close()
    assert not identities._open


def test_a_clip_without_frames_or_with_odd_thumbnails_finds_no_windows_rather_than_failing() -> None:
    """The signal is computed before the clip's length is checked: an empty clip or a thumbnail of
    odd size (a scan written by hand, or damaged) failed the decisions where it found nothing."""
    from portraitflow.operators.overlap import footage_signal

    assert footage_signal(np.zeros((0, 16, 16), np.float32)).shape == (0, 8, 8)
    assert footage_signal(KEPT[:30, :15, :15]).shape == (30, 7, 7)
    ledger = _ledger()
    _keep(ledger, KEPT)
    for clip in (KEPT[:0], KEPT[:30, :15, :15]):
        assert ledger.decide(PERSON, None, clip).reason is None


def test_thumbnails_filled_again_in_place_are_not_given_the_last_clips_signal() -> None:
    """The signal computed for a decision is reused for the keep that follows it: only for the same
    thumbnails, not for the same array holding another clip's."""
    buffer = KEPT.copy()
    other = footage(7, 250)
    ledger, fresh = _ledger(), _ledger()
    ledger.decide(PERSON, content_signature(buffer), buffer)
    buffer[:] = other
    ledger.keep("clip1", PERSON, content_signature(other), buffer)
    fresh.keep("clip1", PERSON, content_signature(other), other)
    copy = re_encoded(other)
    assert _decide(ledger, copy) == _decide(fresh, copy) and _decide(ledger, copy)[0] == filters.DUPLICATE
