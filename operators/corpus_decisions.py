"""The corpus-wide decisions on the clips the scans kept: near-duplicates and the cap per identity.

They need every clip, so the driver takes them once every input is scanned (jobs/curate.py, which
also tells which clips the corpus holds already); the comparisons are operators/corpus_ledger.py's
`CorpusLedger`, which the folder keeps between runs. Greedy, in a fixed order, so the result
depends on neither file names nor where an earlier run was stopped before its decisions (a run
stopped after them, before it packed every clip they kept, decides the clips it had not packed
again, against those it had: a few decisions may differ from the run it resumes).
"""
from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.operators.corpus_ledger import CorpusLedger
from portraitflow.operators.filters import PARTIAL_DUPLICATE
from portraitflow.operators.overlap import (SIGNATURE_SIZE, OverlapRule, content_signature, kept_hop_frames,
                                            unique_stretches)
from portraitflow.operators.scan_store import scan_path
from portraitflow.operators.unique_footage import unique_clip


def corpus_ledger(cfg: CurateConfig, same_person: float, folder: Path, committed: Collection[str]) -> CorpusLedger:
    """The ledger with the decisions' settings that `folder` keeps, holding the clips a run saved
    there that are `committed` (in the shards); `same_person`: the threshold of the face backend
    that scanned the clips, which `identity_switch_similarity` overrides when set."""
    return CorpusLedger.reopen(folder, committed, cfg.same_person_similarity(same_person), cfg.max_clips_per_identity,
                               cfg.duplicate_similarity, OverlapRule.from_config(cfg))


def decision_order(clip: dict[str, Any]) -> tuple:
    """Longest first; among clips of one length (copies of the same footage resample alike), the
    larger, then sharper face first, so of two copies the better is kept, not the one whose file
    name sorts first (a 320-px re-encode beat its 512-px original that way); the key last."""
    def larger_first(name: str) -> float:
        value = float(clip["measures"].get(name, np.nan))
        return -value if np.isfinite(value) else np.inf

    return clip["start"] - clip["end"], larger_first("face_side_px"), larger_first("sharpness"), clip["key"]


def decide_clips(corpus: CorpusLedger, committed: list[tuple[str, dict[str, Any]]],
                 undecided: list[tuple[str, dict[str, Any]]], identities: Identities, unique_frames: int = 0,
                 cuts_of: dict[str, set[str]] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Set the `reason` (None: kept) and `matched_key` (the kept clip that decided it, `Decision`)
    of each `undecided` clip, (input key, clip) in key order, and add to its `measures` what the
    duplicate checks found. With `unique_frames`, a `partial_duplicate`'s stretches found in no
    kept clip that last that many frames become clips of their own (operators/unique_footage.py),
    queued in `decision_order` like the others; returns them as (input key, clip), decided.

    The `committed` clips (in the corpus already, but not in the ledger: it was saved before they
    were packed, or by none) enter the ledger first, so new clips are capped and de-duplicated
    against all of it. Then the undecided are decided greedily in `decision_order`
    (longest first): an excerpt never rejects the longer original it was cut from, nor takes the
    identity's cap before it, whatever the file names; a fixed order also makes a run resumed from
    before its decisions decide as an uninterrupted one did. `cuts_of` names, by parent key, the
    committed cuts of an undecided clip (a run stopped after packing them, before its parent's
    marker): the parent is decided without them, as it was, its cuts are not made again, and it is
    never kept whole beside them.
    """
    cuts_of = cuts_of or {}
    for key, clip in committed:
        corpus.keep(clip["key"], *identities(key, clip))
    # a heap in decision order; each scan clip's arrays read as it is decided: read ahead, every
    # undecided clip's signature and thumbnails were held at once (208 KB a 10-s clip, twice what
    # a kept one costs the ledger). A cut's arrays (few) wait in the heap.
    queue = [(decision_order(clip), number, key, clip, None) for number, (key, clip) in enumerate(undecided)]
    heapq.heapify(queue)
    cut: list[tuple[str, dict[str, Any]]] = []
    while queue:
        _, _, key, clip, arrays = heapq.heappop(queue)
        embedding, signature, thumbnails = arrays or identities(key, clip)
        own_cuts = cuts_of.get(clip["key"], set())
        covered = _decide(corpus, clip, embedding, signature, thumbnails, own_cuts)
        if covered is None or not unique_frames:
            continue
        for first, last in unique_stretches(covered, unique_frames, kept_hop_frames(corpus.overlap.fps)):
            part = unique_clip(clip, key, first, last, corpus.overlap.fps)
            if part["key"] in own_cuts:  # in the corpus already
                continue
            frames = thumbnails[first:last]
            part_arrays = (embedding, None if signature is None else content_signature(frames), frames)
            heapq.heappush(queue, (decision_order(part), len(undecided) + len(cut), key, part, part_arrays))
            cut.append((key, part))
    return cut


def _decide(corpus: CorpusLedger, clip: dict[str, Any], embedding: np.ndarray, signature: np.ndarray | None,
            thumbnails: np.ndarray | None, own_cuts: set[str]) -> np.ndarray | None:
    """Decide `clip` without its `own_cuts`, keep it in the ledger when kept; returns which of a
    partial duplicate's frames were found in kept clips (`Decision.covered`), else None. A clip
    with cuts in the corpus that would now be kept whole (what decided it is no longer kept: its
    input failed, or was left out) stays `partial_duplicate` of its cut, and what is left of it
    beyond its cuts may be cut again."""
    decision = corpus.decide(embedding, signature, thumbnails, clip["measures"], exclude=own_cuts)
    reason, matched, covered = decision
    if own_cuts and reason is None:
        reason, matched = PARTIAL_DUPLICATE, min(own_cuts)
        covered = corpus.decide(embedding, signature, thumbnails).covered  # its cuts counted as footage found
    clip["reason"], clip["matched_key"] = reason, matched
    if reason is None:
        corpus.keep(clip["key"], embedding, signature, thumbnails)
    return covered if reason == PARTIAL_DUPLICATE else None


class Identities:
    """Clips' identity embeddings, content signatures and thumbnails: from their samples, or from
    their input's scan, a clip's own arrays only, from the last `OPEN_SCANS` scans kept open (an
    npz is opened by reading its whole directory: opened for each of an input's k clips, that cost
    grows as k squared, 10.7 s for 500 clips against 0.22 s). A finished input's scan may predate
    footage signatures or thumbnails: its clips then match no duplicate of that kind."""

    OPEN_SCANS = 16
    NAMES = ("embedding", "signature", "thumbnails")

    def __init__(self, scan_dir: Path) -> None:
        self.scan_dir = scan_dir
        self._open: OrderedDict[str, tuple[Any, set[str]]] = OrderedDict()  # input key -> (npz, its members)

    def __call__(self, input_key: str,
                 clip: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        if "identity" in clip:
            return clip["identity"]
        scan, members = self._scan(input_key)
        arrays = {name: scan[member] for name in self.NAMES if (member := f"c{clip['index']}_{name}") in members}
        signature = arrays["signature"] if arrays["signature"].size == SIGNATURE_SIZE else None  # a scan's from before
        return arrays["embedding"], signature, arrays.get("thumbnails")

    def _scan(self, input_key: str) -> tuple[Any, set[str]]:
        if input_key in self._open:
            self._open.move_to_end(input_key)
        else:
            if len(self._open) >= self.OPEN_SCANS:
                self._open.popitem(last=False)[1][0].close()
            scan = np.load(scan_path(self.scan_dir, input_key), allow_pickle=False)
            self._open[input_key] = (scan, set(scan.files))
        return self._open[input_key]

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1][0].close()
