"""Which raw samples a training pass reads, and in which order, as a pure function of (seed, epoch,
rank, worker): passes are reproducible, ranks read disjoint shards, and a restarted pass can skip
the samples it already yielded by counting them, without decoding them again.

Curated shards are packed in key order, so one shard holds the clips of few source videos; reading
one shard after another would fill a shuffle buffer (and so a batch) from one source. Hence:
- `worker_shards`: each epoch every rank permutes the shard list the same way (ranks agree without
  talking), keeps every world_size-th shard, and each worker every num_workers-th of those;
- `interleaved_samples`: a worker reads several shards at once, a sample from each in turn;
- `buffer_shuffle`: a shuffle buffer over those raw (still encoded) samples, cheap in memory.
"""
from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TypeVar

import numpy as np

Item = TypeVar("Item")


def stream_rng(seed: int, epoch: int, rank: int, worker: int, purpose: str) -> np.random.Generator:
    """A generator fixed by (seed, epoch, rank, worker) and what it draws, so each draw of a pass is
    independent of the others yet replayed exactly when the pass is restarted."""
    return np.random.default_rng([seed, epoch, rank, worker, zlib.crc32(purpose.encode())])


def epoch_shard_order(urls: Sequence[str], seed: int, epoch: int) -> list[str]:
    """The shard list permuted by (seed, epoch): the same wherever it is computed, another every epoch."""
    return [urls[i] for i in np.random.default_rng([seed, epoch]).permutation(len(urls))]


def worker_shards(urls: Sequence[str], *, epoch: int, rank: int, world_size: int, worker: int, num_workers: int,
                  shared_seed: int, stream_seed: int, shuffle: bool) -> list[str]:
    """The shards one worker of one rank reads in an epoch, in reading order.

    With `shuffle`, the list is permuted by (`shared_seed`, epoch), which every rank must pass the
    same, so the ranks' shares stay disjoint and cover every shard while changing every epoch; the
    worker's share is then ordered by its own `stream_seed`. Without, index order throughout."""
    if not shuffle:
        return list(urls)[rank::world_size][worker::num_workers]
    share = epoch_shard_order(urls, shared_seed, epoch)[rank::world_size][worker::num_workers]
    return [share[i] for i in stream_rng(stream_seed, epoch, rank, worker, "shard_order").permutation(len(share))]


def resampled_shards(urls: Sequence[str], rng: np.random.Generator) -> Iterator[str]:
    """Shards drawn with replacement, endlessly (epoch-less training)."""
    while True:
        yield urls[int(rng.integers(len(urls)))]


def interleaved_samples(shards: Iterable[str], open_shard: Callable[[str], Iterator[Item]], width: int) -> Iterator[Item]:
    """The samples of `width` shards at once, one from each in turn; a finished shard's place goes
    to the next shard. Deterministic given the shard order."""
    pending = iter(shards)
    readers = deque(open_shard(url) for url in islice(pending, width))
    while readers:
        reader = readers.popleft()
        for sample in reader:
            yield sample
            readers.append(reader)
            break
        else:
            url = next(pending, None)
            if url is not None:
                readers.appendleft(open_shard(url))


def buffer_shuffle(items: Iterable[Item], size: int, rng: np.random.Generator) -> Iterator[Item]:
    """Items in random order within a window of `size` (WebDataset's shuffle buffer, with a seeded
    generator): once the buffer is full, each new item takes the place of a random buffered one,
    which is yielded. 0 or 1 keeps the order."""
    if size <= 1:
        yield from items
        return
    buffer: list[Item] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        pick = int(rng.integers(size))
        yield buffer[pick]
        buffer[pick] = item
    for pick in rng.permutation(len(buffer)):
        yield buffer[pick]
