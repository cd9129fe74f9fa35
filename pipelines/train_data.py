"""Curated WebDataset shards -> HunyuanPortrait-style training batches.

PyTorch path: `TrainLoader` (a DataLoader per epoch over a `webdataset` pipeline, ranks and
workers on disjoint shards). Ray path: `ray_train_dataset` (`read_webdataset` -> samples) for
trainers on Ray Train, batched with `iter_torch_batches(collate_fn=RayCollate())`.
Both skip and count what cannot be trained on; every sample is built by `build_train_sample`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import ray
import webdataset as wds
from ray.data.collate_fn import NumpyBatchCollateFn

from portraitflow.jobs.config.train_data import TrainDataConfig
from portraitflow.operators.shard_source import SKIP_REASONS, SkipCounter, expand_shards
from portraitflow.operators.train_sample import SampleSkipped, build_train_sample, collate_samples

log = logging.getLogger(__name__)


def webdataset_pipeline(cfg: TrainDataConfig, skips: SkipCounter, epoch: int = 0) -> wds.WebDataset:
    """The per-rank sample pipeline: shards split by node then worker, shuffled, decoded, batched."""
    seed = None if cfg.seed is None else wds.utils.make_seed(cfg.seed, epoch)
    dataset = wds.WebDataset(
        expand_shards(cfg.shards), resampled=cfg.resampled, shardshuffle=False if cfg.resampled else cfg.shard_shuffle,
        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, handler=skips.handler,
        seed=seed, empty_check=False,
    )
    build = partial(build_train_sample, n_frames=cfg.n_frames, seed=cfg.seed, epoch=epoch, pixel_dtype=cfg.pixel_dtype)
    return (dataset.shuffle(cfg.shuffle_buffer, seed=seed)
            .map(build, handler=skips.handler)
            .batched(cfg.batch_size, collation_fn=collate_samples, partial=not cfg.drop_last))


class TrainLoader:
    """Iterate once per epoch; `skipped` counts what every worker skipped so far, by reason.

    Ranks (RANK / WORLD_SIZE or torch.distributed) and workers read disjoint shards, so ranks
    get equal work only with at least world_size x num_workers shards of similar size; for DDP
    prefer `resampled`, where every rank runs exactly `samples_per_epoch` samples.
    """

    def __init__(self, cfg: TrainDataConfig, epoch: int = 0) -> None:
        self.cfg, self.epoch, self.skips = cfg, epoch, SkipCounter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        loader = wds.WebLoader(webdataset_pipeline(cfg, self.skips, self.epoch), batch_size=None,
                               num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
                               prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None)
        if cfg.resampled:
            loader = loader.with_epoch(nbatches=-(-cfg.samples_per_epoch // cfg.batch_size))
        self.epoch += 1
        yield from loader
        if self.skipped:
            log.warning("training loader, epoch %d: skipped so far %s", self.epoch - 1, self.skipped)

    @property
    def skipped(self) -> dict[str, int]:
        return self.skips.counts()


def ray_train_dataset(cfg: TrainDataConfig, epoch: int = 0) -> tuple[ray.data.Dataset, Any]:
    """(dataset of training samples, tally actor): `ray.get(tally.counts.remote())` gives the
    skipped samples by reason. Members are read as raw bytes (no decoder, so nothing is unpickled);
    Ray Train's `get_dataset_shard` splits it across ranks, `iter_torch_batches(
    local_shuffle_buffer_size=...)` shuffles samples. Shards that break mid-read drop their block
    (logged by Ray, up to `ray_max_errored_blocks`), not the run."""
    tally = SkipTally.remote()
    dataset = ray.data.read_webdataset(expand_shards(cfg.shards), decoder=None,
                                       shuffle="files" if cfg.seed is None else None)
    build = partial(build_train_sample, n_frames=cfg.n_frames, seed=cfg.seed, epoch=epoch, pixel_dtype=cfg.pixel_dtype)
    dataset = dataset.flat_map(partial(_samples_or_skip, build=build, tally=tally))
    dataset.context.max_errored_blocks = cfg.ray_max_errored_blocks
    return dataset, tally


def _samples_or_skip(row: dict[str, Any], build, tally) -> list[dict[str, Any]]:
    try:
        return [build(row)]
    except SampleSkipped as exc:
        tally.add.remote(exc.reason)
        return []


class RayCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=RayCollate())`: the PyTorch path's batch layout (tensors for
    every field, the keys as a list of str)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        return {name: [str(key) for key in values] if name == "key" else torch.from_numpy(np.require(values, requirements="W"))
                for name, values in batch.items()}


@ray.remote(num_cpus=0)
class SkipTally:
    """Skips of the Ray path per reason, gathered from every read task."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(SKIP_REASONS, 0)

    def add(self, reason: str) -> None:
        self._counts[reason if reason in self._counts else "other"] += 1

    def counts(self) -> dict[str, int]:
        return {reason: n for reason, n in self._counts.items() if n}
