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
    lines = _run("hunyuan_gpu.py", "--frames", "12", "--stock-kernels")  # on the CPU the kernels are stock anyway
    rows = [line for line in lines if line.startswith("fp32")]
    assert len(rows) == 1, lines
    difference, verdict, _ = rows[0].rsplit("|", 1)[1].split()  # the largest one, ours against the baseline
    assert float(difference) < 1e-4 and verdict == "within"


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


def test_evaluate_memory_benchmark_compares_equal_scores(media_dir: Path) -> None:
    """It refuses to report when the two readers give different scores (exit non-zero)."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / "evaluate_memory.py"), "--video",
                             str(media_dir / "vexpress_RD_Radio10_0_clip_0.mp4")],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "62 frames scored" in result.stdout and '"decord_over_in_order"' in result.stdout, result.stdout


def test_a_loans_compile_caches_come_back_in_parts_and_warm_the_next_loan(tmp_path: Path) -> None:
    """A cold warm-up took about 400 s of a 900-s GPU loan: `pending_gpu.sh` saves the compile caches
    into $OUT in parts a loan can return (16 MiB at most each), and starts from carried ones."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'a GPU, 80 GiB, 1980 MHz'\n")
    # stands in for a compiling step: reports whether it found an earlier loan's kernel, then compiles one
    (fake_bin / "fake-python").write_text(
        "#!/bin/sh\n"
        'test -f "$TORCHINDUCTOR_CACHE_DIR/kernel.bin" && echo "warm" || echo "cold"\n'
        'mkdir -p "$TORCHINDUCTOR_CACHE_DIR" && head -c 20000000 /dev/urandom > "$TORCHINDUCTOR_CACHE_DIR/kernel.bin"\n')
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "PYTHON": str(fake_bin / "fake-python"), "HOME": str(tmp_path)}

    def loan(out: Path, carried: Path, **settings: str) -> str:
        result = subprocess.run(["bash", str(BENCHMARKS / "pending_gpu.sh"), "100", "kernel_tests"], capture_output=True,
                                text=True, timeout=120, check=False,
                                env=dict(env, OUT=str(out), COMPILE_CACHE=str(carried), **settings))
        assert result.returncode == 0, result.stderr
        return result.stdout

    first = loan(tmp_path / "out1", tmp_path / "nothing_carried")
    assert "cold" in first and "warm" not in first
    parts = sorted((tmp_path / "out1").glob("compile_cache.tgz.*"))
    assert len(parts) == 2 and all(p.stat().st_size <= 15 * 2**20 for p in parts)  # 20 MB of random bytes
    carried = tmp_path / "carried"
    carried.mkdir()
    for part in parts:
        (carried / part.name).write_bytes(part.read_bytes())
    assert "warm" in loan(tmp_path / "out2", carried)
    # a part that did not come back: the cut archive is not unpacked (it would leave cut kernels as hits)
    (carried / parts[-1].name).unlink()
    incomplete = loan(tmp_path / "out3", carried)
    assert "cold" in incomplete and "archive is incomplete" in incomplete
    # caches larger than a loan can return beside the logs are not saved at all
    too_large = loan(tmp_path / "out4", tmp_path / "nothing_carried", CACHE_LIMIT_MIB="10")
    assert "not saved" in too_large and not list((tmp_path / "out4").glob("compile_cache.tgz.*"))
    assert (tmp_path / "out4" / "kernel_tests.log").exists()
