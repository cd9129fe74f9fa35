"""Footage two clips share: the same clip whole, or a stretch of one that is a stretch of the other.

The whole-clip signature (`content_signature`, its thumbnails' change over time) resamples each
clip to a fixed number of steps, so a clip holding only part of another (its first half, a re-upload trimmed at either end)
scores like other footage (0.29 on the shared media). Here a clip is described by windows of
WINDOW_SECONDS of its grey thumbnails instead: a new clip's windows every QUERY_HOP_FRAMES against
a kept clip's every KEPT_HOP_SECONDS, so whatever the offset between them some window of the new
clip starts within a frame of each kept one. Their similarities are one matrix product, and the
frames of a kept window and of its best window of the new clip, where they match, are shared
footage: counted over all kept clips together, as a re-upload of a long source trimmed by half a
piece holds the end of one kept piece and the start of the next. Clips are resampled to the
curation `fps` before (operators/decode.py), so sources at other frame rates line up frame for
frame.

Set on the shared media (at 25 fps): the windows of a 384-px crf-30 re-encode, started 37 frames
in, score 0.96-0.99 against the original's. Among 3564 pairs of 4-s and 10-s clips of 9 videos that
share no footage, no window pair reaches 0.86: the closest are other stretches of a 10-fps source,
whose repeated frames look alike; another stretch of a 25-fps shot (same speaker, same set) scores
at most 0.76, another video 0.35. At 0.9 none of those pairs shares a single window.

A mirrored re-upload shares no footage as it is (a clip against its own mirror image: windows
median 0.17, the whole-clip signature 0.09), so the ledger also compares the new clip's mirror
image. Against 2200 ordered pairs of 48 clips of 36 videos that share no footage, the mirrored
comparison reaches at most 0.67 per window and 0.19 whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import l2_normalise
from portraitflow.operators.face_tracking import interpolate_rows

#: a clip's footage fingerprint: grey thumbnails of the whole frame (SIGNATURE_SIDE squared), smoothed
#: over SIGNATURE_SMOOTH_FRAMES (sigma) so a clip cut a frame or two apart still matches, at
#: SIGNATURE_STEPS times. On the shared media a 384² crf-28 re-encode of a clip scores 0.99 against
#: it (0.95 with its start 2 frames off); another take of the same speaker, same set: 0.17.
SIGNATURE_SIDE = 16
SIGNATURE_SMOOTH_FRAMES = 2.0  # sigma in time, windows too: a frame or two off still matches
SIGNATURE_STEPS = 32
SIGNATURE_SIZE = SIGNATURE_STEPS * SIGNATURE_SIDE ** 2

WINDOW_SECONDS = 2.0
WINDOW_STEPS = 8  # frames sampled in a window, evenly spread
WINDOW_POOL = 2  # thumbnails averaged to 8x8: 512 values a window, a quarter of the ledger's memory at 16x16
QUERY_HOP_FRAMES = 2
KEPT_HOP_SECONDS = 0.5  # 17 windows for a 10-s clip: the ledger's memory per kept clip


def frame_thumbnails(frames: np.ndarray) -> np.ndarray:
    """(T, SIGNATURE_SIDE, SIGNATURE_SIDE) float32 grey thumbnails of RGB frames (T, H, W, 3)."""
    import cv2

    side = (SIGNATURE_SIDE, SIGNATURE_SIDE)
    return np.stack([cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), side, interpolation=cv2.INTER_AREA)
                     for frame in frames]).astype(np.float32)


def content_signature(thumbnails: np.ndarray, steps: int = SIGNATURE_STEPS) -> np.ndarray:
    """A unit vector of how a clip's frames change over time: its thumbnails smoothed in time,
    resampled to `steps` times, less their mean over time.

    Thumbnails average out resolution and encoding, and removing the mean leaves what moves, so the
    same footage re-encoded matches while another take of one speaker on one set does not (what
    `duplicate` must tell apart; the keypoint trajectory used before measured detector jitter).
    """
    from scipy.ndimage import gaussian_filter1d

    pixels = gaussian_filter1d(thumbnails.reshape(len(thumbnails), -1).astype(np.float64), SIGNATURE_SMOOTH_FRAMES,
                               axis=0, mode="nearest")
    resampled = interpolate_rows(np.linspace(0, len(pixels) - 1, steps), np.arange(len(pixels)), pixels)
    return l2_normalise((resampled - resampled.mean(axis=0)).reshape(-1))


def window_frames(fps: float) -> int:
    """Frames in a window at `fps`."""
    return max(WINDOW_STEPS, round(WINDOW_SECONDS * fps))


def kept_hop_frames(fps: float) -> int:
    return max(1, round(KEPT_HOP_SECONDS * fps))


def window_starts(frames: int, fps: float, hop: int) -> np.ndarray:
    """The start frames of a clip's windows every `hop` frames and one ending with the clip (none
    when the clip is shorter than a window)."""
    length = window_frames(fps)
    if frames < length:
        return np.zeros(0, np.int64)
    return np.unique(np.append(np.arange(0, frames - length + 1, hop), frames - length))


def footage_signal(thumbnails: np.ndarray) -> np.ndarray:
    """(T, h, w) float64 what a clip's windows are cut from (`window_signatures`): its thumbnails
    averaged over WINDOW_POOL-square blocks, each standardised (zero mean, unit contrast: a fade or
    a colour grade of a re-upload changes nothing) and smoothed in time.

    The mirror image's signal is `signal[:, :, ::-1]`: pooling, standardising and smoothing all
    commute with the flip, so the ledger computes one signal a clip for both views and its keep.
    """
    from scipy.ndimage import gaussian_filter1d

    count, height, width = thumbnails.shape
    side = (height // WINDOW_POOL, width // WINDOW_POOL)  # a thumbnail of odd size: its last row or column left out
    if not count:
        return np.zeros((0, *side))
    pixels = thumbnails[:, :side[0] * WINDOW_POOL, :side[1] * WINDOW_POOL].astype(np.float64)
    blocks = [pixels[:, i::WINDOW_POOL, j::WINDOW_POOL] for i in range(WINDOW_POOL) for j in range(WINDOW_POOL)]
    pooled = (sum(blocks) / len(blocks)).reshape(count, -1)  # strided sums: 5x faster than a mean over two axes
    pooled = (pooled - pooled.mean(axis=1, keepdims=True)) / np.maximum(pooled.std(axis=1, keepdims=True), 1.0)
    smoothed = gaussian_filter1d(pooled, SIGNATURE_SMOOTH_FRAMES, axis=0, mode="nearest")
    return smoothed.reshape(count, *side)


def window_signatures(signal: np.ndarray, fps: float, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """The start frames (W,) and unit signatures (W, D) float32 of a clip's windows every `hop`
    frames and one ending with the clip (none when the clip is shorter than a window), cut from its
    `footage_signal`. Within a window, the mean over time is removed, which leaves how the picture
    changes: the same footage matches, another take on the same set does not.
    """
    count = len(signal)
    length, starts = window_frames(fps), window_starts(count, fps, hop)
    if not len(starts):
        return starts, np.zeros((0, int(np.prod(signal.shape[1:])) * WINDOW_STEPS), np.float32)
    steps = np.linspace(0, length - 1, WINDOW_STEPS).round().astype(np.int64)
    windows = signal.reshape(count, -1)[starts[:, None] + steps[None, :]]
    windows = (windows - windows.mean(axis=1, keepdims=True)).reshape(len(starts), -1)
    norms = np.linalg.norm(windows, axis=1, keepdims=True)
    return starts, (windows / np.maximum(norms, 1e-12)).astype(np.float32)  # a frozen picture: zeros, matching nothing


def mirrored_signature(signature: np.ndarray, side: int) -> np.ndarray:
    """The whole-clip signature (`content_signature`) of the clip's mirror image: that
    signature works on each thumbnail pixel apart (smoothed and resampled in time), so mirroring
    the thumbnails mirrors each of its steps, and no thumbnail is needed again."""
    return signature.reshape(-1, side, side)[:, :, ::-1].reshape(signature.shape)


@dataclass(frozen=True, eq=False)
class SharedFootage:
    """The footage a clip shares with kept clips: which of its frames are in any of them, and the
    kept clip of each window that matched (their numbers in the comparison), which names the one
    it repeats most."""

    covered: np.ndarray  # bool (T,): the clip's frames in a matched window
    matched_clips: np.ndarray  # int (M,): the kept clip of each matched kept window

    @property
    def frames(self) -> int:
        """The clip's frames found in kept clips, never more than it has: pieces of several kept
        clips add up, and the same frames found twice count once."""
        return int(self.covered.sum())

    @property
    def share(self) -> float:
        """What `duplicate_overlap_share` tests: the share of the clip found in kept clips."""
        return self.frames / len(self.covered)

    @property
    def most_matched(self) -> int | None:
        """The kept clip with the most windows found in this one (the lower number on ties); None
        when none matched."""
        return int(np.bincount(self.matched_clips).argmax()) if len(self.matched_clips) else None

    def __or__(self, other: SharedFootage) -> SharedFootage:
        """Both together: what another cluster or view of the same clip found (frame for frame, as a
        mirror image keeps the clip's time)."""
        return SharedFootage(self.covered | other.covered, np.concatenate([self.matched_clips, other.matched_clips]))


def shared_footage(query_starts: np.ndarray, query_signatures: np.ndarray, query_frames: int,
                   kept_signatures: np.ndarray, kept_clips: np.ndarray, fps: float,
                   window_similarity: float) -> SharedFootage:
    """The footage the query clip shares with kept clips (both with windows).

    `kept_clips` (R,) says which kept clip each row of `kept_signatures` is a window of. Each kept
    window takes its best query window; where they match (cosine >= `window_similarity`) the frames
    of the query window are shared. The query's frames count together whatever kept clip they
    match, so a clip straddling two kept ones is found whole; a matched stretch reads up to a kept
    window step short at each end that falls inside both clips. Linear in R and T after the product.
    """
    similarity = kept_signatures @ query_signatures.T
    best = similarity.argmax(axis=1)
    matched = similarity[np.arange(len(best)), best] >= window_similarity
    return SharedFootage(_covered(query_starts[best[matched]], window_frames(fps), query_frames), kept_clips[matched])


def _covered(starts: np.ndarray, length: int, frames: int) -> np.ndarray:
    """Which of a clip's `frames` frames the windows of `length` at `starts` (inside it) hold."""
    edges = np.zeros(frames + 1, np.int64)
    np.add.at(edges, starts, 1)
    np.add.at(edges, starts + length, -1)
    return np.cumsum(edges[:-1]) > 0


def unique_stretches(covered: np.ndarray, min_frames: int, margin: int) -> list[tuple[int, int]]:
    """The stretches [first, last) of a clip's frames found in no kept clip (`covered` False),
    less `margin` frames where they border footage that was (a matched stretch reads up to a kept
    window step short at each end, `shared_footage`), at least `min_frames` long."""
    edges = np.flatnonzero(np.diff(np.concatenate([[True], covered, [True]]).astype(np.int8)))
    stretches = []
    for first, last in zip(edges[::2], edges[1::2]):
        first, last = first + (margin if first > 0 else 0), last - (margin if last < len(covered) else 0)
        if last - first >= min_frames:
            stretches.append((int(first), int(last)))
    return stretches


@dataclass(frozen=True)
class OverlapRule:
    """When shared footage makes a clip a `partial_duplicate` (the `duplicate_overlap_*` and
    `duplicate_window_similarity` settings)."""

    fps: float
    window_similarity: float
    min_share: float
    min_seconds: float  # 0: the share alone decides
    mirrored: bool = True  # a clip's mirror image is compared too (`duplicate_mirrored`)

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> OverlapRule:
        return cls(cfg.fps, cfg.duplicate_window_similarity, cfg.duplicate_overlap_share, cfg.duplicate_overlap_seconds,
                   cfg.duplicate_mirrored)

    def is_duplicate(self, shared: SharedFootage) -> bool:
        long_enough = self.min_seconds > 0 and shared.frames / self.fps >= self.min_seconds
        return shared.frames > 0 and (shared.share >= self.min_share or long_enough)
