"""Shards packed by several processes are the shards one process packs, byte for byte, and land in
number order: a run killed mid-packing and rerun ends with the shards of one that ran through."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from portraitflow.jobs.config.curate import CurateConfig
from portraitflow.jobs.config.fields import operational
from portraitflow.operators import shards
from portraitflow.operators.shards import (PACKING_PREFIX, npy_bytes, pack_shards, shard_paths, stage_sample,
                                           whole_shard_keys)

SAMPLES = 300


@pytest.fixture(scope="module")
def staged_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred small samples of varied sizes (1-5 tar records of 10 kB), staged once; each test links them."""
    staging = tmp_path_factory.mktemp("staged_once")
    rng = np.random.default_rng(7)
    for i in range(SAMPLES):
        key = f"talk-{i // 4:03d}_{i % 4:08d}_00002000"
        stage_sample(staging, key, {"mp4": rng.bytes(int(rng.integers(0, 45_000))), "json": json.dumps({"i": i}).encode(),
                                    "kps.npy": npy_bytes(rng.random((int(rng.integers(1, 30)), 5, 2), dtype=np.float32))})
    return staging


def _link_staged(staged_once: Path, staging: Path, keep: slice = slice(None)) -> None:
    """The staged samples (those in `keep`, in key order) in `staging`, as a run that rendered them has them."""
    staging.mkdir(parents=True, exist_ok=True)
    for path in sorted(staged_once.glob("*.tar"))[keep]:
        os.link(path, staging / path.name)


def _shard_bytes(shard_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in shard_paths(shard_dir)}


class _CountingPool(ProcessPoolExecutor):
    started: list[int] = []

    def __init__(self, workers: int, **kwargs) -> None:
        self.started.append(workers)
        super().__init__(workers, **kwargs)


@pytest.fixture
def pools(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Writers start from the first sample on; returns the pools started (their sizes)."""
    monkeypatch.setattr(shards, "PARALLEL_FROM_SAMPLES", 0)
    monkeypatch.setattr(shards, "ProcessPoolExecutor", _CountingPool)
    _CountingPool.started = []
    return _CountingPool.started


@pytest.mark.parametrize(("max_samples", "max_bytes"), [(7, 1 << 30), (100, 150_000), (6, 80_000)])
def test_parallel_shards_callbacks_and_notes_equal_serial_ones(staged_once: Path, tmp_path: Path, pools: list[int],
                                                               max_samples: int, max_bytes: int) -> None:
    runs = {}
    for name, workers in (("serial", 1), ("parallel", 3)):
        root = tmp_path / name
        _link_staged(staged_once, root / "staging", slice(0, 40))  # an earlier run's shards, packed serially
        pack_shards(root / "staging", root / "shards", max_samples, max_bytes)
        _link_staged(staged_once, root / "staging", slice(30, None))  # ten of them again: never packed twice
        calls: list[list[str]] = []
        written = pack_shards(root / "staging", root / "shards", max_samples, max_bytes, calls.append,
                              root / "notes", workers)
        notes = [json.loads((root / "notes" / f"{path.stem}.json").read_text())["keys"] for path in written]
        runs[name] = ([p.name for p in written], calls, notes, _shard_bytes(root / "shards"))
        assert not list((root / "staging").iterdir()) and not list((root / "shards").glob(PACKING_PREFIX + "*"))
    assert pools == [3]
    assert runs["parallel"] == runs["serial"]
    names, calls, notes, _ = runs["parallel"]
    assert len(names) > 3 and calls == notes
    assert [key for keys in calls for key in keys] == sorted(p.stem for p in staged_once.glob("*.tar"))[40:]
    for name, keys in zip(names, calls):
        assert whole_shard_keys(tmp_path / "parallel" / "shards" / name) == (keys, None)


def test_a_shard_lands_only_after_every_shard_before_it(staged_once: Path, tmp_path: Path, pools: list[int]) -> None:
    """Its first shard is the slowest to write (one sample of 3 MB), yet no later shard is in place before it."""
    staging, shard_dir = tmp_path / "staging", tmp_path / "shards"
    _link_staged(staged_once, staging)
    stage_sample(staging, "a-slow", {"mp4": bytes(3 << 20)})
    seen = []

    def on_shard(keys: list[str]) -> None:
        seen.append([p.name for p in shard_paths(shard_dir)])
        assert all((staging / f"{key}.tar").exists() for key in keys)  # deleted only once marked

    written = pack_shards(staging, shard_dir, 10, 1 << 20, on_shard, workers=2)
    assert pools == [2]
    assert seen == [[p.name for p in written[: i + 1]] for i in range(len(written))]


def test_a_run_that_fails_mid_packing_resumes_as_one_that_ran_through(staged_once: Path, tmp_path: Path,
                                                                      pools: list[int]) -> None:
    _link_staged(staged_once, tmp_path / "whole" / "staging")
    pack_shards(tmp_path / "whole" / "staging", tmp_path / "whole" / "shards", 9, 1 << 30, workers=2)

    staging, shard_dir = tmp_path / "failed" / "staging", tmp_path / "failed" / "shards"
    _link_staged(staged_once, staging)
    marked: list[list[str]] = []

    def fail_at_the_fourth(keys: list[str]) -> None:
        if len(marked) == 3:
            raise KeyboardInterrupt
        marked.append(keys)

    with pytest.raises(KeyboardInterrupt):
        pack_shards(staging, shard_dir, 9, 1 << 30, fail_at_the_fourth, workers=2)
    assert [p.name for p in shard_paths(shard_dir)] == [f"{i:06d}.tar" for i in range(4)]  # none after a gap
    assert not list(shard_dir.glob(PACKING_PREFIX + "*"))  # the shards written ahead are cleared
    for path in staging.iterdir():
        path.unlink()
    _link_staged(staged_once, staging)  # the rerun renders everything again
    pack_shards(staging, shard_dir, 9, 1 << 30, workers=2)
    assert _shard_bytes(shard_dir) == _shard_bytes(tmp_path / "whole" / "shards")


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from portraitflow.operators import shards
shards.PARALLEL_FROM_SAMPLES = 0
staging, shard_dir, children = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
def on_shard(keys):
    if len(shards.shard_paths(shard_dir)) == 3:  # killed (kill -9) as the third shard lands
        import multiprocessing
        children.write_text(" ".join(str(p.pid) for p in multiprocessing.active_children()))
        os.kill(os.getpid(), signal.SIGKILL)
if __name__ == "__main__":
    shards.pack_shards(staging, shard_dir, 9, 1 << 30, on_shard, workers=2)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith(("Z", "X"))  # a zombie is dead
    except FileNotFoundError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="writers die with their driver on Linux only")
def test_a_killed_run_leaves_no_writers_and_resumes_as_one_that_ran_through(staged_once: Path, tmp_path: Path,
                                                                            pools: list[int]) -> None:
    _link_staged(staged_once, tmp_path / "whole" / "staging")
    pack_shards(tmp_path / "whole" / "staging", tmp_path / "whole" / "shards", 9, 1 << 30, workers=2)

    staging, shard_dir, children = tmp_path / "killed" / "staging", tmp_path / "killed" / "shards", tmp_path / "pids"
    _link_staged(staged_once, staging)
    (tmp_path / "killed_run.py").write_text(KILLED_RUN)
    with open(tmp_path / "killed_run.log", "w") as log:  # a file, not a pipe: writers left behind would hold one open
        done = subprocess.run([sys.executable, str(tmp_path / "killed_run.py"), str(staging), str(shard_dir),
                               str(children)], stdout=log, stderr=subprocess.STDOUT, timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL, (tmp_path / "killed_run.log").read_text()[-3000:]
    writers = [int(pid) for pid in children.read_text().split()]
    assert len(writers) == 2
    deadline = time.monotonic() + 10
    while not all(map(_gone, writers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in writers if not _gone(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left  # none left taking queued shards, or waiting forever
    assert [p.name for p in shard_paths(shard_dir)] == [f"{i:06d}.tar" for i in range(3)]
    assert list(shard_dir.glob(PACKING_PREFIX + "*"))  # the killed run's shards written ahead, never moved in

    pack_shards(staging, shard_dir, 9, 1 << 30, workers=2)  # the staged samples it had not deleted yet
    assert _shard_bytes(shard_dir) == _shard_bytes(tmp_path / "whole" / "shards")
    assert not list(shard_dir.glob(PACKING_PREFIX + "*")) and not list(staging.iterdir())


def test_a_small_run_starts_no_writers(staged_once: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pool(*args, **kwargs) -> None:
        raise AssertionError("a pool started for a small run")

    monkeypatch.setattr(shards, "ProcessPoolExecutor", no_pool)
    _link_staged(staged_once, tmp_path / "staging", slice(0, 50))
    assert 50 < shards.PARALLEL_FROM_SAMPLES
    assert len(pack_shards(tmp_path / "staging", tmp_path / "shards", 5, 1 << 30, workers=4)) == 10


def test_the_number_of_writers_is_operational() -> None:
    """It changes how fast shards are written, never what they hold: a resume may change it."""
    assert "shard_pack_workers" in operational(CurateConfig)
    assert 1 <= shards.default_pack_workers() <= min(shards.MAX_DEFAULT_WORKERS, len(os.sched_getaffinity(0)))
