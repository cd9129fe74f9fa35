"""Where one rank's training pass stands, so that a restarted loader goes on mid-epoch.

The loader books every batch its DataLoader workers yield (`booked_batches`), saves that in ints
and strings with the trainer's checkpoint (`EpochProgress.state_dict`), and takes a saved state
back only where the sample streams are the same (`stream_settings`, `resumed_progress`): under
other ones a saved position means nothing, so the epoch restarts.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

from portraitflow.jobs.config.train_data import TrainDataConfig


@dataclass(frozen=True)
class RankLayout:
    """What fixes a rank's sample streams besides the epoch and the config's order settings."""

    seed: int
    rank: int
    world_size: int
    num_workers: int


@dataclass
class EpochProgress:
    """Where one rank's pass of an epoch stands: the samples it yielded, each worker's position in
    its raw sample stream just after its last yielded batch (what lies before was yielded or
    skipped as bad data), and the worker whose batch comes next in the DataLoader's round robin."""

    epoch: int
    samples_seen: int
    positions: list[int]
    next_worker: int = 0

    @classmethod
    def start(cls, epoch: int, num_workers: int) -> EpochProgress:
        return cls(epoch, 0, [0] * num_workers)

    def state_dict(self, streams: dict[str, Any]) -> dict[str, Any]:
        """This progress and the `streams` it holds for (`stream_settings`), in ints and strings."""
        return {"epoch": self.epoch, "samples_seen": self.samples_seen, "worker_positions": list(self.positions),
                "next_worker": self.next_worker, "streams": streams}


def stream_settings(cfg: TrainDataConfig, urls: list[str], layout: RankLayout) -> dict[str, Any]:
    """What fixes every worker's sample stream besides the epoch."""
    digest = zlib.crc32("\n".join(urls).encode())
    return {**asdict(layout), "shards": f"{len(urls)}:{digest:08x}", "resampled": cfg.resampled,
            "shard_shuffle": cfg.shard_shuffle, "interleaved_shards": cfg.interleaved_shards,
            "shuffle_buffer": cfg.shuffle_buffer}


def resumed_progress(state: dict[str, Any], cfg: TrainDataConfig, urls: list[str],
                     layout: RankLayout) -> tuple[EpochProgress, list[str]]:
    """(the progress to go on from, the stream settings that changed since `state` was saved). With
    changes, the saved epoch starts again from its first sample; a resampled one keeps its count
    of samples yielded, so only the remaining ones are drawn."""
    progress = EpochProgress(int(state["epoch"]), int(state["samples_seen"]),
                             [int(p) for p in state["worker_positions"]], int(state["next_worker"]))
    current = stream_settings(cfg, urls, layout)
    changed = sorted(name for name, value in current.items() if state["streams"].get(name) != value)
    if changed:
        kept = progress.samples_seen if cfg.resampled else 0
        progress = replace(EpochProgress.start(progress.epoch, layout.num_workers), samples_seen=kept)
    return progress, changed


def pass_samples(cfg: TrainDataConfig) -> int | None:
    """Samples per rank in one pass: resampled, `samples_per_epoch` (`drop_last` rounds it down to
    whole batches); otherwise None, every shard once."""
    if not cfg.resampled:
        return None
    return cfg.samples_per_epoch - (cfg.samples_per_epoch % cfg.batch_size if cfg.drop_last else 0)


def booked_batches(batches: Iterable[dict[str, Any]], progress: EpochProgress, target: int | None,
                   num_workers: int) -> Iterator[dict[str, Any]]:
    """The workers' batches (`ShardBatches`) without their bookkeeping entries, each booked in
    `progress` as it is yielded; with a `target`, the pass stops at that many samples, cutting the
    batch that crosses it, and reads no batch past it (its positions would be booked unyielded)."""
    batches = iter(batches)
    while target is None or progress.samples_seen < target:
        batch = next(batches, None)
        if batch is None:
            return
        worker = batch.pop("__worker__")
        progress.positions[worker] = batch.pop("__position__")
        if "key" not in batch:  # a resumed worker's place in the round robin
            continue
        if target is not None and progress.samples_seen + len(batch["key"]) > target:
            batch = {name: values[:target - progress.samples_seen] for name, values in batch.items()}
        progress.samples_seen += len(batch["key"])
        progress.next_worker = (worker + 1) % num_workers
        yield batch
