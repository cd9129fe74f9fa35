"""Identity decisions on L2-normalised face embeddings.

- within a clip: do sampled frames show one person, and if not, where does it switch;
- against allow/deny galleries built from folders of photos;
- across the corpus: a cap of clips per identity (greedy clustering) and near-duplicate clips
  (the same footage whole, or a stretch of it: operators/overlap.py).

The corpus-wide decisions are greedy: the clips already in the corpus enter the ledger first, then
new clips are decided in a canonical order (longest first, then the larger and sharper face, then
the key: `corpus_decisions.decision_order`), so a resumed run decides as an uninterrupted one and
added inputs are held to the clips already kept.
"""
from __future__ import annotations

import logging
import operator
from functools import reduce
from pathlib import Path

import numpy as np

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import FaceAnalyzer, l2_normalise
from portraitflow.models.face.images import load_image
from portraitflow.operators.filters import DUPLICATE, IDENTITY_OVER_CAP, PARTIAL_DUPLICATE
from portraitflow.operators.overlap import (QUERY_HOP_FRAMES, OverlapRule, SharedFootage, kept_hop_frames,
                                            mirrored_signature, shared_footage, window_signatures)
from portraitflow.operators.paths import IMAGE_SUFFIXES

log = logging.getLogger(__name__)


def switch_index(samples: np.ndarray, threshold: float) -> int | None:
    """Where the identity of time-ordered sample embeddings first changes.

    Samples are one person when each is linked to the others through pairs at or above
    `threshold` (single linkage): a frame looking away scores low against some samples but still
    matches others (0.56-0.74 on the shared media), while a different person matches none (at
    most 0.43); requiring every pair to agree rejected whole clips of one person for one frame.

    None: all samples are one person. k > 0: sample k is the first not linked to sample 0's
    person; the caller cuts there and judges each side again on its own, so one person, another
    and the first again come out as three parts (the whole clip was rejected, a second of someone
    else costing both sides of it).
    """
    samples = l2_normalise(samples)
    sims = samples @ samples.T
    if len(samples) < 2 or _weakest_link(sims) >= threshold:
        return None
    linked = np.zeros(len(samples), bool)  # sample 0's person: every sample linked to it, however far
    linked[0] = True
    while True:
        grown = linked | (sims[linked] >= threshold).any(axis=0)
        if (grown == linked).all():
            return int(np.flatnonzero(~linked)[0])
        linked = grown


def identity_link(samples: np.ndarray) -> float:
    """The similarity at which sample embeddings become one person by single linkage (`switch_index`):
    a clip's `identity_link` measure, which says how near its threshold a clip came."""
    samples = l2_normalise(samples)
    return _weakest_link(samples @ samples.T)


def _weakest_link(sims: np.ndarray) -> float:
    """The weakest pair a maximum spanning tree of the similarity matrix needs (1 for one sample):
    every sample joins the others through pairs at least this similar, and no higher bar does."""
    joined = np.zeros(len(sims), bool)
    joined[0] = True
    best, weakest = sims[0].copy(), 1.0
    for _ in range(len(sims) - 1):
        nearest = int(np.argmax(np.where(joined, -np.inf, best)))
        weakest, joined[nearest] = min(weakest, float(best[nearest])), True
        best = np.maximum(best, sims[nearest])
    return weakest


def gallery_photos(folder: str) -> list[Path]:
    """The photos of a gallery folder: every `IMAGE_SUFFIXES` file below it, sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_gallery(analyzer: FaceAnalyzer, folder: str | None, warn_skipped: bool = False) -> np.ndarray:
    """(N, D) embeddings of the largest face of each photo in `folder`. Photos that cannot be read
    or show no face are skipped, named in a warning with `warn_skipped` (the driver's check: a deny
    list silently missing a person would let them through)."""
    if not folder:
        return np.zeros((0, analyzer.embedding_dim), np.float32)
    embeddings, skipped = [], []
    for photo in gallery_photos(folder):
        image = load_image(photo)
        faces = analyzer.detect([image.rgb])[0] if image.ok else []
        if faces:
            embeddings.append(analyzer.embed([image.rgb], faces[:1])[0])
        else:
            skipped.append(f"{photo.name} ({image.reason or 'no face'})")
    if not embeddings:
        raise ValueError(f"no face found in any photo of {folder}")
    if skipped and warn_skipped:
        log.warning("%s: %d photo(s) left out of the gallery: %s", folder, len(skipped), ", ".join(skipped[:10]))
    return np.stack(embeddings)


def matches_gallery(embeddings: np.ndarray, gallery: np.ndarray, threshold: float) -> bool:
    """Whether an embedding (D,), or any of several (N, D), is a gallery's person: a clip is denied
    when any of its samples shows a denied person, not only when their mean does."""
    return bool(len(gallery)) and float((gallery @ l2_normalise(embeddings).T).max()) >= threshold


class _Rows:
    """A matrix that grows by rows, doubling its storage: appending stays cheap at any corpus size,
    and a comparison against every row so far is one matrix product."""

    def __init__(self, dtype: type = np.float32) -> None:
        self._data: np.ndarray | None = None
        self.dtype = dtype
        self.count = 0

    def view(self) -> np.ndarray:
        """The rows so far (call it once one is appended)."""
        return self._data[:self.count]

    def append(self, row: np.ndarray) -> int:
        self.extend(row[None])
        return self.count - 1

    def extend(self, rows: np.ndarray) -> None:
        if self._data is None:
            self._data = np.empty((max(4, len(rows)), rows.shape[1]), self.dtype)
        while self.count + len(rows) > len(self._data):
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._data[self.count:self.count + len(rows)] = rows
        self.count += len(rows)

    def __setitem__(self, index: int, row: np.ndarray) -> None:
        self._data[index] = row


class _KeptFootage:
    """A cluster's kept clips as windows of their thumbnails (`overlap.window_signatures`, every
    KEPT_HOP_SECONDS): the signatures in one growing matrix, and where each row is from (the clip's
    number, the window's start frame, the clip's length in frames)."""

    def __init__(self) -> None:
        self.signatures = _Rows()
        self.places = _Rows(np.int64)
        self.clips = 0

    def add(self, thumbnails: np.ndarray, fps: float) -> None:
        starts, signatures = window_signatures(thumbnails, fps, kept_hop_frames(fps))
        if len(starts):
            self.signatures.extend(signatures)
            self.places.extend(np.stack([np.full_like(starts, self.clips), starts,
                                         np.full_like(starts, len(thumbnails))], axis=1))
        self.clips += 1

    def shared_footage(self, thumbnails: np.ndarray, rule: OverlapRule) -> SharedFootage | None:
        """The footage a new clip shares with these clips; None where either side has no window to
        compare (a clip shorter than a window, kept clips from before thumbnails)."""
        if not self.signatures.count:
            return None
        starts, signatures = window_signatures(thumbnails, rule.fps, QUERY_HOP_FRAMES)
        if not len(starts):
            return None
        return shared_footage(starts, signatures, len(thumbnails), self.signatures.view(), self.places.view(),
                              rule.fps, rule.window_similarity)


class CorpusLedger:
    """Kept clips so far: identity clusters (for the cap), and appearance signatures and windows of
    thumbnails (duplicates: the same footage whole, or a stretch of it)."""

    def __init__(self, same_person: float, max_per_identity: int, duplicate_similarity: float,
                 overlap: OverlapRule | None = None) -> None:
        self.same_person = same_person
        self.max_per_identity = max_per_identity
        self.duplicate_similarity = duplicate_similarity
        self.overlap = overlap or OverlapRule.from_config(CurateConfig())  # None: the default settings
        self._centroids = _Rows()
        self._counts: list[int] = []
        self._signatures: list[_Rows] = []  # per cluster, its kept clips' signatures
        self._footage: list[_KeptFootage] = []  # per cluster, its kept clips' windows

    def _clusters(self, embedding: np.ndarray) -> list[int]:
        """The clusters whose centroid is this person's, nearest first: greedy clustering may split
        one person (a first clip at an odd pose starts its own cluster), and their footage is theirs."""
        if not self._centroids.count:
            return []
        sims = self._centroids.view() @ embedding
        matching = np.flatnonzero(sims >= self.same_person)  # few of many: sorted alone
        return matching[np.argsort(-sims[matching], kind="stable")].tolist()

    def decide(self, embedding: np.ndarray, signature: np.ndarray | None, thumbnails: np.ndarray | None = None,
               measures: dict[str, float] | None = None) -> str | None:
        """The reject reason of a new clip against those kept so far, or None to keep it.

        `measures` (the clip's), when given, gets what the duplicate checks found among the kept
        clips of its identity, so its row shows how near it came: `duplicate_similarity` (the
        closest signature) and, with `thumbnails`, `overlap_s` and `overlap_share` (the clip's
        footage found in any of them, `SharedFootage`); a measure with nothing to compare against
        is left out. With `overlap.mirrored`, the clip's mirror image is compared too (a flipped
        re-upload): `duplicate_similarity` is the larger of the two views', and the footage found
        in either view counts together.
        """
        clusters = self._clusters(l2_normalise(embedding))
        if not clusters:
            return None
        similarity = shared = None
        kept = [self._signatures[c] for c in clusters if self._signatures[c].count]
        if kept and signature is not None:
            signatures = [signature, *([mirrored_signature(signature, thumbnails.shape[2])]
                                       if thumbnails is not None and self.overlap.mirrored else [])]
            similarity = max(float((rows.view() @ l2_normalise(s)).max()) for rows in kept for s in signatures)
        if thumbnails is not None:
            views = [thumbnails, *([np.flip(thumbnails, axis=2)] if self.overlap.mirrored else [])]
            found = [f for c in clusters for f in (self._footage[c].shared_footage(v, self.overlap) for v in views)
                     if f is not None]
            shared = reduce(operator.or_, found) if found else None  # of every cluster and view: a piece kept in one, the rest in another
        if measures is not None:
            if similarity is not None:
                measures["duplicate_similarity"] = similarity
            if shared is not None:
                measures.update(overlap_s=shared.frames / self.overlap.fps, overlap_share=shared.share)
        if similarity is not None and similarity >= self.duplicate_similarity:
            return DUPLICATE
        if shared is not None and self.overlap.is_duplicate(shared):
            return PARTIAL_DUPLICATE
        if self.max_per_identity and self._counts[clusters[0]] >= self.max_per_identity:
            return IDENTITY_OVER_CAP
        return None

    def keep(self, embedding: np.ndarray, signature: np.ndarray | None, thumbnails: np.ndarray | None = None) -> None:
        """Add a kept clip; one without a signature or thumbnails (a sample older than them) counts
        towards its identity's cap but matches no duplicate of the kind it lacks."""
        embedding = l2_normalise(embedding)
        cluster = next(iter(self._clusters(embedding)), None)  # the nearest
        if cluster is None:
            cluster = self._centroids.append(embedding)
            self._counts.append(0)
            self._signatures.append(_Rows())
            self._footage.append(_KeptFootage())
        count = self._counts[cluster]
        self._centroids[cluster] = l2_normalise(self._centroids.view()[cluster] * count + embedding)
        self._counts[cluster] = count + 1
        if signature is not None:
            self._signatures[cluster].append(l2_normalise(signature))
        if thumbnails is not None:
            self._footage[cluster].add(thumbnails, self.overlap.fps)
