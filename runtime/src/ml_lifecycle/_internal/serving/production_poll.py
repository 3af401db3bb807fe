"""What one service worker learns from polling the production alias record (in the project's store, so
every replica on every machine follows the same one): which model to swap in, if any.

A `latest` alias (or any tag that is not a version) is resolved to the version it names before it is
compared with the one served, so the model is loaded again only when production really changed; a version
this process lacks is imported from the store then (store.ensure_local). A record that cannot be read (not
JSON, fields missing, the store unreachable or refusing) or a model that cannot be loaded is logged once per
change, not on every poll, and shown on /metrics (`<package>_alias_record_valid`, 0 while the record cannot
be read, alert AliasRecordBroken); the worker keeps serving the model it has.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from prometheus_client import Gauge

from ..config import PACKAGE, Settings
from ..registry import aliases, store
from ..storage import StorageError

ALIAS_VALID = Gauge(
    f"{PACKAGE}_alias_record_valid",
    "1 while the production alias record can be read; 0 while it is broken (the service keeps serving its "
    "model and logs the cause once)",
    multiprocess_mode="min",
)
LOGGER = logging.getLogger(__name__)


class ProductionPoll:
    """One worker's view of the alias record between polls: what it last logged, and the gauge."""

    def __init__(
        self,
        settings: Settings,
        *,
        valid: Any = ALIAS_VALID,
        resolve: Callable[[str], str] | None = None,
    ) -> None:
        self.settings = settings
        self._valid = valid
        # The version a tag names (`name:latest` -> `name:<version>`), in this process's model store.
        self._resolve = resolve or partial(store.ensure_local, settings)
        self._reported: str | None = None  # the failure last logged, so each is logged once
        valid.set(1)

    def next_tag(self, serving: str) -> str | None:
        """The production model's version when it is not `serving`; None when it is, when nothing is
        promoted, or when the record cannot be read (logged once; the served model stays)."""
        try:
            tag, broken = aliases.read(self.settings).production, None
        except (aliases.AliasRecordError, StorageError) as exc:
            tag, broken = None, f"{exc}; still serving {serving}"
        self._valid.set(0 if broken else 1)
        if broken:
            self.failed(broken)  # outside the except: the message says it all, no traceback
            return None
        version = None if tag is None or tag == serving else self._resolve(tag)
        if version is None or version == serving:
            self.failed(None, serving)
            return None
        return version

    def failed(self, problem: str | None, serving: str = "") -> None:
        """Log `problem` when it differs from the last one logged (with the traceback of the exception being
        handled, if any); None: nothing is wrong now, said once after a problem. Problems that differ only
        in numbers (a store client's timings, retries, ports) are the same problem."""
        seen = None if problem is None else re.sub(r"\d+(\.\d+)?", "#", problem)
        if seen == self._reported:
            return
        if problem is None:
            LOGGER.warning("Following the production alias record again; serving %s", serving)
        else:
            LOGGER.error("%s", problem, exc_info=sys.exc_info()[0] is not None)
        self._reported = seen
