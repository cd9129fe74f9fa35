"""One rank's batches of one epoch on the PyTorch path: each DataLoader worker reads its own shards
in the order `operators.sample_order` fixes, builds samples (`sample_builder`) and batches them.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch.utils.data

from portraitflow.jobs.config.train_data import TrainDataConfig
from portraitflow.operators.sample_order import (buffer_shuffle, interleaved_samples, resampled_shards, stream_rng,
                                                 worker_shards)
from portraitflow.operators.shard_source import SkipCounter, UsableShardsCheck, read_shard
from portraitflow.operators.train_progress import EpochProgress, RankLayout
from portraitflow.operators.train_sample import collate_samples, sample_builder


class ShardBatches(torch.utils.data.IterableDataset):
    """One rank's batches of one epoch, built and batched in each DataLoader worker from its own
    shards. Each batch carries `__worker__` and `__position__` (that worker's next stream position)
    for `booked_batches`. A pass starting from `progress` skips earlier positions without decoding
    them, and workers before `progress.next_worker` first yield an empty batch, so the round robin
    over workers goes on in the interrupted pass's order."""

    def __init__(self, cfg: TrainDataConfig, urls: list[str], skips: SkipCounter, progress: EpochProgress,
                 layout: RankLayout) -> None:
        super().__init__()
        self.cfg, self.urls, self.skips, self.layout = cfg, urls, skips, layout
        self.progress = replace(progress, positions=list(progress.positions))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg, layout, epoch = self.cfg, self.layout, self.progress.epoch
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        start = self.progress.positions[worker]
        build = sample_builder(cfg, epoch)
        if cfg.resampled:  # a worker's draws stop once they are plainly unusable (`UsableShardsCheck`)
            check = UsableShardsCheck(build, self.skips, len(self.urls), cfg.shuffle_buffer + cfg.interleaved_shards,
                                      usable=start > 0)
            draws = stream_rng(layout.seed, epoch, layout.rank, worker, "shard_draws")
            build, shards = check, check.count_draws(resampled_shards(self.urls, draws))
        else:
            shards = worker_shards(self.urls, epoch=epoch, rank=layout.rank, world_size=layout.world_size,
                                   worker=worker, num_workers=num_workers, shared_seed=cfg.seed or 0,
                                   stream_seed=layout.seed, shuffle=cfg.shard_shuffle)
        samples = buffer_shuffle(interleaved_samples(shards, self._open_shard, cfg.interleaved_shards),
                                 cfg.shuffle_buffer, stream_rng(layout.seed, epoch, layout.rank, worker, "samples"))
        if worker < self.progress.next_worker:
            yield {"__worker__": worker, "__position__": start}
        built: list[dict[str, Any]] = []
        for position, sample in enumerate(samples):
            if position < start:
                continue
            if (made := self.skips.built(build, sample)) is None:
                continue
            built.append(made)
            if len(built) == cfg.batch_size:
                yield dict(collate_samples(built), __worker__=worker, __position__=position + 1)
                built = []
        if built and not cfg.drop_last:
            yield dict(collate_samples(built), __worker__=worker, __position__=position + 1)

    def _open_shard(self, url: str) -> Iterator[dict[str, Any]]:
        return read_shard(url, self.skips.handler)
