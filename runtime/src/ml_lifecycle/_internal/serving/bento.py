"""Package the production model as a Bento and serve it locally, with a way back when the new one fails.

`bentoml build` reads [tool.bentoml.build] in pyproject.toml and gets the production model's tag as the Bento
argument `model_tag`, so the Bento records which model it was built for. The local server is `bentoml serve
<bento>` on serving.host:serving.port in a process group of its own that outlives the command; its pid, Bento
and model are recorded under deploy.state_dir (.deploy/), which is how the next `deploy` finds it to stop it.

A deploy is: build, stop the running server, start the new one, wait for /readyz. When the new one is not
ready in time, it is stopped, the production alias goes back one entry (when it still points at the model
just deployed), and the previous Bento is started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from ..atomic_write import write_atomically
from ..config import Settings
from ..local.processes import Background, run, spawn, venv_command
from ..registry import aliases, store
from ..storage import storage_url

PID_FILE = "serve.pid"
STATE_FILE = "serve.json"
KEEP_LOGS = 10
# What BentoML logs when the service class cannot be created (for example, the model does not load).
STARTUP_FAILED = "Application startup failed"


class DeployError(RuntimeError):
    """The new Bento did not become ready; the message says what was rolled back and what serves now."""


@dataclass(frozen=True)
class Serving:
    """What runs: written beside the pid file, so the next deploy (or a person) can see it."""

    pid: int
    bento: str
    model: str
    url: str
    log: str
    started: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_dir(settings: Settings) -> Path:
    return settings.resolve(settings.deploy.state_dir)


def build_bento(settings: Settings, model_tag: str) -> str:
    """`bentoml build` in the project folder; returns the Bento's tag."""
    store.ensure_local(settings, model_tag)  # the Bento packs the model: trained elsewhere, it is imported
    env = dict(os.environ)
    # The package is importable even when the project is not installed (src layout).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(settings.root / "src"), env.get("PYTHONPATH")) if p)
    command = [venv_command("bentoml"), "build", "--output", "tag", "--arg", f"model_tag={model_tag}"]
    stdout = run(command, cwd=settings.root, env=env, what="bentoml build")
    tags = [line.split("__tag__:", 1)[1].strip() for line in stdout.splitlines() if "__tag__:" in line]
    if not tags:
        raise RuntimeError(f"bentoml build printed no Bento tag:\n{stdout[-3000:]}")
    return tags[-1]


def current(settings: Settings) -> Serving | None:
    """The server the last deploy started, when it still runs; None otherwise (stale files are removed)."""
    folder = state_dir(settings)
    try:
        state = Serving(**json.loads((folder / STATE_FILE).read_text()))
        pid = int((folder / PID_FILE).read_text().strip())
    except (OSError, ValueError, TypeError):
        return None
    if pid != state.pid or not _alive(pid) or not _is_bentoml(pid):
        _forget(folder)
        return None
    return state


def start(settings: Settings, bento: str, model: str) -> tuple[Serving, Background]:
    """`bentoml serve <bento>` in a new session (it outlives this process); records its pid and state."""
    folder = state_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    host, port = settings.serving.host, settings.serving.port
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for old in sorted(folder.glob("serve-*.log"))[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
    log = folder / f"serve-{stamp}.log"
    env = dict(os.environ)
    # The store and request logs are the project's (where the monitor reads them), not paths relative to the
    # Bento's copy of settings.toml inside the store.
    prefix = settings.project.package.upper()
    env[f"{prefix}_REGISTRY__BENTOML_HOME"] = env["BENTOML_HOME"] = str(settings.bentoml_home)
    env[f"{prefix}_SERVING__REQUEST_LOG_PATH"] = str(settings.resolve(settings.serving.request_log_path))
    env[f"{prefix}_STORAGE__URL"] = storage_url(settings)  # a relative folder would be the Bento's copy's
    command = [venv_command("bentoml"), "serve", bento, "--host", host, "--port", str(port)]
    process = spawn(command, log=log, env=env, cwd=settings.root)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    state = Serving(process.pid, bento, model, url, str(log), datetime.now(UTC).isoformat())
    write_atomically(
        folder / STATE_FILE, lambda sink: sink.write(json.dumps(state.as_dict(), indent=2).encode())
    )
    write_atomically(folder / PID_FILE, lambda sink: sink.write(f"{process.pid}\n".encode()))
    return state, Background(f"bentoml serve {bento}", process, log)


def stop(settings: Settings, grace: float = 20.0) -> Serving | None:
    """Stop the recorded server's whole process group (SIGTERM, then SIGKILL); returns what it served."""
    state = current(settings)
    if state is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(state.pid, signal.SIGTERM)
        if not _gone(state.pid, grace):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(state.pid, signal.SIGKILL)
            _gone(state.pid, 10)
    _forget(state_dir(settings))
    return state


def wait_ready(state: Serving, proc: Background, timeout: float) -> str | None:
    """Poll /readyz until it answers 200 (returns None); otherwise returns why not: the server exited,
    BentoML logged that the service failed to start (it would restart the worker until the timeout), or the
    timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            return f"the server exited with code {proc.process.returncode}"
        if STARTUP_FAILED in proc.tail(200):
            return f"BentoML logged {STARTUP_FAILED!r}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{state.url}/readyz", timeout=2).status_code == 200:
                return None
        time.sleep(0.5)
    return f"/readyz did not answer 200 within {timeout:.0f}s"


def roll_back_alias(settings: Settings, failed: str) -> str | None:
    """Pop the production entry of the model that failed, when it is still production and has a
    predecessor; returns the production tag afterwards."""

    def pop_failed(record: aliases.AliasRecord) -> str | None:
        if record.production == failed and len(record.history) > 1:
            record.history.pop()
        return record.production

    return aliases.change(settings, pop_failed)


def switch(settings: Settings, bento: str, model: str, log=print) -> dict[str, Any]:
    """Serve `bento` instead of the running server; when it is not ready, roll back and restart the old."""
    previous = stop(settings)
    if previous is not None:
        log(f"Stopped {previous.bento} ({previous.model}, pid {previous.pid})")
    host, port = settings.serving.host, settings.serving.port
    if not _port_free(host, port):
        # Another process answers there: its /readyz would pass for ours. Nothing was changed.
        raise DeployError(
            f"{host}:{port} is in use by a process that `deploy` did not start; stop it or set serving.port"
        )
    state, proc = start(settings, bento, model)
    timeout = settings.deploy.ready_timeout_seconds
    failure = wait_ready(state, proc, timeout)
    if failure is None:
        log(f"Serving {model} ({bento}) at {state.url}, pid {state.pid}")
        return {**state.as_dict(), "previous": previous.as_dict() if previous else None, "rolled_back": False}
    tail = proc.tail(12)
    stop(settings)
    production = roll_back_alias(settings, model)
    message = f"{bento} ({model}) is not ready: {failure}; log {state.log} ends:\n{tail}\n"
    message += f"Production alias is now {production}. "
    if previous is None:
        raise DeployError(message + "Nothing was serving before, so nothing was restarted.")
    restored, restored_proc = start(settings, previous.bento, previous.model)
    failure = wait_ready(restored, restored_proc, timeout)
    if failure is not None:
        stop(settings)
        raise DeployError(
            message + f"The previous Bento {previous.bento} did not come back either: {failure}."
        )
    raise DeployError(
        message + f"Restarted the previous Bento {previous.bento} ({previous.model}) at {restored.url}."
    )


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that has exited: reap it
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(host: str, port: int, wait: float = 5.0) -> bool:
    """Whether the port can be bound, waiting a little for a server that was just stopped to let go."""
    deadline = time.monotonic() + wait
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
        time.sleep(0.5)


def _is_bentoml(pid: int) -> bool:
    """Guards against a recycled pid where /proc tells (Linux); elsewhere the pid file is trusted."""
    try:
        return b"bentoml" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.2)
    return not _alive(pid)


def _forget(folder: Path) -> None:
    for name in (PID_FILE, STATE_FILE):
        (folder / name).unlink(missing_ok=True)
