"""The Ray path's training samples: `shard_samples` reads one shard per task as the PyTorch path's
workers do (webdataset's tar reader, members as raw bytes, so nothing is unpickled; `SkipCounter`
semantics): bad data and a shard that breaks are skipped and counted, the samples before the
break kept, while anything else (a bug) fails the epoch instead of silently emptying the tasks it
hit. Every task's skips reach one `SkipTally` actor; `RayCollate` batches samples as the PyTorch
path does; `check_trainable` refuses a corpus none of whose samples can be trained on, before an
epoch runs through none.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import ray
from ray.data.collate_fn import NumpyBatchCollateFn

from portraitflow.operators.shard_source import SKIP_REASONS, SkipCounter, read_shard


def shard_samples(shard: dict[str, np.ndarray], build: Callable[[dict], dict[str, Any]],
                  tally: ray.actor.ActorHandle) -> Iterator[dict[str, np.ndarray]]:
    """One shard's training samples (`shard`: a one-row batch of its `url`), each as a one-row batch
    (a shard's decoded samples would not fit in memory at once); its skips reach `tally` before the
    task ends."""
    skips = SkipCounter()
    try:
        for raw in read_shard(str(shard["url"][0]), skips.handler):
            if (sample := skips.built(build, raw)) is not None:
                yield {name: np.asarray(value)[None] for name, value in sample.items()}
    finally:
        ray.get(tally.add.remote(skips.counts()))


def check_trainable(urls: list[str], build: Callable[[dict], dict[str, Any]]) -> None:
    """RuntimeError, with the skips by reason, unless some shard of `urls` holds a sample `build`
    takes: otherwise every Ray Train epoch would run through zero batches and finish (an `n_frames`
    longer than every clip, shards curated before a field a setting needs), where the PyTorch loader
    raises after such a pass. Reads the shards in order up to the first usable sample: one sample
    of a usable corpus, the whole corpus only when none is; a bug raises, as in the tasks."""
    skips = SkipCounter()
    for url in urls:
        for raw in read_shard(url, skips.handler):
            if skips.built(build, raw) is not None:
                return
    raise RuntimeError(f"training dataset: no sample of {len(urls)} shard(s), e.g. {urls[0]}, can be trained on; "
                       f"skipped {skips.counts()}")


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
