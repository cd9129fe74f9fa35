"""Curation on a real two-node Ray cluster on this machine, and the faults it must survive.

The nodes are `ray start` processes (1 CPU each, a custom resource per node) and the driver is the
`portraitflow curate` CLI joining through RAY_ADDRESS. Every run's output is compared with one
uninterrupted single-node run of the same inputs: manifest, clip rows, and shard bytes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from curate_runs import LOCAL_RAY, curated_contents, duplicates, read_rows, run_curate, sample_keys, start_curate
from ray_nodes import LocalRayCluster, WorkSampler, local_ray_cluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# Short single-face talking clips (256x256, about 4 s): each gives one accepted clip.
TALKING = ["dreamtalk_M030_front_neutral_level1_001.mp4", "dreamtalk_M030_front_happy_level3_001.mp4",
           "dreamtalk_W009_front_neutral_level1_001.mp4"]
CURATE_ACTOR = "ray::MapWorker(MapBatches(CurateInputStage))"


@pytest.fixture(scope="module")
def inputs(media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("inputs")
    for name in TALKING:
        shutil.copy(media_dir / name, folder / name)
    return [str(folder / name) for name in TALKING]


@pytest.fixture(scope="module")
def reference(inputs: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted run on a single local Ray: what every other run must reproduce."""
    out = tmp_path_factory.mktemp("single") / "out"
    run_curate(inputs, out, None, *LOCAL_RAY)
    contents = curated_contents(out)
    assert [r["status"] for r in contents["manifest"]] == ["accepted"] * len(inputs)
    return contents


@pytest.fixture(scope="module")
def cluster(media_dir: Path) -> Iterator[LocalRayCluster]:
    with local_ray_cluster([1, 1]) as nodes:
        yield nodes


def _killer(cluster: LocalRayCluster, should_kill, stop: threading.Event, killed: list[str]) -> None:
    """Until `stop`, SIGKILL every worker process of the cluster for which should_kill(pid, title)."""
    while not stop.is_set():
        for node in cluster.nodes:
            for pid in node.processes():
                title = _cmdline(pid)
                if title.startswith("ray::") and should_kill(pid, title):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(title)
                    except ProcessLookupError:
                        pass
        time.sleep(0.05)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _has_open(pid: int, path: str) -> bool:
    try:
        return any(os.readlink(fd) == path for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def test_two_nodes_both_work_and_match_single_node(cluster, inputs, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with WorkSampler(cluster) as seen:
        run_curate(inputs, out, cluster.env())
    for node in cluster.nodes:
        stages = {t for t in seen.seen[node.name] if "CurateInputStage" in t}
        assert stages, f"{node.name} ran no curation stage; it ran {sorted(seen.seen[node.name])}"
    assert curated_contents(out) == reference


def test_curate_actor_killed_mid_run_same_outputs(cluster, inputs, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed: list[str] = []
    stop = threading.Event()
    once = lambda pid, title: not killed and title.startswith(CURATE_ACTOR + ".submit")
    killer = threading.Thread(target=_killer, args=(cluster, once, stop, killed), daemon=True)
    killer.start()
    try:
        run_curate(inputs, out, cluster.env())
    finally:
        stop.set()
        killer.join()
    assert killed, "the curate actor was never seen working, so nothing was killed"
    assert curated_contents(out) == reference


def test_driver_killed_mid_run_rerun_resumes(cluster, inputs, reference, tmp_path: Path) -> None:
    out = tmp_path / "out"
    driver = start_curate(inputs, out, cluster.env())
    deadline = time.monotonic() + 600
    # the first rendered sample (staged, or already packed): scans done, renders and shards pending
    written = lambda: list((out / ".state" / "staging").glob("*.tar")) + list((out / "shards").glob("*.tar"))
    while not written() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)
    assert driver.wait(timeout=60) == -signal.SIGKILL, "the driver finished before it could be killed"
    finished_before = len(list((out / ".state" / "done").glob("*.json")))
    assert finished_before < len(inputs), "the kill came after every input had finished"
    assert not (out / "manifest.parquet").exists()

    run_curate(inputs, out, cluster.env())
    assert duplicates(sample_keys(out)) == []
    assert curated_contents(out) == reference
    run_curate(inputs, out, cluster.env())  # a finished folder: a rerun changes nothing
    assert curated_contents(out) == reference


@pytest.mark.parametrize("inputs_per_task", [0, 4])
def test_input_that_always_crashes_its_worker_is_quarantined(cluster, inputs, reference, inputs_per_task: int,
                                                             tmp_path: Path) -> None:
    """With 4 inputs a task, the poison shares its task with the others (after the input it copies,
    which sorts first among equal sizes): each crash retries the task, and the inputs that finished
    in it before must not count those starts towards a quarantine of their own."""
    poison = str(tmp_path / "poison.mp4")
    shutil.copy(inputs[0], poison)
    out = tmp_path / "out"
    killed: list[str] = []
    stop = threading.Event()
    killer = threading.Thread(target=_killer, args=(cluster, lambda pid, _: _has_open(pid, poison), stop, killed),
                              daemon=True)
    killer.start()
    try:
        run_curate([*inputs, poison], out, cluster.env(), "--set", f"curate.inputs_per_task={inputs_per_task}")
    finally:
        stop.set()
        killer.join()

    rows = {r["path"]: r for r in read_rows(out / "manifest.parquet")}
    assert set(rows) == {*inputs, poison}
    assert rows[poison]["status"] == "failed" and "quarantined" in rows[poison]["error"], rows[poison]
    assert 3 <= len(killed) <= 12, f"expected a bounded number of attempts, killed {len(killed)}: {killed}"
    assert sorted((rows[p] for p in inputs), key=lambda r: r["input_key"]) == reference["manifest"]
    assert curated_contents(out)["shards"] == reference["shards"]


def _tree_copy(destination: Path) -> Path:
    """The repository as `ray job submit --working-dir` would see it (tracked and unignored files)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def test_ray_job_submit_with_working_dir(inputs, tmp_path: Path) -> None:
    """Both submission paths of docs/cluster.md against a cluster with the job API:
    the installed CLI with the MLflow URI given in the job's runtime_env (it must reach the driver
    without a runtime_env conflict), and `jobs/from_tree.sh` running the submitted tree's code on
    the driver and, shipped by init_ray, on the workers (a marker patched into the tree shows up in
    rows the workers wrote)."""
    tree = _tree_copy(tmp_path / "tree")
    probe = tree / "operators" / "probe.py"
    probe.write_text(probe.read_text().replace("out.update(status=FAILED, error=",
                                               'out.update(status=FAILED, error="TREE-CODE " + '))
    assert "TREE-CODE" in probe.read_text()
    bad = tmp_path / "not a video.mp4"
    bad.write_bytes(b"\0" * 1000)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with local_ray_cluster([1], dashboard=True) as cluster:
        env = cluster.env()
        env.pop("RAY_ADDRESS")
        ray_cli = [str(Path(sys.executable).with_name("ray")), "job"]
        address = ["--address", cluster.dashboard_url]
        jobs = {
            "installed": ["--runtime-env-json", json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": store}}), "--",
                          "portraitflow", "curate", inputs[0], str(bad), "--out", str(tmp_path / "installed"),
                          "--set", "curate.progress_bars=false"],
            "from-tree": ["--", "bash", "jobs/from_tree.sh", "curate", str(bad), "--out", str(tmp_path / "tree-out"),
                          "--set", "curate.progress_bars=false", "--set", "mlflow.enabled=false"],
            # a relative --out would be Ray's temporary copy of the working dir: refused, exit 2
            "relative-out": ["--", "portraitflow", "curate", str(bad), "--out", "out", "--set", "mlflow.enabled=false"],
        }
        for job_id, args in jobs.items():
            subprocess.run([*ray_cli, "submit", *address, "--no-wait", "--submission-id", job_id, "--working-dir",
                            str(tree), *args], env=env, check=True, capture_output=True, timeout=300)
            state = _wait_for_job(ray_cli + ["status", *address, job_id], env, timeout_s=600)
            logs = subprocess.run([*ray_cli, "logs", *address, job_id], env=env, capture_output=True, text=True).stdout
            # from-tree curates one broken file: every input failed, so the job did (exit 1)
            expected = "succeeded" if job_id == "installed" else "failed"
            assert state == expected, f"job {job_id} {state}:\n{logs[-4000:]}"
        assert "temporary copy of --working-dir" in " ".join(logs.replace("│", " ").split()), logs[-4000:]

    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "installed" / "manifest.parquet")}
    assert rows[Path(inputs[0]).name]["status"] == "accepted"
    assert rows[bad.name]["status"] == "failed" and "TREE-CODE" not in rows[bad.name]["error"]
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri=store).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=store).search_experiments()])
    assert [r.data.metrics["inputs"] for r in runs] == [2.0]

    (tree_row,) = read_rows(tmp_path / "tree-out" / "manifest.parquet")
    assert tree_row["error"].startswith("TREE-CODE "), tree_row


def _wait_for_job(status_command: list[str], env: dict[str, str], timeout_s: float) -> str:
    """Poll `ray job status` until the job ends; returns succeeded, failed, stopped or timed out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = subprocess.run(status_command, env=env, capture_output=True, text=True, timeout=120).stdout.lower()
        for state, said in (("succeeded", "succeeded"), ("failed", "failed"), ("stopped", "was stopped")):
            if f"job '{status_command[-1]}' {said}" in text:
                return state
        time.sleep(1)
    return "timed out"
