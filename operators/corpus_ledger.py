"""The kept clips a corpus's decisions compare each new clip with: identity clusters (for the cap
per identity) and the clips' footage (near-duplicates: the same footage whole, or a stretch of it,
operators/overlap.py).

The rows of the kept clips (embedding, whole-clip signature, footage windows: about 66 kB for a
10-s clip) are appended to files, not held in RAM: held, they bounded an output folder to about
50,000 inputs on a 128-GB head node (docs/capacity.md), and only the rows of the new clip's
identity are ever read. `save` writes which clip each row is and the clusters beside them, so the
next run reopens the ledger as this one left it, less the clips the shards do not hold, instead of
computing every committed clip's windows again from its scan (56.5 s and 2.3 GB for 20,000 clips).
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Collection
from pathlib import Path

import numpy as np

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.models.face.base import l2_normalise
from portraitflow.operators.atomic import atomic_write
from portraitflow.operators.filters import DUPLICATE, IDENTITY_OVER_CAP, PARTIAL_DUPLICATE
from portraitflow.operators.overlap import (QUERY_HOP_FRAMES, OverlapRule, SharedFootage, kept_hop_frames,
                                            mirrored_signature, shared_footage, window_signatures, window_starts)

#: bumped when what the saved files hold changes meaning; a ledger of another version is rebuilt
LEDGER_VERSION = 1
TABLE_NAME = "ledger.npz"
#: the row files: a kept clip's embedding and signature, and its footage windows (whose start frames
#: follow from its length: `overlap.window_starts`)
ROW_FILES = ("embeddings", "signatures", "windows")
#: a kept clip's columns in the table: its cluster, its rows (a signature row of -1: it has none;
#: windows lo..hi), its length in frames
CLUSTER, EMBEDDING, SIGNATURE, WINDOWS_LO, WINDOWS_HI, FRAMES = range(6)


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
    """float32 rows of one width appended to a file and read back by number: the page cache, not
    the process, holds what is read often. Without a path, an unnamed temporary file (a ledger that
    is never saved)."""

    dtype = np.dtype(np.float32)

    def __init__(self, path: Path | None, width: int = 0, count: int = 0) -> None:
        self._file = tempfile.TemporaryFile() if path is None else open(path, "r+b" if count else "w+b")  # noqa: SIM115
        self.width, self.count = width, count

    def append(self, rows: np.ndarray) -> int:
        """Write `rows` (n, width) after the others; returns the first one's number."""
        rows = np.ascontiguousarray(rows, self.dtype)
        if not self.width:
            self.width = rows.shape[1]
        if rows.shape[1] != self.width:
            raise ValueError(f"rows of {rows.shape[1]} values appended to a file of rows of {self.width}")
        first = self.count
        os.pwrite(self._file.fileno(), rows.tobytes(), first * self._row_bytes)
        self.count += len(rows)
        return first

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows numbered `rows`, in that order: one read for each run of consecutive numbers."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((0, self.width), self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        parts = [np.frombuffer(os.pread(self._file.fileno(), len(run) * self._row_bytes, int(run[0]) * self._row_bytes),
                               self.dtype) for run in np.split(rows, breaks)]
        return np.concatenate(parts).reshape(len(rows), self.width)

    @property
    def _row_bytes(self) -> int:
        return self.width * self.dtype.itemsize

    def holds_its_rows(self) -> bool:
        """Whether the file is long enough for the rows it counts (a saved table over files cut short)."""
        return os.fstat(self._file.fileno()).st_size >= self.count * self._row_bytes

    def sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


class CorpusLedger:
    """Kept clips so far: identity clusters (for the cap), and appearance signatures and windows of
    thumbnails (duplicates: the same footage whole, or a stretch of it).

    `folder`: where its row files go and `save` writes its table; without one, temporary files.
    A new ledger in a folder starts empty, replacing what the folder held; `reopen` takes it back
    (`saved`: the row files' widths and counts its table gives).
    """

    def __init__(self, same_person: float, max_per_identity: int, duplicate_similarity: float,
                 overlap: OverlapRule | None = None, folder: Path | None = None,
                 saved: dict[str, list[int]] | None = None) -> None:
        self.same_person = same_person
        self.max_per_identity = max_per_identity
        self.duplicate_similarity = duplicate_similarity
        self.overlap = overlap or OverlapRule.from_config(CurateConfig())  # None: the default settings
        self.folder = folder
        self.keys: list[str] = []  # the kept clips' sample keys, in the order they were kept
        self._clips = _Rows(np.int64)  # a row of the CLUSTER...FRAMES columns per kept clip
        self._centroids = _Rows()
        self._counts: list[int] = []
        self._members: list[list[int]] = []  # per cluster, its clips' numbers in the order they were kept
        if folder is not None and saved is None:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / TABLE_NAME).unlink(missing_ok=True)  # its row files are about to be replaced
        self._rows = {name: _RowFile(folder and folder / f"{name}.bin", *(saved or {}).get(name, (0, 0)))
                      for name in ROW_FILES}

    @classmethod
    def reopen(cls, folder: Path, committed: Collection[str], same_person: float, max_per_identity: int,
               duplicate_similarity: float, overlap: OverlapRule) -> CorpusLedger:
        """The ledger a run saved in `folder`, less its clips not `committed` (not in the shards: a
        render failed, a run was stopped before packing, a damaged shard was cut); empty when none
        was saved or it was made with other settings.

        Left out, the clips' identities stay as they were clustered, each centroid made again from
        the clips it keeps (a cluster keeping none is dropped): no clip is compared anew."""
        try:
            with np.load(folder / TABLE_NAME, allow_pickle=False) as saved:
                table = {name: saved[name] for name in saved.files}
            meta = json.loads(str(table["meta"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # none saved, or cut short
            return cls(same_person, max_per_identity, duplicate_similarity, overlap, folder)
        if meta != cls._meta_for(same_person, overlap) | {"rows": meta.get("rows")}:
            return cls(same_person, max_per_identity, duplicate_similarity, overlap, folder)
        try:
            ledger = cls(same_person, max_per_identity, duplicate_similarity, overlap, folder, saved=meta["rows"])
        except (OSError, KeyError, TypeError, ValueError):  # a row file gone, or the table's rows unlike any
            return cls(same_person, max_per_identity, duplicate_similarity, overlap, folder)
        if not all(rows.holds_its_rows() for rows in ledger._rows.values()):
            ledger.close()
            return cls(same_person, max_per_identity, duplicate_similarity, overlap, folder)
        keys = table["keys"].tobytes().decode().split("\n") if len(table["keys"]) else []
        kept = np.array([key in committed for key in keys], bool)
        ledger._restore(keys, table["clips"], table["centroids"], table["counts"], kept)
        return ledger

    def _restore(self, keys: list[str], clips: np.ndarray, centroids: np.ndarray, counts: np.ndarray,
                 kept: np.ndarray) -> None:
        """Take the saved clips that are `kept`; their clusters' centroids made again where some are not."""
        clips = clips[kept]
        self.keys = [key for key, keep in zip(keys, kept) if keep]
        if not kept.all():
            used, clips[:, CLUSTER] = np.unique(clips[:, CLUSTER], return_inverse=True)
            centroids, counts = np.zeros((len(used), centroids.shape[1]), np.float32), np.zeros(len(used), np.int64)
            embeddings = self._rows["embeddings"].take(clips[:, EMBEDDING])
            for cluster, embedding in zip(clips[:, CLUSTER], embeddings):  # as `keep` made them, in the same order
                centroids[cluster] = l2_normalise(centroids[cluster] * counts[cluster] + embedding)
                counts[cluster] += 1
        self._clips = _Rows(np.int64, clips.copy())
        self._centroids = _Rows(np.float32, centroids.copy())
        self._counts = counts.tolist()
        self._members = [[] for _ in self._counts]
        for number, cluster in enumerate(clips[:, CLUSTER].tolist()):
            self._members[cluster].append(number)

    @staticmethod
    def _meta_for(same_person: float, overlap: OverlapRule) -> dict:
        """What the saved rows and clusters depend on: the clustering threshold and the windows' spacing."""
        return {"version": LEDGER_VERSION, "same_person": same_person, "fps": overlap.fps,
                "kept_hop_frames": kept_hop_frames(overlap.fps)}

    def save(self) -> None:
        """Make the row files durable, then write the table that says what they hold (atomically:
        a run stopped before it reopens the previous table, whose rows are still there)."""
        if self.folder is None:
            raise ValueError("a ledger without a folder cannot be saved")
        for rows in self._rows.values():
            rows.sync()
        buffer = io.BytesIO()
        meta = self._meta_for(self.same_person, self.overlap) | {
            "rows": {name: [rows.width, rows.count] for name, rows in self._rows.items()}}
        np.savez(buffer, meta=np.array(json.dumps(meta)),
                 keys=np.frombuffer("\n".join(self.keys).encode(), np.uint8),
                 clips=self._clips.view() if self.keys else np.zeros((0, FRAMES + 1), np.int64),
                 centroids=self._centroids.view() if self._counts else np.zeros((0, 0), np.float32),
                 counts=np.array(self._counts, np.int64))
        atomic_write(self.folder / TABLE_NAME, buffer.getvalue())

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
        clips = self._clips.view()[[number for c in clusters for number in self._members[c]]]
        similarity = shared = None
        signature_rows = clips[:, SIGNATURE][clips[:, SIGNATURE] >= 0]
        if len(signature_rows) and signature is not None:
            kept = self._rows["signatures"].take(signature_rows)
            signatures = [signature, *([mirrored_signature(signature, thumbnails.shape[2])]
                                       if thumbnails is not None and self.overlap.mirrored else [])]
            similarity = max(float((kept @ l2_normalise(s)).max()) for s in signatures)
        if thumbnails is not None:
            views = [thumbnails, *([np.flip(thumbnails, axis=2)] if self.overlap.mirrored else [])]
            found = [f for v in views if (f := self._shared_footage(clips, v)) is not None]
            shared = found[0] | found[1] if len(found) == 2 else next(iter(found), None)
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

    def _shared_footage(self, clips: np.ndarray, thumbnails: np.ndarray) -> SharedFootage | None:
        """The footage a new clip shares with these kept `clips` (of every cluster of its person
        together: a piece kept in one, the rest in another); None where either side has no window
        to compare (a clip shorter than a window, kept clips from before thumbnails)."""
        lengths = clips[:, WINDOWS_HI] - clips[:, WINDOWS_LO]
        if not lengths.sum():
            return None
        starts, signatures = window_signatures(thumbnails, self.overlap.fps, QUERY_HOP_FRAMES)
        if not len(starts):
            return None
        first_of_clip = np.repeat(clips[:, WINDOWS_LO] - np.cumsum(lengths) + lengths, lengths)
        rows = first_of_clip + np.arange(lengths.sum())  # each clip's windows, consecutive, in time order
        hop = kept_hop_frames(self.overlap.fps)
        places = np.stack([np.repeat(np.arange(len(clips)), lengths),
                           np.concatenate([window_starts(frames, self.overlap.fps, hop) for frames in clips[:, FRAMES]]),
                           np.repeat(clips[:, FRAMES], lengths)], axis=1)
        return shared_footage(starts, signatures, len(thumbnails), self._rows["windows"].take(rows), places,
                              self.overlap.fps, self.overlap.window_similarity)

    def keep(self, key: str, embedding: np.ndarray, signature: np.ndarray | None,
             thumbnails: np.ndarray | None = None) -> None:
        """Add the kept clip `key`; one without a signature or thumbnails (a sample older than them)
        counts towards its identity's cap but matches no duplicate of the kind it lacks."""
        embedding = l2_normalise(embedding)
        cluster = next(iter(self._clusters(embedding)), None)  # the nearest
        if cluster is None:
            cluster = self._centroids.append(embedding)
            self._counts.append(0)
            self._members.append([])
        count = self._counts[cluster]
        self._centroids[cluster] = l2_normalise(self._centroids.view()[cluster] * count + embedding)
        self._counts[cluster] = count + 1
        signature_row = -1 if signature is None else self._rows["signatures"].append(l2_normalise(signature)[None])
        lo = hi = self._rows["windows"].count
        if thumbnails is not None:
            starts, windows = window_signatures(thumbnails, self.overlap.fps, kept_hop_frames(self.overlap.fps))
            if len(starts):
                lo = self._rows["windows"].append(windows)
                hi = lo + len(starts)
        frames = 0 if thumbnails is None else len(thumbnails)
        self._members[cluster].append(self._clips.append(np.array(
            [cluster, self._rows["embeddings"].append(embedding[None]), signature_row, lo, hi, frames])))
        self.keys.append(key)
