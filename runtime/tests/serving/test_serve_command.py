"""`python -m <package> serve` runs BentoML's command line in its own process (cli.serve): BentoML's
serving process is the one the user started, not a second interpreter that imports the project and its
settings again before the worker starts (docs/decisions.md#service-start-up)."""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ml_lifecycle._internal.local.processes import stop_group
from ml_lifecycle._internal.project import bound


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_serve_answers_from_the_process_the_user_started(production, tmp_path: Path):
    project = bound()
    port = free_port()
    environ = {**os.environ, "PYTHONPATH": str(project.directory.parent)}
    command = [sys.executable, "-m", project.package, "serve", "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, env=environ, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while not ready(f"http://127.0.0.1:{port}/readyz"):
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        # Still the command the user ran: exec'ing `bentoml serve` would have replaced it.
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert [b"-m", project.package.encode(), b"serve"] == cmdline[1:4], cmdline
    finally:
        stop_group(process)
    assert f"Serving production model {production}" in log.read_text(errors="replace")
