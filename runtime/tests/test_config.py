"""settings.toml and config.py agree: every key in the file is a setting the code reads, and every setting is
in the file. And nothing is silently ignored: a misspelt key or variable is an error that names it and its
closest match. (That the file as generated holds the code's defaults is checked where the template is made:
your own values in settings.toml are yours.)"""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
from ml_lifecycle._internal.cli import keep_prefect_state_in_the_project, main
from ml_lifecycle._internal.config import (
    ENV_PREFIX,
    SETTINGS_FILE,
    Settings,
    SettingsError,
    get_settings,
    unknown_keys,
)
from ml_lifecycle._internal.project import bound
from ml_lifecycle._internal.registry.aliases import legacy_file
from ml_lifecycle._internal.storage import storage_url
from ml_lifecycle._internal.training.lock import lock_file
from pydantic import BaseModel

# The code that reads the settings: the library's, and the project's own package (the user's three files).
LIBRARY = Path(__file__).resolve().parents[1] / "src" / "ml_lifecycle"
SOURCES = [LIBRARY, bound().directory]
FILE = tomllib.loads(SETTINGS_FILE.read_text())
KEYS = [(section, key) for section, values in FILE.items() for key in values]


def section_model(section: str) -> type[BaseModel]:
    annotation = Settings.model_fields[section].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel), section
    return annotation


def code_outside_config() -> str:
    files = [p for source in SOURCES for p in source.rglob("*.py")]
    return "\n".join(p.read_text() for p in files if p != LIBRARY / "_internal" / "config.py")


@pytest.mark.parametrize(("section", "key"), KEYS, ids=[f"{s}.{k}" for s, k in KEYS])
def test_every_key_in_the_file_is_a_setting_the_code_reads(section, key):
    assert section in Settings.model_fields, f"[{section}] in settings.toml is no section of config.Settings"
    assert key in section_model(section).model_fields, f"{section}.{key} is not a field of config.py"
    assert re.search(rf"\.{key}\b", code_outside_config()), f"nothing reads {section}.{key}"


@pytest.mark.parametrize("section", [s for s in FILE if s != "project"])
def test_every_setting_is_in_the_file(section):
    """The file is where a user looks: a setting missing there is one they cannot find."""
    assert set(section_model(section).model_fields) == set(FILE[section])


def test_every_environment_variable_the_project_reads_is_in_env_example(settings):
    code = code_outside_config() + (LIBRARY / "_internal" / "config.py").read_text()
    read = set(re.findall(r'os\.environ(?:\.get\(|\[)"([A-Z][A-Z0-9_]*)"', code))
    read |= {ENV_PREFIX + name for name in re.findall(r'f"\{ENV_PREFIX\}([A-Z_]+)"', code)}
    read |= {settings.serving.api_key_env, settings.alerts.webhook_env, "PREFECT_API_URL"}
    # Not the user's to set: a setting's own variable (<PREFIX>_<SECTION>__<KEY>, which .env.example names as
    # a pattern), and the library's hand-offs to processes it starts itself (ML_LIFECYCLE_*).
    read = {name for name in read if "__" not in name and not name.startswith("ML_LIFECYCLE_")}
    example = (SETTINGS_FILE.parent / ".env.example").read_text()
    assert read <= set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, flags=re.M))


# Nothing is silently ignored: unknown keys and variables are errors, one line each, with the closest key.


@pytest.mark.parametrize("section", [s for s in Settings.model_fields])
def test_every_section_refuses_keys_it_does_not_have(section):
    assert section_model(section).model_config.get("extra") == "forbid"


def test_a_misspelt_key_in_the_file_is_named_with_its_closest_match(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text(
        SETTINGS_FILE.read_text()
        .replace("n_trials =", "n_trails =", 1)
        .replace("window_hours =", "window_hour =", 1)
        + "\n[tunning]\nseed = 1\n"
    )
    assert unknown_keys(path, {}) == [
        f"tuning.n_trails in {path}: no such setting; did you mean tuning.n_trials?",
        f"monitoring.window_hour in {path}: no such setting; did you mean monitoring.window_hours?",
        f"[tunning] in {path}: no such section; did you mean [tuning]?",
    ]


def test_a_key_in_the_wrong_section_is_pointed_to_the_right_one(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text('n_trials = 3\n\n[project]\nname = "x"\n\n[serving]\nwindow_hours = 12\n')
    assert unknown_keys(path, {}) == [
        f"n_trials in {path}: outside any [section]; did you mean tuning.n_trials?",
        f"serving.window_hours in {path}: no such setting; "
        "did you mean monitoring.window_hours or feedback.window_hours?",
    ]


def test_a_file_that_is_not_toml_is_one_line(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text("[tuning\nn_trials = 3\n")
    [problem] = unknown_keys(path, {})
    assert problem.startswith(f"{path}: not valid TOML: ") and "line 1" in problem


def test_a_misspelt_environment_variable_is_an_error_naming_the_closest(monkeypatch, settings):
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__N_TRAILS", "5")
    monkeypatch.setenv(f"{ENV_PREFIX}MONITORING_WINDOW_HOURS", "5")  # one underscore instead of two
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as error:
        get_settings()
    assert error.value.problems == [
        f"{ENV_PREFIX}MONITORING_WINDOW_HOURS (environment variable): no such setting; settings are "
        f"{ENV_PREFIX}<SECTION>__<KEY>; did you mean {ENV_PREFIX}MONITORING__WINDOW_HOURS "
        "(monitoring.window_hours)?",
        f"{ENV_PREFIX}TUNING__N_TRAILS (environment variable): no such setting; settings are "
        f"{ENV_PREFIX}<SECTION>__<KEY>; did you mean {ENV_PREFIX}TUNING__N_TRIALS (tuning.n_trials)?",
    ]


def test_variables_the_project_reads_by_name_and_kubernetes_service_links_are_no_errors(settings):
    environ = {
        f"{ENV_PREFIX}SETTINGS_FILE": str(SETTINGS_FILE),
        settings.serving.api_key_env: "key",
        settings.alerts.webhook_env: "https://hooks.example/x",
        f"{ENV_PREFIX}TUNING__N_TRIALS": "5",
        # What Kubernetes sets in every pod for a Service named after the package.
        f"{ENV_PREFIX}SERVICE_HOST": "10.0.0.1",
        f"{ENV_PREFIX}SERVICE_PORT_HTTP": "3000",
        f"{ENV_PREFIX}PORT": "tcp://10.0.0.1:3000",
        f"{ENV_PREFIX}PORT_3000_TCP_ADDR": "10.0.0.1",
    }
    assert unknown_keys(SETTINGS_FILE, environ) == []
    renamed = {f"{ENV_PREFIX}SERVING__API_KEY_ENV": "OTHER_KEY", f"{ENV_PREFIX}OTHER_KEY": "x"}
    assert len(unknown_keys(SETTINGS_FILE, renamed)) == 1  # the key now lives in OTHER_KEY, not here


def test_a_bad_value_is_one_line_naming_the_key_the_value_and_its_source(monkeypatch, settings):
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__N_TRIALS", "0")
    monkeypatch.setenv(f"{ENV_PREFIX}SERVING__PORT", "http")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as error:
        get_settings()
    assert error.value.problems == [
        f"tuning.n_trials = '0' from {ENV_PREFIX}TUNING__N_TRIALS: Input should be greater than or equal "
        "to 1",
        f"serving.port = 'http' from {ENV_PREFIX}SERVING__PORT: Input should be a valid integer, unable to "
        "parse string as an integer",
    ]


def test_bad_promotion_settings_name_the_key_and_what_is_allowed(monkeypatch, settings):
    monkeypatch.setenv(f"{ENV_PREFIX}PROMOTION__MODE", "manual")
    monkeypatch.setenv(f"{ENV_PREFIX}PROMOTION__MAX_DISAGREEMENT", "2")
    monkeypatch.setenv(f"{ENV_PREFIX}PROMOTION__MAX_LATENCY_RATIO", "0.5")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as error:
        get_settings()
    assert error.value.problems == [
        f"promotion.mode = 'manual' from {ENV_PREFIX}PROMOTION__MODE: Input should be 'auto', 'approve' or "
        "'suggest'",
        f"promotion.max_disagreement = '2' from {ENV_PREFIX}PROMOTION__MAX_DISAGREEMENT: Input should be "
        "less than or equal to 1",
        f"promotion.max_latency_ratio = '0.5' from {ENV_PREFIX}PROMOTION__MAX_LATENCY_RATIO: Input should be "
        "greater than or equal to 1",
    ]


def test_a_model_family_missing_from_the_table_is_refused_naming_model_py(monkeypatch, settings):
    """The family is checked when the settings load, against model.py's own table for the task."""
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__MODEL_FAMILY", "no_such_family")
    get_settings.cache_clear()
    with pytest.raises(
        SettingsError, match=r"tuning.model_family.*'no_such_family'.*model.py's MODEL_FAMILIES"
    ):
        get_settings()


def test_a_request_log_kept_shorter_than_the_monitors_window_is_refused(monkeypatch, settings):
    monkeypatch.setenv(f"{ENV_PREFIX}MONITORING__WINDOW_HOURS", "48")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as error:
        get_settings()
    [problem] = error.value.problems
    assert problem.startswith(
        f"serving.request_log_retention_hours in {SETTINGS_FILE}: 24 h is shorter than "
        "monitoring.window_hours (48 h)"
    )


def test_a_2_0_0_settings_file_with_the_rotation_keys_gets_one_line_each_saying_to_delete_them(tmp_path):
    """Release 2.0.0 wrote request_log_max_bytes and request_log_backups; `copier update` removes them, and
    a file that still has them (edited by hand) is told why they went and what to do."""
    path = tmp_path / "settings.toml"
    old = 'request_log_path = ".state/logs/requests.jsonl"\n'
    assert old in SETTINGS_FILE.read_text()
    path.write_text(
        SETTINGS_FILE.read_text().replace(
            old, old + "request_log_max_bytes = 10000000\nrequest_log_backups = 100\n"
        )
    )
    problems = unknown_keys(path, {})
    assert [p.split(":")[0] for p in problems] == [
        f"serving.request_log_max_bytes in {path}",
        f"serving.request_log_backups in {path}",
    ]
    assert all("retired" in p and "[storage] url" in p and "delete this line" in p for p in problems)


def test_more_records_per_flush_than_the_buffer_holds_is_refused(monkeypatch, settings):
    monkeypatch.setenv(f"{ENV_PREFIX}SERVING__REQUEST_LOG_FLUSH_RECORDS", "20000")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as error:
        get_settings()
    [problem] = error.value.problems
    assert problem.startswith("serving.request_log_flush_records")
    assert "more than serving.request_log_buffer (10000)" in problem


def test_tuning_workers_on_a_sqlite_storage_are_refused_naming_the_setting_and_the_fix(monkeypatch, settings):
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__WORKERS", "2")
    get_settings.cache_clear()
    with pytest.raises(SettingsError) as error:
        get_settings()
    [problem] = error.value.problems
    assert problem.startswith(
        f"tuning.workers from {ENV_PREFIX}TUNING__WORKERS: 2 workers cannot share the SQLite file of "
        "tuning.storage"
    )
    assert "set tuning.storage to a PostgreSQL URL" in problem and "or tuning.workers = 1" in problem
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__STORAGE", "postgresql://optuna@db.internal:5432/optuna")
    get_settings.cache_clear()
    assert get_settings().tuning.workers == 2


def test_a_plain_postgresql_url_gets_the_installed_driver(monkeypatch, settings):
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__STORAGE", "postgresql://optuna:secret@db.internal:5432/optuna")
    get_settings.cache_clear()
    assert get_settings().optuna_storage == "postgresql+psycopg://optuna:secret@db.internal:5432/optuna"


def test_the_cli_prints_one_line_per_problem_and_exits_2(monkeypatch, capsys, settings):
    monkeypatch.setenv(f"{ENV_PREFIX}TUNING__N_TRAILS", "5")
    get_settings.cache_clear()
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: {ENV_PREFIX}TUNING__N_TRAILS (environment variable): no such setting; settings are "
        f"{ENV_PREFIX}<SECTION>__<KEY>; did you mean {ENV_PREFIX}TUNING__N_TRIALS (tuning.n_trials)?"
    ]


# State belongs to its project: two projects with the same package name never share a model or an alias.


def without_state_variables(monkeypatch, home: Path) -> None:
    """A user's shell: no model store exported, none of the project's variables, a home of its own."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name in {"BENTOML_HOME", "PREFECT_HOME"}:
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))


def test_the_model_store_and_every_state_file_default_to_the_projects_state_folder(
    monkeypatch, tmp_path, settings
):
    without_state_variables(monkeypatch, tmp_path)
    get_settings.cache_clear()
    defaults = get_settings()
    state = defaults.root / ".state"
    paths = {
        "model store": defaults.bentoml_home,
        "production alias (2.0)": legacy_file(defaults),
        "shared store": Path(urlparse(storage_url(defaults)).path),
        "training lock": lock_file(defaults),
        "Optuna studies": defaults.resolve(defaults.tuning.storage.removeprefix("sqlite:///")),
        "request log": defaults.resolve(defaults.serving.request_log_path),
        "the store (drift reports)": defaults.resolve(defaults.storage.url),
        "deploy's server": defaults.resolve(defaults.deploy.state_dir),
    }
    assert defaults.state_dir == state
    for what, path in paths.items():
        assert path.is_relative_to(state), f"{what}: {path} is outside {state}"
        assert not path.is_relative_to(Path.home()), f"{what}: {path} is in the home directory"


def test_an_exported_bentoml_home_is_used_and_a_configured_store_wins_over_it(
    monkeypatch, tmp_path, settings
):
    without_state_variables(monkeypatch, tmp_path)
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "exported"))
    get_settings.cache_clear()
    assert get_settings().bentoml_home == tmp_path / "exported"
    monkeypatch.setenv(f"{ENV_PREFIX}REGISTRY__BENTOML_HOME", "models")
    get_settings.cache_clear()
    assert get_settings().bentoml_home == get_settings().root / "models"


def test_every_process_that_reads_the_settings_uses_the_projects_store(tmp_path, settings):
    """BentoML reads BENTOML_HOME when it first opens its store; a worker's flow run or `bentoml serve` has
    no start-up of the project's own, so the first read of the settings exports the project's store."""
    project, home = tmp_path / "project", tmp_path / "home"  # a copy: this project's .state/ stays untouched
    project.mkdir()
    home.mkdir()
    (project / "settings.toml").write_text(SETTINGS_FILE.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "BENTOML_HOME"}
    env.update({"HOME": str(home), f"{ENV_PREFIX}SETTINGS_FILE": str(project / "settings.toml")})
    script = (
        "import os, my_ml_project, ml_lifecycle; ml_lifecycle.get_settings(); "
        "from bentoml._internal.configuration.containers import BentoMLContainer as C; "
        "print(os.environ['BENTOML_HOME']); print(C.bentoml_home.get())"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    exported, opened = result.stdout.split()
    assert exported == opened == str(project / ".state" / "bentoml")
    assert list(home.iterdir()) == []


def test_a_bare_bentoml_command_that_opened_another_store_is_stopped_naming_both(tmp_path, settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "BENTOML_HOME"}
    script = (
        "from bentoml._internal.configuration.containers import BentoMLContainer as C; "
        "C.bentoml_home.get(); import my_ml_project.service as s; s.Predictor"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert str(tmp_path / "bentoml") in result.stderr
    assert f"export BENTOML_HOME={settings.root / '.state' / 'bentoml'}" in result.stderr


def test_prefects_files_for_the_clis_runs_go_to_the_state_folder_unless_a_home_is_exported(
    monkeypatch, tmp_path, settings
):
    """Without a server, a command's flow runs use a temporary Prefect server whose database would otherwise
    be ~/.prefect/prefect.db; the user's profiles (the server they chose) are still read from there."""
    without_state_variables(monkeypatch, tmp_path)
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    project = tmp_path / "project"  # not this project's own .state/: a test leaves nothing behind
    monkeypatch.setattr(Settings, "state_dir", property(lambda _: project / ".state"))
    keep_prefect_state_in_the_project(settings)
    assert os.environ["PREFECT_HOME"] == str(project / ".state" / "prefect")
    assert Path(os.environ["PREFECT_HOME"]).is_dir()
    assert os.environ["PREFECT_PROFILES_PATH"] == str(tmp_path / ".prefect" / "profiles.toml")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    keep_prefect_state_in_the_project(settings)
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "mine")
