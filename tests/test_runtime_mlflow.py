from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from portraitflow.jobs.config.runtime import MLflowConfig
from portraitflow.jobs.runtime import mlflow_run, mlflow_tracking_uri


def test_sqlite_store_keeps_artifacts_beside_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store = tmp_path / "store"
    store.mkdir()
    cfg = MLflowConfig(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    with mlflow_run(cfg, "artifact-location", tmp_path / "out") as run:
        note = tmp_path / "note.txt"
        note.write_text("hello")
        mlflow.log_artifact(str(note))
    assert list((store / "mlartifacts").rglob("note.txt"))
    assert not (elsewhere / "mlruns").exists()
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


def test_default_store_is_sqlite_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(MLflowConfig()) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert mlflow_tracking_uri(MLflowConfig()) == "http://tracking:5000"
    assert mlflow_tracking_uri(MLflowConfig(tracking_uri="sqlite:////data/x.db")) == "sqlite:////data/x.db"
    # a relative store is made absolute: recorded by a sweep, it named another store from elsewhere
    assert mlflow_tracking_uri(MLflowConfig(tracking_uri="sqlite:///x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    for kept in ("sqlite:///file:x.db?mode=memory&uri=true", "sqlite:///:memory:", "sqlite:///"):
        assert mlflow_tracking_uri(MLflowConfig(tracking_uri=kept)) == kept


def test_disabled_tracking_yields_no_run() -> None:
    with mlflow_run(MLflowConfig(enabled=False), "unused", Path("out")) as run:
        assert run is None


def test_a_run_killed_outright_is_marked_killed_by_the_next_run_into_its_folder(tmp_path: Path) -> None:
    """SIGKILL leaves a run RUNNING; the next job into the same folder (which holds it) ends it."""
    import mlflow

    cfg = MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow_run(cfg, "killed", tmp_path / "out") as killed:
        pass
    with mlflow_run(cfg, "killed", tmp_path / "other") as other:
        pass
    client = mlflow.MlflowClient(cfg.tracking_uri)
    for run in (killed, other):
        client.update_run(run.info.run_id, status="RUNNING")  # as a killed process leaves it
    with mlflow_run(cfg, "killed", tmp_path / "out" / ".." / "out") as rerun:
        assert client.get_run(killed.info.run_id).info.status == "KILLED"
        assert client.get_run(other.info.run_id).info.status == "RUNNING"  # another folder's run: left alone
        assert rerun.info.run_name == "out"
    assert client.get_run(rerun.info.run_id).info.status == "FINISHED"


def test_a_terminated_or_interrupted_run_ends_killed_and_a_failed_one_failed(tmp_path: Path) -> None:
    """SIGTERM (`Terminated`) aborted the process under Ray's handler and left the run RUNNING;
    Ctrl-C ended it FAILED, as if the job itself had failed."""
    import mlflow

    from portraitflow.jobs.runtime import Terminated

    cfg = MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    statuses = {}
    for stop in (Terminated, KeyboardInterrupt, SystemExit, RuntimeError):
        with pytest.raises(stop):
            with mlflow_run(cfg, "stopped", tmp_path / stop.__name__) as run:
                raise stop()
        statuses[stop.__name__] = mlflow.MlflowClient(cfg.tracking_uri).get_run(run.info.run_id).info.status
    assert statuses == {"Terminated": "KILLED", "KeyboardInterrupt": "KILLED", "SystemExit": "KILLED",
                        "RuntimeError": "FAILED"}


def test_every_flow_ends_a_raised_run_by_one_rule(tmp_path: Path) -> None:
    """Five hand-written endings disagreed: SystemExit ended an evaluation FAILED and a sweep KILLED."""
    from portraitflow.jobs.runtime import Terminated, terminated_on_raise

    class Client:
        def set_terminated(self, run_id: str, status: str) -> None:
            ended[run_id] = status

    ended: dict[str, str] = {}
    for stop in (Terminated, KeyboardInterrupt, SystemExit, RuntimeError, ValueError):
        with pytest.raises(stop), terminated_on_raise(Client(), stop.__name__):
            raise stop()
    with terminated_on_raise(Client(), "completed"):
        pass  # a completed block ends its run itself
    assert ended == {"Terminated": "KILLED", "KeyboardInterrupt": "KILLED", "SystemExit": "KILLED",
                     "RuntimeError": "FAILED", "ValueError": "FAILED"}


def test_too_few_cpus_stop_a_local_run_and_are_said_on_a_cluster(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A fixed-size cluster never gets the CPUs; an autoscaling one may: the run goes on, but says so."""
    import ray

    from portraitflow.jobs.config.runtime import RayConfig
    from portraitflow.jobs.runtime import NotEnoughResources, require_resource

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    require_resource(RayConfig(), "CPU", 2.0, lambda cpus: "unused")
    with pytest.raises(NotEnoughResources, match="needs 3; Ray has 2"):
        require_resource(RayConfig(), "CPU", 3.0, lambda cpus: f"needs 3; Ray has {cpus:g}")
    require_resource(RayConfig(address="10.0.0.1:6379"), "CPU", 3.0, lambda cpus: f"needs 3; Ray has {cpus:g}")
    assert "needs 3; Ray has 2 now: the run waits until an autoscaler adds nodes" in caplog.text


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:  # bound, then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_path_for_the_tracking_uri_is_a_one_line_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--mlflow-uri ./x.db` made MLflow's file store, in maintenance mode: a 70-line traceback
    after Ray had started and the output folder was made."""
    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app
    from portraitflow.jobs.runtime import ServiceUnreachable, check_mlflow_reachable

    monkeypatch.chdir(tmp_path)
    for uri in ("./x.db", "file:///tmp/mlruns"):
        with pytest.raises(ServiceUnreachable, match="is a path: give sqlite:///"):
            check_mlflow_reachable(MLflowConfig(tracking_uri=uri))
    with pytest.raises(ServiceUnreachable, match="has a scheme no tracking store takes .*sqlite"):
        check_mlflow_reachable(MLflowConfig(tracking_uri="foo://bar"))  # was two chained tracebacks
    with pytest.raises(ServiceUnreachable, match="in a folder that does not exist"):
        check_mlflow_reachable(MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}"))
    check_mlflow_reachable(MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'x.db'}"))
    check_mlflow_reachable(MLflowConfig(tracking_uri="./x.db", enabled=False))
    result = CliRunner().invoke(app, ["curate", str(tmp_path), "--out", str(tmp_path / "out"), "--mlflow-uri", "./x.db"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 2 and f"give sqlite:///{tmp_path / 'x.db'}" in " ".join(result.output.replace("│", " ").split())
    assert not (tmp_path / "out").exists()


def test_a_cluster_or_server_nothing_answers_on_is_a_one_line_usage_error(tmp_path: Path) -> None:
    import socket

    from typer.testing import CliRunner

    from portraitflow.jobs.cli import app
    from portraitflow.jobs.config.runtime import RayConfig
    from portraitflow.jobs.runtime import ServiceUnreachable, check_mlflow_reachable, check_ray_reachable

    closed = _closed_port()
    with pytest.raises(ServiceUnreachable, match=f"cannot reach the Ray cluster at 127.0.0.1:{closed}"):
        check_ray_reachable(RayConfig(address=f"127.0.0.1:{closed}"))
    with pytest.raises(ServiceUnreachable, match="is a Ray dashboard URL"):
        check_ray_reachable(RayConfig(address="http://127.0.0.1:8265"))
    with pytest.raises(ServiceUnreachable, match=f"cannot reach the MLflow server at http://127.0.0.1:{closed}"):
        check_mlflow_reachable(MLflowConfig(tracking_uri=f"http://user:secret@127.0.0.1:{closed}"))
    with socket.socket() as server, pytest.MonkeyPatch.context() as quick:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        quick.setattr("portraitflow.jobs.runtime.REACH_TIMEOUT_S", 0.5)
        quick.setattr("portraitflow.jobs.runtime.API_ANSWER_TIMEOUT_S", 0.5)
        # takes connections, never answers: Ray and MLflow's client waited on it for many minutes
        with pytest.raises(ServiceUnreachable, match="takes connections but does not answer as Ray does"):
            check_ray_reachable(RayConfig(address=f"127.0.0.1:{port}"))
        with pytest.raises(ServiceUnreachable, match="is a Ray Client address"):  # curate crashed inside Ray Data
            check_ray_reachable(RayConfig(address=f"ray://127.0.0.1:{port}"))
        with pytest.raises(ServiceUnreachable, match="takes connections but gave no HTTP answer within 0.5 s"):
            check_mlflow_reachable(MLflowConfig(tracking_uri=f"http://127.0.0.1:{port}"))
    check_mlflow_reachable(MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"))
    with pytest.raises(ServiceUnreachable, match="is not valid"):
        check_mlflow_reachable(MLflowConfig(tracking_uri="http://127.0.0.1:abc"))
    with pytest.MonkeyPatch.context() as proxied:  # a proxy answers for the server: not checked
        proxied.setenv("http_proxy", "http://proxy.example:3128")
        proxied.delenv("no_proxy", raising=False)
        proxied.delenv("NO_PROXY", raising=False)
        check_mlflow_reachable(MLflowConfig(tracking_uri=f"http://mlflow.example:{closed}"))
    check_mlflow_reachable(MLflowConfig(tracking_uri=f"http://127.0.0.1:{closed}", enabled=False))

    for flag, value in (("--mlflow-uri", f"http://127.0.0.1:{closed}"), ("--ray-address", f"127.0.0.1:{closed}")):
        result = CliRunner().invoke(app, ["curate", str(tmp_path), "--out", str(tmp_path / "out"), flag, value])
        assert result.exit_code == 2 and "cannot reach" in result.output and "secret" not in result.output
        assert not (tmp_path / "out").exists()
    from_env = CliRunner().invoke(app, ["curate", str(tmp_path), "--out", str(tmp_path / "out")],
                                  env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}", "COLUMNS": "400"})
    assert from_env.exit_code == 2 and "Invalid value for MLFLOW_TRACKING_URI: cannot reach" in from_env.output


def test_a_cluster_that_refuses_the_driver_says_what_to_export(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    import ray

    from portraitflow.jobs import cli
    from portraitflow.jobs.config.runtime import RayConfig
    from portraitflow.jobs.runtime import ServiceUnreachable, init_ray

    def refused(**_):
        try:
            raise RuntimeError("InvalidAuthToken: RAY_AUTH_MODE is currently 'disabled' (not 'token')")
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379") from cause

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    with pytest.raises(ServiceUnreachable, match="export RAY_AUTH_MODE=token"):
        init_ray(RayConfig(address="10.0.0.1:6379", ship_code=False))
    monkeypatch.setattr(cli, "app", lambda: init_ray(RayConfig(address="10.0.0.1:6379", ship_code=False)))
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2 and capsys.readouterr().err.startswith("Error: the Ray cluster at 10.0.0.1:6379")


def test_log_values_records_params_and_metrics_of_a_run_in_one_request(tmp_path: Path) -> None:
    from portraitflow.jobs.runtime import ensure_experiment, log_values, mlflow_client

    client = mlflow_client(MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"))
    run_id = client.create_run(ensure_experiment(client, "values")).info.run_id
    long_value = "x" * 2000  # a config value past the 500 characters older MLflow kept
    log_values(client, run_id, params={f"p{i}": i for i in range(150)} | {"long": long_value},
               metrics={"psnr": 31.5, "jobs_ok": 3})
    data = client.get_run(run_id).data
    assert len(data.params) == 151 and data.params["long"] == long_value and data.params["p149"] == "149"
    assert data.metrics == {"psnr": 31.5, "jobs_ok": 3.0}


def test_a_deleted_experiment_is_a_one_line_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """The MLflow UI's delete keeps the name; the next job crashed with a traceback on it."""
    from portraitflow.jobs import cli
    from portraitflow.jobs.runtime import ExperimentDeleted, ensure_experiment, mlflow_client

    cfg = MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow_client(cfg)
    client.delete_experiment(ensure_experiment(client, "flow"))
    with pytest.raises(ExperimentDeleted, match="'flow' .* is deleted: restore it .*mlflow experiments restore"):
        with mlflow_run(cfg, "flow", tmp_path / "out"):
            pass
    monkeypatch.setattr(cli, "app", lambda: ensure_experiment(client, "flow"))
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 2 and "is deleted" in capsys.readouterr().err


def test_every_matching_run_is_found_past_a_search_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep's report listed its first 1000 children only."""
    from portraitflow.jobs import runtime

    client = runtime.mlflow_client(MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    experiment = runtime.ensure_experiment(client, "many")
    for _ in range(5):
        client.create_run(experiment, tags={"sweep": "s"})
    monkeypatch.setattr(runtime, "SEARCH_PAGE", 2)
    assert len(runtime.search_all_runs(client, [experiment], "tags.sweep = 's'")) == 5


def test_the_latest_run_into_a_folder_is_found_in_any_experiment(tmp_path: Path) -> None:
    """How an evaluation names the animate run of its results, and a sweep the curation run of its shards."""
    import time

    from mlflow import MlflowClient

    from portraitflow.jobs.runtime import FOLDER_TAG, folder_tag, latest_run_into

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert latest_run_into(client, tmp_path / "curated") is None
    tags = {FOLDER_TAG: folder_tag(tmp_path / "curated")}
    client.create_run(client.create_experiment("portraitflow-curate"), tags=tags)
    time.sleep(0.01)
    later = client.create_run(client.create_experiment("elsewhere"), tags=tags).info.run_id
    time.sleep(0.01)
    killed = client.create_run("0", tags=tags).info.run_id
    client.set_terminated(killed, "KILLED")
    client.create_run("0", tags={FOLDER_TAG: folder_tag(tmp_path / "other")})
    assert latest_run_into(client, tmp_path / "curated") is None  # none finished yet
    client.set_terminated(later, "FINISHED")
    assert latest_run_into(client, tmp_path / "curated") == later  # not the killed one after it
    assert latest_run_into(client, tmp_path / "curated", finished=False) == killed


@pytest.mark.parametrize(("status", "refused"), [(404, True), (401, True), (403, True), (200, False), (500, False)])
def test_a_server_that_refuses_mlflows_api_is_a_one_line_usage_error(status: int, refused: bool, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray dashboard's port given as --mlflow-uri (it answered 401) passed the port check, and the
    run ended in a 73-line traceback after Ray had started."""
    import http.server
    import threading

    from portraitflow.jobs.runtime import ServiceUnreachable, check_mlflow_reachable

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the handler's name
            body = b'{"experiments": []}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_AWS_SIGV4"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials
    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        if refused:
            with pytest.raises(ServiceUnreachable, match=f"answered {status} to an MLflow API call"):
                check_mlflow_reachable(MLflowConfig(tracking_uri=uri))
        else:
            check_mlflow_reachable(MLflowConfig(tracking_uri=uri))
        if status == 401:  # with credentials, the probe (which sends none) decides nothing
            (tmp_path / ".mlflow").mkdir()
            (tmp_path / ".mlflow" / "credentials").write_text("[mlflow]\nmlflow_tracking_username = u\n")
            check_mlflow_reachable(MLflowConfig(tracking_uri=uri))
    finally:
        server.shutdown()
        server.server_close()


def test_runs_started_together_on_a_new_sqlite_store_all_open_it(tmp_path: Path) -> None:
    """The repro: two animate runs started at once in a new folder raced to create mlflow.db's
    tables; one failed in a SQLAlchemy traceback, at times leaving a file every later run failed on."""
    import subprocess
    import sys

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = ("import sys\nfrom portraitflow.jobs.config.runtime import MLflowConfig\n"
              "from portraitflow.jobs.runtime import ensure_experiment, mlflow_client\n"
              "sys.stdin.read()\n"  # all start, then open the store at once
              f"ensure_experiment(mlflow_client(MLflowConfig(tracking_uri={store!r})), 'together')\n")
    runs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(4)]
    for run in runs:
        run.stdin.close()
    errors = [run.stderr.read() for run in runs]
    assert [run.wait(timeout=120) for run in runs] == [0] * 4, errors


def test_a_file_that_is_no_usable_store_is_a_one_line_usage_error(tmp_path: Path) -> None:
    from portraitflow.jobs.runtime import ServiceUnreachable, mlflow_client

    (tmp_path / "mlflow.db").write_bytes(b"not a database, but not empty either" * 100)
    with pytest.raises(ServiceUnreachable, match=r"mlflow\.db cannot be opened .*move it aside"):
        mlflow_client(MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))


def test_a_store_this_user_cannot_write_is_a_one_line_usage_error(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only store passed the reading check and crashed the run at its first write (240 lines
    of SQLAlchemy); a folder not writable took about 100 s of MLflow's retries, then said to move
    aside a file that was not there. (Root writes whatever the modes say: the refusal is simulated.)"""
    from portraitflow.jobs.runtime import ServiceUnreachable, mlflow_client

    readonly = tmp_path / "readonly"
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not Path(path).is_relative_to(readonly) and access(path, mode))
    missing = tmp_path / "missing"
    with pytest.raises(ServiceUnreachable, match=rf"cannot be written \(its folder {missing} does not exist\)"):
        mlflow_client(MLflowConfig(tracking_uri=f"sqlite:///{missing / 'mlflow.db'}"))
    readonly.mkdir()
    with pytest.raises(ServiceUnreachable, match=rf"mlflow\.db cannot be written \(its folder {readonly} is not writable\)"):
        mlflow_client(MLflowConfig(tracking_uri=f"sqlite:///{readonly / 'mlflow.db'}"))
    store = MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow_client(store).create_experiment("archived")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "mlflow.db" and access(path, mode))
    with pytest.raises(ServiceUnreachable, match=r"mlflow\.db cannot be written \(the file is not writable\)"):
        mlflow_client(store)
    assert mlflow_client(store, writing=False).get_experiment_by_name("archived")  # `report` on an archived store


def test_a_port_that_answers_http_is_no_ray_cluster_and_plain_http_no_tls_server() -> None:
    """The dashboard's port given without `http://` (what people export for `ray job submit`) passed
    the connect check and `ray.init` retried for ever; `https://` to a plain-HTTP MLflow server hung
    the run silently. Ray's GCS speaks HTTP/2 (its settings frame first): that passes."""
    import http.server
    import socketserver
    import threading

    from portraitflow.jobs.config.runtime import RayConfig
    from portraitflow.jobs.runtime import ServiceUnreachable, check_mlflow_reachable, check_ray_reachable

    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args) -> None:
            pass

    class Grpc(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"\x00\x00\x18\x04\x00\x00\x00\x00\x00")  # an HTTP/2 SETTINGS frame

    for handler in (Quiet, Grpc):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        try:
            if handler is Quiet:
                with pytest.raises(ServiceUnreachable, match=f"127.0.0.1:{port} answers HTTP, as a Ray dashboard"):
                    check_ray_reachable(RayConfig(address=f"127.0.0.1:{port}"))
                with pytest.raises(ServiceUnreachable, match="does not speak TLS: give http://, not https://"):
                    check_mlflow_reachable(MLflowConfig(tracking_uri=f"https://127.0.0.1:{port}"))
                check_mlflow_reachable(MLflowConfig(tracking_uri=f"http://127.0.0.1:{port}"))  # answers: an MLflow
            else:
                check_ray_reachable(RayConfig(address=f"127.0.0.1:{port}"))
        finally:
            server.shutdown()
            server.server_close()


def test_a_store_gone_after_the_work_is_one_warning_and_the_job_ends_as_its_work_did(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A tracking server that went away during a job held it 9 minutes in MLflow's retries after
    every output was written, then ended it in a traceback, exit 1: a scheduler ran it all again."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from portraitflow.jobs.runtime import SERVER_RETRIES, recorded_after_the_work

    def gone(*_: object, **__: object) -> None:
        raise MlflowException("API request to http://tracking:5000/api/2.0/mlflow/runs/log-batch failed with "
                              "exception HTTPConnectionPool: Max retries exceeded\n(Connection refused)")

    for name in SERVER_RETRIES:
        monkeypatch.delenv(name, raising=False)
    end_run = mlflow.end_run
    try:
        with caplog.at_level(logging.WARNING), mlflow_run(MLflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
                                                          "gone", tmp_path / "out"):
            monkeypatch.setattr(mlflow, "log_params", gone)
            monkeypatch.setattr(mlflow, "end_run", gone)
            with recorded_after_the_work(tmp_path / "out"):
                mlflow.log_params({"fps": 25})
    finally:
        end_run()  # the run the failed end left active in this process
    assert {name: os.environ[name] for name in SERVER_RETRIES} == SERVER_RETRIES  # bounded retries
    said = caplog.text
    assert (f"MLflow could not record this run (API request to http://tracking:5000/api/2.0/mlflow/runs/log-batch "
            f"failed with exception HTTPConnectionPool: Max retries exceeded (Connection refused)); the outputs in "
            f"{tmp_path / 'out'} are complete") in said and "could not be ended" in said
    refused = MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE)
    with pytest.raises(MlflowException, match="Changing param"), recorded_after_the_work(tmp_path):
        raise refused  # the store refusing what it was given: our bug, not the store gone


def test_animate_names_no_run_when_the_server_has_gone_since(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    """After its jobs, animate looks its run up to name it: with the server gone that lookup was the
    traceback, exit 1, that the recording's warning had just avoided."""
    from portraitflow.jobs.animate import _say_run
    from portraitflow.jobs.config import load_config

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    _say_run(load_config(None, ["mlflow.tracking_uri=http://127.0.0.1:9"]), tmp_path)
    assert capsys.readouterr().out == ""
