"""Cluster deployment: the runtime_env a driver gives its workers, and the deployment files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from portraitflow.jobs import runtime
from portraitflow.jobs.config.runtime import RayConfig
from portraitflow.jobs.runtime import stage_driver_code, worker_runtime_env

ROOT = Path(__file__).resolve().parents[1]


def test_worker_env_carries_settings_but_no_mlflow_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MLFLOW_* variable went into the runtime_env, which `ray list jobs --detail` and the
    dashboard show (MLFLOW_TRACKING_PASSWORD), though only the driver records runs."""
    monkeypatch.delenv(runtime.JOB_CONFIG_ENV_VAR, raising=False)
    monkeypatch.setenv("PORTRAITFLOW_MODELS", "/models")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cr3t")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:s3cr3t@mlflow:5000")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    env = worker_runtime_env(Path("/tmp/stage/portraitflow"))
    assert env["env_vars"] == {"PORTRAITFLOW_MODELS": "/models"}
    assert env["py_modules"] == ["/tmp/stage/portraitflow"]
    assert "s3cr3t" not in json.dumps(env)


def test_a_submitted_job_refuses_an_out_in_its_temporary_working_dir(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path, caplog) -> None:
    """`--out out/` under `ray job submit --working-dir .` wrote into Ray's unpacked copy, which later
    jobs share and Ray deletes (and other nodes' workers do not see), and said nothing; so did a
    default sqlite store there."""
    import typer

    from portraitflow.jobs.config.runtime import MLflowConfig
    from portraitflow.jobs.options import check_out_folder

    unpacked = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    unpacked.mkdir(parents=True)
    monkeypatch.chdir(unpacked)  # where Ray starts a submitted driver
    monkeypatch.setenv(runtime.JOB_CONFIG_ENV_VAR, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}))
    for out in ("out", "../out"):
        with pytest.raises(typer.BadParameter, match="Ray's temporary copy of --working-dir"):
            check_out_folder(Path(out), "curate")
    check_out_folder(tmp_path / "elsewhere", "curate")  # storage outside the copy
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runtime.mlflow_client(MLflowConfig())
    assert "inside this submitted job's working directory" in caplog.text
    caplog.clear()
    runtime.mlflow_client(MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'kept.db'}"))
    assert "working directory" not in caplog.text
    monkeypatch.chdir(tmp_path)  # an entrypoint that went elsewhere first (`bash -c "cd /mnt/efs && ..."`)
    check_out_folder(Path("out"), "curate")
    monkeypatch.chdir(unpacked)
    monkeypatch.delenv(runtime.JOB_CONFIG_ENV_VAR)  # not submitted: a relative --out is the user's own folder
    check_out_folder(Path("out"), "curate")


def test_a_submitted_curation_refuses_inputs_in_its_temporary_working_dir(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """A relative input under `ray job submit --working-dir .` was keyed by Ray's unpacked copy: a
    second submission after any edit curated the same video again (review s24)."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app

    unpacked = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"
    (unpacked / "samples").mkdir(parents=True)
    (unpacked / "samples" / "talk.mp4").write_bytes(b"")
    monkeypatch.chdir(unpacked)
    monkeypatch.setenv(runtime.JOB_CONFIG_ENV_VAR, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}))
    result = CliRunner().invoke(app, ["curate", "samples/talk.mp4", "--out", str(tmp_path / "out")],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 2 and "samples/talk.mp4 is inside Ray's temporary copy of --working-dir" in result.output
    assert not (tmp_path / "out").exists()
    import typer

    from portraitflow.jobs.curate import _refuse_inputs_in_working_dir

    shared = tmp_path / "shared" / "talk.mp4"  # storage every node sees
    shared.parent.mkdir()
    shared.write_bytes(b"")
    (unpacked / "inputs.txt").write_text(f"{shared}\n")
    _refuse_inputs_in_working_dir(["inputs.txt"])  # a list carried by --working-dir, naming absolute paths
    (unpacked / "relative.txt").write_text("samples/talk.mp4\n")
    with pytest.raises(typer.BadParameter, match="talk.mp4 is inside Ray's temporary copy"):
        _refuse_inputs_in_working_dir(["relative.txt"])


def test_no_address_starts_a_local_ray_even_beside_a_ray_start_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray joins a cluster `ray start` left on this machine when given no address, where num_cpus is
    refused (ValueError) and the work would land on that cluster; no address means a local Ray."""
    import ray

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    runtime.init_ray(RayConfig(num_cpus=2))
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 2


def test_submitted_job_env_merges_without_conflict(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside `ray job submit --runtime-env-json ...` the job's variables are already in the driver's
    environment; giving them again makes Ray refuse to merge and ray.init fail."""
    from ray.runtime_env.runtime_env import _merge_runtime_env

    job_env = {"working_dir": "gcs://_ray_pkg_x.zip", "py_modules": ["gcs://_ray_pkg_y.zip"],
               "env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}
    monkeypatch.setenv(runtime.JOB_CONFIG_ENV_VAR, json.dumps({"runtime_env": job_env}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("PORTRAITFLOW_MODELS", "/models")
    ours = worker_runtime_env(Path("/tmp/stage/portraitflow"))
    assert ours == {"env_vars": {"PORTRAITFLOW_MODELS": "/models"}}
    merged = _merge_runtime_env(job_env, ours)
    assert merged is not None, "Ray would refuse this runtime_env"
    assert merged["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "PORTRAITFLOW_MODELS": "/models"}
    assert merged["working_dir"] == job_env["working_dir"]


def test_staged_code_imports_as_the_portraitflow_namespace(tmp_path: Path) -> None:
    """The staged tree is what workers import: `portraitflow.*` resolves into it, ahead of any
    installed copy, with no stray caches."""
    root = stage_driver_code(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == sorted(runtime.CODE_PACKAGES)
    assert not list(root.rglob("__pycache__"))
    probe = "import portraitflow.jobs.runtime as m, portraitflow.operators as o; print(m.__file__); print(o.__file__)"
    result = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(tmp_path), "PATH": ""},
                            capture_output=True, text=True, check=True)
    for line in result.stdout.split():
        assert Path(line).is_relative_to(root), line


def test_ray_up_config_is_valid_for_the_autoscaler() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "ray_cluster.yaml").read_text()))
    validate_config(config)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert "GPU" not in types["cpu_worker"]["resources"]
    for name in ("cpu_worker", "gpu_worker"):
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"] <= config["max_workers"]
    assert types["gpu_worker"]["docker"]["worker_image"].endswith("-gpu")
    assert config["docker"]["image"].endswith("-cpu")
    assert any("portraitflow doctor" in c for c in config["setup_commands"])
    assert any("--require-gpu" in c for c in types["gpu_worker"]["worker_setup_commands"])


def test_rayjob_manifest_runs_curate_on_the_project_image() -> None:
    job = yaml.safe_load((ROOT / "jobs/k8s/rayjob-curate.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"].split()[:2] == ["portraitflow", "curate"]
    assert "--out /data/" in spec["entrypoint"]
    assert "MLFLOW_TRACKING_URI" in yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == __import__("ray").__version__
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and gpu["image"].endswith("-gpu")
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in groups.values()]
    for pod in pods:  # every pod sees the shared output volume
        assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["portraitflow-data"]
    storage = yaml.safe_load((ROOT / "jobs/k8s/storage.yaml").read_text())
    assert storage["metadata"]["name"] == "portraitflow-data" and storage["spec"]["accessModes"] == ["ReadWriteMany"]


def test_image_is_built_by_the_install_script() -> None:
    dockerfile = (ROOT / "jobs/Dockerfile").read_text()
    assert "bash jobs/install.sh" in dockerfile
    assert "jobs/constraints.txt" in dockerfile  # torch at the pinned version, CPU or CUDA by index
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_every_cluster_file_names_the_image_of_this_version() -> None:
    """`ray_cluster.yaml` ran 0.1.0 images while the docs built and pushed 0.2.0: `ray up` pulled a
    tag never pushed, or last release's code, which the head's driver then shipped to every worker."""
    import re
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    files = [ROOT / "ray_cluster.yaml", ROOT / "jobs/Dockerfile", ROOT / "docs/cluster.md",
             *sorted((ROOT / "jobs/k8s").glob("*.yaml"))]
    tags = {(path.name, tag) for path in files
            for tag in re.findall(r"portraitflow:([\w.]+)-(?:cpu|gpu)", path.read_text())}
    assert {name for name, _ in tags} >= {"ray_cluster.yaml", "Dockerfile", "cluster.md", "rayjob-curate.yaml"}
    assert {tag for _, tag in tags} == {version}, sorted(tags)
