"""The demo's traffic: clean rows, then rows from a changed world, sent to the service with labels.

The changed world moves every number by two standard deviations (drift) and changes the relationship
between features and target (each class becomes the next one; a regression target is mirrored around its
mean), so the served model's performance drops for a reason the labels show, and a model retrained on the
labelled traffic can learn it back. The labels are written as they would arrive from a real system: a table
of request id, row and target (monitoring.labels_path).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from ..config import PACKAGE, Settings, get_settings
from ..serving.http_guard import api_key_from, key_env, key_from_secret_block
from ..training import validation

ROWS_PER_REQUEST = 50


@dataclass(frozen=True)
class Stream:
    """Rows to send and the labels they will turn out to have."""

    name: str
    features: pd.DataFrame
    labels: pd.Series


def shift_numbers(features: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Every number moved by two of the reference's standard deviations: drift Evidently sees."""
    moved = features.copy()
    for column in moved.select_dtypes("number").columns:
        moved[column] = moved[column] + 2.0 * float(reference[column].std() or 1.0)
    return moved


def changed_relationship(labels: pd.Series, task_type: str) -> pd.Series:
    """The labels of a world where the target depends on the features differently."""
    if task_type == "regression":
        return 2 * float(labels.mean()) - labels
    classes = sorted(labels.unique(), key=str)
    following = {c: classes[(i + 1) % len(classes)] for i, c in enumerate(classes)}
    return labels.map(following)


def demo_streams(settings: Settings, clean_rows: int = 150, changed_rows: int = 250) -> list[Stream]:
    """Three streams from the training data's rows, each row used once: clean (the world as trained), then
    the changed world before the retrain and after it."""
    dataset = validation.load_dataset(settings)
    order = np.random.default_rng(settings.data.seed).permutation(len(dataset.frame))
    frame = dataset.frame.iloc[order].reset_index(drop=True)
    features, labels = frame.drop(columns=[dataset.target]), frame[dataset.target]
    task_type = settings.data.task_type
    cut = [0, clean_rows, clean_rows + changed_rows, len(frame)]
    parts = [slice(cut[i], cut[i + 1]) for i in range(3)]
    clean = Stream("clean", features[parts[0]], labels[parts[0]])
    changed = [
        Stream(
            name,
            shift_numbers(features[part], dataset.features),
            changed_relationship(labels[part], task_type),
        )
        for name, part in (("changed", parts[1]), ("changed after retrain", parts[2]))
    ]
    return [clean, *changed]


def as_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts, missing values as null."""
    return json.loads(frame.replace({np.nan: None}).to_json(orient="records"))


def service_client(base_url: str, settings: Settings | None = None) -> httpx.Client:
    """A client of the demo's service that sends the service's API key when it has one, read from the same
    environment variable (or Prefect Secret block) as the service reads it: a keyed service answers 401 to
    anyone else, the demo's own traffic included."""
    serving = (settings or get_settings()).serving
    env_name = key_env(serving.api_key_env, serving.api_key_block, PACKAGE)
    if serving.api_key_block:
        key_from_secret_block(serving.api_key_block, env_name)
    key = api_key_from(env_name)
    headers = {"Authorization": f"Bearer {key.decode()}"} if key else {}
    return httpx.Client(base_url=base_url, timeout=30, headers=headers)


def send(base_url: str, stream: Stream, labels_path: Path, target: str) -> list[dict[str, Any]]:
    """Send the stream to /predict and append its labels to the labels table (request id, row, target)."""
    records = as_records(stream.features)
    truth = stream.labels.tolist()
    answers, labelled = [], []
    with service_client(base_url) as client:
        for start in range(0, len(records), ROWS_PER_REQUEST):
            response = client.post("/predict", json={"rows": records[start : start + ROWS_PER_REQUEST]})
            response.raise_for_status()
            answer = response.json()
            answers.append(answer)
            labelled += [
                {"request_id": answer["request_id"], "row": row, target: truth[start + row]}
                for row in range(len(answer["predictions"]))
            ]
    table = pd.DataFrame(labelled)
    table.to_csv(labels_path, mode="a", header=not labels_path.exists(), index=False)
    return answers


@dataclass
class SteadyTraffic:
    """Single-row requests in a loop while the model changes underneath: every answer's status and model
    version, to show the switch costs no failed request."""

    base_url: str
    rows: list[dict[str, Any]]
    answered: int = 0
    failed: list[str] = field(default_factory=list)
    first_seen: dict[str, float] = field(default_factory=dict)  # model version -> time.time() of its first
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SteadyTraffic:
        self._thread = threading.Thread(target=self._run, name="steady-traffic", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _run(self) -> None:
        with service_client(self.base_url) as client:
            while not self._stop.is_set():
                self._one(client, self.rows[(self.answered + len(self.failed)) % len(self.rows)])
                time.sleep(0.05)

    def _one(self, client: httpx.Client, row: dict[str, Any]) -> None:
        try:
            response = client.post("/predict_one", json={"row": row})
        except httpx.HTTPError as exc:
            self.failed.append(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code != 200:
            self.failed.append(f"HTTP {response.status_code}: {response.text[:200]}")
            return
        self.answered += 1
        self.first_seen.setdefault(response.json()["model_version"], time.time())

    def wait_for_version(self, version: str, timeout: float) -> float:
        """Wait until an answer came from `version`; returns the time.time() of the first one."""
        deadline = time.monotonic() + timeout
        while version not in self.first_seen:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the service still answers with {sorted(self.first_seen)} {timeout:g} s after "
                    f"{version} was promoted"
                )
            time.sleep(0.2)
        return self.first_seen[version]
