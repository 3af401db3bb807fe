"""The project's one settings object.

Values come from settings.toml (written once by `copier copy`) and can be overridden by environment
variables named <PACKAGE>_<SECTION>__<KEY>, so a deployment or a test changes behaviour without editing
files. Every other module asks `get_settings()` instead of holding constants of its own.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

PACKAGE = __name__.split(".")[0]
ENV_PREFIX = f"{PACKAGE.upper()}_"


def _settings_file() -> Path:
    """The settings file sits at the project root, two levels above src/<package>/; inside a Bento, where
    BentoML drops the src/ level, it sits beside the package. An environment variable can point elsewhere."""
    if f"{ENV_PREFIX}SETTINGS_FILE" in os.environ:
        return Path(os.environ[f"{ENV_PREFIX}SETTINGS_FILE"])
    here = Path(__file__).resolve()
    project, bento = here.parents[2] / "settings.toml", here.parents[1] / "settings.toml"
    return bento if bento.exists() and not project.exists() else project


SETTINGS_FILE = _settings_file()


class ProjectSettings(BaseModel):
    name: str
    package: str = PACKAGE
    template_version: str = "unknown"


class DataSettings(BaseModel):
    path: str = ""
    target_column: str = "target"
    task_type: Literal["classification", "regression"] = "classification"
    test_size: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(42, ge=0)


class TuningSettings(BaseModel):
    # A key of model.py's MODEL_FAMILIES (checked in Settings, once the task type is known).
    model_family: str = "random_forest"
    n_trials: int = Field(20, ge=1)
    trials_per_task: int = Field(10, ge=1)
    timeout_seconds: float = Field(0, ge=0)
    cv_folds: int = Field(3, ge=2)
    storage: str = "sqlite:///.optuna/studies.db"
    # How long a training run waits for another one of the project to finish; 0: as long as it takes.
    lock_wait_seconds: float = Field(0, ge=0)


class RegistrySettings(BaseModel):
    bentoml_home: str = ""
    reference_rows: int = Field(5000, ge=10)
    promotion_margin: float = Field(0.0, ge=0)
    sensitive_column: str = ""
    max_group_gap: float = Field(0.1, ge=0)
    # Models kept in the store besides production and its rollback history; 0: keep every model.
    keep_models: int = Field(10, ge=0)


class ServingSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    timeout_seconds: float = Field(30, gt=0)
    max_rows: int = Field(1000, ge=1)
    max_batch_size: int = Field(100, ge=1)
    max_latency_ms: int = Field(2000, ge=1)
    request_log_path: str = "logs/requests.jsonl"
    request_log_max_bytes: int = Field(10_000_000, ge=1024)
    request_log_backups: int = Field(5, ge=0)
    request_log_buffer: int = Field(10_000, ge=1)
    api_key_env: str = f"{ENV_PREFIX}API_KEY"
    api_key_block: str = ""
    runtime: Literal["auto", "onnx", "sklearn"] = "auto"
    # A category field lists its allowed values in the API only up to this many; above, it takes any text.
    max_enum_categories: int = Field(50, ge=0)


class MonitoringSettings(BaseModel):
    drift_threshold: float = Field(0.3, gt=0, le=1)
    # "requests": the service's request log (serving.request_log_path), its last window_hours;
    # "file": the table at current_path. The monitor flow's `current_path` parameter overrides both.
    source: Literal["requests", "file"] = "requests"
    window_hours: float = Field(24, gt=0)
    min_rows: int = Field(50, ge=1)
    current_path: str = "data/current.csv"
    # Labels for served requests: a CSV/Parquet table with request_id and the target column.
    labels_path: str = "data/labels.csv"
    # ROC AUC below (classification) or RMSE above (regression) this fires like drift; 0: no threshold.
    performance_threshold: float = Field(0.0, ge=0)
    reports_dir: str = "reports"
    # Where reports_dir is served over HTTP (for links in the Prefect artifact); empty: no link.
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


class AlertSettings(BaseModel):
    # The webhook URL comes from a Prefect Secret block (its name here) or else from the environment
    # variable named here, never from a file in the repository. Neither set: no alerts.
    webhook_block: str = ""
    webhook_env: str = f"{ENV_PREFIX}ALERT_WEBHOOK_URL"
    # "slack": {"text": ...} (Slack, Mattermost, Rocket.Chat, Teams workflows); "json": text plus details.
    format: Literal["slack", "json"] = "slack"
    timeout_seconds: float = Field(10, gt=0)
    retries: int = Field(3, ge=0)
    retry_delay_seconds: float = Field(5, ge=0)


class OnnxSettings(BaseModel):
    output_dir: str = "dist/edge"
    tolerance: float = Field(1e-4, gt=0)
    check_rows: int = Field(2000, ge=10)


class DeploySettings(BaseModel):
    state_dir: str = ".deploy"
    ready_timeout_seconds: float = Field(180, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", toml_file=SETTINGS_FILE, extra="forbid"
    )

    project: ProjectSettings
    data: DataSettings = DataSettings()
    tuning: TuningSettings = TuningSettings()
    registry: RegistrySettings = RegistrySettings()
    serving: ServingSettings = ServingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    alerts: AlertSettings = AlertSettings()
    onnx: OnnxSettings = OnnxSettings()
    deploy: DeploySettings = DeploySettings()

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
        from .model import family

        try:
            family(self.tuning.model_family, self.data.task_type)
        except ValueError as exc:
            raise ValueError(f"tuning.model_family in {SETTINGS_FILE.name}: {exc}") from None
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
        """The Optuna storage URL, with a relative SQLite path made absolute and its folder created."""
        prefix = "sqlite:///"
        url = self.tuning.storage
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            db = self.resolve(url[len(prefix) :])
            db.parent.mkdir(parents=True, exist_ok=True)
            return prefix + str(db)
        return url

    @property
    def bentoml_home(self) -> Path:
        """The model store folder: the configured one, else BentoML's default."""
        if self.registry.bentoml_home:
            return self.resolve(self.registry.bentoml_home)
        return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")

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


@lru_cache
def get_settings() -> Settings:
    """Read the settings once per process; tests call `get_settings.cache_clear()` after changing the env."""
    return Settings()
