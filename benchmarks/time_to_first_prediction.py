"""Benchmark P5: how long from `copier copy` to the first answered prediction, next to a bare install?

    uv run python benchmarks/time_to_first_prediction.py [--serve-timeout 300] [--serve-rounds 3] [--quick]
        [--keep DIR] [--repeats N]

--quick (tests/test_generator_benchmarks.py) leaves out the untimed warm-up and trains with 2 Optuna trials:
every timed step still runs (the serve comparison in one round), so it checks the wiring and the keys, not
the goals.

Goals (GOALS below):
- P5: ratio_to_floor <= 1.5, where ratio_to_floor = seconds / floor_seconds.
- serve_ratio_to_trivial <= 2: the project's `serve` command from process start to its first answer, next
  to a trivial BentoML service started the same way (the median of the rounds' ratios).

- `seconds`: `copier copy` with default answers (tasks included, so its `uv lock` runs as for a user) ->
  `uv sync --compile-bytecode` (the project README's install) -> `python -m <package> train` (default
  settings: 20 Optuna trials) -> `python -m <package> serve` -> the first POST /predict that answers 200.
  `stages` breaks it down.
- `floor_seconds`, measured in the same run: in another fresh render of the same project, the same install
  (a new virtualenv) plus one `import prefect, bentoml, optuna, sklearn, pandas, evidently`: what any
  project with these dependencies costs before it does anything. `floor_stages` breaks it down.
- `first_flow_seconds` (no goal; not in the floor): then, in the floor's project, one empty Prefect flow
  run with no server set: what any Prefect project's first run costs on a new Prefect home, Prefect's
  temporary server creating its database included. `ratio_to_floor_and_first_flow` = seconds / (floor +
  first flow).

How it is measured, and why:
- It renders a clone of the committed HEAD (a clone holds only committed files: copier would otherwise
  include the uncommitted template edits of whoever is working in this tree), with default answers.
- The uv cache is warmed first, untimed: one render is installed the same way and imports the
  dependencies once. Both timed paths then install from a warm cache (as a user's second project does)
  and find the interpreter and files in the OS cache; a cold cache would measure the network instead.
  Copier's `uv lock` still asks the package index whether anything is newer, in the timed copy stage.
- Every command runs in the project's folder through `uv run`, as the project's README tells a user, with
  the generator's virtualenv and any Prefect API removed from the environment, and a Prefect home and
  BentoML home of its own in the temporary folder (never the user's).
- The request row is one real training row, read (untimed, between `train` and `serve`) from the
  project's own data loader in its own environment; a user knows their data and does not pay this. The
  row is sent to /predict every 0.1 s from the moment `serve` is started until it answers 200, so
  `serve_to_first_answer` includes BentoML start-up and model loading but not a human's typing.
- The floor is measured before the full path, in the same warm state; both run once. On a shared machine
  wall time moves between runs, so a verdict near the goal needs a quiet machine or a second run;
  `load_average` (1 min, at the start and end) says how busy the machine was.
- `serve_ratio_to_trivial`, measured after the user's path in the same project: `--serve-rounds` rounds,
  each starting `uv run python -m <package> serve` and `uv run bentoml serve
  ml_lifecycle._internal.bench.serving_apps:Trivial` (the constant-answer service P3 compares with: the
  same worker count, the same request type, no model loaded) one after the other, alternating which goes
  first, each in a fresh process on a free port and stopped before the next starts; each is timed from
  process start to its first POST /predict_one with the same row answered 200. A round's ratio is the two
  times divided, so both see the same load; `serve_rounds` lists every round.
- Everything started is stopped: the server's process group with SIGTERM, then SIGKILL, and then every
  process still carrying this run's marker variable (BentoML's workers start sessions of their own, so a
  process group does not reach them); `port_released` says the serving port was free afterwards. The
  temporary folder is removed unless --keep is given.

The last line printed is one JSON object with `seconds`, `floor_seconds`, `ratio_to_floor` and
`serve_ratio_to_trivial`. The exit
code is non-zero only on errors, never because a goal was missed (`goal_met` says which were).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import plumbum
from _project import INSTALL
from _repeats import rerun_if_repeated
from copier import run_copy
from ml_lifecycle._internal.bench.goals import verdicts
from ml_lifecycle._internal.local.processes import stop_group

REPO = Path(__file__).resolve().parents[1]
GOALS = {"ratio_to_floor": ("<=", 1.5), "serve_ratio_to_trivial": ("<=", 2.0)}
TRIVIAL = "ml_lifecycle._internal.bench.serving_apps:Trivial"  # P3's constant-answer BentoML service
IMPORTS = "import prefect, bentoml, optuna, sklearn, pandas, evidently"
# One empty flow run with no Prefect server set: what any Prefect project's first run costs on a new Prefect
# home (Prefect's temporary server creating its database, the run, the server's stop).
FIRST_FLOW = "from prefect import flow\n@flow\ndef first():\n    pass\nfirst()"
MARKER = "TTFP_BENCHMARK_RUN"  # set in every child's environment, so leftovers can be found by it
LEAKY = {"VIRTUAL_ENV", "PREFECT_API_URL", "BENTOML_HOME"}
# Run in the project's environment with the package name as argv[1]: one real training row as JSON.
SAMPLE_ROW = """
import importlib, sys
importlib.import_module(sys.argv[1])  # the project first: importing it binds the library
from ml_lifecycle import get_settings
from ml_lifecycle._internal.training import validation
settings = get_settings()
print(validation.load_dataset(settings).features.head(1).to_json(orient="records"))
"""


def python_for(version: str) -> str | None:
    """A local interpreter for the project's Python version (--system: not the generator's own .venv)."""
    found = subprocess.run(
        ["uv", "python", "find", "--system", version], capture_output=True, text=True, check=False
    )
    return found.stdout.strip() or None if found.returncode == 0 else None


def project_env(home: Path, marker: str, interpreter: str | None) -> dict[str, str]:
    """The user's environment for one project's commands, with homes of its own under `home`."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    env.update(
        PREFECT_HOME=str(home / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        BENTOML_HOME=str(home / "bentoml"),
        **{MARKER: marker},
    )
    if interpreter:
        env["UV_PYTHON"] = interpreter
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run to completion and return stdout; on failure show the end of both streams and stop."""
    result = subprocess.run(
        command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-3000:] + "\n" + result.stderr[-3000:] + "\n")
        raise SystemExit(f"{' '.join(command)} failed with exit code {result.returncode}")
    return result.stdout


def render(source: Path, dst: Path, env: dict[str, str]) -> str:
    """`copier copy --trust --defaults`, tasks included; returns the package name.

    Copier runs its tasks (`uv lock`) with plumbum's copy of the environment, so the project's
    environment goes there for the duration of the copy."""
    with plumbum.local.env(**{k: v for k, v in env.items() if k not in LEAKY}):
        for name in LEAKY:
            plumbum.local.env.pop(name, None)
        worker = run_copy(str(source), str(dst), defaults=True, unsafe=True, vcs_ref="HEAD", quiet=True)
    return worker.answers.combined["package_name"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def post_json(url: str, body: bytes) -> int | None:
    """POST and return the status code, or None when nothing answers yet."""
    host, _, rest = url.removeprefix("http://").partition("/")
    connection = http.client.HTTPConnection(host, timeout=30)
    try:
        connection.request("POST", "/" + rest, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def marked_processes(marker: str) -> list[int]:
    """Processes (of this user) whose environment carries this run's marker."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_everything(process: subprocess.Popen | None, marker: str, grace: float = 20) -> None:
    """The server's process group first (SIGTERM, then SIGKILL), then every marked process left over."""
    if process is not None:
        stop_group(process, grace)
    leftovers = marked_processes(marker)
    if leftovers:
        print(f"stopping leftover processes {leftovers}", file=sys.stderr, flush=True)
        signal_all(leftovers, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        signal_all(marked_processes(marker), signal.SIGKILL)


def first_answer(
    project: Path,
    command: list[str],
    env: dict,
    port: int,
    row: dict,
    log: Path,
    timeout: float,
    endpoint: str = "/predict",
):
    """Start `command` (serve); return (the process, seconds until POST `endpoint` with `row` answers 200)."""
    body = json.dumps({"rows": [row]} if endpoint == "/predict" else {"row": row}).encode()
    url = f"http://127.0.0.1:{port}{endpoint}"
    start = time.perf_counter()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    status = None
    while status != 200:
        if process.poll() is not None or time.perf_counter() - start > timeout:
            tail = log.read_text(errors="replace")[-4000:]
            sys.stderr.write(tail + "\n")
            stop_everything(process, env[MARKER])
            raise SystemExit(f"serve did not answer 200 (last status {status}, exit {process.poll()})")
        status = post_json(url, body)
        if status is not None and 400 <= status < 500:  # a refused request will not improve by waiting
            sys.stderr.write(log.read_text(errors="replace")[-4000:] + "\n")
            stop_everything(process, env[MARKER])
            raise SystemExit(f"POST /predict answered {status}")
        if status != 200:
            time.sleep(0.1)
    return process, time.perf_counter() - start


def serve_rounds(
    project: Path, package: str, env: dict, row: dict, rounds: int, timeout: float
) -> list[dict[str, float]]:
    """Per round, seconds from process start to the first answered POST /predict_one: the project's `serve`
    and the trivial service, alternating which starts first; each is stopped (port free) before the next."""
    uv = shutil.which("uv") or "uv"
    trivial_env = {**env, "ML_LIFECYCLE_BENCH_PACKAGE": package}
    found = []
    for index in range(rounds):
        order = ["project", "trivial"] if index % 2 == 0 else ["trivial", "project"]
        times: dict[str, float] = {}
        for which in order:
            port = free_port()
            if which == "project":
                command = [uv, "run", "python", "-m", package, "serve", "--port", str(port)]
            else:
                command = [uv, "run", "bentoml", "serve", TRIVIAL, "--port", str(port)]
                command += ["--working-dir", str(project)]
            print(f"serve round {index + 1}: {which} ...", file=sys.stderr, flush=True)
            log = project.parent / f"serve-{which}-{index}.log"
            chosen = env if which == "project" else trivial_env
            process, seconds = first_answer(
                project, command, chosen, port, row, log, timeout, endpoint="/predict_one"
            )
            stop_everything(process, env[MARKER])
            deadline = time.monotonic() + 10
            while not port_is_free(port) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not port_is_free(port):
                raise SystemExit(f"port {port} still taken 10 s after stopping the {which} service")
            times[which] = round(seconds, 2)
        times["ratio"] = round(times["project"] / times["trivial"], 2)
        found.append(times)
    return found


def timed(stages: dict[str, float], name: str, action):
    print(f"{name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    value = action()
    stages[name] = round(time.perf_counter() - start, 2)
    return value


def main(argv: list[str] | None = None) -> int:
    repeated = rerun_if_repeated(sys.argv[1:] if argv is None else argv, GOALS)
    if repeated is not None:
        return repeated
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-timeout", type=float, default=300)
    parser.add_argument(
        "--serve-rounds", type=int, default=3, help="rounds of serve vs the trivial service (--quick: 1)"
    )
    parser.add_argument("--quick", action="store_true", help="no warm-up, 2 trials: the wiring only")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it afterwards")
    args = parser.parse_args(argv)
    uv = shutil.which("uv") or sys.exit("uv is required")

    workdir = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="ttfp-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    marker = uuid.uuid4().hex
    load_start = os.getloadavg()[0]
    interpreter = python_for("3.11")  # the default python_version answer
    server: subprocess.Popen | None = None
    port: int | None = None
    untimed: dict[str, float] = {}
    floor_stages: dict[str, float] = {}
    stages: dict[str, float] = {}
    python_c = ["python", "-c", IMPORTS]
    try:
        source = workdir / "template-src"
        run(["git", "clone", "--quiet", str(REPO), str(source)], workdir, dict(os.environ))

        if not args.quick:
            # Warm-up (untimed): fill uv's cache and the OS file cache.
            warm = workdir / "warm"
            warm_env = project_env(warm, marker, interpreter)
            timed(untimed, "warmup_copy", lambda: render(source, warm / "project", warm_env))
            timed(untimed, "warmup_install", lambda: run([uv, *INSTALL], warm / "project", warm_env))
            timed(untimed, "warmup_import", lambda: run([uv, "run", *python_c], warm / "project", warm_env))

        # Floor: a fresh install of the same project and one import of its dependencies.
        floor = workdir / "floor"
        floor_env = project_env(floor, marker, interpreter)
        package = timed(untimed, "floor_copy", lambda: render(source, floor / "project", floor_env))
        timed(floor_stages, "install", lambda: run([uv, *INSTALL], floor / "project", floor_env))
        timed(floor_stages, "import", lambda: run([uv, "run", *python_c], floor / "project", floor_env))
        first_flow = [uv, "run", "python", "-c", FIRST_FLOW]
        timed(untimed, "floor_first_flow", lambda: run(first_flow, floor / "project", floor_env))

        # The user's path, from `copier copy` to the first answered request.
        user = workdir / "user"
        env = project_env(user, marker, interpreter)
        if args.quick:
            env[f"{package.upper()}_TUNING__N_TRIALS"] = "2"
        project = user / "project"
        timed(stages, "copy", lambda: render(source, project, env))
        timed(stages, "install", lambda: run([uv, *INSTALL], project, env))
        timed(stages, "train", lambda: run([uv, "run", "python", "-m", package, "train"], project, env))
        sample = [uv, "run", "python", "-c", SAMPLE_ROW, package]
        output = timed(untimed, "row_query", lambda: run(sample, project, env))
        row = json.loads(output.strip().splitlines()[-1])[0]
        print("serve_to_first_answer ...", file=sys.stderr, flush=True)
        port = free_port()
        log = user / "serve.log"
        serve = [uv, "run", "python", "-m", package, "serve", "--port", str(port)]
        server, seconds_to_answer = first_answer(project, serve, env, port, row, log, args.serve_timeout)
        stages["serve_to_first_answer"] = round(seconds_to_answer, 2)
        stop_everything(server, marker)
        server = None
        rounds = serve_rounds(
            project, package, env, row, 1 if args.quick else args.serve_rounds, args.serve_timeout
        )
    finally:
        stop_everything(server, marker)
        deadline = time.monotonic() + 10
        while port is not None and not port_is_free(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        port_released = port is None or port_is_free(port)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    seconds = round(sum(stages.values()), 2)
    floor_seconds = round(sum(floor_stages.values()), 2)
    ratio = round(seconds / floor_seconds, 2)
    serve_ratio = round(statistics.median(r["ratio"] for r in rounds), 2)
    first_flow_seconds = untimed["floor_first_flow"]
    result = {
        "seconds": seconds,
        "floor_seconds": floor_seconds,
        "ratio_to_floor": ratio,
        "first_flow_seconds": first_flow_seconds,
        "ratio_to_floor_and_first_flow": round(seconds / (floor_seconds + first_flow_seconds), 2),
        "stages": stages,
        "floor_stages": floor_stages,
        "untimed": untimed,
        "serve_ratio_to_trivial": serve_ratio,
        "serve_rounds": rounds,
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "port_released": port_released,
        "quick": args.quick,
    }
    result |= verdicts(result, GOALS)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
