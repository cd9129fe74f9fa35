"""Curated WebDataset shards -> HunyuanPortrait-style training batches, two ways (README, Train):

    TrainLoader:       DataLoader over ShardBatches (per worker) -> booked_batches (resumable)
    ray_train_dataset: shard URLs -> shard_samples (a task per shard); batch it with
                       iter_torch_batches(collate_fn=RayCollate())

The stages live in operators/shard_batches.py, operators/train_progress.py and
operators/ray_train_samples.py; both paths skip and count what cannot be trained on.
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import ray
import torch.utils.data
import webdataset as wds

from portraitflow.jobs.config.train_data import TrainDataConfig
from portraitflow.operators.ray_train_samples import SkipTally, check_trainable, shard_samples
from portraitflow.operators.sample_order import epoch_shard_order
from portraitflow.operators.shard_batches import ShardBatches
from portraitflow.operators.shard_source import SkipCounter, expand_shards
from portraitflow.operators.train_progress import (EpochProgress, RankLayout, booked_batches, pass_samples,
                                                   resumed_progress, stream_settings)
from portraitflow.operators.train_sample import sample_builder

log = logging.getLogger(__name__)
#: retries of a Ray shard task whose worker process dies (Ray Data's default is forever), after which the epoch fails
SHARD_TASK_RETRIES = 3


class TrainLoader:
    """Iterate once per epoch; `skipped` counts what every worker skipped so far, by reason.

    Ranks (RANK / WORLD_SIZE or torch.distributed) and workers read disjoint shards; `resampled`
    gives every rank exactly `samples_per_epoch` samples per pass (prefer it for DDP).
    `state_dict()` / `load_state_dict()` resume a pass mid-epoch under the same shards, seed, world
    size, rank, worker count and order settings; under other ones the epoch restarts, with a
    warning. Missing local shards raise FileNotFoundError here, a pass without a sample RuntimeError.
    """

    def __init__(self, cfg: TrainDataConfig, epoch: int = 0) -> None:
        if cfg.resampled and cfg.drop_last and cfg.samples_per_epoch < cfg.batch_size:
            raise ValueError(f"train_data.drop_last with samples_per_epoch={cfg.samples_per_epoch} < "
                             f"batch_size={cfg.batch_size} would drop every sample of a resampled epoch")
        self.cfg, self.epoch, self.skips = cfg, epoch, SkipCounter()
        self.urls = expand_shards(cfg.shards)
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        if not cfg.resampled and len(self.urls) < world_size:
            raise ValueError(f"training loader: {len(self.urls)} shard(s) for {world_size} ranks: ranks read whole "
                             "shards, so some would get none; set train_data.resampled, or curate with a smaller "
                             "curate.shard_max_samples")
        on_rank = len(range(rank, len(self.urls), world_size))
        if not cfg.resampled and on_rank < cfg.num_workers:
            log.warning("training loader: rank %d reads %d shard(s) with num_workers=%d, so %d worker(s) read "
                        "nothing (workers read whole shards); set train_data.resampled, fewer workers, or curate "
                        "with a smaller curate.shard_max_samples", rank, on_rank, cfg.num_workers,
                        cfg.num_workers - on_rank)
        seed = secrets.randbits(63) if cfg.seed is None else cfg.seed
        self.layout = RankLayout(seed, rank, world_size, max(1, cfg.num_workers))
        self._progress: EpochProgress | None = None  # the pass under way, or left unfinished
        self._resume: EpochProgress | None = None  # loaded by load_state_dict, for the next pass

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        progress, self._resume = self._resume or EpochProgress.start(self.epoch, self.layout.num_workers), None
        self._progress, self.epoch = progress, progress.epoch + 1
        loader = torch.utils.data.DataLoader(
            ShardBatches(cfg, self.urls, self.skips, progress, self.layout), batch_size=None,
            num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None)
        yield from booked_batches(loader, progress, pass_samples(cfg), self.layout.num_workers)
        if not progress.samples_seen:
            rank, world_size = self.layout.rank, self.layout.world_size
            on_rank = f" on rank {rank} of {world_size}" if world_size > 1 else ""
            dropped = (f"; drop_last drops each worker's last incomplete batch of {cfg.batch_size}, which may have "
                       "been every sample it read" if cfg.drop_last else "")
            raise RuntimeError(f"training loader, epoch {progress.epoch}: no samples{on_rank} from {len(self.urls)} "
                               f"shard(s), e.g. {self.urls[0]}; skipped so far {self.skipped}{dropped}")
        self._progress = None
        if self.skipped:
            log.warning("training loader, epoch %d: skipped so far %s", progress.epoch, self.skipped)

    def state_dict(self) -> dict[str, Any]:
        """Where this rank's loader stands (the epoch under way, or the next one between passes), in
        ints and strings: save it with the trainer's checkpoint, per rank."""
        progress = self._resume or self._progress or EpochProgress.start(self.epoch, self.layout.num_workers)
        return progress.state_dict(stream_settings(self.cfg, self.urls, self.layout))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next pass go on from `state` (see the class docstring for what must match)."""
        if self.cfg.seed is None:  # an unseeded run's order was drawn: take the saved draw
            self.layout = replace(self.layout, seed=int(state["streams"]["seed"]))
        progress, changed = resumed_progress(state, self.cfg, self.urls, self.layout)
        if changed:
            log.warning("training loader: state saved with other %s; epoch %d restarts from its first sample%s",
                        ", ".join(changed), progress.epoch,
                        ", its remaining samples drawn afresh" if self.cfg.resampled else "")
        self.epoch, self._resume, self._progress = progress.epoch, progress, None

    @property
    def skipped(self) -> dict[str, int]:
        return self.skips.counts()


def ray_train_dataset(cfg: TrainDataConfig, epoch: int = 0) -> tuple[ray.data.Dataset, Any]:
    """(dataset of one epoch's training samples, tally actor): `ray.get(tally.counts.remote())` gives
    the skipped samples by reason. Ray Train's `get_dataset_shard` splits it across ranks,
    `iter_torch_batches(local_shuffle_buffer_size=...)` shuffles samples. With `shard_shuffle` the
    tasks take the shards in the PyTorch path's permutation of (seed, epoch) (unseeded, a fresh
    seed); Ray runs many at once, which interleaves shards. Not resumable mid-epoch. RuntimeError
    when no sample of the shards can be trained on (`check_trainable`)."""
    if cfg.resampled:
        raise ValueError("train_data.resampled is for TrainLoader: the Ray path reads every shard once per epoch")
    urls = expand_shards(cfg.shards)
    if cfg.shard_shuffle:
        urls = epoch_shard_order(urls, secrets.randbits(63) if cfg.seed is None else cfg.seed, epoch)
    build = sample_builder(cfg, epoch)
    check_trainable(urls, build)
    tally = SkipTally.remote()
    shards = ray.data.from_items([{"url": url} for url in urls], override_num_blocks=len(urls))
    # a task whose worker dies (a sample crashing the decoder's process) is retried a bounded number of times
    dataset = shards.map_batches(shard_samples, batch_size=1, fn_kwargs={"build": build, "tally": tally},
                                 max_retries=SHARD_TASK_RETRIES)
    return dataset, tally
