"""Changing production under a running service, executed for real: `rollback` and `promote` from the
project's command line, and the service's refusals to swap (a model whose feature columns differ; a Bento
pinned to its model), observed on a real `serve` and a real pinned `bentoml serve`.

One installed default project (shared with test_project.py through the `installed` fixture) with a model
store, alias record, request log and studies of this module's own (BENTOML_HOME and settings variables),
so the other modules' state is not touched. The story, in order:

1. `train` registers G, production; the service and a service pinned to G (`--arg model_tag=G`) start.
2. B, G's pipeline refitted on inverted labels, is made production by hand (a bad release); the service
   swaps to B; the pinned one stays on G.
3. `promote --tag G`: the gate promotes G over B; the service swaps back to G.
4. `rollback`: B is production again and G is recorded as rolled back; the service swaps to B.
5. `promote --tag G` is refused (G was rolled back); `promote --tag G --allow-rolled-back` promotes it.
6. W, G's pipeline with a feature schema naming one more column, is made production by hand: the service
   refuses to swap (the gauge and the log say so) and goes on serving G.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import (
    ANSWER_SETS,
    Project,
    explain,
    free_port,
    prefect_server,
    require_tool,
    serving,
    started,
    with_library,
)
from prefect_ui import capture_prefect_ui

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

OUTPUT = Path(__file__).parent / "output"
CARD_SECTIONS = (
    "Data",
    "Search space and chosen parameters",
    "Metrics",
    "Feature importance",
    "Gate verdict",
    "Versions",
)

# Run in the project's environment: the production model's tag, and rows the service accepts.
ROWS = with_library("""
import json
import time
settings = internal("config").get_settings()
aliases, store = internal("registry.aliases"), internal("registry.store")
production = aliases.production_tag(settings)
schema = store.load(production).schema
frame = importlib.import_module(package + ".dataset").load_frame(settings)
records = frame.head(5).to_dict("records")
rows = [{c: (None if v != v else v) for c, v in r.items() if c in schema} for r in records]
print(json.dumps({"production": production, "rows": rows}))
""")

# Run in the project's environment with argv[2] "inverted" or "wider": register a model made from the
# production one and make it production by hand (the alias record, under its lock), as a bad release would.
FORCED = with_library("""
import json
import time
from sklearn.base import clone
settings = internal("config").get_settings()
aliases, store = internal("registry.aliases"), internal("registry.store")
good = store.load(aliases.production_tag(settings))
if sys.argv[2] == "inverted":  # the same API, predictions the wrong way round
    frame = importlib.import_module(package + ".dataset").load_frame(settings)
    features, labels = frame[list(good.schema)], frame[settings.data.target_column]
    pipeline, schema = clone(good.pipeline).fit(features, 1 - labels), good.schema
else:  # the same pipeline, but a feature schema naming one column more: the request API would change
    pipeline, schema = good.pipeline, {**good.schema, "extra_column": next(iter(good.schema.values()))}
tag = store.save(
    settings, pipeline, schema=schema, reference=good.reference, metrics={}, params={},
    data_hash=f"{sys.argv[2]} (tests/test_hot_swap.py)",
)
aliases.change(settings, lambda record: record.history.append(aliases.entry(tag, "test: forced")))
print(json.dumps(tag))
""")

ALIASES = with_library("""
import json
import time
print(json.dumps(internal("registry.aliases").read(internal("config").get_settings()).as_json()))
""")


@dataclass
class Stack:
    project: Project
    env: dict[str, str]  # this module's state and Prefect server, for every command
    service: str
    pinned: str
    log: Path
    good: str
    rows: list[dict]

    def cli(self, *args: str):
        return self.project.cli(*args, **self.env)

    def query(self, script: str, *args: str):
        result = self.project.run(
            "uv", "run", "python", "-c", script, self.project.package, *args, **self.env
        )
        assert result.returncode == 0, explain(result)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def production(self) -> str:
        return self.query(ALIASES)["history"][-1]["tag"]


def served_by(base: str, row: dict) -> str:
    response = httpx.post(f"{base}/predict_one", json={"row": row}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def card_of(base: str) -> dict:
    """GET /model: the card of the model the service serves."""
    response = httpx.get(f"{base}/model", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_version(base: str, row: dict, version: str, timeout: float = 60) -> None:
    """Poll the service until it answers with `version` (it polls the alias record every 0.5 s here)."""
    deadline = time.monotonic() + timeout
    while (found := served_by(base, row)) != version:
        assert time.monotonic() < deadline, f"{base} still serves {found}, not {version}, after {timeout} s"
        time.sleep(0.2)


def metric(base: str, name: str, **labels: str) -> float | None:
    """The value of one series of /metrics (all of `labels` on it), None when there is none."""
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rpartition(" ")[2])
    return None


@pytest.fixture(scope="module")
def stack(installed, tmp_path_factory) -> Iterator[Stack]:
    project = installed(ANSWER_SETS["default"])
    home = tmp_path_factory.mktemp("hot-swap")
    prefix = project.package.upper()
    env = {
        "BENTOML_HOME": str(home / "bentoml"),
        f"{prefix}_STORAGE__URL": str(home / "store"),
        f"{prefix}_TUNING__STORAGE": f"sqlite:///{home / 'studies.db'}",
        f"{prefix}_ROLLOUT__POLL_SECONDS": "0.5",
    }
    with contextlib.ExitStack() as stack:
        env["PREFECT_API_URL"] = stack.enter_context(prefect_server(project, home)) + "/api"
        trained = project.cli("train", "--n-trials", "2", **env)
        assert trained.returncode == 0, explain(trained)
        found = Stack(project, env, "", "", home / "serve.log", "", []).query(ROWS)
        service = stack.enter_context(serving(project, home / "serve.log", **env))
        port = free_port()
        pinned = f"http://127.0.0.1:{port}"
        command = [
            str(project.root / ".venv" / "bin" / "bentoml"),
            "serve",
            f"{project.package}.service:Predictor",
        ]
        command += [
            "--port",
            str(port),
            "--working-dir",
            str(project.root),
            "--arg",
            f"model_tag={found['production']}",
        ]
        # The pinned server sees the same model store and alias record, from a BentoML home of its own: two
        # servers on one home share its prometheus_multiproc_dir, and the second one to start deletes the
        # first one's metric files (its gauges then vanish from /metrics).
        own = home / "pinned-bentoml"
        own.mkdir()
        for part in ("models", "aliases", "locks"):
            (own / part).symlink_to(home / "bentoml" / part, target_is_directory=True)
        stack.enter_context(
            started(
                command,
                cwd=project.root,
                env={**project.env, **env, "BENTOML_HOME": str(own)},
                log=home / "pinned.log",
                ready_url=f"{pinned}/readyz",
            )
        )
        yield Stack(project, env, service, pinned, home / "serve.log", found["production"], found["rows"])


@pytest.fixture(scope="module")
def bad_release(stack) -> str:
    """B made production by hand; the service has swapped to it."""
    bad = stack.query(FORCED, "inverted")
    wait_for_version(stack.service, stack.rows[0], bad)
    return bad


def test_a_pinned_bento_never_swaps(stack, bad_release):
    """The unpinned service has swapped to B (polling every 0.5 s, as the pinned one would if it polled):
    the pinned one still answers with G, and its model gauge names G only."""
    assert served_by(stack.pinned, stack.rows[0]) == stack.good
    assert metric(stack.pinned, f"{stack.project.package}_model_info", model_version=bad_release) is None
    assert metric(stack.pinned, f"{stack.project.package}_model_info", model_version=stack.good) == 1.0
    # GET /model answers the card of the model each one serves: G's (written by `train`) on the pinned one;
    # none for B, registered by hand as a model from before cards would be.
    assert card_of(stack.pinned)["tag"] == stack.good
    missing = httpx.get(f"{stack.service}/model", timeout=30)
    assert missing.status_code == 404, missing.text
    assert f"model {bad_release} has no model card" in missing.json()["error"]


def test_promote_rollback_and_promote_of_a_rolled_back_model(stack, bad_release):
    promoted = stack.cli("promote", "--tag", stack.good)
    assert promoted.returncode == 0, explain(promoted)  # G beats the inverted B at the gate
    assert stack.production() == stack.good
    wait_for_version(stack.service, stack.rows[0], stack.good)
    # The service swapped back to G, and so did its GET /model; G's card holds both gates' verdicts.
    assert [v["passed"] for v in card_of(stack.service)["verdicts"]] == [True, True]

    rolled = stack.cli("rollback")
    assert rolled.returncode == 0, explain(rolled)
    assert f"production is now {bad_release}" in rolled.stdout
    record = stack.query(ALIASES)
    assert record["history"][-1]["tag"] == bad_release
    assert [entry["tag"] for entry in record["rolled_back"]] == [stack.good]
    wait_for_version(stack.service, stack.rows[0], bad_release)

    refused = stack.cli("promote", "--tag", stack.good)
    assert refused.returncode == 1, explain(refused)
    assert f"promote --tag {stack.good} --allow-rolled-back" in refused.stdout + refused.stderr
    assert stack.production() == bad_release
    allowed = stack.cli("promote", "--tag", stack.good, "--allow-rolled-back")
    assert allowed.returncode == 0, explain(allowed)
    assert stack.production() == stack.good
    wait_for_version(stack.service, stack.rows[0], stack.good)
    verdicts = card_of(stack.service)["verdicts"]  # the refusal (no score: null in the card's JSON) too
    assert [v["passed"] for v in verdicts] == [True, True, False, True]
    assert "rolled back" in verdicts[2]["reason"] and verdicts[2]["candidate_score"] is None


def test_a_model_with_other_feature_columns_is_not_swapped_in(stack, bad_release):
    """W (one more column in its schema) made production: the service says it refuses, keeps serving what
    it served, and a request still gets that model's answer."""
    before = served_by(stack.service, stack.rows[0])
    wider = stack.query(FORCED, "wider")
    name = f"{stack.project.package}_model_swap_refused"
    deadline = time.monotonic() + 60
    while metric(stack.service, name, model_version=wider) != 1.0:
        shown = [
            line
            for line in httpx.get(f"{stack.service}/metrics", timeout=30).text.splitlines()
            if "swap" in line or "model_info" in line
        ]
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    assert served_by(stack.service, stack.rows[0]) == before
    logged = f"Production is now {wider}, whose feature columns differ from the API's (column 'extra_column'"
    assert logged + " is new)" in stack.log.read_text(errors="replace")


def test_the_prefect_ui_shows_the_model_card(stack):
    """The train run's `model-card` artifact, as a person opening the Prefect UI sees it (Debian's Chromium,
    headless); the screenshot is kept in tests/output/."""
    require_tool("chromium")
    api = stack.env["PREFECT_API_URL"]
    body = {"flows": {"name": {"any_": ["train"]}}, "sort": "START_TIME_ASC", "limit": 1}
    [run] = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).json()
    screenshot = OUTPUT / "model-card.png"
    seen = capture_prefect_ui(
        api.removesuffix("/api"),
        flow_run_name_contains=run["name"],
        artifact_key="model-card",
        screenshot=screenshot,
    )
    text = seen["artifact"]["text"]
    assert seen["artifact"]["flow_run"] == run["name"], seen["artifact"]
    assert f"Model card: {stack.good}" in text, text[:1000]
    assert [section for section in CARD_SECTIONS if section not in text] == [], text[:3000]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of the model card in the Prefect UI: {screenshot}")
