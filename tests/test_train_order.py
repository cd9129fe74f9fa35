"""The training loader's sample order: shards mixed into every batch, reproducible per (seed, epoch),
disjoint across ranks, and a pass resumable mid-epoch from `state_dict()`."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from portraitflow.jobs.config.train_data import TrainDataConfig
from portraitflow.operators.sample_order import buffer_shuffle, interleaved_samples, worker_shards
from portraitflow.pipelines.train_data import TrainLoader
from synthetic_shards import write_dataset

SHARDS, PER_SHARD = 5, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """5 shards of 3 clips, packed in key order as curation packs them: shard i holds clips 3i..3i+2."""
    out = tmp_path_factory.mktemp("order")
    return out, write_dataset(out, shards=SHARDS, per_shard=PER_SHARD, num_frames=12)


def _config(corpus, **overrides) -> TrainDataConfig:
    values = dict(shards=[str(corpus[0] / "index.wids.json")], n_frames=4, batch_size=2, num_workers=0,
                  resolution=128, seed=5)
    values.update(overrides)
    return TrainDataConfig(**values)


def _shard_of(key: str) -> int:
    return int(key.removeprefix("synthetic")) // PER_SHARD


def _batches(loader) -> list[list[str]]:
    return [list(batch["key"]) for batch in loader]


def test_interleaving_takes_a_sample_of_each_open_shard_in_turn() -> None:
    shards = {"a": ["a0", "a1", "a2"], "b": ["b0"], "c": ["c0", "c1"], "d": []}
    read = list(interleaved_samples(["a", "b", "c", "d"], lambda url: iter(shards[url]), width=2))
    assert read == ["a0", "b0", "a1", "c0", "a2", "c1"]  # c takes b's place once b ends
    assert list(interleaved_samples("abcd", lambda url: iter(shards[url]), width=1)) == ["a0", "a1", "a2", "b0", "c0", "c1"]


def test_the_shuffle_buffer_is_seeded_and_keeps_every_item() -> None:
    def shuffled(seed: int, size: int = 4) -> list[int]:
        return list(buffer_shuffle(range(20), size, np.random.default_rng(seed)))

    assert shuffled(1) == shuffled(1) != shuffled(2)
    assert sorted(shuffled(1)) == list(range(20)) and shuffled(1) != list(range(20))
    assert all(item - place < 4 for place, item in enumerate(shuffled(1)))  # a window: none comes 4 early
    assert shuffled(1, size=0) == list(range(20))


def test_every_epoch_permutes_the_shards_the_same_on_every_rank_whatever_its_own_seed() -> None:
    """Ranks seed their own streams (unseeded runs draw one each), yet their shares stay disjoint."""
    urls = [f"shard{i:02d}.tar" for i in range(23)]

    def shares(epoch: int, shuffle: bool = True) -> list[list[str]]:
        return [worker_shards(urls, epoch=epoch, rank=rank, world_size=2, worker=worker, num_workers=3,
                              shared_seed=9, stream_seed=1000 + rank, shuffle=shuffle)
                for rank in range(2) for worker in range(3)]

    for epoch in range(3):
        flat = [url for share in shares(epoch) for url in share]
        assert sorted(flat) == urls  # each shard once, on exactly one rank and worker
    assert shares(0) == shares(0)
    assert shares(0)[0] != shares(1)[0]  # a worker reads other shards, in another order, next epoch
    assert shares(0, shuffle=False)[0] == urls[0::6] == shares(1, shuffle=False)[0]


def test_a_batch_mixes_clips_of_the_shards_a_worker_reads_at_once(corpus) -> None:
    four_shards = str(corpus[0] / "shards" / "{000000..000003}.tar")
    in_turn = _batches(TrainLoader(_config(corpus, shards=[four_shards], shuffle_buffer=0, interleaved_shards=2)))
    assert len(in_turn) == 6 and all(len({_shard_of(key) for key in batch}) == 2 for batch in in_turn)
    one_by_one = _batches(TrainLoader(_config(corpus, shards=[four_shards], shuffle_buffer=0, interleaved_shards=1)))
    shard_runs = [_shard_of(key) for batch in one_by_one for key in batch]
    assert sum(a != b for a, b in zip(shard_runs, shard_runs[1:])) == 3  # each shard whole, as packed: few sources


def test_seeded_ranks_read_disjoint_shards_that_change_between_epochs(corpus, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    seen = {}
    for epoch in (0, 1):
        for rank in (0, 1):
            monkeypatch.setenv("RANK", str(rank))
            seen[rank, epoch] = [key for batch in _batches(TrainLoader(_config(corpus), epoch=epoch)) for key in batch]
        assert sorted(seen[0, epoch] + seen[1, epoch]) == sorted(corpus[1])
    assert {_shard_of(key) for key in seen[0, 0]} != {_shard_of(key) for key in seen[0, 1]}


def _saved(state: dict) -> dict:
    """A state as a trainer's checkpoint holds it: through torch.save and a weights-only load."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _interrupted(cfg: TrainDataConfig, epoch: int = 0) -> tuple[list[dict], list[dict]]:
    """An uninterrupted pass's batches, and the loader's state after each of them."""
    loader = TrainLoader(cfg, epoch=epoch)
    batches, states = [], []
    for batch in loader:
        batches.append({"key": list(batch["key"]), "frame_indices": batch["frame_indices"]})
        states.append(_saved(loader.state_dict()))
    return batches, states


@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_a_resumed_pass_yields_exactly_the_batches_not_yet_yielded(corpus, num_workers: int) -> None:
    """Workers own unequal shares (5 shards), so the round robin meets exhausted workers, and cuts
    fall at every worker's turn."""
    cfg = _config(corpus, num_workers=num_workers, shuffle_buffer=4)
    batches, states = _interrupted(cfg, epoch=2)
    assert sorted(key for batch in batches for key in batch["key"]) == sorted(corpus[1])
    for cut in sorted({1, 2, len(batches) - 2, len(batches) - 1}):
        restarted = TrainLoader(cfg)
        restarted.load_state_dict(states[cut - 1])
        rest = [{"key": list(batch["key"]), "frame_indices": batch["frame_indices"]} for batch in restarted]
        assert [batch["key"] for batch in rest] == [batch["key"] for batch in batches[cut:]], cut
        assert all(torch.equal(a["frame_indices"], b["frame_indices"]) for a, b in zip(rest, batches[cut:]))
        assert restarted.state_dict()["epoch"] == 3  # the pass finished epoch 2
    done = TrainLoader(cfg)
    done.load_state_dict(states[-1])  # saved after the last batch: nothing left, and no error for it
    assert _batches(done) == [] and done.state_dict()["epoch"] == 3


def test_an_unseeded_run_resumes_in_the_order_it_drew(corpus) -> None:
    cfg = _config(corpus, seed=None, num_workers=2)
    batches, states = _interrupted(cfg)
    restarted = TrainLoader(cfg)
    restarted.load_state_dict(states[2])
    assert _batches(restarted) == [batch["key"] for batch in batches[3:]]


def test_a_resumed_resampled_pass_draws_the_rest_of_the_epoch(corpus) -> None:
    cfg = _config(corpus, seed=None, resampled=True, samples_per_epoch=9, num_workers=2)
    batches, states = _interrupted(cfg)
    assert [len(batch["key"]) for batch in batches] == [2, 2, 2, 2, 1]
    restarted = TrainLoader(cfg)
    restarted.load_state_dict(states[1])
    assert _batches(restarted) == [batch["key"] for batch in batches[2:]]


def test_a_resumed_resampled_pass_replays_past_the_draws_that_would_stop_an_unusable_one(corpus) -> None:
    """Replayed samples are not built again, yet they were usable: a long replay must not end the stream."""
    one_shard = str(corpus[0] / "shards" / "000000.tar")  # 3 clips; an unusable draw limit of 10 + 1 draws
    cfg = _config(corpus, shards=[one_shard], seed=None, resampled=True, samples_per_epoch=40, batch_size=4,
                  shuffle_buffer=0, interleaved_shards=1)
    batches, states = _interrupted(cfg)
    restarted = TrainLoader(cfg)
    restarted.load_state_dict(states[8])  # 36 samples in: 12 draws to replay
    assert _batches(restarted) == [batches[9]["key"]]


def test_a_state_of_other_streams_restarts_its_epoch_with_a_warning(corpus, caplog) -> None:
    batches, states = _interrupted(_config(corpus, num_workers=2))
    restarted = TrainLoader(_config(corpus, num_workers=0))
    with caplog.at_level(logging.WARNING, logger="portraitflow.pipelines.train_data"):
        restarted.load_state_dict(states[2])
    assert "num_workers" in caplog.text and "epoch 0 restarts" in caplog.text
    assert sorted(key for batch in _batches(restarted) for key in batch) == sorted(corpus[1])
    caplog.clear()
    reseeded = TrainLoader(_config(corpus, seed=6, num_workers=2))
    with caplog.at_level(logging.WARNING, logger="portraitflow.pipelines.train_data"):
        reseeded.load_state_dict(states[2])
    assert "other seed;" in caplog.text
    assert sum(len(batch) for batch in _batches(reseeded)) == len(corpus[1])


def test_between_passes_the_state_names_the_next_epoch(corpus) -> None:
    loader = TrainLoader(_config(corpus), epoch=4)
    assert loader.state_dict()["epoch"] == 4 and loader.state_dict()["samples_seen"] == 0
    first = _batches(loader)
    state = loader.state_dict()
    assert (state["epoch"], state["samples_seen"], state["worker_positions"]) == (5, 0, [0])
    restarted = TrainLoader(_config(corpus))
    restarted.load_state_dict(state)
    assert _batches(restarted) == _batches(TrainLoader(_config(corpus), epoch=5)) != first


def test_a_shard_shuffle_buffer_size_from_an_earlier_config_still_means_shuffle() -> None:
    from portraitflow.jobs.config.train_data import TrainDataConfig

    assert [TrainDataConfig(shard_shuffle=size).shard_shuffle for size in (100, 1, 0)] == [True, True, False]
