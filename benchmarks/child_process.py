"""Measurements each made in a fresh process of its own, so each peak memory is its own: a script
runs itself again with `--reader NAME` (one measurement, printed as JSON on its last line)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def resident_mib(field: str) -> float:
    """This process's `VmRSS` or `VmHWM` (peak since the last `clear_refs` 5) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_in_children(script: str, args: list[str], readers: tuple[str, ...], same: str) -> dict[str, dict]:
    """`script args --reader R` for each of `readers`, one after the other; each one's JSON result.
    Exits, naming them all, unless every result holds the same `same` (the frames, the scores): a
    ratio between ways to different results would mean nothing."""
    results = {}
    for reader in readers:
        child = subprocess.run([sys.executable, script, *args, "--reader", reader],
                               capture_output=True, text=True, check=True)
        results[reader] = json.loads(child.stdout.splitlines()[-1])
    if len({json.dumps(result[same], sort_keys=True) for result in results.values()}) > 1:
        raise SystemExit(f"the readers gave different {same}: {results}")
    return results


def print_ratios(baseline: dict, ours: dict, name: str = "decord_over_in_order") -> None:
    """The baseline's wall time and peak memory over ours, as one JSON line."""
    print(json.dumps({name: {
        "wall": round(baseline["wall_s"] / ours["wall_s"], 2),
        "peak_memory": round(baseline["peak_above_start_mib"] / max(1, ours["peak_above_start_mib"]), 2)}}))
