"""What the server log says about a rejected request: its fields and errors, never the values it sent.

BentoML logs every 4xx it answers as an ERROR with the exception's traceback, and pydantic's message repeats
each rejected value (`input_value='...'`): whatever a client sent, personal data included, ended up in the
server log, in about 25 lines per bad request. BentoML has no setting for it, so a logging filter on its
HTTP logger rewrites those records into one line naming the path, the status and each field's error; the
values stay out unless serving.log_rejected_values is true. Server errors (5xx) keep their traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

# The logger of BentoML's `log_exception`, which logs every error its API endpoints answer.
BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"
MAX_FIELDS = 10  # fields named in one line; the answer to the client has them all


class WithoutRejectedValues(logging.Filter):
    """Rewrites BentoML's record of a 4xx answer into one line without the request's values."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        status = _client_error_status(error)
        if status is None:
            return True
        args = record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?")
        path, method = args  # BentoML's "Exception on %s [%s]"
        record.msg = "%s %s answered %d: %s (the values sent are not logged: serving.log_rejected_values)"
        record.args = (method, path, status, _summary(error))
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.INFO, "INFO"  # the client's mistake, not the server's
        return True


def _client_error_status(error: Any) -> int | None:
    if isinstance(error, ValidationError):
        return 400  # BentoML answers a request that fails its schema with a 400
    if isinstance(error, BentoMLException) and 400 <= error.error_code.value < 500:
        return int(error.error_code.value)
    return None


def _summary(error: Any) -> str:
    """Each field and its error type (`row.size: float_parsing`); for other errors only their kind, since
    their messages may quote a value (an unknown category, for example)."""
    if not isinstance(error, ValidationError):
        return type(error).__name__
    problems = [
        f"{'.'.join(map(str, item['loc']))}: {item['type']}" for item in error.errors(include_input=False)
    ]
    more = len(problems) - MAX_FIELDS
    return "; ".join(problems[:MAX_FIELDS]) + (f"; and {more} more" if more > 0 else "")


def install(log_values: bool) -> None:
    """Keep rejected values out of BentoML's log (unless `log_values`); call once per process."""
    logger = logging.getLogger(BENTOML_HTTP_LOGGER)
    for existing in [f for f in logger.filters if isinstance(f, WithoutRejectedValues)]:
        logger.removeFilter(existing)
    if not log_values:
        logger.addFilter(WithoutRejectedValues())
