"""The benchmarks stay runnable on a CPU (HunyuanPortrait's with `--tiny`), and each still compares like with like."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> list[str]:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--tiny", *args], capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


@pytest.mark.slow
def test_generation_benchmark_ours_equals_the_release_algorithm() -> None:
    lines = _run("hunyuan_gpu.py", "--frames", "12")
    rows = [line for line in lines if line.startswith("fp32")]
    assert len(rows) == 1, lines
    assert float(rows[0].rsplit("|", 1)[1]) < 1e-4  # the largest difference, ours against the baseline


@pytest.mark.slow
def test_unet_benchmark_variants_agree() -> None:
    lines = _run("hunyuan_unet.py", "--calls", "1", "--variants", "eager-all-rows", "eager", "channels-last")
    rows = {line.split()[0]: line for line in lines if line.startswith(("eager", "channels"))}
    assert rows.keys() == {"eager-all-rows", "eager", "channels-last"}
    assert float(rows["eager"].rsplit("|", 1)[1]) < 1e-6
    assert float(rows["channels-last"].rsplit("|", 1)[1]) < 1e-4


def test_full_res_decode_benchmark_compares_equal_frames(media_dir: Path) -> None:
    """It refuses to report when the two readers decode different frames (exit non-zero)."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / "full_res_decode.py"), "--video",
                             str(media_dir / "vexpress_RD_Radio10_0_clip_0.mp4"), "--seconds", "1"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "30 frames" in result.stdout and '"decord_over_in_order"' in result.stdout, result.stdout
