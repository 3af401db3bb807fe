"""One training run at a time per project: an exclusive lock on a file beside the model store.

Two runs at once tuned the same Optuna study past its trial count and registered models from the same
trials. A file lock, not a Prefect concurrency limit: training also runs without a Prefect server (the CLI on
an ephemeral server per process, the tests), and `fcntl.flock` is released by the kernel when its process
ends, even on kill -9, so a killed run never leaves a stale lock behind. Beside the model store, not the
Optuna storage: the storage may be a database URL with no local file, while every run registers into this
store, so it is what "one project" means on a machine (docs/decisions.md#one-training-run-at-a-time).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from ..config import Settings

POLL_SECONDS = 0.5


class TrainingBusy(RuntimeError):
    """Another training run of the project held the lock longer than tuning.lock_wait_seconds."""


def lock_file(settings: Settings) -> Path:
    return settings.bentoml_home / "locks" / f"{settings.model_name}.training.lock"


@contextlib.contextmanager
def exclusive(settings: Settings, on_wait: Callable[[str], object] = print) -> Iterator[None]:
    """Hold the project's training lock for the block; wait for it first when another run holds it (at most
    tuning.lock_wait_seconds; 0 waits as long as it takes), saying so through `on_wait`."""
    path = lock_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    wait = settings.tuning.lock_wait_seconds
    with open(path, "a+") as handle:
        if not _try_lock(handle):
            holder = _holder(handle)
            on_wait(f"Another training run holds {path} ({holder}); waiting for it to finish")
            if wait == 0:
                fcntl.flock(handle, fcntl.LOCK_EX)
            else:
                deadline = time.monotonic() + wait
                while not _try_lock(handle):
                    if time.monotonic() >= deadline:
                        raise TrainingBusy(
                            f"another training run of {settings.model_name} holds {path} ({_holder(handle)}) "
                            f"and did not finish within tuning.lock_wait_seconds={wait:g}; wait for it to "
                            "end or stop it, then train again"
                        )
                    time.sleep(POLL_SECONDS)
        try:
            handle.truncate(0)
            since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(handle) -> str:
    """Who holds the lock, as its holder wrote it (best effort: it may be writing just now)."""
    handle.seek(0)
    return handle.read().strip() or "unknown process"
