"""Curated WebDataset shards -> HunyuanPortrait-style training batches.

PyTorch path: `TrainLoader` (a DataLoader per epoch over a `webdataset` pipeline, ranks and
workers on disjoint shards). Ray path: `ray_train_dataset` (`read_webdataset` -> samples) for
trainers on Ray Train, batched with `iter_torch_batches(collate_fn=RayCollate())`.
Both skip and count what cannot be trained on; every sample is built by `build_train_sample`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import numpy as np
import ray
import webdataset as wds
from ray.data.collate_fn import NumpyBatchCollateFn

from portraitflow.jobs.config.train_data import TrainDataConfig
from portraitflow.operators.shard_source import SKIP_REASONS, SkipCounter, UsableShardsCheck, expand_shards
from portraitflow.operators.train_sample import SampleSkipped, build_train_sample, collate_samples

log = logging.getLogger(__name__)


def sample_builder(cfg: TrainDataConfig, epoch: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """`build_train_sample` with the config's settings, as both paths run it."""
    return partial(build_train_sample, n_frames=cfg.n_frames, seed=cfg.seed, epoch=epoch, pixel_dtype=cfg.pixel_dtype,
                   resolution=cfg.resolution, smooth_sigma=cfg.smooth_sigma, identity_dim=cfg.identity_dim)


def webdataset_pipeline(cfg: TrainDataConfig, urls: list[str], skips: SkipCounter, epoch: int = 0) -> wds.WebDataset:
    """The per-rank sample pipeline: shards split by node then worker, shuffled, decoded, batched.

    A worker or rank without shards yields nothing (no `empty_check`); `TrainLoader` raises when
    the whole pass yields nothing, and a resampled stream ends once its draws find nothing usable."""
    seed = None if cfg.seed is None else wds.utils.make_seed(cfg.seed, epoch)
    build = sample_builder(cfg, epoch)
    dataset = wds.WebDataset(
        urls, resampled=cfg.resampled, shardshuffle=False if cfg.resampled else cfg.shard_shuffle,
        nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, handler=skips.handler,
        seed=seed, empty_check=False,
    )
    if cfg.resampled:
        build = UsableShardsCheck(build, skips, len(urls), cfg.shuffle_buffer)
        opener = next(i for i, stage in enumerate(dataset.pipeline) if isinstance(stage, wds.cache.StreamingOpen))
        dataset.pipeline.insert(opener, build.count_draws)  # each URL the shard list yields is one draw
    return (dataset.shuffle(cfg.shuffle_buffer, seed=seed)
            .map(build, handler=skips.handler)
            .batched(cfg.batch_size, collation_fn=collate_samples, partial=not cfg.drop_last))


class TrainLoader:
    """Iterate once per epoch; `skipped` counts what every worker skipped so far, by reason.

    Ranks (RANK / WORLD_SIZE or torch.distributed) and workers read disjoint shards, so ranks
    get equal work only with at least world_size x num_workers shards of similar size; for DDP
    prefer `resampled`, where every rank runs exactly `samples_per_epoch` samples per pass: full
    batches, then one holding the remainder (dropped with `drop_last`, which then rounds down).

    Local shards that do not exist raise FileNotFoundError here, when the loader is built; a
    shard that breaks while read is skipped and counted (`shard_unreadable`), and a pass that
    yields no sample at all (or a resampled pass whose draws find none) raises RuntimeError with
    the skip counts.
    """

    def __init__(self, cfg: TrainDataConfig, epoch: int = 0) -> None:
        if cfg.resampled and cfg.drop_last and cfg.samples_per_epoch < cfg.batch_size:
            raise ValueError(f"train_data.drop_last with samples_per_epoch={cfg.samples_per_epoch} < "
                             f"batch_size={cfg.batch_size} would drop every sample of a resampled epoch")
        self.cfg, self.epoch, self.skips = cfg, epoch, SkipCounter()
        self.urls = expand_shards(cfg.shards)
        _, world_size, _, _ = wds.utils.pytorch_worker_info()
        if not cfg.resampled and len(self.urls) < world_size:
            raise ValueError(f"training loader: {len(self.urls)} shard(s) for {world_size} ranks: ranks read whole "
                             "shards, so some would get none; set train_data.resampled, or curate with a smaller "
                             "curate.shard_max_samples")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        loader = wds.WebLoader(webdataset_pipeline(cfg, self.urls, self.skips, self.epoch), batch_size=None,
                               num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
                               prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None)
        epoch, self.epoch = self.epoch, self.epoch + 1
        batches = loader
        if cfg.resampled:
            samples = cfg.samples_per_epoch - (cfg.samples_per_epoch % cfg.batch_size if cfg.drop_last else 0)
            batches = _first_samples(loader, samples)
        delivered = 0
        for batch in batches:
            delivered += len(batch["key"])
            yield batch
        if not delivered:
            rank, world_size, _, _ = wds.utils.pytorch_worker_info()
            on_rank = f" on rank {rank} of {world_size}" if world_size > 1 else ""
            raise RuntimeError(f"training loader, epoch {epoch}: no samples{on_rank} from {len(self.urls)} shard(s), "
                               f"e.g. {self.urls[0]}; skipped so far {self.skipped}")
        if self.skipped:
            log.warning("training loader, epoch %d: skipped so far %s", epoch, self.skipped)

    @property
    def skipped(self) -> dict[str, int]:
        return self.skips.counts()


def _first_samples(batches: Iterable[dict[str, Any]], count: int) -> Iterator[dict[str, Any]]:
    """The first `count` samples of a stream of batches, the last batch cut to the remainder."""
    for batch in batches:
        size = len(batch["key"])
        if size >= count:
            yield batch if size == count else {name: values[:count] for name, values in batch.items()}
            return
        yield batch
        count -= size


def ray_train_dataset(cfg: TrainDataConfig, epoch: int = 0) -> tuple[ray.data.Dataset, Any]:
    """(dataset of training samples, tally actor): `ray.get(tally.counts.remote())` gives the
    skipped samples by reason. Members are read as raw bytes (no decoder, so nothing is unpickled);
    Ray Train's `get_dataset_shard` splits it across ranks, `iter_torch_batches(
    local_shuffle_buffer_size=...)` shuffles samples. Shards that break mid-read drop their block
    (logged by Ray, up to `ray_max_errored_blocks`), not the run."""
    tally = SkipTally.remote()
    dataset = ray.data.read_webdataset(expand_shards(cfg.shards), decoder=None,
                                       shuffle="files" if cfg.seed is None else None)
    build = sample_builder(cfg, epoch)
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
