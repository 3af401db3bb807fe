"""The project's one settings object.

Values come from settings.toml (written once by `copier copy`) and can be overridden by environment
variables named <PACKAGE>_<SECTION>__<KEY>, so a deployment or a test changes behaviour without editing
files. Every other module asks `get_settings()` instead of holding constants of its own.

Nothing is silently ignored: a key in the file that no section has, or an environment variable with the
project's prefix that names no setting, is an error, like a bad value. Errors come as a SettingsError, one
line per problem naming the key (section.key), where it came from (the file or the variable) and, for an
unknown key, the closest valid one.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .project import bound, user_module

# The project this process serves (bound by its package's __init__.py before any module here is imported).
PACKAGE = bound().package
ENV_PREFIX = f"{PACKAGE.upper()}_"
# The folder of everything the project's runs write, relative to the project root; each path setting that
# defaults into it can point elsewhere.
STATE_DIR = ".state"


def _settings_file() -> Path:
    """The settings file sits at the project root, two levels above src/<package>/; inside a Bento, where
    BentoML drops the src/ level, it sits beside the package. An environment variable can point elsewhere."""
    if f"{ENV_PREFIX}SETTINGS_FILE" in os.environ:
        return Path(os.environ[f"{ENV_PREFIX}SETTINGS_FILE"])
    here = bound().directory
    project, bento = here.parents[1] / "settings.toml", here.parent / "settings.toml"
    return bento if bento.exists() and not project.exists() else project


SETTINGS_FILE = _settings_file()


# Who promotes a model that passed the gate (promotion.mode; flows/promote.py acts on it).
PromotionMode = Literal["auto", "approve", "suggest"]


class Section(BaseModel):
    """A section of settings.toml: a key it does not have is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ProjectSettings(Section):
    name: str
    package: str = PACKAGE
    template_version: str = "unknown"
    # The deployment environment this process runs in: each environment's deployments set it (prefect.yaml),
    # and the model events carry it, so on a Prefect server shared by environments only that one reacts.
    environment: str = Field("dev", pattern=r"^[a-z][a-z0-9-]{0,31}$")


class DataSettings(Section):
    path: str = ""
    target_column: str = "target"
    task_type: Literal["classification", "regression"] = "classification"
    test_size: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(42, ge=0)


class TuningSettings(Section):
    # A key of model.py's MODEL_FAMILIES (checked in Settings, once the task type is known).
    model_family: str = "random_forest"
    n_trials: int = Field(20, ge=1)
    trials_per_task: int = Field(10, ge=1)
    timeout_seconds: float = Field(0, ge=0)
    cv_folds: int = Field(3, ge=2)
    storage: str = "sqlite:///.state/optuna/studies.db"
    # How long a training run waits for another one of the project to finish; 0: as long as it takes.
    lock_wait_seconds: float = Field(0, ge=0)
    # Flow runs of `deployment` that tune one study together on the work pool (docs/scaling.md); 1: the
    # train run tunes by itself. prefect.yaml points each environment's train runs at its own deployment.
    workers: int = Field(1, ge=1)
    deployment: str = "tune/tune-dev"


class RegistrySettings(Section):
    bentoml_home: str = ""
    reference_rows: int = Field(5000, ge=10)
    promotion_margin: float = Field(0.0, ge=0)
    # The gate refuses a candidate for its loss on the other slice only when it is worse by more than the
    # margin with this confidence (a paired bootstrap over that slice's rows).
    gate_confidence: float = Field(0.95, gt=0, lt=1)
    # A candidate predicting like a rolled-back model on this share of the gate's newest rows counts as
    # that model, and the gate refuses it as it refuses the model itself.
    retired_agreement: float = Field(0.95, gt=0, le=1)
    sensitive_column: str = ""
    max_group_gap: float = Field(0.1, ge=0)
    # Models kept in the store besides production and its rollback history; 0: keep every model.
    keep_models: int = Field(10, ge=0)


class PromotionSettings(Section):
    """Who promotes a model that passes the gate, and the replay of recorded requests it must pass too."""

    # auto: the gate promotes; approve: a run of a deployment pauses for a person's answer in the Prefect UI
    # (a run started by hand promotes as auto); suggest: the run ends with the verdict and the command.
    mode: PromotionMode = "auto"
    # Seconds a paused run waits for the answer; none by then rejects the candidate.
    approval_timeout: int = Field(86400, ge=10)
    # The replay refuses a candidate that predicts otherwise than production on more than this share of the
    # recorded requests (1: never).
    max_disagreement: float = Field(0.5, gt=0, le=1)
    # ... or that takes more than this many times production's scoring time on them.
    max_latency_ratio: float = Field(4.0, ge=1)


class ServingSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    timeout_seconds: float = Field(30, gt=0)
    header_timeout_seconds: float = Field(10, gt=0)
    max_rows: int = Field(1000, ge=1)
    max_body_bytes: int = Field(4_000_000, ge=1024)
    # The rest of a larger body is read and dropped up to this many bytes before its 413 ends: clients that
    # send the whole body before reading (urllib, httpx) get the 413 instead of a connection reset.
    max_discarded_bytes: int = Field(100_000_000, ge=0)
    max_batch_size: int = Field(100, ge=1)
    max_latency_ms: int = Field(2000, ge=1)
    # The request log (serving/request_log.py): each worker writes its records to the store (storage.url,
    # requests/date=.../hour=.../) every flush_seconds, or sooner once flush_records are waiting; what a
    # killed replica loses is at most one flush. buffer: records held while the store is slow or failing,
    # beyond which they are dropped and counted.
    request_log_flush_seconds: float = Field(5, gt=0)
    request_log_flush_records: int = Field(1000, ge=1)
    request_log_buffer: int = Field(10_000, ge=1)
    # Partitions are deleted once their hour ended longer ago than this (at least the monitor's window).
    request_log_retention_hours: float = Field(24, gt=0)
    # The name in this replica's request-log objects; empty: the host name (a pod's name).
    replica: str = Field("", pattern=r"^[A-Za-z0-9._-]{0,63}$")
    # Release 2.0.0's rotating file: nothing writes it any more; its files are still read by the monitor
    # and training until they age out (its size settings are retired: RETIRED below).
    request_log_path: str = ".state/logs/requests.jsonl"
    api_key_env: str = f"{ENV_PREFIX}API_KEY"
    api_key_block: str = ""
    runtime: Literal["auto", "onnx", "sklearn"] = "auto"
    # A category field lists its allowed values in the API only up to this many; above, it takes any text.
    max_enum_categories: int = Field(50, ge=0)
    # The server log names a rejected request's fields and errors, never the values sent; true for debugging.
    log_rejected_values: bool = False


class MonitoringSettings(Section):
    drift_threshold: float = Field(0.3, gt=0, le=1)
    # "requests": the service's request log (requests/ in storage.url), its last window_hours;
    # "file": the table at current_path. The monitor flow's `current_path` parameter overrides both.
    source: Literal["requests", "file"] = "requests"
    window_hours: float = Field(24, gt=0)
    min_rows: int = Field(50, ge=1)
    current_path: str = "data/current.csv"
    # Labels for served requests: a CSV/Parquet table with request_id and the target column, read together
    # with the CSV, Parquet or JSON-lines objects under labels/ in storage.url.
    labels_path: str = "data/labels.csv"
    # The primary metric worse than this (ROC AUC below it, RMSE above it) fires like drift; 0: no threshold.
    performance_threshold: float = Field(0.0, ge=0)
    # Where the store's reports/ folder is served over HTTP, for the artifact's link to each report; empty:
    # a signed URL on object storage, a file:// link on a folder store.
    reports_url: str = ""
    # Prometheus Pushgateway, for example http://127.0.0.1:9091; empty: no push.
    pushgateway_url: str = ""
    pushgateway_job: str = f"{PACKAGE}_monitor"
    pushgateway_timeout_seconds: float = Field(5, gt=0)
    # Drift is computed on a fixed-seed random sample of at most max_rows rows of each frame; the floor keeps
    # samples above 1,000 rows, where Evidently's default methods switch from tests to distances.
    max_rows: int = Field(100_000, ge=10_000)
    sample_seed: int = Field(42, ge=0)
    # Empty method: Evidently's choice per column; 0 threshold: the method's default.
    num_method: str = ""
    cat_method: str = ""
    num_threshold: float = Field(0.0, ge=0)
    cat_threshold: float = Field(0.0, ge=0)
    # A retrain event counts as sent once the Prefect server shows it; each try waits this long for that,
    # and event_retries more tries post it over the REST API. Unconfirmed: the run fails (signal lost).
    event_timeout_seconds: float = Field(20, gt=0)
    event_retries: int = Field(2, ge=0)


class FeedbackSettings(Section):
    """Learning from labelled production traffic (training/feedback.py)."""

    # Labelled rows of the request log (features joined with labels on request id and row) within this
    # many hours are added to the configured training data; 0: the configured data alone.
    window_hours: float = Field(168, ge=0)
    # Fewer labelled rows than this: training uses the configured data alone and says so.
    min_rows: int = Field(30, ge=1)
    # At most this many labelled rows are used (the newest are kept); 0: no cap.
    max_rows: int = Field(50_000, ge=0)
    # The newest share of the labelled rows is held out by time (never trained on) as the gate's recent slice.
    recent_share: float = Field(0.3, gt=0, lt=1)
    # The gate judges on the recent slice when it has at least this many rows, else on the usual holdout.
    gate_min_recent_rows: int = Field(30, ge=1)


class RolloutSettings(Section):
    """Rollout of a promoted model to the running service, and the watch after it (automatic rollback)."""

    # Each service worker checks the production alias record this often and swaps in a new production
    # model between batches, without a restart; 0: never (serve the model the service started with).
    poll_seconds: float = Field(2, ge=0)
    # For this many hours after a promotion the monitor compares the live model with the one it replaced;
    # 0: no watch, no automatic rollback.
    watch_hours: float = Field(24, ge=0)
    # Rows the new model must have served (and, for performance, labelled rows) before it is judged.
    min_rows: int = Field(50, ge=1)
    # Worse beyond these is rolled back: the primary metric on labelled rows (absolute, in the metric's
    # direction), the share of 5xx answers (absolute increase), p99 latency (ratio).
    max_metric_drop: float = Field(0.02, ge=0)
    # The metric counts as worse only when the live model trails by more than max_metric_drop with this
    # confidence (both models scored on the same labelled rows, a paired bootstrap over them).
    confidence: float = Field(0.95, gt=0, lt=1)
    max_error_rate_increase: float = Field(0.01, ge=0)
    max_p99_ratio: float = Field(2.0, ge=1)
    # The service's base URL, where the watch reads /metrics (5xx and latency per model version); empty:
    # http://<serving.host>:<serving.port>.
    service_url: str = ""


class AlertSettings(Section):
    # The webhook URL comes from a Prefect Secret block (its name here) or else from the environment
    # variable named here, never from a file in the repository. Neither set: no alerts.
    webhook_block: str = ""
    webhook_env: str = f"{ENV_PREFIX}ALERT_WEBHOOK_URL"
    # "slack": {"text": ...} (Slack, Mattermost, Rocket.Chat, Teams workflows); "json": text plus details.
    format: Literal["slack", "json"] = "slack"
    timeout_seconds: float = Field(10, gt=0)
    retries: int = Field(3, ge=0)
    retry_delay_seconds: float = Field(5, ge=0)


class OnnxSettings(Section):
    output_dir: str = "dist/edge"
    tolerance: float = Field(1e-4, gt=0)
    check_rows: int = Field(2000, ge=10)


class DeploySettings(Section):
    state_dir: str = ".state/deploy"
    ready_timeout_seconds: float = Field(180, gt=0)


class StorageSettings(Section):
    """Where the state every machine shares lives (storage.py): models, the production alias, the request
    log, labels and reports. A path is a folder on this machine (relative to the project root); for a
    team, s3://bucket/prefix (endpoint and credentials from AWS_*), gs://bucket/prefix or az://container/prefix."""

    url: str = ".state/store"
    timeout_seconds: float = Field(30, gt=0)

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        from .storage import STORAGE_SCHEMES

        scheme = value.split("://", 1)[0] if "://" in value else ""
        if not value.strip():
            raise ValueError("empty; use a folder (.state/store) or s3://bucket/prefix, gs://..., az://...")
        if scheme and scheme not in STORAGE_SCHEMES:
            raise ValueError(
                f"{scheme}:// is not a store this project reads; use a folder, file://, s3://bucket/prefix, "
                "gs://bucket/prefix or az://container/prefix"
            )
        return value


class SettingsError(ValueError):
    """Settings that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", toml_file=SETTINGS_FILE, extra="forbid"
    )

    def __init__(self, **values: Any) -> None:
        """Check the file's keys and the prefixed environment variables first (pydantic-settings ignores
        unknown variables and cannot say where a value came from), then let pydantic validate the values,
        and turn its errors into one line per problem."""
        problems = unknown_keys(SETTINGS_FILE, os.environ)
        if problems:
            raise SettingsError(problems)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc, SETTINGS_FILE, os.environ)) from None

    project: ProjectSettings
    data: DataSettings = DataSettings()
    tuning: TuningSettings = TuningSettings()
    registry: RegistrySettings = RegistrySettings()
    promotion: PromotionSettings = PromotionSettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    rollout: RolloutSettings = RolloutSettings()
    alerts: AlertSettings = AlertSettings()
    onnx: OnnxSettings = OnnxSettings()
    deploy: DeploySettings = DeploySettings()
    storage: StorageSettings = StorageSettings()

    @field_validator("project")
    @classmethod
    def _package_matches(cls, value: ProjectSettings) -> ProjectSettings:
        if value.package != PACKAGE:
            raise ValueError(
                f"[project] package is {value.package!r} in {SETTINGS_FILE} but the code is {PACKAGE!r}"
            )
        return value

    @model_validator(mode="after")
    def _model_family_is_in_the_table(self) -> Settings:
        # Imported here, not at the top: model.py is the user's file and pulls in scikit-learn.
        family = user_module("model").family

        try:
            family(self.tuning.model_family, self.data.task_type)
        except ValueError as exc:
            raise ValueError(f"tuning.model_family: {exc}") from None
        return self

    @model_validator(mode="after")
    def _primary_metric_is_known(self) -> Settings:
        from .training.metrics import primary_metric

        try:
            primary_metric(self.data.task_type)
        except ValueError as exc:
            raise ValueError(f"data.task_type: {exc}") from None
        return self

    @model_validator(mode="after")
    def _request_log_outlives_the_window(self) -> Settings:
        retention, window = self.serving.request_log_retention_hours, self.monitoring.window_hours
        if retention < window:
            raise ValueError(
                f"serving.request_log_retention_hours: {retention:g} h is shorter than "
                f"monitoring.window_hours ({window:g} h), so the monitor would find its window cut; make it "
                f"at least {window:g}"
            )
        return self

    @model_validator(mode="after")
    def _request_log_flushes_within_its_buffer(self) -> Settings:
        flush, buffer = self.serving.request_log_flush_records, self.serving.request_log_buffer
        if flush > buffer:
            raise ValueError(
                f"serving.request_log_flush_records: {flush} is more than serving.request_log_buffer "
                f"({buffer}), so records would be dropped before a flush is due; make it at most {buffer}"
            )
        return self

    @model_validator(mode="after")
    def _parallel_tuning_shares_a_database_server(self) -> Settings:
        workers, storage = self.tuning.workers, self.tuning.storage
        if workers > 1 and storage.startswith("sqlite"):
            raise ValueError(
                f"tuning.workers: {workers} workers cannot share the SQLite file of tuning.storage "
                f"({storage}); set tuning.storage to a PostgreSQL URL "
                "(postgresql+psycopg://user:password@host:5432/optuna, docs/scaling.md) or tuning.workers = 1"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments first, then environment variables, then the settings file.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    @property
    def root(self) -> Path:
        """The project folder: relative paths in the settings file are relative to it."""
        return SETTINGS_FILE.parent

    def resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path

    @property
    def data_path(self) -> Path | None:
        return self.resolve(self.data.path) if self.data.path else None

    @property
    def optuna_storage(self) -> str:
        """The Optuna storage URL, with a relative SQLite path made absolute and its folder created; a plain
        postgresql:// URL gets the psycopg driver the project installs (SQLAlchemy's default is psycopg2)."""
        prefix = "sqlite:///"
        url = self.tuning.storage
        if url.startswith("postgresql://"):
            return "postgresql+psycopg://" + url.removeprefix("postgresql://")
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            db = self.resolve(url[len(prefix) :])
            db.parent.mkdir(parents=True, exist_ok=True)
            return prefix + str(db)
        return url

    @property
    def state_dir(self) -> Path:
        """The project's own state (model store, alias, locks, studies, request log, reports), git-ignored:
        never the user's home, so two projects never share models or a production alias by accident."""
        return self.root / STATE_DIR

    @property
    def bentoml_home(self) -> Path:
        """The model store folder, with the alias and lock files beside it: registry.bentoml_home, else a
        BENTOML_HOME exported by the user, else .state/bentoml in the project."""
        if self.registry.bentoml_home:
            return self.resolve(self.registry.bentoml_home)
        if os.environ.get("BENTOML_HOME"):
            return Path(os.environ["BENTOML_HOME"]).expanduser().resolve()
        return self.state_dir / "bentoml"

    @property
    def model_name(self) -> str:
        """The model's name in the BentoML store, also used in Prefect event resource ids."""
        return PACKAGE

    @property
    def drift_event(self) -> str:
        return f"{PACKAGE}.drift.detected"

    @property
    def performance_event(self) -> str:
        return f"{PACKAGE}.performance.degraded"

    @property
    def promoted_event(self) -> str:
        return f"{PACKAGE}.model.promoted"

    @property
    def rolled_back_event(self) -> str:
        return f"{PACKAGE}.model.rolled_back"


def _sections() -> dict[str, type[BaseModel]]:
    return {
        name: field.annotation
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }


# Kubernetes gives every pod <SERVICE>_SERVICE_HOST, <SERVICE>_PORT_3000_TCP, ... for each Service in its
# namespace; a Service named after the package would otherwise look like misspelt settings.
_SERVICE_LINK = re.compile(
    r"_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$"
)


def _closest(word: str, candidates: list[str]) -> str | None:
    lowered = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[found[0]] if found else None


def _did_you_mean(suggestion: str | None) -> str:
    return f"; did you mean {suggestion}?" if suggestion else ""


# Keys an older release had, each with what to do: a settings file that still has one gets this line
# instead of a near miss.
_ROTATION = (
    "retired: the request log is no longer a rotating file but hourly objects in the store ([storage] url), "
    "kept serving.request_log_retention_hours; delete this line"
)
RETIRED = {
    "serving.request_log_max_bytes": _ROTATION,
    "serving.request_log_backups": _ROTATION,
    "monitoring.reports_dir": (
        "no longer a setting: drift reports are stored under reports/ in storage.url; delete this line"
    ),
}


def unknown_keys(path: Path, environ: Mapping[str, str]) -> list[str]:
    """One line per key in the settings file and per variable with the project's prefix that names no
    setting, each with the closest valid name; also a file that is not valid TOML."""
    sections = _sections()
    everything = [f"{s}.{k}" for s, model in sections.items() for k in model.model_fields]
    problems = []
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            return [f"{path}: not valid TOML: {exc}"]
    for section, values in data.items():
        if not isinstance(values, dict):  # a key above the first [section]
            guess = _closest(section, [key.partition(".")[2] for key in everything])
            where = next((key for key in everything if key.endswith(f".{guess}")), None)
            problems.append(f"{section} in {path}: outside any [section]{_did_you_mean(where)}")
            continue
        if section not in sections:
            near = _closest(section, list(sections))
            problems.append(f"[{section}] in {path}: no such section{_did_you_mean(near and f'[{near}]')}")
            continue
        known = list(sections[section].model_fields)
        for key in values:
            if f"{section}.{key}" in RETIRED:
                problems.append(f"{section}.{key} in {path}: {RETIRED[f'{section}.{key}']}")
            elif key not in known:  # the closest key of this section, else the sections with it, else any
                near = _closest(key, known)
                homes = " or ".join(
                    f"{s}.{key}" for s, model in sections.items() if key in model.model_fields
                )
                guess = f"{section}.{near}" if near else homes or _closest(key, everything)
                problems.append(f"{section}.{key} in {path}: no such setting{_did_you_mean(guess)}")
    # Settings whose value names an environment variable (api_key_env, webhook_env): those variables are
    # the project's too. Their values may themselves come from the file or the environment.
    named = {f"{ENV_PREFIX}SETTINGS_FILE"}
    for section, model in sections.items():
        for key, field in model.model_fields.items():
            if key.endswith("_env"):
                variable = f"{ENV_PREFIX}{section}__{key}".upper()
                override = next((v for n, v in environ.items() if n.upper() == variable), None)
                named.add(str(override or data.get(section, {}).get(key, field.default)).upper())
    valid = [f"{s}__{k}".upper() for s, model in sections.items() for k in model.model_fields]
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in named or _SERVICE_LINK.search(upper):
            continue
        rest = upper.removeprefix(ENV_PREFIX)
        retired = rest.lower().replace("__", ".", 1)
        if retired in RETIRED:
            problems.append(f"{name} (environment variable): {RETIRED[retired]}")
            continue
        if rest in valid or rest.lower() in sections:  # a whole section as JSON is pydantic-settings' too
            continue
        others = [n.removeprefix(ENV_PREFIX) for n in named if n.startswith(ENV_PREFIX)]
        guess = _closest(rest, valid + others)
        setting = f" ({guess.lower().replace('__', '.', 1)})" if guess and "__" in guess else ""
        suggestion = f"{ENV_PREFIX}{guess}{setting}" if guess else None
        problems.append(
            f"{name} (environment variable): no such setting; settings are {ENV_PREFIX}<SECTION>__<KEY>"
            f"{_did_you_mean(suggestion)}"
        )
    return problems


def describe_errors(error: ValidationError, path: Path, environ: Mapping[str, str]) -> list[str]:
    """pydantic's errors as one line each: the key, its value, where it came from, and what is wrong."""
    upper_environ = {name.upper(): name for name in environ}
    lines = []
    for problem in error.errors(include_url=False):
        location = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if not location:  # a check across settings names its key at the start of its message
            location, _, message = message.partition(": ")
        if problem["type"] == "missing" and location == "project" and not path.exists():
            lines.append(f"{path}: settings file not found (the project root, or {ENV_PREFIX}SETTINGS_FILE)")
            continue
        parts = location.split(".")
        variable = len(parts) > 1 and upper_environ.get(f"{ENV_PREFIX}{parts[0]}__{parts[-1]}".upper())
        source = f"from {variable}" if variable else f"in {path}"
        # The value when pydantic names the key itself (not for a missing key or a check across settings).
        shown = len(parts) == 2 and problem["loc"] and problem["type"] != "missing"
        value = f" = {problem['input']!r}" if shown else ""
        lines.append(f"{location}{value} {source}: {message}")
    return lines


_store_in_use = False  # set once this process's BENTOML_HOME is the project's store


def use_project_store(settings: Settings) -> None:
    """Point BentoML at the project's model store (settings.bentoml_home, by default .state/bentoml), once per
    process; get_settings() calls it on its first read.

    BentoML reads BENTOML_HOME once, the first time anything opens its store, and otherwise uses ~/bentoml,
    shared by every project. Reading the settings is the one step every path takes before it touches the
    store (the store's folder is a setting): the CLI, a worker's flow runs (Prefect imports the flow's module;
    there is no start-up of ours), `bentoml serve` building the service, and the processes those start, which
    inherit the variable. Importing or binding the project reads nothing, so it exports nothing."""
    global _store_in_use
    if _store_in_use:
        return
    os.environ["BENTOML_HOME"] = str(settings.bentoml_home)
    if "bentoml" in sys.modules:  # a bare `bentoml serve|build` may have opened another store already
        from bentoml._internal.configuration.containers import BentoMLContainer

        opened = BentoMLContainer.bentoml_home.get()
        if os.path.realpath(opened) != os.path.realpath(os.environ["BENTOML_HOME"]):
            raise RuntimeError(
                f"BentoML opened the model store {opened} before this project's settings were read, but the "
                f"project's store is {os.environ['BENTOML_HOME']}: use `python -m {PACKAGE} serve|deploy`, "
                f"or export BENTOML_HOME={os.environ['BENTOML_HOME']} first"
            )
    _store_in_use = True


@lru_cache
def get_settings() -> Settings:
    """Read the settings once per process; tests call `get_settings.cache_clear()` after changing the env.
    The first read also points BentoML at the project's store, before anything can open it."""
    settings = Settings()
    use_project_store(settings)
    return settings
