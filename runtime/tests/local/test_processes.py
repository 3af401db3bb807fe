"""Stopping the demo's Prefect worker: an idle worker that swallows its first SIGTERM is stopped in seconds,
and a worker with a run still going is left to finish it.

The worker here is a real process with prefect's signal protocol (prefect.utilities.processutils'
setup_signal_handlers_worker: the first SIGTERM asks for a graceful stop, the next one is a SIGKILL), in the
state a `prefect worker` was seen in after the demo's last run: the graceful stop lost, idling on.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from ml_lifecycle._internal.local.processes import spawn, stop_worker

# argv[1]: seconds of a "flow run" (a child process) still going when the stop comes; 0 for none.
WORKER = """
import os, signal, subprocess, sys, time

run = float(sys.argv[1])
# The run outlives the SIGTERM that reaches the whole process group, as a flow run finishing its work does.
RUN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
RUN += f"time.sleep({run})"
child = subprocess.Popen([sys.executable, "-c", RUN], stdout=subprocess.PIPE) if run else None
if child is not None:
    child.stdout.readline()  # its handler is in place


def first_sigterm(*_):
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGKILL))
    if child is not None:  # graceful: wait for the run, then stop
        child.wait()
        sys.exit(0)
    # an idle worker whose graceful stop got lost: it goes on idling


signal.signal(signal.SIGTERM, first_sigterm)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""

IDLE_GRACE = 0.5  # short, so the suite waits little; the run below outlives it threefold


def started_worker(tmp_path: Path, run_seconds: float) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "worker.log"
    process = spawn([sys.executable, str(script), str(run_seconds)], log=log, env={}, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while "ready" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return process


def test_an_idle_worker_that_ignores_the_stop_is_killed_within_seconds(tmp_path):
    """Before, it was given stop_group's 20 s grace every time."""
    process = started_worker(tmp_path, run_seconds=0)
    started = time.monotonic()
    stop_worker(process, idle_grace=IDLE_GRACE)
    assert process.poll() is not None
    assert time.monotonic() - started < 10


def test_a_worker_with_a_run_going_is_left_to_finish_it(tmp_path):
    process = started_worker(tmp_path, run_seconds=3 * IDLE_GRACE)
    stop_worker(process, idle_grace=IDLE_GRACE)
    assert process.returncode == 0, "killed while its run was going"
