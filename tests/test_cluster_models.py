"""Face model files on a real three-node Ray cluster on this machine: each node's own files count.

Each node is started in its own folder and the insightface root is given as a relative path, so
each node's workers find the pack that node's folder holds, as each machine of a cluster finds its
own disk: the driver's files say nothing of theirs.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray_nodes import LocalRayCluster, local_ray_cluster

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).with_name("portraitflow"))


def _pack(root: Path, name: str, source: Path, changed: bool = False) -> None:
    """`root/ifroot/models/<name>`: the shared pack's files, the recogniser a byte longer when `changed`."""
    folder = root / "ifroot" / "models" / name
    folder.mkdir(parents=True)
    for onnx in source.glob("*.onnx"):
        shutil.copy(onnx, folder / onnx.name)
        if changed and not onnx.name.startswith("det_"):
            with open(folder / onnx.name, "ab") as stream:
                stream.write(b"\0")


@pytest.fixture(scope="module")
def node_dirs(insightface_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The driver's folder and three nodes': `whole` everywhere alike; `lacking` missing on node1;
    `other` with another recogniser on node2; `driver_only` on no node."""
    source = insightface_root / "models" / "pack"
    driver, head, lacking, other = (tmp_path_factory.mktemp(name) for name in ("driver", "node0", "node1", "node2"))
    for folder in (driver, head, lacking, other):
        _pack(folder, "whole", source)
    for folder in (driver, head, other):
        _pack(folder, "lacking", source)
    for folder in (driver, head, lacking):
        _pack(folder, "other", source)
    _pack(other, "other", source, changed=True)
    _pack(driver, "driver_only", source)
    return [driver, head, lacking, other]


@pytest.fixture(scope="module")
def cluster(node_dirs: list[Path]) -> Iterator[LocalRayCluster]:
    with local_ray_cluster([1, 1, 1], node_dirs=node_dirs[1:]) as nodes:
        yield nodes


def _doctor(cluster: LocalRayCluster, driver: Path, pack: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "doctor", "--set", "face.backend=insightface", "--set", "face.insightface_root=ifroot",
                           "--set", f"face.insightface_pack={pack}"], env=cluster.env(), cwd=driver,
                          capture_output=True, text=True, timeout=300)


def test_curate_names_the_node_lacking_the_models_in_one_message(cluster: LocalRayCluster, node_dirs: list[Path],
                                                                  media_dir: Path) -> None:
    driver = node_dirs[0]
    result = subprocess.run(
        [CLI, "curate", str(media_dir / "dreamtalk_M030_front_neutral_level1_001.mp4"), "--out", "out",
         "--set", "face.backend=insightface", "--set", "face.insightface_root=ifroot",
         "--set", "face.insightface_pack=lacking"],
        env=cluster.env(MLFLOW_TRACKING_URI=f"sqlite:///{driver}/mlflow.db"), cwd=driver, capture_output=True,
        text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.replace("│", " ").split())
    assert "1 of 3 Ray node(s) cannot load the face models" in message
    assert "ifroot/models/lacking does not exist" in message
    named = [_node_id_of(cluster, name)[:8] for name in ("node0", "node1", "node2")]
    assert [f"({node})" in message for node in named] == [False, True, False]
    assert not (driver / "out" / "manifest.parquet").exists()


def test_doctor_refuses_nodes_holding_other_model_files_and_passes_alike_ones(cluster: LocalRayCluster,
                                                                             node_dirs: list[Path]) -> None:
    other = _doctor(cluster, node_dirs[0], "other")
    assert other.returncode == 1
    line = next(x for x in other.stdout.splitlines() if "on the cluster's nodes" in x)
    assert "[missing]" in line and "hold different face model files" in line
    assert f"({_node_id_of(cluster, 'node2')[:8]}): recogniser" in line
    assert "detector" not in line  # only the file that differs is named
    whole = _doctor(cluster, node_dirs[0], "whole")
    line = next(x for x in whole.stdout.splitlines() if "on the cluster's nodes" in x)
    assert "[ok]" in line, whole.stdout[-3000:]


def _node_id_of(cluster: LocalRayCluster, name: str) -> str:
    """The Ray node id of the node started as `name` (its custom resource)."""
    probe = ("import ray, sys; ray.init(log_to_driver=False); "
             f"print(next(n['NodeID'] for n in ray.nodes() if n['Alive'] and {name!r} in n['Resources']))")
    result = subprocess.run([sys.executable, "-c", probe], env=cluster.env(), capture_output=True, text=True,
                            timeout=120, check=True)
    return result.stdout.split()[-1]


def test_a_node_that_joins_after_the_check_ends_the_run_in_one_line(cluster: LocalRayCluster, node_dirs: list[Path],
                                                                     media_dir: Path) -> None:
    """Nodes the autoscaler adds once the nodes were asked (here: every node, unasked) kill the
    curation's actors they hold: the run ends saying which node lacks what, not in Ray's
    traceback (the worker's own lines, which Ray forwards to the driver's console as they come, a
    `(MapWorker... pid=...)` prefix on each, may land before or after it)."""
    driver = node_dirs[0]
    unchecked = ("import sys; from portraitflow.jobs import options; options.node_model_problem = lambda cfg: None; "
                 "from portraitflow.jobs.cli import app; app(sys.argv[1:])")
    inputs = [str(media_dir / name) for name in ("dreamtalk_M030_front_neutral_level1_001.mp4",
                                                  "dreamtalk_W009_front_neutral_level1_001.mp4")]
    result = subprocess.run(
        [sys.executable, "-c", unchecked, "curate", *inputs, "--out", "unchecked", "--set", "face.backend=insightface",
         "--set", "face.insightface_root=ifroot", "--set", "face.insightface_pack=driver_only",
         "--set", "curate.progress_bars=false"],
        env=cluster.env(MLFLOW_TRACKING_URI=f"sqlite:///{driver}/mlflow.db"), cwd=driver, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    forwarded = re.compile(r"^(\x1b\[\d+m)?\(\w.*pid=\d+")  # a worker's line, as Ray forwards it
    last = [line for line in result.stderr.strip().splitlines() if not forwarded.match(line)][-1]
    assert last.startswith("Error: a worker on the Ray node at ") and "ifroot/models/driver_only does not exist" in last


def test_a_relative_out_is_the_drivers_folder_on_every_node(cluster: LocalRayCluster, node_dirs: list[Path],
                                                           media_dir: Path) -> None:
    """Workers start in their node's directory: a relative --out sent as given had them write their
    scans under it there, and the driver failed to find them (FileNotFoundError on a scan)."""
    driver = node_dirs[0]
    result = subprocess.run(
        [CLI, "curate", str(media_dir / "dreamtalk_M030_front_neutral_level1_001.mp4"), "--out", "relative",
         "--set", "face.backend=insightface", "--set", "face.insightface_root=ifroot",
         "--set", "face.insightface_pack=whole", "--set", "curate.progress_bars=false"],
        env=cluster.env(MLFLOW_TRACKING_URI=f"sqlite:///{driver}/mlflow.db"), cwd=driver, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert pq.read_table(driver / "relative" / "manifest.parquet").column("status").to_pylist() == ["accepted"]
    assert not any((folder / "relative").exists() for folder in node_dirs[1:])
