"""The generated project's monitoring/ folder, checked with the real tools: Prometheus loads the config and
the alert rules, the rules fire on the situations they describe (`promtool test rules`), a real Prometheus
scrapes a real Pushgateway with them, and the Grafana dashboard only shows metrics the project exports.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ANSWER_SETS, REPO, free_port, package_of, recorded_answers, require_tool, started

# BentoML 1.4's own HTTP metrics on the service's /metrics (namespace bentoml_service, the default of
# api_server.metrics.namespace; bentoml/_internal/server/http/instruments.py and
# _bentoml_impl/server/app.py, checked against a served 1.4.40 service). Labels of the request metrics:
# endpoint, http_response_code, runner_name, service_name, service_version; health checks are counted too.
BENTOML_METRICS = {
    "bentoml_service_request_total",
    "bentoml_service_request_duration_seconds_bucket",
    "bentoml_service_request_duration_seconds_sum",
    "bentoml_service_request_duration_seconds_count",
    "bentoml_service_request_in_progress",
    "bentoml_service_last_request_timestamp_seconds",
    "bentoml_service_adaptive_batch_size_bucket",
    "bentoml_service_adaptive_batch_size_sum",
    "bentoml_service_adaptive_batch_size_count",
}
# Series Prometheus writes itself for every scrape target.
PROMETHEUS_METRICS = {"up"}
# What prometheus_client exposes for a metric of each type (multiprocess mode: no _created series).
EXPOSED_SUFFIXES = {
    "Counter": ("_total",),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count"),
}
# The seconds between two monitor runs for the answer sets' monitor_schedule answers.
MONITOR_INTERVALS = {"0 * * * *": 3600, "*/15 * * * *": 900}

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
PROMQL_KEYWORDS |= {"unless", "offset", "inf", "nan"}


# ---------------------------------------------------------------- reading the rendered files


def monitoring(project: Path) -> Path:
    return project / "monitoring"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def alert_rules(project: Path) -> dict[str, dict]:
    rules = load_yaml(monitoring(project) / "alerts.yml")
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}


def dashboard(project: Path) -> dict:
    return json.loads(
        (monitoring(project) / "grafana" / "dashboards" / f"{package_of(project)}.json").read_text()
    )


def provisioned_datasource(project: Path) -> dict:
    (source,) = load_yaml(monitoring(project) / "grafana/provisioning/datasources/prometheus.yml")[
        "datasources"
    ]
    return source


def data_panels(board: dict) -> list[dict]:
    return [panel for panel in board["panels"] if panel["type"] != "row"]


def dashboard_queries(board: dict) -> dict[str, str]:
    return {
        f"panel {panel['title']!r} {target['refId']}": target["expr"]
        for panel in data_panels(board)
        for target in panel["targets"]
    }


def alert_queries(project: Path) -> dict[str, str]:
    return {f"alert {name}": rule["expr"] for name, rule in alert_rules(project).items()}


# ---------------------------------------------------------------- what the project exports


def _literal(node: ast.expr, package: str) -> str | None:
    """The value of a string or an f-string over PACKAGE (how the project names its metrics), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif isinstance(part, ast.FormattedValue) and ast.unparse(part.value) == "PACKAGE":
                parts.append(package)
            else:
                return None
        return "".join(parts)
    return None


def defined_metrics(source: str, package: str) -> set[str]:
    """The series names of the prometheus_client metrics a module defines with a literal name."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        kind = getattr(node, "func", None)
        kind = getattr(kind, "id", None) or getattr(kind, "attr", None)
        if isinstance(node, ast.Call) and kind in EXPOSED_SUFFIXES and node.args:
            name = _literal(node.args[0], package)
            if name is not None:
                name = name.removesuffix("_total") if kind == "Counter" else name
                names |= {name + suffix for suffix in EXPOSED_SUFFIXES[kind]}
    return names


def pushed_metrics(source: str, package: str) -> set[str]:
    """The names in pushgateway.PUSHED_METRICS, each a module-level constant."""
    tree = ast.parse(source)
    constants: dict[str, str | None] = {}
    listed: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "PUSHED_METRICS" and isinstance(node.value, ast.Tuple | ast.List):
                listed = [ast.unparse(item) for item in node.value.elts]
            else:
                constants[name] = _literal(node.value, package)
    assert listed, "pushgateway.py has no PUSHED_METRICS tuple of the gauges a push can hold"
    return {constants[name] or name for name in listed}


def exported_metrics(project: Path) -> set[str]:
    """Every series name the project's service exposes or its monitor pushes, read from its source and the
    library's (named after the project's package at run time)."""
    package = package_of(project)
    library = REPO / "runtime" / "src" / "ml_lifecycle"
    sources = {path: path.read_text() for path in [*(project / "src").rglob("*.py"), *library.rglob("*.py")]}
    names = set().union(*(defined_metrics(source, package) for source in sources.values()))
    pushgateway = library / "_internal" / "monitoring" / "pushgateway.py"
    return names | pushed_metrics(sources[pushgateway], package)


# ---------------------------------------------------------------- what the queries read


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers, ranges,
    grouping clauses, function calls and keywords are taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # first: strings may hold braces or parentheses
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.groups()
        if not call and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def unknown_metrics(queries: dict[str, str], known: set[str]) -> dict[str, set[str]]:
    """For each query (by where it is) the metric names it reads that nobody exports."""
    found = {where: metric_names(expr) - known for where, expr in queries.items()}
    return {where: names for where, names in found.items() if names}


# ---------------------------------------------------------------- the checker, on inputs where it must fail


def test_the_checker_reads_only_metric_names_out_of_a_query():
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(bentoml_service_request_duration_seconds_bucket{job="x", '
        'endpoint!~"/(livez|readyz)"}[$__rate_interval]))) > 1 and on (job) up offset 5m'
    )
    assert metric_names(expr) == {"bentoml_service_request_duration_seconds_bucket", "up"}
    assert metric_names("absent(my_ml_project_monitor_last_success_timestamp_seconds)") == {
        "my_ml_project_monitor_last_success_timestamp_seconds"
    }


def test_a_misspelt_metric_on_the_dashboard_is_caught():
    queries = {
        "panel 'Drift share' A": "max by (model_version) (my_ml_project_drift_shares)",
        "panel 'Requests' A": "sum(rate(bentoml_service_request_total[5m]))",
    }
    known = {"my_ml_project_drift_share"} | BENTOML_METRICS
    assert unknown_metrics(queries, known) == {"panel 'Drift share' A": {"my_ml_project_drift_shares"}}


def test_exported_names_follow_prometheus_client_suffixes():
    source = (
        "from prometheus_client import Counter, Histogram\n"
        'A = Counter(f"{PACKAGE}_predictions", "rows", ["label"])\n'
        'B = Histogram(f"{PACKAGE}_batch_size", "rows per call")\n'
        "C = Counter(name_from_elsewhere, 'not literal, not counted')\n"
    )
    assert defined_metrics(source, "pkg") == {
        "pkg_predictions_total",
        "pkg_batch_size_bucket",
        "pkg_batch_size_sum",
        "pkg_batch_size_count",
    }


def test_a_missing_tool_skips_locally_and_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("REQUIRE_ALL_TOOLS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install prometheus$"):
        require_tool("promtool")
    monkeypatch.setenv("REQUIRE_ALL_TOOLS", "1")
    with pytest.raises(pytest.fail.Exception, match="apt-get install prometheus-pushgateway"):
        require_tool("prometheus-pushgateway")


# ---------------------------------------------------------------- every answer set


@pytest.fixture(params=list(ANSWER_SETS))
def project(request, rendered) -> Path:
    return rendered(request.param)


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("promtool"), *map(str, args)], capture_output=True, text=True, check=False, timeout=120
    )


def test_prometheus_accepts_the_config_and_its_rule_file(project):
    checked = promtool("check", "config", monitoring(project) / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout


def test_prometheus_accepts_the_alert_rules(project):
    checked = promtool("check", "rules", monitoring(project) / "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_tells_the_on_call_person_how_bad_and_what_to_do(project):
    for name, rule in alert_rules(project).items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80, name
        assert "for" in rule, name


def test_service_alerts_select_the_job_prometheus_scrapes(project):
    config = load_yaml(monitoring(project) / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["pushgateway"]["honor_labels"] is True, "pushed series must keep their own job label"
    selected = {job for expr in alert_queries(project).values() for job in re.findall(r'job="([^"]+)"', expr)}
    assert selected == {f"{package_of(project)}_service"} and selected <= set(jobs)


def alert_cases(package: str, monitor_every: int) -> list[tuple[str, dict[str, str], int, dict | None]]:
    """(alert, input series, minutes later, the alert's labels then or None when it must not fire)."""
    service = f'job="{package}_service", instance="127.0.0.1:3000"'
    pushed = f'job="{package}_monitor", model_version="{package}:v1"'
    judged = {"model_version": f"{package}:v1"}

    def requests(endpoint: str, status: int, per_minute: int) -> tuple[str, str]:
        labels = f'{service}, endpoint="{endpoint}", http_response_code="{status}"'
        return f"bentoml_service_request_total{{{labels}}}", f"0+{per_minute}x30"

    def latency_bucket(le: str, per_minute: int) -> tuple[str, str]:
        labels = f'{service}, endpoint="/predict", le="{le}"'
        return f"bentoml_service_request_duration_seconds_bucket{{{labels}}}", f"0+{per_minute}x30"

    last_success = f"{package}_monitor_last_success_timestamp_seconds{{{pushed}}}"
    one_success_then_none = f"0x{monitor_every // 60 * 4 + 120}"
    quiet_gateway = monitor_every // 20 + 120  # minutes, longer than MonitorNeverReported waits
    return [
        # The monitor found drift and keeps saying so: after 5 minutes the alert fires.
        ("DriftDetected", {f"{package}_drift_detected{{{pushed}}}": "1x15"}, 10, judged),
        ("DriftDetected", {f"{package}_drift_detected{{{pushed}}}": "0x15"}, 10, None),
        (
            "ModelPerformanceBelowThreshold",
            {f'{package}_performance_below_threshold{{{pushed}, metric="roc_auc"}}': "1x15"},
            10,
            judged,
        ),
        # One missed monitor run is tolerated; two missed runs and an hour more are not.
        ("MonitorStale", {last_success: one_success_then_none}, monitor_every * 2 // 60, None),
        ("MonitorStale", {last_success: one_success_then_none}, (monitor_every * 3 + 3600) // 60, {}),
        ("MonitorNeverReported", {f"up{{{service}}}": f"1x{quiet_gateway}"}, quiet_gateway, {}),
        (
            "ServiceDown",
            {f"up{{{service}}}": "0x10"},
            5,
            {"job": f"{package}_service", "instance": "127.0.0.1:3000"},
        ),
        # 10% of the predictions fail; health checks (all fine) do not dilute the share.
        (
            "ServiceErrorRateHigh",
            dict(
                [requests("/predict", 200, 90), requests("/predict", 500, 10), requests("/livez", 200, 1000)]
            ),
            15,
            {},
        ),
        (
            "ServiceErrorRateHigh",
            dict([requests("/predict", 200, 99), requests("/predict", 503, 1)]),
            15,
            None,
        ),
        # 20% server errors, in a flood of 404s to paths the service does not have: still an alert.
        (
            "ServiceErrorRateHigh",
            dict(
                [requests("/predict", 200, 80), requests("/predict", 500, 20), requests("other", 404, 5000)]
            ),
            15,
            {},
        ),
        # Every request takes between 1 and 2.5 s.
        (
            "ServiceLatencyP99High",
            dict(latency_bucket(le, n) for le, n in (("0.5", 0), ("1.0", 0), ("2.5", 60), ("+Inf", 60))),
            25,
            {},
        ),
        (
            "ModelSwapRefused",
            {f'{package}_model_swap_refused{{{service}, model_version="{package}:v2"}}': "1x15"},
            10,
            {"model_version": f"{package}:v2"},
        ),
        # Records dropped because the buffer is full: the alert names that cause, and only that one.
        (
            "RequestLogDropping",
            {f'{package}_request_log_dropped_total{{{service}, cause="buffer_full"}}': "0+5x30"},
            20,
            {"cause": "buffer_full"},
        ),
        (
            "RequestLogDropping",
            {f'{package}_request_log_dropped_total{{{service}, cause="write_failed"}}': "0+5x30"},
            20,
            None,
        ),
        # The log cannot be written at all: its own alert, at once and critical.
        (
            "RequestLogUnwritable",
            {f'{package}_request_log_dropped_total{{{service}, cause="write_failed"}}': "0+5x30"},
            5,
            {},
        ),
        (
            "RequestLogUnwritable",
            {f'{package}_request_log_dropped_total{{{service}, cause="buffer_full"}}': "0+5x30"},
            20,
            None,
        ),
        # One worker cannot read the alias record: an alert after five minutes; a readable one is quiet.
        (
            "AliasRecordBroken",
            {
                f'{package}_alias_record_valid{{{service}, pid="1"}}': "0x15",
                f'{package}_alias_record_valid{{{service}, pid="2"}}': "1x15",
            },
            10,
            {},
        ),
        ("AliasRecordBroken", {f"{package}_alias_record_valid{{{service}}}": "1x15"}, 10, None),
    ]


def test_alerts_fire_in_the_situations_they_describe(project, tmp_path):
    """`promtool test rules` replays series through the rendered rules: each case is what the on-call
    person would see happen (with the rule's own severity and annotations), or that nothing happens."""
    rules = alert_rules(project)
    every = MONITOR_INTERVALS[recorded_answers(project)["monitor_schedule"]]
    cases = alert_cases(package_of(project), every)
    assert {alert for alert, *_ in cases} == set(rules), "a case for every alert"
    tests = [
        {
            "interval": "1m",
            "input_series": [{"series": name, "values": values} for name, values in series.items()],
            "alert_rule_test": [
                {
                    "eval_time": f"{minutes}m",
                    "alertname": alert,
                    "exp_alerts": []
                    if fires is None
                    else [
                        {
                            "exp_labels": {**fires, **rules[alert]["labels"]},
                            "exp_annotations": rules[alert]["annotations"],
                        }
                    ],
                }
            ],
        }
        for alert, series, minutes, fires in cases
    ]
    test_file = tmp_path / "alerts_test.yml"
    rule_file = str(monitoring(project) / "alerts.yml")
    test_file.write_text(
        yaml.safe_dump({"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests})
    )
    result = promtool("test", "rules", test_file)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_grafana_json_on_the_provisioned_datasource(project):
    board = dashboard(project)
    source = provisioned_datasource(project)
    assert source["type"] == "prometheus" and source["url"] == "http://127.0.0.1:9090"
    assert board["schemaVersion"] >= 36 and 0 < len(board["uid"]) <= 40
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data_panels(board):
        where = panel["title"]
        assert panel["type"] in {"timeseries", "stat", "table"}, where
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
        assert panel["datasource"]["uid"] == source["uid"], where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"] and target["expr"].strip(), where
    provider = load_yaml(monitoring(project) / "grafana/provisioning/dashboards/dashboards.yml")["providers"][
        0
    ]
    assert provider["type"] == "file" and Path(provider["options"]["path"]).is_absolute()


def test_dashboard_and_alerts_read_only_metrics_the_project_exports(project):
    known = exported_metrics(project) | BENTOML_METRICS | PROMETHEUS_METRICS
    queries = {**dashboard_queries(dashboard(project)), **alert_queries(project)}
    assert unknown_metrics(queries, known) == {}


def test_every_metric_the_project_exports_has_a_panel(project):
    shown = set().union(*map(metric_names, dashboard_queries(dashboard(project)).values()))
    family = re.compile(r"_(bucket|sum|count)$")
    missing = {family.sub("", name) for name in exported_metrics(project)} - {
        family.sub("", n) for n in shown
    }
    assert missing == set()


# ---------------------------------------------------------------- a real Prometheus and Pushgateway


def wait_for(probe, what: str, timeout: float = 60):
    """The first truthy answer of `probe`, polled twice a second (Prometheus here scrapes every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if found := probe():
                return found
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def test_prometheus_scrapes_the_pushed_verdict_and_raises_drift(rendered, tmp_path):
    """The README's setup on free ports with a 1 s scrape: the monitor's push keeps its job label through
    honor_labels, DriftDetected goes pending, the service that is not running is noticed, and every
    dashboard query is one Prometheus runs."""
    project = rendered("default")
    package = package_of(project)
    prometheus, gateway = require_tool("prometheus"), require_tool("prometheus-pushgateway")
    prometheus_at, gateway_at, nothing_at = (f"127.0.0.1:{free_port()}" for _ in range(3))
    prometheus_url, gateway_url = f"http://{prometheus_at}", f"http://{gateway_at}"

    config = load_yaml(monitoring(project) / "prometheus.yml")
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(monitoring(project) / "alerts.yml")]
    targets = {f"{package}_service": nothing_at, "pushgateway": gateway_at}  # no service is running
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus_command = [
        prometheus,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={prometheus_at}",
    ]
    gateway_command = [gateway, f"--web.listen-address={gateway_at}"]

    def run(command: list[str], url: str, log: str):
        return started(
            command, cwd=tmp_path, env=dict(os.environ), log=tmp_path / log, ready_url=f"{url}/-/ready"
        )

    def query(expr: str) -> list[dict]:
        return httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}).json()["data"]["result"]

    def alerts() -> dict[str, str]:
        found = httpx.get(f"{prometheus_url}/api/v1/alerts").json()["data"]["alerts"]
        return {alert["labels"]["alertname"]: alert["state"] for alert in found}

    # What metrics_push.push_verdict sends: prometheus_client.push_to_gateway PUTs the text format.
    verdict = {
        f"{package}_drift_detected": 1,
        f"{package}_drift_share": 0.5,
        f"{package}_monitor_last_success_timestamp_seconds": time.time(),
    }
    body = "".join(
        f'# TYPE {name} gauge\n{name}{{model_version="{package}:v1"}} {value}\n'
        for name, value in verdict.items()
    )
    with (
        run(gateway_command, gateway_url, "gateway.log"),
        run(prometheus_command, prometheus_url, "prometheus.log"),
    ):
        httpx.put(f"{gateway_url}/metrics/job/{package}_monitor", content=body).raise_for_status()

        (drift,) = wait_for(lambda: query(f"{package}_drift_share"), "Prometheus to scrape the Pushgateway")
        assert drift["metric"]["job"] == f"{package}_monitor" and "exported_job" not in drift["metric"]
        wait_for(lambda: {"DriftDetected", "ServiceDown"} <= set(alerts()), "DriftDetected and ServiceDown")
        assert alerts()["DriftDetected"] == "pending", "it fires after its `for:` of 5 minutes"
        assert "MonitorNeverReported" not in alerts() and "MonitorStale" not in alerts()

        # Every panel's query runs (Grafana fills in $__rate_interval; 1m stands in for it here).
        for where, expr in dashboard_queries(dashboard(project)).items():
            answer = httpx.get(
                f"{prometheus_url}/api/v1/query", params={"query": expr.replace("$__rate_interval", "1m")}
            )
            assert answer.status_code == 200, f"{where}: {answer.text}"
        assert query(f"max by (model_version) ({package}_drift_share)"), "the drift share panel has data"
