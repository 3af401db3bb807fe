"""Start and stop the local processes the demo and the end-to-end tests need: a Prefect server (SQLite),
a process worker and `bentoml serve`, all on 127.0.0.1; and a throwaway PostgreSQL cluster for the
parallel tuning benchmark and the template's tests.

Written by hand because no library starts these as one unit; each process gets its own process group and
log file, is stopped with SIGTERM (then SIGKILL) in reverse order, and a failed start shows its log tail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def venv_command(name: str) -> str:
    """A console script of this environment (prefect, bentoml), so child processes see the same packages."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Background:
    name: str
    process: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 20.0) -> None:
        stop_group(self.process, grace)


def stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """Stop a process started in its own group (`spawn`), with everything in that group: SIGTERM, then
    SIGKILL when it outlives `grace` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def spawn(command: list[str], *, log: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen:
    """Start a command in its own process group (so it can be stopped whole), its output going to `log`."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )


@contextlib.contextmanager
def background(
    name: str, command: list[str], *, log_dir: Path, env: Mapping[str, str], cwd: Path
) -> Iterator[Background]:
    """Run a command in its own process group for the duration of the block, logging to log_dir/name.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    proc = Background(name, spawn(command, log=log, env=env, cwd=cwd), log)
    try:
        yield proc
    finally:
        proc.stop()


def wait_http(url: str, proc: Background, timeout: float) -> None:
    """Poll url until it answers 200; fail early, with the log tail, when the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with code {proc.process.returncode}; log {proc.log}:\n{proc.tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(
        f"{proc.name} did not answer {url} within {timeout:.0f}s; log {proc.log}:\n{proc.tail()}"
    )


def prefect_env(api_url: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


@contextlib.contextmanager
def prefect_server(home: Path, log_dir: Path, timeout: float = 120) -> Iterator[str]:
    """A Prefect server with its own SQLite database under `home`; yields its API URL."""
    port = free_port()
    # The UI asks the API at PREFECT_SERVER_API_HOST:PORT (4200 by default), not at --port: without these
    # its every page says "Can't connect to Server API".
    env = prefect_env(
        PREFECT_HOME=str(home), PREFECT_SERVER_API_HOST=LOOPBACK, PREFECT_SERVER_API_PORT=str(port)
    )
    env.pop("PREFECT_API_URL", None)
    command = [venv_command("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port)]
    with background("prefect-server", command, log_dir=log_dir, env=env, cwd=home.parent) as proc:
        api_url = f"http://{LOOPBACK}:{port}/api"
        wait_http(f"{api_url}/health", proc, timeout)
        yield api_url


@contextlib.contextmanager
def prefect_worker(pool: str, api_url: str, cwd: Path, log_dir: Path) -> Iterator[Background]:
    """A process worker polling every 2 s, so a triggered run starts soon after its event."""
    env = prefect_env(api_url, PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5")
    command = [venv_command("prefect"), "worker", "start", "--pool", pool, "--type", "process"]
    with background("prefect-worker", command, log_dir=log_dir, env=env, cwd=cwd) as proc:
        try:
            yield proc
        finally:
            stop_worker(proc.process)


def stop_worker(process: subprocess.Popen, idle_grace: float = 3.0, grace: float = 20.0) -> None:
    """Stop a `prefect worker` (started by `spawn`). On SIGTERM it stops taking runs and waits for the runs
    it started, its child processes; Prefect makes the next signal a SIGKILL. With no run left it should
    exit at once, yet after the demo's runs it has idled through the whole grace: so once it has no child
    process left for `idle_grace` seconds, it gets that second signal. A run still going keeps the full
    `grace`."""
    import psutil

    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    idle_since: float | None = None
    while process.poll() is None and time.monotonic() < deadline:
        try:
            children = psutil.Process(process.pid).children()
            busy = any(child.status() != psutil.STATUS_ZOMBIE for child in children)
        except psutil.Error:  # gone between poll() and here
            busy = False
        now = time.monotonic()
        if busy:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= idle_grace:
            break
        time.sleep(0.1)
    stop_group(process, grace=5.0)  # its second signal, then SIGKILL for the whole group


@contextlib.contextmanager
def bentoml_service(
    target: str, cwd: Path, log_dir: Path, port: int | None = None, timeout: float = 120
) -> Iterator[str]:
    """`bentoml serve` on loopback; yields the base URL once /readyz answers."""
    port = port or free_port()
    command = [
        venv_command("bentoml"),
        "serve",
        target,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--working-dir",
        str(cwd),
    ]
    with background("bentoml-serve", command, log_dir=log_dir, env=dict(os.environ), cwd=cwd) as proc:
        base = f"http://{LOOPBACK}:{port}"
        wait_http(f"{base}/readyz", proc, timeout)
        yield base


def run(command: list[str], *, cwd: Path, env: Mapping[str, str], what: str) -> str:
    """Run a command to completion; a failure raises with its output, never passes silently."""
    result = subprocess.run(command, cwd=cwd, env=dict(env), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def work_pool(root: Path, environment: str) -> str:
    """The work pool of one environment's deployments in prefect.yaml (names ending in -<environment>):
    the one place it is set, like the schedules."""
    import yaml

    path = root / "prefect.yaml"
    deployments = yaml.safe_load(path.read_text())["deployments"]
    pools = {d["work_pool"]["name"] for d in deployments if d["name"].endswith(f"-{environment}")}
    if len(pools) != 1:
        raise RuntimeError(
            f"{path}: the demo needs one work pool for the {environment} deployments, found {sorted(pools)}"
        )
    return pools.pop()


POSTGRES_MISSING = "PostgreSQL's server is not installed (Debian/Ubuntu: apt-get install postgresql)"


def postgres_bindir() -> Path:
    """The folder of PostgreSQL's server programs: initdb's on PATH, else the newest of Debian's
    /usr/lib/postgresql/<version>/bin, which Debian keeps off PATH."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parts[-3].isdigit()]
    if not versions:
        raise RuntimeError(POSTGRES_MISSING)
    return max(versions, key=lambda bindir: int(bindir.parent.name))


@dataclass(frozen=True)
class Postgres:
    """A running cluster: user `postgres`, no password (trust), on 127.0.0.1."""

    port: int
    host: str = LOOPBACK
    user: str = "postgres"

    def url(self, database: str, driver: str = "psycopg") -> str:
        """A SQLAlchemy URL: driver psycopg for Optuna, asyncpg for the Prefect server."""
        return f"postgresql+{driver}://{self.user}@{self.host}:{self.port}/{database}"


@contextlib.contextmanager
def postgres_server(databases: Iterable[str] = (), timeout: float = 60) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port with `databases` created; stopped and
    deleted at the end of the block. PostgreSQL refuses to run as root, so under root the cluster belongs
    to the `postgres` user that Debian's package creates, and its programs run as that user."""
    bindir = postgres_bindir()
    # In the system's temporary folder, which the postgres user can reach, and short: the socket's path
    # must fit in 107 bytes.
    cluster = Path(tempfile.mkdtemp(prefix="pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(cluster, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, log, port = cluster / "data", cluster / "postgres.log", free_port()
    env = {**os.environ, "PGTZ": "UTC"}
    pg_ctl = [*as_owner, str(bindir / "pg_ctl"), "-D", str(data)]
    started = False
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]
        run([*as_owner, *initdb, "--no-locale", "--no-sync"], cwd=cluster, env=env, what="initdb")
        options = f"-p {port} -k {cluster} -c listen_addresses={LOOPBACK}"
        start = [*pg_ctl, "-o", options, "-l", str(log), "-w", "-t", str(int(timeout)), "start"]
        try:
            run(start, cwd=cluster, env=env, what="pg_ctl start")
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise RuntimeError(f"{exc}\n{log}:\n{tail}") from None
        started = True
        server = Postgres(port)
        for name in databases:
            createdb = [str(bindir / "createdb"), "-h", server.host, "-p", str(port), "-U", server.user, name]
            run(createdb, cwd=cluster, env=env, what=f"createdb {name}")
        yield server
    finally:
        if started:
            run([*pg_ctl, "-m", "fast", "-w", "stop"], cwd=cluster, env=env, what="pg_ctl stop")
        shutil.rmtree(cluster, ignore_errors=True)
