"""One training run at a time per project: the lock beside the model store."""

import subprocess
import sys
import threading

import pytest
from ml_lifecycle._internal.training import lock


def test_a_second_run_waits_for_the_first_and_says_for_whom(settings):
    waiting, entered = threading.Event(), threading.Event()
    messages = []

    def second_run():
        def on_wait(message):
            messages.append(message)
            waiting.set()

        with lock.exclusive(settings, on_wait=on_wait):
            entered.set()

    with lock.exclusive(settings):
        thread = threading.Thread(target=second_run)
        thread.start()
        assert waiting.wait(timeout=30), "the second run never reported that it waits"
        assert not entered.is_set(), "the second run entered while the first held the lock"
    thread.join(timeout=30)
    assert entered.is_set()
    assert str(lock.lock_file(settings)) in messages[0] and "pid " in messages[0]


def test_a_run_that_waits_too_long_fails_naming_the_holder_and_the_setting(settings, monkeypatch):
    monkeypatch.setattr(settings.tuning, "lock_wait_seconds", 0.2)
    expected = r"holds .*\(pid \d+ on .* since .*\).*lock_wait_seconds=0\.2"
    with (
        lock.exclusive(settings),
        pytest.raises(lock.TrainingBusy, match=expected),
        lock.exclusive(settings, on_wait=lambda message: None),
    ):
        pass


def test_a_killed_run_leaves_no_stale_lock(settings):
    """The kernel releases the lock of a process that dies, even by SIGKILL."""
    script = (
        "import os, signal, my_ml_project; from ml_lifecycle._internal.config import get_settings;"
        "from ml_lifecycle._internal.training import lock\n"
        "with lock.exclusive(get_settings()):\n    os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run([sys.executable, "-c", script], timeout=120, check=False)
    assert killed.returncode == -9
    messages = []
    with lock.exclusive(settings, on_wait=messages.append):
        pass
    assert messages == []


def test_the_command_line_says_a_busy_lock_in_one_line_and_exits_2(monkeypatch, capsys):
    from ml_lifecycle._internal.cli import main
    from ml_lifecycle._internal.flows import train as train_flow

    def busy(**_: object) -> str:
        raise lock.TrainingBusy("another training run holds the lock; raise tuning.lock_wait_seconds")

    monkeypatch.setattr(train_flow, "train", busy)
    assert main(["train"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: another training run holds the lock; raise tuning.lock_wait_seconds"
    ]
