"""Curated WebDataset shards -> HunyuanPortrait-style training batches.

PyTorch path: `TrainLoader` (a DataLoader per epoch over `ShardBatches`: ranks and workers on
disjoint shards, each worker interleaving several shards through a shuffle buffer so a batch mixes
sources; resumable mid-epoch with `state_dict` / `load_state_dict`). Ray path: `ray_train_dataset`
(a task per shard -> samples) for trainers on Ray Train, batched with
`iter_torch_batches(collate_fn=RayCollate())`.
Both skip and count what cannot be trained on; every sample is built by `build_train_sample`.
"""
from __future__ import annotations

import logging
import secrets
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import ray
import torch.utils.data
import webdataset as wds
from ray.data.collate_fn import NumpyBatchCollateFn

from portraitflow.jobs.config.train_data import TrainDataConfig
from portraitflow.operators.sample_order import epoch_shard_order
from portraitflow.operators.shard_source import SKIP_REASONS, SkipCounter, expand_shards
from portraitflow.pipelines.train_batches import EpochProgress, RankLayout, ShardBatches, sample_builder

log = logging.getLogger(__name__)


class TrainLoader:
    """Iterate once per epoch; `skipped` counts what every worker skipped so far, by reason.

    Ranks (RANK / WORLD_SIZE or torch.distributed) and workers read disjoint shards, so ranks
    get equal work only with at least world_size x num_workers shards of similar size; for DDP
    prefer `resampled`, where every rank runs exactly `samples_per_epoch` samples per pass: full
    batches, then one holding the remainder (dropped with `drop_last`, which then rounds down).

    `state_dict()` / `load_state_dict()` resume a pass mid-epoch: the restarted loader's next pass
    yields exactly the batches the interrupted one had not yielded, in its order, given the same
    shards, seed, world size, rank, worker count and order settings (an unseeded loader's drawn
    seed is in the state). Under other ones the saved positions mean nothing: the epoch restarts
    from its first sample (resampled: its remaining count is drawn afresh), with a warning.

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
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        if not cfg.resampled and len(self.urls) < world_size:
            raise ValueError(f"training loader: {len(self.urls)} shard(s) for {world_size} ranks: ranks read whole "
                             "shards, so some would get none; set train_data.resampled, or curate with a smaller "
                             "curate.shard_max_samples")
        seed = secrets.randbits(63) if cfg.seed is None else cfg.seed
        self.layout = RankLayout(seed, rank, world_size, max(1, cfg.num_workers))
        self._progress: EpochProgress | None = None  # the pass under way, or left unfinished
        self._resume: EpochProgress | None = None  # loaded by load_state_dict, for the next pass

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        progress, self._resume = self._resume or self._start(self.epoch), None
        self._progress, self.epoch = progress, progress.epoch + 1
        loader = torch.utils.data.DataLoader(
            ShardBatches(cfg, self.urls, self.skips, progress, self.layout), batch_size=None,
            num_workers=cfg.num_workers, pin_memory=cfg.pin_memory,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None)
        target = self._resampled_pass_samples() if cfg.resampled else None
        batches = iter(loader)
        while target is None or progress.samples_seen < target:
            batch = next(batches, None)
            if batch is None:
                break
            worker = batch.pop("__worker__")
            progress.positions[worker] = batch.pop("__position__")
            if "key" not in batch:  # a resumed worker's place in the round robin
                continue
            if target is not None and progress.samples_seen + len(batch["key"]) > target:
                batch = {name: values[:target - progress.samples_seen] for name, values in batch.items()}
            progress.samples_seen += len(batch["key"])
            progress.next_worker = (worker + 1) % self.layout.num_workers
            yield batch
        if not progress.samples_seen:
            rank, world_size = self.layout.rank, self.layout.world_size
            on_rank = f" on rank {rank} of {world_size}" if world_size > 1 else ""
            raise RuntimeError(f"training loader, epoch {progress.epoch}: no samples{on_rank} from {len(self.urls)} "
                               f"shard(s), e.g. {self.urls[0]}; skipped so far {self.skipped}")
        self._progress = None
        if self.skipped:
            log.warning("training loader, epoch %d: skipped so far %s", progress.epoch, self.skipped)

    def _resampled_pass_samples(self) -> int:
        """Samples per rank in one resampled pass (`drop_last` rounds down to whole batches)."""
        cfg = self.cfg
        return cfg.samples_per_epoch - (cfg.samples_per_epoch % cfg.batch_size if cfg.drop_last else 0)

    def state_dict(self) -> dict[str, Any]:
        """Where this rank's loader stands, in ints and strings (save it with the trainer's checkpoint,
        per rank; `torch.load(weights_only=True)` reads it back): the epoch under way, or the next
        one between passes, the samples it yielded, each worker's stream position, and what fixes
        the streams."""
        progress = self._resume or self._progress or self._start(self.epoch)
        return {"epoch": progress.epoch, "samples_seen": progress.samples_seen,
                "worker_positions": list(progress.positions), "next_worker": progress.next_worker,
                "streams": self._streams()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next pass go on from `state` (see the class docstring for what must match)."""
        saved = state["streams"]
        if self.cfg.seed is None:  # an unseeded run's order was drawn: take the saved draw
            self.layout = replace(self.layout, seed=int(saved["seed"]))
        progress = EpochProgress(int(state["epoch"]), int(state["samples_seen"]),
                                 [int(p) for p in state["worker_positions"]], int(state["next_worker"]))
        changed = sorted(name for name, value in self._streams().items() if saved.get(name) != value)
        if changed:
            log.warning("training loader: state saved with other %s; epoch %d restarts from its first sample%s",
                        ", ".join(changed), progress.epoch,
                        ", its remaining samples drawn afresh" if self.cfg.resampled else "")
            kept = progress.samples_seen if self.cfg.resampled else 0
            progress = replace(self._start(progress.epoch), samples_seen=kept)
        self.epoch, self._resume, self._progress = progress.epoch, progress, None

    def _start(self, epoch: int) -> EpochProgress:
        return EpochProgress(epoch, 0, [0] * self.layout.num_workers)

    def _streams(self) -> dict[str, Any]:
        """What fixes every worker's sample stream besides the epoch: a saved position means nothing
        under other values."""
        cfg, digest = self.cfg, zlib.crc32("\n".join(self.urls).encode())
        return {**asdict(self.layout), "shards": f"{len(self.urls)}:{digest:08x}",
                "resampled": cfg.resampled, "shard_shuffle": cfg.shard_shuffle,
                "interleaved_shards": cfg.interleaved_shards, "shuffle_buffer": cfg.shuffle_buffer}

    @property
    def skipped(self) -> dict[str, int]:
        return self.skips.counts()


def ray_train_dataset(cfg: TrainDataConfig, epoch: int = 0) -> tuple[ray.data.Dataset, Any]:
    """(dataset of one epoch's training samples, tally actor): `ray.get(tally.counts.remote())` gives
    the skipped samples by reason. Ray Train's `get_dataset_shard` splits it across ranks,
    `iter_torch_batches(local_shuffle_buffer_size=...)` shuffles samples.

    One task per shard reads it as the PyTorch path's workers do (webdataset's tar reader, members
    as raw bytes, so nothing is unpickled; `SkipCounter` semantics): bad data and a shard that
    breaks are skipped and counted, the samples before the break kept, while anything else (a
    bug) fails the epoch instead of silently emptying the tasks it hit. With `shard_shuffle`, the
    tasks take the shards in the epoch's permutation (seeded by (seed, epoch), as the PyTorch path's;
    unseeded, a fresh seed); Ray runs many at once, which interleaves shards. An epoch is not
    resumable midway (Ray Train restarts it from its checkpoint's epoch)."""
    if cfg.resampled:
        raise ValueError("train_data.resampled is for TrainLoader: the Ray path reads every shard once per epoch")
    urls = expand_shards(cfg.shards)
    if cfg.shard_shuffle:
        urls = epoch_shard_order(urls, secrets.randbits(63) if cfg.seed is None else cfg.seed, epoch)
    tally = SkipTally.remote()
    shards = ray.data.from_items([{"url": url} for url in urls], override_num_blocks=len(urls))
    dataset = shards.map_batches(_shard_samples, batch_size=1,
                                 fn_kwargs={"build": sample_builder(cfg, epoch), "tally": tally})
    return dataset, tally


def _shard_samples(shard: dict[str, np.ndarray], build: Callable[[dict], dict[str, Any]],
                   tally: ray.actor.ActorHandle) -> Iterator[dict[str, np.ndarray]]:
    """The training samples of one shard, a one-row batch each (a shard's decoded samples would not
    fit in memory at once); its skips reach the tally before the task ends."""
    skips = SkipCounter()
    try:
        for raw in wds.tariterators.tarfile_samples([{"url": str(shard["url"][0])}], handler=skips.handler):
            try:
                sample = build(raw)
            except Exception as exc:  # noqa: BLE001 - the handler counts bad data and raises anything else
                skips.handler(exc)
                continue
            yield {name: np.asarray(value)[None] for name, value in sample.items()}
    finally:
        ray.get(tally.add.remote(skips.counts()))


class RayCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(collate_fn=RayCollate())`: the PyTorch path's batch layout (tensors for
    every field, the keys as a list of str)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        return {name: [str(key) for key in values] if name == "key" else torch.from_numpy(np.require(values, requirements="W"))
                for name, values in batch.items()}


@ray.remote(num_cpus=0)
class SkipTally:
    """Skips of the Ray path per reason, gathered from every shard's task."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(SKIP_REASONS, 0)

    def add(self, counts: dict[str, int]) -> None:
        for reason, n in counts.items():
            self._counts[reason] += n

    def counts(self) -> dict[str, int]:
        return {reason: n for reason, n in self._counts.items() if n}
