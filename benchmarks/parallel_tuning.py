"""Benchmark P2: one study tuned by one worker, then by two workers sharing PostgreSQL storage.

    uv run python benchmarks/parallel_tuning.py [--trials 16] [--trial-seconds 1] [--rounds 1] [--quick]

Goal P2: speedup >= 1.7 with two workers on two cores.

Storage: tuning.storage when it is a PostgreSQL URL (each run tunes studies of its own names there and
deletes them afterwards), else a throwaway PostgreSQL cluster on 127.0.0.1 that the benchmark starts and
stops (local.processes.postgres_server, the same code the template's tests use; it needs PostgreSQL's
server, on Debian/Ubuntu `apt-get install postgresql`).

Each worker is a process of its own, as a tune flow run is, and tunes with the project's own code
(training/tuning.py): `open_worker_study` (a TPE sampler seeded with the seed plus the worker's index, the
study's median pruner) and `run_shared_trials` (trials claimed one by one, the study's count exact). Every
variant tunes a fresh study with the same trials, the same seed and the project's search space
(model.py, tuning.model_family). The objective burns --trial-seconds of CPU per trial in four reported
steps and scores the parameters it drew: the real objective's cost depends on those parameters, which differ
between one worker and two, so a fixed cost compares the parallelism, not the draws. The workers start,
import and open the study first; the clock runs from a common start signal to the last worker's end.

Keys: `seconds_1` and `seconds_2` (medians over --rounds, one worker then two, alternating in order from
round to round), `speedup` (seconds_1 / seconds_2), `goal_met`; `finished_1`, `finished_2` (finished
trials in each study: exactly --trials), `trials_per_worker_2`, `surplus_2` (trials two workers created
at once for the last place, closed without running), `other_cores` (the median number of cores the rest
of the machine kept busy while the workers tuned: two workers need two cores, so a busy machine lowers the
speedup), `trials`, `trial_seconds`, `rounds` (each round's figures and speedup), `storage` ("started" or
"configured"), `cpu_count`, `load_average` (1 min, before and after).
The exit code is non-zero only on errors (no PostgreSQL, a worker that fails), never for a missed goal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil
from _common import ROOT, clean_up, load_project, log, ratio, run
from ml_lifecycle._internal.bench.goals import verdicts

GOALS = {"speedup": (">=", 1.7)}  # judged on the median with --repeats (_repeats.py)
STEPS = 4
MARKER = "PARALLEL_TUNING_BENCHMARK_RUN"  # in every worker's environment, so leftovers can be found by it


def burn(seconds: float) -> None:
    """Use `seconds` of this process's CPU time, as a fold of a training run does."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        sum(i * i for i in range(2000))


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def make_objective(family: str, task_type: str, trial_seconds: float):
    from optuna import Trial

    suggest_params = load_project("model")[2]["model"].suggest_params

    def objective(trial: Trial) -> float:
        params = suggest_params(trial, family, task_type)
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).digest()
        value = int.from_bytes(digest[:4], "big") / 2**32  # a score the parameters decide
        for step in range(STEPS):
            burn(trial_seconds / STEPS)
            trial.report(value, step)
        return value

    return objective


def spec_for(settings: Any, modules: dict, study_name: str, storage: str):
    return modules["tuning"].TuningSpec(
        study_name=study_name,
        storage=storage,
        family=settings.tuning.model_family,
        task_type=settings.data.task_type,
        seed=settings.data.seed,
        cv_folds=settings.tuning.cv_folds,
    )


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One worker process: open the study, say it is ready, wait for the start signal, tune."""
    _, settings, modules = load_project("training.tuning")
    tuning = modules["tuning"]
    spec = spec_for(settings, modules, args.study, args.storage)
    study = tuning.open_worker_study(spec, spec.seed + args.worker)
    objective = make_objective(spec.family, spec.task_type, args.trial_seconds)
    go = Path(args.go)
    Path(f"{args.go}.ready-{args.worker}").touch()
    while not go.exists():
        time.sleep(0.005)
    started, cpu = time.time(), time.process_time()
    ran = tuning.run_shared_trials(study, objective, args.trials, None, args.trials, args.worker)
    ended = time.time()
    return {
        "worker": args.worker,
        "ran": ran,
        "started": started,
        "ended": ended,
        "cpu": time.process_time() - cpu,
    }


def tune_with(workers: int, storage: str, args: argparse.Namespace, work: Path, run_id: str) -> dict:
    """A fresh study tuned by `workers` worker processes from one start signal; its figures."""
    import optuna

    _, settings, modules = load_project("training.tuning")
    tuning = modules["tuning"]
    name = f"parallel-tuning-{run_id}-{workers}w-{uuid.uuid4().hex[:6]}"
    tuning.open_study(spec_for(settings, modules, name, storage))  # created once, before the workers race
    go = work / f"go-{name}"
    env = {**os.environ, MARKER: run_id, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(Path(__file__).resolve()), "--storage", storage, "--study", name]
    command += ["--trials", str(args.trials), "--trial-seconds", str(args.trial_seconds), "--go", str(go)]
    processes = [
        subprocess.Popen(
            [*command, "--worker", str(index)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(workers)
    ]
    ready = [Path(f"{go}.ready-{index}") for index in range(workers)]
    deadline = time.monotonic() + 300
    while not all(path.exists() for path in ready):
        failed = [p.communicate()[1][-2000:] for p in processes if p.poll() is not None]
        if failed or time.monotonic() > deadline:
            raise RuntimeError(f"a worker did not start within 300 s: {failed[0] if failed else ''}")
        time.sleep(0.05)
    busy_before, start = busy_cpu_seconds(), time.time()
    go.touch()
    reports = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=args.trials * args.trial_seconds * 20 + 300)
        if process.returncode != 0:
            raise RuntimeError(f"a worker failed (exit {process.returncode}):\n{stderr[-3000:]}")
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    seconds = max(r["ended"] for r in reports) - start
    busy, window = busy_cpu_seconds() - busy_before, time.time() - start
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    result = {
        "workers": workers,
        "seconds": round(seconds, 3),
        # Cores the rest of the machine kept busy meanwhile (PostgreSQL included): what the workers lacked.
        "other_cores": round(max(busy - sum(r["cpu"] for r in reports), 0) / window, 2),
        "finished": tuning.finished_trials(study),
        "trials_per_worker": [r["ran"] for r in sorted(reports, key=lambda r: r["worker"])],
        "surplus": sum(1 for t in trials if t.user_attrs.get("surplus")),
    }
    optuna.delete_study(study_name=name, storage=storage)
    log(f"{workers} worker(s): {result}")
    return result


def measure(storage: str, args: argparse.Namespace, work: Path, run_id: str) -> dict[str, Any]:
    rounds = []
    for index in range(args.rounds):
        order = (1, 2) if index % 2 == 0 else (2, 1)
        figures = {workers: tune_with(workers, storage, args, work, run_id) for workers in order}
        rounds.append({"order": list(order), **{f"workers_{n}": figures[n] for n in (1, 2)}})
    seconds = {n: statistics.median(r[f"workers_{n}"]["seconds"] for r in rounds) for n in (1, 2)}
    last_two = rounds[-1]["workers_2"]
    speedup = ratio(seconds[1], seconds[2])
    for figures in rounds:
        figures["speedup"] = ratio(figures["workers_1"]["seconds"], figures["workers_2"]["seconds"])
    return {
        "seconds_1": seconds[1],
        "seconds_2": seconds[2],
        "speedup": speedup,
        "other_cores": statistics.median(r[f"workers_{n}"]["other_cores"] for r in rounds for n in (1, 2)),
        "finished_1": rounds[-1]["workers_1"]["finished"],
        "finished_2": last_two["finished"],
        "trials_per_worker_2": last_two["trials_per_worker"],
        "surplus_2": last_two["surplus"],
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--trial-seconds", type=float, default=1.0, help="CPU seconds per trial")
    parser.add_argument("--rounds", type=int, default=1, help="1 and 2 workers this many times (medians)")
    parser.add_argument("--quick", action="store_true", help="4 trials of 0.2 s: checks the wiring")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    for hidden in ("--worker", "--storage", "--study", "--go"):
        parser.add_argument(hidden, help=argparse.SUPPRESS, type=int if hidden == "--worker" else str)
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.trial_seconds, args.rounds = 4, 0.2, 1
    if args.worker is not None:
        print(json.dumps(worker(args)))
        return 0

    _, settings, modules = load_project("local.processes", "training.tuning")
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="parallel-tuning-"))
    load_before = os.getloadavg()[0]
    try:
        with ExitStack() as stack:
            storage = settings.optuna_storage
            origin = "configured"
            if not storage.startswith("postgresql"):
                log("tuning.storage is no PostgreSQL URL: starting a throwaway PostgreSQL cluster")
                server = stack.enter_context(modules["processes"].postgres_server(["optuna"]))
                storage, origin = server.url("optuna"), "started"
                log(f"PostgreSQL started: {storage}")
            figures = measure(storage, args, work, run_id)
    finally:
        clean_up(MARKER, run_id, work, args.keep)
    result = {
        **figures,
        "trials": args.trials,
        "trial_seconds": args.trial_seconds,
        "storage": origin,
        "cpu_count": os.cpu_count(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    result |= verdicts(result, GOALS)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
