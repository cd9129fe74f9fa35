"""Running `portraitflow curate` as its own process, and reading back what a run left in --out."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

# Small outputs, one sample per shard (resume has shards to skip), no MLflow, no progress bars.
FAST = ["--set", "curate.progress_bars=false", "--set", "curate.shard_max_samples=1", "--set", "mlflow.enabled=false"]
LOCAL_RAY = ["--set", "ray.num_cpus=2", "--set", "ray.object_store_memory_mb=300"]


def curate_command(inputs: list[str], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "portraitflow.jobs.cli", "curate", *inputs, "--out", str(out), *FAST, *extra]


def start_curate(inputs: list[str], out: Path, env: dict[str, str] | None = None, *extra: str,
                 cwd: Path | None = None) -> subprocess.Popen:
    """The curate CLI in a new session (its own process group), output to `out`.log."""
    log = open(f"{out}.log", "ab")
    return subprocess.Popen(curate_command(inputs, out, *extra), stdout=log, stderr=subprocess.STDOUT,
                            env=env or dict(os.environ), cwd=cwd, start_new_session=True)


def run_curate(inputs: list[str], out: Path, env: dict[str, str] | None = None, *extra: str,
               timeout_s: float = 600, cwd: Path | None = None) -> None:
    process = start_curate(inputs, out, env, *extra, cwd=cwd)
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        raise
    assert code == 0, f"curate exited {code}:\n{Path(f'{out}.log').read_text()[-4000:]}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _nan_as_none(row: dict[str, Any]) -> dict[str, Any]:
    """A measure not taken (NaN: a clip with nothing kept to compare against) compares equal to
    itself, as NaN does not."""
    return {name: None if isinstance(value, float) and math.isnan(value) else value for name, value in row.items()}


def curated_contents(out: Path) -> dict[str, Any]:
    """Everything a curated folder holds that must not depend on how the run went (cluster size,
    faults, resumes): manifest and clip rows, and for every shard its samples and their bytes."""
    manifest = sorted(map(_nan_as_none, read_rows(out / "manifest.parquet")), key=lambda r: r["input_key"])
    clips = sorted(map(_nan_as_none, read_rows(out / "clips.parquet")), key=lambda r: r["key"])
    shards = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            shards[shard.name] = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                                  for m in tar.getmembers()}
    return {"manifest": manifest, "clips": clips, "shards": shards}


def sample_keys(out: Path) -> list[str]:
    """Every sample key in every shard, with repeats (a key twice means a duplicated sample)."""
    keys = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            keys += sorted({name.split(".", 1)[0] for name in tar.getnames()})
    return keys


def duplicates(keys: list[str]) -> list[str]:
    return [k for k, n in Counter(keys).items() if n > 1]
