"""A partial duplicate's own footage kept as a clip of its own (operators/unique_footage.py)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from curate_runs import LOCAL_RAY, curated_contents, read_rows, run_curate, sample_keys
from synthetic_footage import footage, re_encoded

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import l2_normalise
from portraitflow.operators import filters
from portraitflow.operators.corpus_decisions import decide_clips
from portraitflow.operators.corpus_ledger import CorpusLedger
from portraitflow.operators.overlap import OverlapRule, content_signature, unique_stretches
from portraitflow.operators.unique_footage import cut_arrays

FPS = 25.0
PERSON = l2_normalise(np.arange(1.0, 9.0))


@pytest.mark.parametrize(("covered", "expected"), [
    ("1111000000000000", [(6, 16)]),  # the end of the clip is its own: no margin there
    ("0000000000001111", [(0, 10)]),
    ("1100000000000011", [(4, 12)]),  # footage found at both ends: a margin at each
    ("1110000111000000000", [(12, 19)]),  # the stretch between is too short once its margins are off
    ("1111111111111111", []),
])
def test_unique_stretches_leave_a_margin_where_found_footage_borders_them(covered: str, expected: list) -> None:
    mask = np.array([c == "1" for c in covered])
    assert unique_stretches(mask, min_frames=5, margin=2) == expected


def _identities(thumbnails: dict[str, np.ndarray]):
    return lambda key, clip: clip.get("identity") or (PERSON, content_signature(thumbnails[clip["key"]]),
                                                      thumbnails[clip["key"]])


def _clip(key: str, frames: int) -> dict:
    return {"key": key, "start": 0, "end": frames, "reason": None, "measures": {"sharpness": 120.0}, "index": 0}


@pytest.mark.parametrize("keep_unique", [True, False])
def test_a_partial_duplicates_own_footage_is_cut_out_and_kept(keep_unique: bool) -> None:
    """An original of 10 s kept; a re-upload holding its last 6 s and 4 s found nowhere else: the
    re-upload is a partial duplicate (0.6 of it found), and its last 4 s, less half a second
    where they border the footage found, become a clip of their own."""
    kept, new = footage(1, 250), footage(2, 100)
    thumbnails = {"orig_00000000_00010000": kept,
                  "reup_00000000_00010000": re_encoded(np.concatenate([kept[100:], new]))}
    cfg = CurateConfig()
    ledger = CorpusLedger(0.5, 0, cfg.duplicate_similarity, OverlapRule.from_config(cfg))
    clips = [("orig", _clip("orig_00000000_00010000", 250)), ("reup", _clip("reup_00000000_00010000", 250))]
    cut = decide_clips(ledger, [], clips, _identities(thumbnails), unique_frames=50 if keep_unique else 0)
    assert clips[1][1]["reason"] == filters.PARTIAL_DUPLICATE
    if not keep_unique:
        assert cut == []
        return
    [(input_key, part)] = cut
    assert input_key == "reup" and part["reason"] is None and part["cut_from"] == "reup_00000000_00010000"
    first, last = part["cut"]
    assert 150 < first <= 150 + 13 + 2 and last == 250  # 6 s found (up to a window hop short), a margin after
    assert part["key"] == f"reup_{first * 40:08d}_00010000" and (part["start"], part["end"]) == (first, last)
    assert part["measures"]["sharpness"] == 120.0 and part["measures"]["overlap_share"] == 0.0
    assert "overlap_share" in clips[1][1]["measures"]  # the parent's own, untouched by the part's
    assert part["key"] in ledger.keys  # kept: a later copy of that footage is a duplicate of it
    copy = re_encoded(new[10:], seed=3)
    assert ledger.decide(PERSON, content_signature(copy), copy).reason in {filters.DUPLICATE, filters.PARTIAL_DUPLICATE}


def test_cut_arrays_take_the_parents_frames_and_their_own_reference() -> None:
    rng = np.random.default_rng(0)
    frames = 100
    landmarks = rng.uniform(100, 300, (frames, 68, 2)).astype(np.float32)
    arrays = {"boxes": np.tile(np.array([100, 100, 300, 300], np.float32), (frames, 1)),
              "kps": landmarks[:, [36, 45, 30, 48, 54]], "landmarks": landmarks,
              "pose": rng.uniform(-20, 20, (frames, 3)).astype(np.float32),
              "motion": np.zeros((frames, 3), np.float32), "thumbnails": footage(4, frames),
              "embedding": PERSON.astype(np.float32), "signature": np.zeros(8192, np.float32),
              "crop_box": np.array([50, 50, 350, 350], np.float32), "ref_index": np.array(70)}
    inside = cut_arrays(arrays, 60, 90, (480, 640))
    assert int(inside["ref_index"]) == 10  # the parent's frame 70
    assert all(len(inside[k]) == 30 for k in ("boxes", "kps", "landmarks", "pose", "thumbnails", "motion"))
    np.testing.assert_array_equal(inside["landmarks"], landmarks[60:90])
    np.testing.assert_allclose(inside["signature"], content_signature(arrays["thumbnails"][60:90].astype(np.float32)))
    np.testing.assert_array_equal(inside["crop_box"], arrays["crop_box"])
    outside = cut_arrays(arrays, 0, 40, (480, 640))
    assert 0 <= int(outside["ref_index"]) < 40


def _cut(path: Path, start_s: float, end_s: float, source: Path) -> str:
    from portraitflow.operators.decode import iter_frame_chunks, probe_video
    from portraitflow.operators.video_writer import write_h264

    fps = probe_video(str(source)).fps
    write_h264(path, [c.frames for c in iter_frame_chunks(str(source), fps, start_s, end_s)], fps=fps,
               audio_from=source, audio_start_s=start_s)
    return str(path)


def _excerpts(media_dir: Path, folder: Path) -> list[str]:
    """Two excerpts of one shot, 0-7.5 s and 3-10 s: the second holds 4.5 s of the first and 2.5 s of its own."""
    source = media_dir / "liveportrait_d9.mp4"
    return [_cut(folder / "a_first.mp4", 0.0, 7.5, source), _cut(folder / "b_later.mp4", 3.0, 10.0, source)]


@pytest.fixture(scope="module")
def excerpts_curated(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The two excerpts curated uninterrupted with the defaults: (inputs, out)."""
    folder = tmp_path_factory.mktemp("excerpts")
    inputs = _excerpts(media_dir, folder)
    run_curate(inputs, folder / "out", None, *LOCAL_RAY)
    return inputs, folder / "out"


def _assert_later_excerpts_own_footage_is_a_sample(out: Path) -> None:
    """The first excerpt is kept, the second is a partial duplicate whose own footage is a sample of its own."""
    clips = {row["key"].split("-")[0] + row["key"][-18:]: row for row in read_rows(out / "clips.parquet")}
    parent, part = clips["b_later_00000000_00007000"], next(r for r in clips.values() if r["cut_from"])
    assert parent["reason"] == filters.PARTIAL_DUPLICATE and part["cut_from"].endswith("_00000000_00007000")
    assert part["decision"] == "accepted" and part["input_key"] == parent["input_key"]
    assert 4.5 < part["start_s"] < 5.1 and part["end_s"] == 7.0  # its own footage starts at 4.5 s
    [manifest] = [r for r in read_rows(out / "manifest.parquet") if r["input_key"] == parent["input_key"]]
    assert manifest["status"] == "accepted" and manifest["clips_accepted"] == 1
    [shard] = [path for path in (out / "shards").glob("*.tar") if f"{part['key']}.json" in tarfile.open(path).getnames()]
    with tarfile.open(shard) as tar:
        meta = json.loads(tar.extractfile(f"{part['key']}.json").read())
        thumbnails = np.load(io.BytesIO(tar.extractfile(f"{part['key']}.thumbnails.npy").read()))
    frames = round((part["end_s"] - part["start_s"]) * 25)
    assert meta["num_frames"] == frames == len(thumbnails) and meta["cut_from"] == part["cut_from"]
    assert 0 <= meta["ref_frame"] < frames


def test_curate_keeps_the_footage_of_a_later_excerpt_found_nowhere_else(excerpts_curated) -> None:
    """The own footage is rendered by the scan's actors; a rerun changes nothing."""
    inputs, out = excerpts_curated
    _assert_later_excerpts_own_footage_is_a_sample(out)
    before = curated_contents(out)
    run_curate(inputs, out, None, *LOCAL_RAY)
    assert curated_contents(out) == before


def test_with_a_cap_per_identity_the_later_excerpts_footage_is_cut_after_the_decisions(media_dir: Path,
                                                                                      tmp_path: Path) -> None:
    """With a cap per identity, the own footage is rendered after the decisions, as without one."""
    inputs = _excerpts(media_dir, tmp_path)
    run_curate(inputs, tmp_path / "out", None, *LOCAL_RAY, "--set", "curate.max_clips_per_identity=5")
    _assert_later_excerpts_own_footage_is_a_sample(tmp_path / "out")


def _corpus(**settings) -> CorpusLedger:
    cfg = CurateConfig(**settings)
    return CorpusLedger(0.5, cfg.max_clips_per_identity, cfg.duplicate_similarity, OverlapRule.from_config(cfg))


ORIGINAL = footage(1, 250)  # 10 s
LATER = re_encoded(np.concatenate([ORIGINAL[100:], footage(2, 90)]))  # its last 6 s, then 3.6 s of its own


def test_a_cut_waits_for_longer_clips_under_a_cap() -> None:
    """Decided right after its parent, a 3-s cut took the identity's last place before a 9-s clip
    of new footage (review s21: 30% less footage kept with the cut on than off)."""
    thumbnails = {"orig_00000000_00010000": ORIGINAL, "later_00000000_00009600": LATER,
                  "new_00000000_00009000": footage(3, 225)}
    clips = [("orig", _clip("orig_00000000_00010000", 250)), ("later", _clip("later_00000000_00009600", 240)),
             ("new", _clip("new_00000000_00009000", 225))]
    [(_, part)] = decide_clips(_corpus(max_clips_per_identity=2), [], clips, _identities(thumbnails), unique_frames=50)
    assert [clip["reason"] for _, clip in clips] == [None, filters.PARTIAL_DUPLICATE, None]
    assert part["reason"] == filters.IDENTITY_OVER_CAP


def _cut_of(parent: dict, part: dict) -> tuple[str, dict]:
    """A cut as a resumed run finds it: packed, in the corpus, read back from its sample."""
    first, last = part["cut"]
    frames = LATER[first:last]
    return "later", {"key": part["key"], "start": part["start"], "end": part["end"], "reason": None, "measures": {},
                     "cut_from": parent["key"], "identity": (PERSON, content_signature(frames), frames)}


@pytest.mark.parametrize("original_kept", [True, False])
def test_a_parent_decided_again_beside_its_packed_cut(original_kept: bool) -> None:
    """A run stopped after packing a cut, before its parent's marker, decides the parent again: it
    was judged with its own cut as footage found (its row's overlap 0.57 -> 0.89, `matched_key` its
    own cut), and, where the clip it repeats was no longer kept, accepted whole beside the cut."""
    thumbnails = {"orig_00000000_00010000": ORIGINAL, "later_00000000_00009600": LATER}
    first = [("orig", _clip("orig_00000000_00010000", 250)), ("later", _clip("later_00000000_00009600", 240))]
    [(_, part)] = decide_clips(_corpus(), [], first, _identities(thumbnails), unique_frames=50)
    uninterrupted = first[1][1]
    parent = _clip("later_00000000_00009600", 240)
    committed = [_cut_of(uninterrupted, part)] + ([("orig", dict(first[0][1], identity=(
        PERSON, content_signature(ORIGINAL), ORIGINAL)))] if original_kept else [])
    cut = decide_clips(_corpus(), committed, [("later", parent)], _identities(thumbnails), unique_frames=50,
                       cuts_of={parent["key"]: {part["key"]}})
    assert parent["reason"] == filters.PARTIAL_DUPLICATE
    if original_kept:  # as uninterrupted
        assert cut == [] and parent["matched_key"] == "orig_00000000_00010000"
        assert parent["measures"]["overlap_share"] == uninterrupted["measures"]["overlap_share"]
    else:  # the original's footage is in no kept clip now: it is cut from the parent, the cut's kept as it was
        assert parent["matched_key"] == part["key"]
        [(_, rest)] = cut
        assert rest["reason"] is None and rest["cut"][0] == 0 and rest["cut"][1] <= part["cut"][0]


def test_a_run_stopped_after_packing_a_cut_resumes_to_the_uninterrupted_outcome(excerpts_curated,
                                                                               tmp_path: Path) -> None:
    """Stopped after the cut's shard, before its parent's marker: the rerun decided the parent with
    its own cut as footage found (review s21)."""
    import subprocess
    import sys

    from curate_runs import FAST

    inputs, whole = excerpts_curated
    stopped = tmp_path / "stopped"
    stop_at_parent = ("import sys; from portraitflow.operators import ledger; write = ledger.write_marker\n"
                      "def stop(done, row, clips, scanned):\n"
                      "    if row['input_key'].startswith('b_later'): raise SystemExit(9)\n"
                      "    return write(done, row, clips, scanned)\n"
                      "ledger.write_marker = stop\n"
                      "from portraitflow.jobs.cli import app; app(sys.argv[1:])")
    killed = subprocess.run([sys.executable, "-c", stop_at_parent, "curate", *inputs, "--out", str(stopped), *FAST,
                             *LOCAL_RAY], capture_output=True, text=True, timeout=600)
    assert killed.returncode == 9, killed.stderr[-3000:]
    assert any("b_later" in key and "_00004" in key for key in sample_keys(stopped))  # the cut is packed
    run_curate(inputs, stopped, None, *LOCAL_RAY)
    assert sample_keys(stopped) == sample_keys(whole)
    rows = {name: {row["key"]: row for row in read_rows(out / "clips.parquet")} for name, out in
            (("whole", whole), ("stopped", stopped))}
    assert rows["whole"].keys() == rows["stopped"].keys()
    for key, row in rows["whole"].items():
        again = rows["stopped"][key]
        assert (again["decision"], again["reason"], again["matched_key"], again["cut_from"]) == \
            (row["decision"], row["reason"], row["matched_key"], row["cut_from"])
        if not row["cut_from"]:  # a clip packed before its marker keeps no duplicate measures (as before cuts)
            assert again["overlap_share"] == pytest.approx(row["overlap_share"], nan_ok=True)
