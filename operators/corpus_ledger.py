"""The kept clips a corpus's decisions compare each new clip with: identity clusters (for the cap
per identity) and the clips' footage (near-duplicates: the same footage whole, or a stretch of it,
operators/overlap.py).

The rows of the kept clips (embedding, whole-clip signature, footage windows: about 69 kB for a
10-s clip) are appended to files and read back through a memory map, not held by the process:
held, they bounded an output folder to about 50,000 inputs on a 128-GB head node
(docs/capacity.md), and only the rows of the new clip's identity are ever read. `save` writes
which clip each row is and the clusters beside them, so the next run reopens the ledger as this
one left it, less the clips the shards do not hold, instead of computing every committed clip's
windows again from its scan (56.5 s and 2.3 GB for 20,000 clips).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

import numpy as np

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import l2_normalise
from portraitflow.operators import overlap as footage
from portraitflow.operators.atomic import atomic_target
from portraitflow.operators.filters import DUPLICATE, IDENTITY_OVER_CAP, PARTIAL_DUPLICATE
from portraitflow.operators.overlap import (QUERY_HOP_FRAMES, OverlapRule, SharedFootage, footage_signal,
                                            kept_hop_frames, mirrored_signature, shared_footage, window_signatures)

log = logging.getLogger(__name__)

#: bumped when what the saved files hold changes meaning; a ledger of another version is made again
LEDGER_VERSION = 1
TABLE_NAME = "ledger.npz"
#: the row files, `{name}-{ledger id}.bin`: a kept clip's embedding and signature, and its footage
#: windows
ROW_FILES = ("embeddings", "signatures", "windows")
#: a kept clip's columns in the table: its cluster, its rows (a signature row of -1: it has none;
#: windows lo..hi), its length in frames (recorded, read by no decision since 2026-11-28, when a
#: kept clip's own share found in a new one stopped counting; kept so saved ledgers stay readable)
CLUSTER, EMBEDDING, SIGNATURE, WINDOWS_LO, WINDOWS_HI, FRAMES = range(6)


def _footage_geometry() -> dict[str, float]:
    """What the saved signatures and windows mean, in code: a release that changes it makes the
    ledger again rather than compare old rows with new ones."""
    return {name: getattr(footage, name) for name in ("SIGNATURE_SIDE", "SIGNATURE_STEPS", "SIGNATURE_SMOOTH_FRAMES",
                                                      "WINDOW_SECONDS", "WINDOW_STEPS", "WINDOW_POOL", "KEPT_HOP_SECONDS")}


class Decision(NamedTuple):
    """A clip's corpus decision: its reject reason (None: kept), the sample key of the kept clip
    that decided it (the one it repeats, or its identity's first for `identity_over_cap`), so a
    curator can look at what it was judged against, and which of its frames were found in kept
    clips (None where footage was not compared; the rest of a `partial_duplicate` is its own)."""

    reason: str | None
    matched: str | None
    covered: np.ndarray | None = None


class _Rows:
    """A matrix in RAM that grows by rows, doubling its storage: appending stays cheap at any corpus
    size, and a comparison with every row so far is one matrix product."""

    def __init__(self, dtype: type = np.float32, rows: np.ndarray | None = None) -> None:
        self._data = rows if rows is not None and len(rows) else None
        self.dtype = dtype
        self.count = 0 if self._data is None else len(rows)

    def view(self) -> np.ndarray:
        """The rows so far (call it once one is appended)."""
        return self._data[:self.count]

    def append(self, row: np.ndarray) -> int:
        if self._data is None:
            self._data = np.empty((4, len(row)), self.dtype)
        if self.count == len(self._data):
            self._data = np.concatenate([self._data, np.empty_like(self._data)])
        self._data[self.count] = row
        self.count += 1
        return self.count - 1

    def __setitem__(self, index: int, row: np.ndarray) -> None:
        self._data[index] = row


class _RowFile:
    """float32 rows of one width appended to a file and read back through a read-only memory map:
    the page cache, not the process, holds what is read often. The file grows, sparse, to twice what
    it holds, so the map stays valid for the appends that fit. Without a path, an unnamed temporary
    file (a ledger that is never saved)."""

    dtype = np.dtype(np.float32)

    def __init__(self, path: Path | None, width: int = 0, count: int = 0) -> None:
        self._file = tempfile.TemporaryFile() if path is None else open(path, "r+b" if count else "w+b")  # noqa: SIM115
        self.width, self.count = width, count
        self._map: np.memmap | None = None

    def append(self, rows: np.ndarray) -> int:
        """Write `rows` (n, width) after the others; returns the first one's number."""
        rows = np.ascontiguousarray(rows, self.dtype)
        if not self.width:
            self.width = rows.shape[1]
        if rows.shape[1] != self.width:
            raise ValueError(f"rows of {rows.shape[1]} values appended to a file of rows of {self.width}")
        first, fd = self.count, self._file.fileno()
        at, data = first * self._row_bytes, memoryview(rows.tobytes())
        size = os.fstat(fd).st_size
        if size < at + len(data):
            os.ftruncate(fd, max(at + len(data), 2 * size))
        while data:  # a write may stop short (a full disk frees up): a hole of zeros would pass for rows
            written = os.pwrite(fd, data, at)
            if not written:
                raise OSError(f"nothing written to the corpus ledger's {self._file.name}")
            data, at = data[written:], at + written
        self.count += len(rows)
        return first

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows numbered `rows`, in that order (a view of the map where they are consecutive)."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((0, self.width), self.dtype)
        if self._map is None or len(self._map) < self.count:
            self._map = np.memmap(self._file, self.dtype, "r",
                                  shape=(os.fstat(self._file.fileno()).st_size // self._row_bytes, self.width))
        if rows[-1] - rows[0] + 1 == len(rows) and (np.diff(rows) == 1).all():
            return self._map[rows[0]:rows[-1] + 1]
        return self._map[rows]

    @property
    def _row_bytes(self) -> int:
        return self.width * self.dtype.itemsize

    def holds_its_rows(self) -> bool:
        """Whether the file is long enough for the rows it counts (a saved table over files cut short)."""
        return os.fstat(self._file.fileno()).st_size >= self.count * self._row_bytes

    def sync(self) -> None:
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._map = None
        self._file.close()


class CorpusLedger:
    """Kept clips so far: identity clusters (for the cap), and appearance signatures and windows of
    thumbnails (duplicates: the same footage whole, or a stretch of it).

    A new ledger is empty; with `folder`, its row files go there under a new id, and the table and
    files saved there before stay until `save` replaces them (a run stopped before leaves the last
    saved ledger whole). `reopen` takes a saved one back (`saved`: its table's meta).
    """

    def __init__(self, same_person: float, max_per_identity: int, duplicate_similarity: float,
                 overlap: OverlapRule | None = None, folder: Path | None = None, saved: dict | None = None) -> None:
        self.same_person = same_person
        self.max_per_identity = max_per_identity
        self.duplicate_similarity = duplicate_similarity
        self.overlap = overlap or OverlapRule.from_config(CurateConfig())  # None: the default settings
        self.folder = folder
        self.id = saved["id"] if saved else uuid.uuid4().hex[:16]
        self.keys: list[str] = []  # the kept clips' sample keys, in the order they were kept
        self._clips = _Rows(np.int64)  # a row of the CLUSTER...FRAMES columns per kept clip
        self._centroids = _Rows()
        self._counts: list[int] = []
        self._members: list[list[int]] = []  # per cluster, its clips' numbers in the order they were kept
        self._signal_of: tuple[np.ndarray, np.ndarray] | None = None  # see `_signal`
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, _RowFile] = {}
        try:
            for name in ROW_FILES:
                self._rows[name] = _RowFile(folder and folder / f"{name}-{self.id}.bin",
                                            *(saved["rows"][name] if saved else (0, 0)))
        except BaseException:
            self.close()
            raise

    @classmethod
    def reopen(cls, folder: Path, committed: Collection[str], same_person: float, max_per_identity: int,
               duplicate_similarity: float, overlap: OverlapRule) -> CorpusLedger:
        """The ledger a run saved in `folder`, less its clips not `committed` (not in the shards: a
        render failed, a run was stopped before packing, a damaged shard was cut), as if they had
        never been kept (its table saved again then: `_restore`); a new, empty one when none was
        saved or none of its clips is committed, or (said in the log) when it was made with other
        settings or footage geometry, or is damaged."""
        def anew(why: str | None) -> CorpusLedger:
            if why:
                log.warning("%s: the corpus ledger is made again from the scans of the clips in the shards: %s",
                            folder, why)
            return cls(same_person, max_per_identity, duplicate_similarity, overlap, folder)

        try:
            with np.load(folder / TABLE_NAME, allow_pickle=False) as saved:
                table = {name: saved[name] for name in saved.files}
            meta = json.loads(str(table["meta"]))
        except FileNotFoundError:
            return anew(None)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            return anew(f"its table cannot be read ({exc})")
        expected = cls._meta_for(same_person, overlap)
        changed = [name for name, value in expected.items() if meta.get(name) != value]
        if changed:
            return anew(f"it was made with another {', '.join(changed)}")
        try:
            ledger = cls(same_person, max_per_identity, duplicate_similarity, overlap, folder, saved=meta)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            return anew(f"its row files cannot be opened ({exc})")
        if not all(rows.holds_its_rows() for rows in ledger._rows.values()):
            ledger.close()
            return anew("its row files are shorter than its table says")
        keys = table["keys"].tobytes().decode().split("\n") if len(table["keys"]) else []
        kept = np.array([key in committed for key in keys], bool)
        if keys and not kept.any():  # a run stopped before it packed anything: its settings may change since
            ledger.close()
            return anew(None)
        ledger._restore(keys, table, kept)
        return ledger

    def _restore(self, keys: list[str], table: dict[str, np.ndarray], kept: np.ndarray) -> None:
        """Take back the saved clips that are `kept`, as the ledger would be had it never kept the others.

        Clips kept before the first one left out never met it: they stay in their clusters. From it
        on, each clip is clustered again as `keep` clusters it (a clip that joined two people's
        clips into one cluster may be the one left out). The rows of left-out clips after the last
        clip kept are written over by the next appends, so the table is saved again at once."""
        clips = table["clips"][kept]
        self.keys = [key for key, keep in zip(keys, kept) if keep]
        if kept.all():
            self._clips = _Rows(np.int64, clips)
            self._centroids = _Rows(np.float32, table["centroids"])
            self._counts = table["counts"].tolist()
            self._members = [[] for _ in self._counts]
            for number, cluster in enumerate(clips[:, CLUSTER].tolist()):
                self._members[cluster].append(number)
            return
        first_left_out = int(np.argmin(kept))
        self._clips = _Rows(np.int64)
        embeddings = self._rows["embeddings"]
        for number, clip in enumerate(clips):  # each embedding from the map, not all of them copied at once
            embedding = embeddings.take(clip[EMBEDDING:EMBEDDING + 1])[0]
            clip[CLUSTER] = self._join(embedding, int(clip[CLUSTER]) if number < first_left_out else None)
            self._members[clip[CLUSTER]].append(self._clips.append(clip))
        ends = {"embeddings": clips[:, EMBEDDING] + 1, "signatures": clips[:, SIGNATURE] + 1,
                "windows": clips[:, WINDOWS_HI]}
        for name, rows in self._rows.items():
            rows.count = int(ends[name].max(initial=0))
        self.save()

    @staticmethod
    def _meta_for(same_person: float, overlap: OverlapRule) -> dict:
        """What the saved rows and clusters depend on: the clustering threshold, the frame rate and
        the footage geometry."""
        return {"version": LEDGER_VERSION, "same_person": same_person, "fps": overlap.fps,
                "geometry": _footage_geometry()}

    def save(self) -> None:
        """Make the row files durable, then write the table that says what they hold (atomically:
        a run stopped before reopens the previous table, whose rows are still there), then delete
        the row files of any other ledger the folder held."""
        if self.folder is None:
            raise ValueError("a ledger without a folder cannot be saved")
        for rows in self._rows.values():
            rows.sync()
        meta = self._meta_for(self.same_person, self.overlap) | {
            "id": self.id, "rows": {name: [rows.width, rows.count] for name, rows in self._rows.items()}}
        with atomic_target(self.folder / TABLE_NAME) as tmp, open(tmp, "wb") as out:
            np.savez(out, meta=np.array(json.dumps(meta)),
                     keys=np.frombuffer("\n".join(self.keys).encode(), np.uint8),
                     clips=self._clips.view() if self.keys else np.zeros((0, FRAMES + 1), np.int64),
                     centroids=self._centroids.view() if self._counts else np.zeros((0, 0), np.float32),
                     counts=np.array(self._counts, np.int64))
        for other in self.folder.glob("*.bin"):
            if not other.name.endswith(f"-{self.id}.bin"):
                other.unlink(missing_ok=True)

    def close(self) -> None:
        for rows in self._rows.values():
            rows.close()

    def _clusters(self, embedding: np.ndarray) -> list[int]:
        """The clusters whose centroid is this person's, nearest first: greedy clustering may split
        one person (a first clip at an odd pose starts its own cluster), and their footage is theirs."""
        if not self._centroids.count:
            return []
        sims = self._centroids.view() @ embedding
        matching = np.flatnonzero(sims >= self.same_person)  # few of many: sorted alone
        return matching[np.argsort(-sims[matching], kind="stable")].tolist()

    def _join(self, embedding: np.ndarray, cluster: int | None = None) -> int:
        """Count a kept clip's unit embedding (float32) in `cluster` (None: its person's nearest, or
        a new one) and move that centroid towards it; returns the cluster."""
        if cluster is None:
            cluster = next(iter(self._clusters(embedding)), len(self._counts))
        if cluster == len(self._counts):
            self._centroids.append(embedding)
            self._counts.append(0)
            self._members.append([])
        count = self._counts[cluster]
        self._centroids[cluster] = l2_normalise(self._centroids.view()[cluster] * count + embedding)
        self._counts[cluster] = count + 1
        return cluster

    def decide(self, embedding: np.ndarray, signature: np.ndarray | None, thumbnails: np.ndarray | None = None,
               measures: dict[str, float] | None = None, exclude: Collection[str] = ()) -> Decision:
        """The reject reason of a new clip against those kept so far (None to keep it), and the kept
        clip it matched: the one it repeats (most of), or its identity's first for the cap.

        `measures` (the clip's), when given, gets what the duplicate checks found among the kept
        clips of its identity, so its row shows how near it came: `duplicate_similarity` (the
        closest signature) and, with `thumbnails`, `overlap_s` and `overlap_share` (the clip's
        footage found in any of them, `SharedFootage`); a measure with nothing to compare against
        is left out. With `overlap.mirrored`, the clip's mirror image is compared too (a flipped
        re-upload): `duplicate_similarity` is the larger of the two views', and the footage found
        in either view counts together. The kept clips of keys in `exclude` count neither as
        footage nor towards the cap (a clip's own cuts, kept before it was decided again).
        """
        clusters = self._clusters(l2_normalise(embedding))
        numbers = np.array([number for c in clusters for number in self._members[c]
                            if not exclude or self.keys[number] not in exclude], np.int64)
        if not len(numbers):
            return Decision(None, None)
        clips = self._clips.view()[numbers]
        similarity = shared = closest = None
        with_signature = np.flatnonzero(clips[:, SIGNATURE] >= 0)
        if len(with_signature) and signature is not None:
            kept = self._rows["signatures"].take(clips[with_signature, SIGNATURE])
            signatures = [signature, *([mirrored_signature(signature, thumbnails.shape[2])]
                                       if thumbnails is not None and self.overlap.mirrored else [])]
            scores = np.max([kept @ l2_normalise(s) for s in signatures], axis=0)
            similarity, closest = float(scores.max()), int(numbers[with_signature[scores.argmax()]])
        kept_windows = self._kept_windows(clips) if thumbnails is not None else None
        if kept_windows is not None:
            signal = self._signal(thumbnails)
            views = [signal, *([signal[:, :, ::-1]] if self.overlap.mirrored else [])]
            found = [f for v in views if (f := self._shared_footage(v, *kept_windows)) is not None]
            shared = found[0] | found[1] if len(found) == 2 else next(iter(found), None)
        if measures is not None:
            if similarity is not None:
                measures["duplicate_similarity"] = similarity
            if shared is not None:
                measures.update(overlap_s=shared.frames / self.overlap.fps, overlap_share=shared.share)
        covered = None if shared is None else shared.covered
        if similarity is not None and similarity >= self.duplicate_similarity:
            return Decision(DUPLICATE, self.keys[closest], covered)
        if shared is not None and self.overlap.is_duplicate(shared):
            return Decision(PARTIAL_DUPLICATE, self.keys[numbers[shared.most_matched]], covered)
        if self.max_per_identity:  # a capped cluster holds few clips: counted one by one
            counted = [n for n in self._members[clusters[0]] if self.keys[n] not in exclude]
            if len(counted) >= self.max_per_identity:
                return Decision(IDENTITY_OVER_CAP, self.keys[counted[0]], covered)
        return Decision(None, None, covered)

    def _kept_windows(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The footage windows of these kept `clips` (of every cluster of the person together: a
        piece kept in one, the rest in another) and which of `clips` each is from; None when they
        have none (kept clips from before thumbnails)."""
        lengths = clips[:, WINDOWS_HI] - clips[:, WINDOWS_LO]
        if not lengths.sum():
            return None
        first_of_clip = np.repeat(clips[:, WINDOWS_LO] - np.cumsum(lengths) + lengths, lengths)
        rows = first_of_clip + np.arange(lengths.sum())  # each clip's windows, consecutive, in time order
        return self._rows["windows"].take(rows), np.repeat(np.arange(len(clips)), lengths)

    def _shared_footage(self, signal: np.ndarray, kept: np.ndarray, kept_clips: np.ndarray) -> SharedFootage | None:
        """The footage a new clip (its `footage_signal`) shares with the kept windows; None when it is
        shorter than a window."""
        starts, signatures = window_signatures(signal, self.overlap.fps, QUERY_HOP_FRAMES)
        if not len(starts):
            return None
        return shared_footage(starts, signatures, len(signal), kept, kept_clips, self.overlap.fps,
                              self.overlap.window_similarity)

    def _signal(self, thumbnails: np.ndarray) -> np.ndarray:
        """The clip's `footage_signal`, computed once for a `decide` and the `keep` of the same clip
        that follows it: it was 60% of the decisions' time, computed three times. The thumbnails it
        was computed from are kept and compared (a tenth of the computation), so other thumbnails,
        or the same array filled again, are never given another clip's signal."""
        if self._signal_of is None or not np.array_equal(self._signal_of[0], thumbnails):
            self._signal_of = (thumbnails.copy(), footage_signal(thumbnails))
        return self._signal_of[1]

    def keep(self, key: str, embedding: np.ndarray, signature: np.ndarray | None,
             thumbnails: np.ndarray | None = None) -> None:
        """Add the kept clip `key`; one without a signature or thumbnails (a sample older than them)
        counts towards its identity's cap but matches no duplicate of the kind it lacks."""
        if "\n" in key:
            raise ValueError(f"a sample key holds a line break: {key!r}")
        embedding = l2_normalise(embedding).astype(np.float32)  # as the row file gives it back to `_restore`
        cluster = self._join(embedding)
        signature_row = -1 if signature is None else self._rows["signatures"].append(l2_normalise(signature)[None])
        lo = hi = self._rows["windows"].count
        if thumbnails is not None:
            starts, windows = window_signatures(self._signal(thumbnails), self.overlap.fps,
                                                kept_hop_frames(self.overlap.fps))
            if len(starts):
                lo = self._rows["windows"].append(windows)
                hi = lo + len(starts)
        frames = 0 if thumbnails is None else len(thumbnails)
        self._members[cluster].append(self._clips.append(np.array(
            [cluster, self._rows["embeddings"].append(embedding[None]), signature_row, lo, hi, frames])))
        self.keys.append(key)
