"""The local deploy's process handling and rollback, on loopback, with a stand-in for `bentoml serve`.

The stand-in is a script named `bentoml` that serves /readyz like BentoML does, or, for a Bento whose name
starts with "broken", logs BentoML's startup failure line and hangs, as BentoML does when the model cannot be
loaded. Building and serving real Bentos is the generator's test_packaging.py (it takes minutes).
"""

import os
import socket
import sys
import textwrap

import pytest
from ml_lifecycle._internal.config import get_settings
from ml_lifecycle._internal.registry import aliases
from ml_lifecycle._internal.serving import bento

from ..conftest import clear_alias

STAND_IN = textwrap.dedent(
    """
    import http.server, sys, time
    bento, port = sys.argv[2], int(sys.argv[sys.argv.index("--port") + 1])
    if bento.startswith("broken"):
        print("[ERROR] Application startup failed. Exiting.", flush=True)
        time.sleep(600)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()
            self.wfile.write(bento.encode())

    http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local(tmp_path, monkeypatch):
    """Settings with their own state folder and port, a production history of two models, the stand-in."""
    script = tmp_path / "bin" / "bentoml"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(0o755)
    monkeypatch.setattr(bento, "venv_command", lambda name: str(script))
    monkeypatch.setenv("MY_ML_PROJECT_DEPLOY__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MY_ML_PROJECT_DEPLOY__READY_TIMEOUT_SECONDS", "20")
    monkeypatch.setenv("MY_ML_PROJECT_SERVING__PORT", str(free_port()))
    get_settings.cache_clear()
    local = get_settings()
    clear_alias(local)
    aliases.change(
        local,
        lambda record: record.history.extend(aliases.entry(t, "test") for t in ("model:old", "model:new")),
    )
    yield local
    bento.stop(local)
    clear_alias(local)
    get_settings.cache_clear()


def test_switch_serves_and_records_the_pid(local):
    result = bento.switch(local, "good-1", "model:old", log=lambda _: None)
    assert result["rolled_back"] is False
    state = bento.current(local)
    assert state is not None and state.bento == "good-1" and state.pid == result["pid"]
    assert int((bento.state_dir(local) / bento.PID_FILE).read_text()) == state.pid


def test_a_bento_that_fails_to_start_is_rolled_back_and_the_previous_restarted(local):
    first = bento.switch(local, "good-1", "model:old", log=lambda _: None)
    with pytest.raises(bento.DeployError) as error:
        bento.switch(local, "broken-2", "model:new", log=lambda _: None)
    message = str(error.value)
    assert "BentoML logged 'Application startup failed'" in message
    assert "Production alias is now model:old" in message
    assert "Restarted the previous Bento good-1" in message
    assert aliases.production_tag(local) == "model:old"
    state = bento.current(local)
    assert state.bento == "good-1" and state.pid != first["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(first["pid"], 0)


def test_the_alias_goes_back_only_when_it_still_names_the_failed_model(local):
    assert bento.roll_back_alias(local, "model:other") == "model:new"
    assert bento.roll_back_alias(local, "model:new") == "model:old"
    assert bento.roll_back_alias(local, "model:old") == "model:old", "the last entry stays"


def test_a_port_taken_by_another_process_is_refused_before_anything_starts(local):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", local.serving.port))
        squatter.listen()
        with pytest.raises(bento.DeployError, match="in use by a process that `deploy` did not start"):
            bento.switch(local, "good-1", "model:new", log=lambda _: None)
    assert bento.current(local) is None
    assert aliases.production_tag(local) == "model:new"


def test_a_stale_pid_file_is_forgotten(local):
    folder = bento.state_dir(local)
    bento.switch(local, "good-1", "model:old", log=lambda _: None)
    pid = bento.current(local).pid
    os.killpg(pid, 9)
    os.waitpid(pid, 0)  # the stand-in is our child: reap it (a real server outlives deploy; init reaps it)
    assert bento.current(local) is None
    assert not (folder / bento.PID_FILE).exists()
