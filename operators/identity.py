"""Identity decisions on L2-normalised face embeddings.

- within a clip: do sampled frames show one person, and if not, where does it switch;
- against allow/deny galleries built from folders of photos;
- across the corpus: a cap of clips per identity and near-duplicate clips, against the clips kept
  so far (operators/corpus_ledger.py, decided by operators/corpus_decisions.py).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from portraitflow.models.face.base import FaceAnalyzer, l2_normalise
from portraitflow.models.face.images import load_image
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
    photos = gallery_photos(folder)
    if not photos:  # a wrong mount or a gallery not synced yet, not faces unseen
        raise ValueError(f"{folder} holds no photo ({', '.join(sorted(IMAGE_SUFFIXES))})")
    for photo in photos:
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
