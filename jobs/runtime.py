"""Connecting to Ray and MLflow: local embedded defaults, the same code on a cluster."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from portraitflow.jobs.config.runtime import MLflowConfig, RayConfig
from portraitflow.operators.atomic import FolderBusy, atomic_write
from portraitflow.operators.job_status import clipped, one_line

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

DEFAULT_MLFLOW_DB = "mlflow.db"
FOLDER_TAG = "portraitflow.out_folder"  # which output folder a run wrote (`folder_tag`)
FOLDER_PATH_TAG = "portraitflow.out_path"  # the same folder as a path a user can read
CODE_PACKAGES = ("jobs", "pipelines", "operators", "models")
JOB_CONFIG_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job manager on a submitted driver

log = logging.getLogger(__name__)


def ray_address(cfg: RayConfig) -> str | None:
    """The cluster to join, or None for a local Ray."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def local_resource(cfg: RayConfig, resource: str) -> float | None:
    """How much of `resource` ("CPU", "memory" in bytes) the local Ray has, or None on a cluster:
    there what is present now (nothing on a fresh autoscaling cluster) says nothing about what the
    autoscaler adds as work waits."""
    import ray

    return None if ray_address(cfg) else ray.cluster_resources().get(resource, 0)


class ServiceUnreachable(RuntimeError):
    """The Ray cluster or the MLflow server named cannot be reached (or refuses this driver)."""


class Terminated(BaseException):
    """SIGTERM (a scheduler stopping the job, `ray job stop`), raised in the main thread so what ends
    an interrupted job cleanly runs; Ray's own handler aborts the process (exit 134), leaving its
    MLflow run RUNNING. A BaseException, like KeyboardInterrupt (which Click would turn into exit 1),
    so it is never taken for a job's own failure."""


def _terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup the first started
    raise Terminated()


def stop_on_sigterm() -> None:
    """SIGTERM raises `Terminated` in the main thread (elsewhere signals cannot be handled). The CLI
    takes it first; `init_ray` again after `ray.init`, which installs Ray's own handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


class ExperimentDeleted(RuntimeError):
    """The MLflow experiment a job's runs go to is deleted, so it takes none (`ensure_experiment`)."""


#: runs per `search_runs` page, MLflow's most (`search_all_runs`)
SEARCH_PAGE = 1000


#: seconds to wait for a Ray cluster's or an MLflow server's port before calling it unreachable
REACH_TIMEOUT_S = 5.0
#: seconds an MLflow server that took the connection has to answer one API call: a busy or cold
#: server can be slow; one that never answers kept MLflow's client waiting for many minutes
API_ANSWER_TIMEOUT_S = 30.0


def check_ray_reachable(cfg: RayConfig) -> None:
    """ServiceUnreachable, within seconds, for a cluster address nothing answers on (Ray itself
    retries for minutes), a dashboard URL given as one, or a Ray Client address (`ray://`), on
    which Ray Data's pipelines fail inside Ray. "auto" and a local Ray pass."""
    address = ray_address(cfg)
    if not address or address == "auto":
        return
    join = ("a driver joins the cluster at HOST:6379 (the address `ray start --head` prints), or runs on the "
            "embedded Ray with neither --ray-address nor RAY_ADDRESS set")
    if address.startswith(("http://", "https://")):
        raise ServiceUnreachable(f"{address} is a Ray dashboard URL, what `ray job submit --address` takes; {join}")
    if address.startswith("ray://"):
        raise ServiceUnreachable(
            f"{address} is a Ray Client address, through which Ray Data's pipelines fail inside Ray; {join}, "
            "or is submitted with `ray job submit` (docs/cluster.md)")
    host, _, port = address.rpartition(":")
    if host and port.isdigit():
        _check_gcs(host.strip("[]"), int(port), address, join)


def _check_gcs(host: str, port: int, address: str, join: str) -> None:
    """ServiceUnreachable unless a gRPC server answers on the port: Ray's GCS (HTTP/2) sends its
    settings frame at once, while the dashboard's port given without `http://` answers HTTP/1, and
    a port that takes connections and never answers stays silent; `ray.init` retried either for
    ever. A connection closed without a word (TLS, say) is left to Ray."""
    what = f"the Ray cluster at {address}"
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT_S) as connection:
            connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                reply = connection.recv(16)
            except TimeoutError:
                raise ServiceUnreachable(f"{what} takes connections but does not answer as Ray does within "
                                         f"{REACH_TIMEOUT_S:g} s; {join}") from None
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ServiceUnreachable(f"cannot reach {what}: {reason}") from None
    if reply.startswith(b"HTTP/"):
        raise ServiceUnreachable(f"{address} answers HTTP, as a Ray dashboard (the port `ray job submit "
                                 f"--address` takes) or a web server does, not Ray's GCS; {join}")


def without_credentials(uri: str) -> str:
    """`uri` as it may be printed: a user and password in it removed (a URI without them comes back
    as it is: rebuilt, `sqlite:////abs` would lose a slash)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))  # host and port as written


def sqlite_store_path(uri: str) -> Path | None:
    """The database file of an `sqlite:///PATH` tracking URI, None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_mlflow_reachable(cfg: MLflowConfig) -> None:
    """ServiceUnreachable, within seconds, for a tracking server nothing answers on (MLflow's
    client retries for about four minutes). Stores that are not servers pass, and so does a server
    reached through an HTTP proxy (the proxy answers for it)."""
    uri = mlflow_tracking_uri(cfg)
    parts = urlsplit(uri)
    if cfg.enabled and parts.scheme in ("", "file"):  # MLflow's file store is in maintenance mode: a traceback after Ray started
        path = Path(parts.path if parts.scheme else uri).expanduser().absolute()
        raise ServiceUnreachable(f"the MLflow tracking URI {uri!r} is a path: give sqlite:///{path} (a store in that "
                                 "file) or http://HOST:PORT (a tracking server)")
    if cfg.enabled:
        _check_store_scheme(uri)
    database = sqlite_store_path(uri)
    if cfg.enabled and database is not None and not database.parent.is_dir():
        raise ServiceUnreachable(f"the MLflow store {uri!r} is in a folder that does not exist")
    if not cfg.enabled or parts.scheme not in ("http", "https") or not parts.hostname:
        return
    proxies = urllib.request.getproxies()
    if (parts.scheme in proxies or "all" in proxies) and not urllib.request.proxy_bypass(parts.hostname):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:  # a port that is not a number
        raise ServiceUnreachable(f"the MLflow tracking URI {without_credentials(uri)!r} is not valid: {exc}") from None
    shown = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))
    _connect(parts.hostname, port, f"the MLflow server at {shown}")
    _check_mlflow_api(uri, shown)


def _check_store_scheme(uri: str) -> None:
    """ServiceUnreachable for a URI whose scheme no installed tracking store (MLflow's own or a
    plugin's) takes: MLflow refused it in two chained tracebacks."""
    try:  # MLflow's registry is not public API: where it moved, MLflow's own error stands
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
        from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

        known = set(_tracking_store_registry._registry)
    except (ImportError, AttributeError):
        return
    try:
        _tracking_store_registry.get_store_builder(uri)
    except UnsupportedModelRegistryStoreURIException:
        schemes = ", ".join(sorted(s for s in known if s not in ("", "file")))
        raise ServiceUnreachable(f"the MLflow tracking URI {without_credentials(uri)!r} has a scheme no tracking store takes "
                                 f"(these do: {schemes})") from None


def _check_mlflow_api(uri: str, shown: str) -> None:
    """ServiceUnreachable where what answers at `uri` refuses MLflow's API outright: 404 (another
    service on that port: a Ray dashboard given as the server), or 401/403 while MLflow has no
    credentials to send (its environment variables, `~/.mlflow/credentials`, an auth plugin: this
    probe sends none of them, so with any, a refusal says nothing of the run's requests); the run
    would end in a 70-line traceback after Ray started. One request, no retries; anything else (no
    answer in time, a TLS setting, a server error) is left to the run."""
    import urllib.error

    from mlflow.utils.credentials import get_default_host_creds

    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    try:
        urllib.request.urlopen(request, timeout=API_ANSWER_TIMEOUT_S).close()
    except urllib.error.HTTPError as exc:
        creds = get_default_host_creds(uri)
        credentials = any((creds.username, creds.token, creds.aws_sigv4, creds.auth))
        if exc.code == 404 or (exc.code in (401, 403) and not credentials):
            needs = "" if exc.code == 404 else (", or one that needs credentials (MLFLOW_TRACKING_USERNAME and "
                                                "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN)")
            raise ServiceUnreachable(f"{shown} answered {exc.code} to an MLflow API call: not an MLflow tracking "
                                     f"server{needs}") from None
    except (OSError, ValueError) as exc:  # a reset, a certificate this probe cannot check: the run's client says more
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):  # the run's client waited on it for minutes, silently
            raise ServiceUnreachable(f"{shown} takes connections but gave no HTTP answer within "
                                     f"{API_ANSWER_TIMEOUT_S:g} s: a server that hangs?") from None
        if isinstance(reason, ssl.SSLError) and reason.reason == "WRONG_VERSION_NUMBER":
            raise ServiceUnreachable(f"{shown} does not speak TLS: give http://, not https://") from None


def _connect(host: str, port: int, what: str) -> None:
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ServiceUnreachable(f"cannot reach {what}: {reason}") from None


class FolderOfAnotherFlow(FolderBusy):
    """The output folder holds another flow's outputs (`folder_owner`)."""


#: in an output folder, the verb (curate, animate, sweep, evaluate) whose outputs it holds: one
#: flow's run into another's folder would mix their files (a report/, a ledger, a lock)
OWNER_MARK = ".portraitflow-flow"
#: what each flow's folder holds, for one written before the mark existed (animate keeps a .state/ too)
_FOLDER_CONTENTS = ((".state/done", "curate"), ("manifest.parquet", "curate"), ("results.parquet", "animate"),
                    ("summary.csv", "sweep"), ("per_video.parquet", "evaluate"))


def folder_owner(folder: Path) -> str | None:
    """The verb whose outputs `folder` holds: its OWNER_MARK, else what it holds; None for neither."""
    mark = folder / OWNER_MARK
    if mark.is_file():
        return mark.read_text().strip()
    return next((flow for name, flow in _FOLDER_CONTENTS if (folder / name).exists()), None)


def check_folder_owner(folder: Path, flow: str) -> None:
    """FolderOfAnotherFlow when `folder` holds the outputs of a verb other than `flow`."""
    owner = folder_owner(folder)
    if owner not in (None, flow):
        raise FolderOfAnotherFlow(f"{folder} holds the outputs of `portraitflow {owner}`, not {flow}: "
                                  f"give {flow} a folder of its own")


def claim_folder(folder: Path, flow: str) -> None:
    """Mark `folder` as `flow`'s, or FolderOfAnotherFlow when it holds another verb's outputs."""
    check_folder_owner(folder, flow)
    if not (folder / OWNER_MARK).is_file():
        atomic_write(folder / OWNER_MARK, f"{flow}\n")


class NotEnoughResources(ValueError):
    """A local Ray cannot run a flow's actors (beside the tasks that feed them)."""


def require_resource(cfg: RayConfig, resource: str, needed: float, shortfall: Callable[[float], str]) -> None:
    """NotEnoughResources(shortfall(have)) when a local Ray has less than `needed` of `resource`
    ("CPU", "GPU"): the run would wait forever. On a cluster a warning only: an autoscaler may add
    them, but a fixed-size cluster never will, and the run would otherwise wait without a word."""
    import ray

    have = ray.cluster_resources().get(resource, 0)
    if have >= needed:
        return
    if not ray_address(cfg):
        raise NotEnoughResources(shortfall(have))
    log.warning("%s now: the run waits until an autoscaler adds nodes (on a fixed-size cluster it never "
                "will; stop it and follow that advice)", shortfall(have))


def init_ray(cfg: RayConfig) -> None:
    """Join the configured cluster, or start Ray in-process; a no-op when already connected.

    Workers get the driver's settings through the runtime_env (worker_runtime_env), and on a
    cluster, with `ship_code`, the driver's own portraitflow code, so every node runs what the
    driver runs whatever its image holds.
    """
    import ray

    if ray.is_initialized():
        return
    try:
        _init_ray(cfg)
    finally:
        stop_on_sigterm()


def _init_ray(cfg: RayConfig) -> None:
    import ray

    address = ray_address(cfg)
    if not address:
        object_store = cfg.object_store_memory_mb * 1024 * 1024 if cfg.object_store_memory_mb else None
        ray.init(
            address="local",  # never a `ray start` cluster on this machine, which Ray would otherwise join
            num_cpus=cfg.num_cpus,
            object_store_memory=object_store,
            include_dashboard=False,
            runtime_env=worker_runtime_env() or None,
        )
        return
    with tempfile.TemporaryDirectory(prefix="portraitflow-code-") as stage:
        code = stage_driver_code(Path(stage)) if cfg.ship_code else None
        try:
            ray.init(address=address, runtime_env=worker_runtime_env(code) or None, log_to_driver=True)
        except ConnectionError as exc:  # unreachable, or refused (token authentication)
            raise ServiceUnreachable(_ray_refusal(address, exc)) from exc
        except ValueError as exc:
            if "address" not in str(exc).lower():  # a bad runtime_env, say: not the cluster's fault
                raise
            raise ServiceUnreachable(_ray_refusal(address, exc)) from exc


#: seconds a node has to answer `on_each_node` (its worker starts, with the shipped code, in seconds)
NODE_ANSWER_TIMEOUT_S = 120.0


def on_each_node(function: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """`function(*args)` run once on each alive node with CPUs (those whose workers run the flows'
    stages), by node ("ADDRESS (NODE ID prefix)"): what a node holds (model files) is its own, not
    the driver's. A node that has not answered within NODE_ANSWER_TIMEOUT_S, or that failed to run
    it, maps to a RuntimeError saying so."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0, max_retries=0)(function)
    asked = {f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})": remote.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(*args)
        for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0}
    ray.wait(list(asked.values()), num_returns=len(asked), timeout=NODE_ANSWER_TIMEOUT_S)
    answers: dict[str, Any] = {}
    for node, ref in asked.items():
        try:
            answers[node] = ray.get(ref, timeout=0)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            answers[node] = RuntimeError(f"no answer within {NODE_ANSWER_TIMEOUT_S:g} s")
        except ray.exceptions.RayError as exc:
            answers[node] = RuntimeError(" ".join(str(exc).split())[-300:])
    return answers


def _ray_refusal(address: str, exc: BaseException) -> str:
    """One line for a cluster that refused this driver, with what to do where Ray says it."""
    chain, cause = [], exc
    while cause is not None and len(chain) < 10:  # Ray names token auth in an error the last one chains
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    if any("RAY_AUTH_MODE" in part or "AuthToken" in part for part in chain):
        return (f"the Ray cluster at {address} refused this driver: it uses token authentication; export "
                "RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN, or the cluster's ~/.ray/auth_token) on the driver")
    return f"cannot join the Ray cluster at {address}: {one_line(str(exc))}"


def worker_runtime_env(code_dir: Path | None = None) -> dict[str, Any]:
    """The runtime_env this driver adds for its workers.

    PORTRAITFLOW_* variables (model roots, caches) hold on every node. MLflow's are not sent: only
    the driver records runs, and Ray shows a job's runtime_env to whoever reaches its dashboard
    (`MLFLOW_TRACKING_PASSWORD`, a token). Inside `ray job submit`, Ray merges this with the job's
    own runtime_env and refuses a key given twice, so whatever the job already sets is left to it.
    """
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("PORTRAITFLOW_")}
    job_env = submitted_job_runtime_env()
    env_vars = {k: v for k, v in env_vars.items() if k not in (job_env.get("env_vars") or {})}
    runtime_env: dict[str, Any] = {"env_vars": env_vars} if env_vars else {}
    if code_dir is not None and "py_modules" not in job_env:
        runtime_env["py_modules"] = [str(code_dir)]
    return runtime_env


def submitted_job_runtime_env() -> dict[str, Any]:
    """The runtime_env given to `ray job submit` (empty when this driver was not submitted)."""
    raw = os.environ.get(JOB_CONFIG_ENV_VAR)
    if not raw:
        return {}
    return dict(json.loads(raw).get("runtime_env") or {})


def stage_driver_code(stage: Path) -> Path:
    """Copy the driver's portraitflow packages into `stage/portraitflow` for runtime_env py_modules.

    The repository's folders become `portraitflow.*` only through the package-dir mapping of an
    install, so a submitted working directory alone gives workers no `portraitflow` package; the
    staged copy does, with the same layout as an installed wheel.
    """
    root = stage / "portraitflow"
    for name in CODE_PACKAGES:
        source = Path(importlib.import_module(f"portraitflow.{name}").__file__).parent
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def mlflow_tracking_uri(cfg: MLflowConfig) -> str:
    """Explicit URI, else MLFLOW_TRACKING_URI, else an sqlite store in the working directory. An
    sqlite store's path is made absolute: a sweep records its store for a rerun from anywhere,
    where a relative one named another (new, empty) store."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{Path.cwd() / DEFAULT_MLFLOW_DB}"
    database = sqlite_store_path(uri)
    # not :memory:, an SQLite URI filename (`file:x.db?uri=true`) or no path at all
    if database is not None and str(database) not in ("", ".") and not database.is_absolute() \
            and not str(database).startswith((":", "file:")):
        return f"sqlite:///{database.absolute()}"
    return uri


#: how a request to a tracking server that does not answer is retried, where the environment does
#: not say: 5 times, after 0, 2, 4, 8 and 16 s (about 30 s for a refused connection), each attempt
#: waiting 60 s at most for an answer, not MLflow's 7 retries over about 4 minutes of 120-s
#: attempts, which held a finished job 9 minutes after its server went away (`recorded_after_the_work`)
SERVER_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def mlflow_client(cfg: MLflowConfig, writing: bool = True) -> MlflowClient:
    """A client on the resolved tracking URI, also made the process default so that fluent calls
    (`mlflow.start_run`, `mlflow.log_*`) in this process record to the same store; an sqlite store
    this user cannot write is refused unless only `reading` (`report` on an archived store)."""
    import mlflow

    uri = mlflow_tracking_uri(cfg)
    _warn_if_store_is_temporary(uri)
    for name, value in SERVER_RETRIES.items():  # MLflow's own: 7 retries, about 4 minutes per request
        os.environ.setdefault(name, value)
    mlflow.set_tracking_uri(uri)
    database = sqlite_store_path(uri)
    if database is None:
        return mlflow.MlflowClient(uri)
    if writing and (why := _unwritable(database)):  # checked by reading alone, the store failed at its first write
        raise ServiceUnreachable(f"the MLflow store {database} cannot be written ({why}): give --mlflow-uri a store "
                                 "you can write")
    return _open_sqlite_store(uri, database)


def _open_sqlite_store(uri: str, database: Path) -> MlflowClient:
    """Open the store once, one process at a time. MLflow creates a new sqlite store's tables as
    it first opens it, so runs started together on a new store each created them and all but one
    failed, at times leaving a half-made file that every later run failed on; a lock on the store's
    folder (released when its holder ends, however it ends) takes the opening in turn.
    ServiceUnreachable, in one line, for a file that is no usable store."""
    import mlflow

    folder = None
    try:
        folder = os.open(database.parent, os.O_RDONLY)
        fcntl.flock(folder, fcntl.LOCK_EX)
        client = mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)
        return client
    except Exception as exc:  # noqa: BLE001 (sqlite's, SQLAlchemy's or MLflow's: the file is no usable store)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnreachable(f"the MLflow store {database} cannot be opened ({clipped(reason, 200)}): move it aside "
                                 "(the next run makes a new one) or give --mlflow-uri another store") from None
    finally:
        if folder is not None:
            os.close(folder)


def _unwritable(database: Path) -> str | None:
    """Why sqlite could not write the store, if it could not: it writes the file, and its journal
    beside it in the folder. A read-only store crashed the run at its first write with SQLAlchemy's
    traceback; a folder it cannot write in, after about 100 s of MLflow's retries."""
    if not database.parent.is_dir():
        return f"its folder {database.parent} does not exist"
    if not os.access(database.parent, os.W_OK | os.X_OK):
        return f"its folder {database.parent} is not writable"
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        return "the file is not writable"
    return None


@functools.cache  # once per store and process, however many runs a sweep makes
def _warn_if_store_is_temporary(uri: str) -> None:
    """Under `ray job submit --working-dir`, the working directory is Ray's unpacked copy, which
    every job with the same files shares and Ray deletes when it collects it: runs recorded in a
    store there (the default `sqlite:///mlflow.db`) are as good as lost."""
    database = sqlite_store_path(uri)
    if database is not None and in_submitted_working_dir(database):
        log.warning("MLflow store %s is inside this submitted job's working directory, a temporary copy Ray "
                    "deletes: give --mlflow-uri a tracking server (docs/cluster.md)", uri)


def in_submitted_working_dir(path: Path) -> bool:
    """Whether `path` lies where Ray unpacks a submitted job's working directory (the driver starts
    there; its entrypoint may `cd` elsewhere), which Ray may delete and other nodes do not see."""
    if not submitted_job_runtime_env().get("working_dir"):
        return False
    parts = path.resolve().parts
    return any(parts[i:i + 2] == ("runtime_resources", "working_dir_files") for i in range(len(parts) - 1))


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The experiment's id, creating it on first use; ExperimentDeleted for one in MLflow's trash
    (the UI's delete keeps its name), which takes no runs until restored.

    With an sqlite store, artifacts go to `mlartifacts/` beside the database file rather than to
    MLflow's default `./mlruns` of whatever directory the process happens to run in.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ExperimentDeleted(
            f"the MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted: restore it (`mlflow "
            f"experiments restore --experiment-id {experiment.experiment_id}` with MLFLOW_TRACKING_URI="
            f"{without_credentials(str(client.tracking_uri))}) or name another in this flow's `experiment` setting (`--set <flow>.experiment=NAME`)")
    if experiment is not None:
        return experiment.experiment_id
    database = sqlite_store_path(str(client.tracking_uri))
    location = None if database is None else (database.resolve().parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def log_values(client: MlflowClient, run_id: str, params: dict[str, Any] | None = None,
               metrics: dict[str, float] | None = None) -> None:
    """A run's params and metrics in one request: a tracking server is a round trip per call
    (MLflow splits a batch past its limits, and cuts a value past its length limit with a warning)."""
    import time

    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                     params=[Param(k, str(v)) for k, v in (params or {}).items()])


def folder_tag(folder: Path) -> str:
    """The value of FOLDER_TAG for `folder`: a digest of its absolute path (safe in a filter)."""
    return hashlib.sha1(str(Path(folder).resolve()).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def latest_run_into(client: MlflowClient, folder: Path, finished: bool = True) -> str | None:
    """The id of the latest (`finished`: finished) run, in any experiment, of a job that wrote
    `folder` (`mlflow_run` and the sweep tag it with FOLDER_TAG; a folder holds one flow's work):
    how a sweep names the curation run of its shards, or an evaluation the animate run of its
    results. None when the store has none."""
    experiments, token = [], None
    while True:  # a page holds at most SEARCH_PAGE experiments
        page = client.search_experiments(max_results=SEARCH_PAGE, page_token=token)
        experiments += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    found = f"tags.`{FOLDER_TAG}` = '{folder_tag(folder)}'" + (" and attributes.status = 'FINISHED'" if finished else "")
    runs = client.search_runs(experiments, found, order_by=["attributes.start_time DESC"],
                              max_results=1) if experiments else []
    return runs[0].info.run_id if runs else None


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str,
                    order_by: list[str] | None = None) -> list[Run]:
    """Every run matching `filter_string`, page by page: one `search_runs` call returns at most
    1000, and a sweep's children can be more."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, order_by=order_by, max_results=SEARCH_PAGE,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def end_abandoned_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> None:
    """Mark KILLED the runs matching `filter_string` that are still RUNNING. A run killed outright
    (SIGKILL, a lost node) cannot end its own run; the caller holds the folder those runs wrote
    (`exclusive_folder`), so none of them is alive."""
    for run in search_all_runs(client, [experiment_id], f"{filter_string} and attributes.status = 'RUNNING'"):
        log.warning("MLflow run %s (%s) was left RUNNING by a run killed outright: marked KILLED",
                    run.info.run_id, run.info.run_name)
        client.set_terminated(run.info.run_id, "KILLED")


def code_version() -> str:
    """The installed portraitflow's version: runs record it, and a config's generation hash includes
    it, since another version's animators may make other videos from the same settings (a change of
    the metrics alone is `jobs.sweep.SCORING_VERSION`'s, which scores the same videos again)."""
    from importlib.metadata import version

    return version("portraitflow")


#: the tags `code_tags` adds from a git checkout (MLflow's own commit tag, and whether files differed)
GIT_TAGS = ("mlflow.source.git.commit", "portraitflow.git_dirty")


def code_tags() -> dict[str, str]:
    """MLflow tags naming the code that makes a run's numbers: the version, and where the package
    runs from its own git checkout (an editable install) the commit and whether tracked files
    differ from it (`GIT_TAGS`). The commit is provenance only: it is not part of a config's hash,
    so a commit that changes no numbers does not make a sweep score again."""
    return {"portraitflow.version": code_version(), **_git_state()}


@functools.cache
def _git_state() -> dict[str, str]:
    """Read once per process: a file edited mid-sweep does not give its configs different commits.
    Only the checkout whose top is the package's own source folder counts (a wheel installed in a
    virtual environment inside another project's checkout is not that project's code)."""
    import subprocess

    source = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(source), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != source:
            return {}
        commit, changed = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git, or no checkout
        return {}
    return dict(zip(GIT_TAGS, (commit, str(bool(changed)).lower())))


def ended_status(exc: BaseException) -> str:
    """How a run that `exc` ended is recorded, one rule for every flow: FAILED for an error, KILLED
    for a stop (Ctrl-C, SIGTERM, a stopped sweep: BaseExceptions that are no errors)."""
    return "FAILED" if isinstance(exc, Exception) else "KILLED"


@contextlib.contextmanager
def terminated_on_raise(client: Any, run_id: str) -> Iterator[None]:
    """Ends run `run_id` as `ended_status` says when the block raises (`_end_quietly`); a block that
    completes ends the run itself, FINISHED or FAILED by what it made."""
    try:
        yield
    except BaseException as exc:
        status = ended_status(exc)
        _end_quietly(lambda: client.set_terminated(run_id, status), run_id)
        raise


def _end_quietly(end: Callable[[], None], run_id: str) -> None:
    """End a run as the error that stops its job propagates; a store that cannot record it (an
    sqlite file on the disk that just filled) is warned of, rather than raise over that error."""
    try:
        end()
    except Exception as exc:  # noqa: BLE001 - whatever the store raises, the job's own error is the one to see
        log.warning("MLflow run %s could not be ended (%s): the next run into its folder marks it KILLED",
                    run_id, exc)


@contextlib.contextmanager
def mlflow_run(cfg: MLflowConfig, experiment: str, folder: Path) -> Iterator[object | None]:
    """The run of a job writing `folder` (named after it, tagged with `folder_tag` and the code that
    ran, `code_tags`), with the
    tracking URI resolved; None when tracking is disabled. Call it holding the folder: runs of
    earlier jobs into it still RUNNING were killed outright, and are marked KILLED first."""
    if not cfg.enabled:
        yield None
        return
    import mlflow

    client = mlflow_client(cfg)
    experiment_id = ensure_experiment(client, experiment)
    end_abandoned_runs(client, experiment_id, f"tags.`{FOLDER_TAG}` = '{folder_tag(folder)}'")
    mlflow.set_experiment(experiment_id=experiment_id)
    tags = {FOLDER_TAG: folder_tag(folder), FOLDER_PATH_TAG: str(Path(folder).resolve()), **code_tags()}
    run = mlflow.start_run(run_name=Path(folder).name, tags=tags)
    try:
        yield run
    except BaseException as exc:
        status = ended_status(exc)
        _end_quietly(lambda: mlflow.end_run(status), run.info.run_id)
        raise
    _end_quietly(mlflow.end_run, run.info.run_id)


def store_failed(exc: BaseException) -> bool:
    """Whether `exc` is a tracking store failing to answer or to write (a server gone: MLflow's REST
    client says so as an INTERNAL_ERROR; a connection refused; a disk full under sqlite), rather than
    the store refusing what it was given."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException

    return isinstance(exc, RequestException) or (
        isinstance(exc, MlflowException) and exc.error_code in {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE"})


@contextlib.contextmanager
def recorded_after_the_work(outputs: Path) -> Iterator[None]:
    """Record a finished job in its MLflow run, best effort: a tracking server that went away
    during the work (restarted, redeployed) made a run whose every output was written end in
    MLflow's retries and a traceback, exit 1, and a scheduler ran the whole job again. It is said
    in one line, and the job ends as its work did. Only the store's failures (`store_failed`): a
    refusal of what was logged (a param logged again with another value) is a bug, and raises."""
    try:
        yield
    except Exception as exc:
        if not store_failed(exc):
            raise
        log.warning("MLflow could not record this run (%s); the outputs in %s are complete", one_line(str(exc), 300),
                    outputs)
