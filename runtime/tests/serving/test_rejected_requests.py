"""A rejected request in the server log: one line naming its fields and errors, without the values sent
(which may be personal data), unless serving.log_rejected_values asks for them; server errors keep their
traceback. Logged through BentoML's own `log_exception`, as its HTTP app does for every error it answers."""

import logging
from types import SimpleNamespace

import pytest
from bentoml._internal.server.http_app import log_exception
from bentoml.exceptions import InvalidArgument
from ml_lifecycle._internal.serving.rejected_requests import install
from pydantic import BaseModel, ValidationError

SECRET = "Jane Doe, 12 Main Street"


class Row(BaseModel):
    size: float
    colour: str


def request(path: str = "/predict_one"):
    return SimpleNamespace(url=SimpleNamespace(path=path), method="POST")


def logged(error: Exception, caplog) -> list[logging.LogRecord]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        try:
            raise error
        except Exception:
            log_exception(request())
    return caplog.records


@pytest.fixture
def values_hidden():
    install(log_values=False)
    yield
    install(log_values=True)  # the filter off again for the other tests


def schema_error() -> ValidationError:
    try:
        Row.model_validate({"size": SECRET, "colour": 3})
    except ValidationError as exc:
        return exc
    raise AssertionError("the row was valid")


def test_a_rejected_request_is_one_line_naming_fields_and_errors_without_the_values(values_hidden, caplog):
    [record] = logged(schema_error(), caplog)
    assert SECRET not in caplog.text
    message = record.getMessage()
    assert "POST /predict_one answered 400" in message
    assert "size: float_parsing" in message and "colour: string_type" in message
    assert record.levelno == logging.INFO and not record.exc_info


def test_a_row_the_model_refused_is_logged_without_its_message_which_may_quote_a_value(values_hidden, caplog):
    [record] = logged(
        InvalidArgument(f"rows.0: the model cannot predict this row: unknown {SECRET!r}"), caplog
    )
    assert SECRET not in caplog.text
    assert "answered 400: InvalidArgument" in record.getMessage()


def test_a_server_error_keeps_its_traceback(values_hidden, caplog):
    [record] = logged(RuntimeError("the model file is gone"), caplog)
    assert record.levelno == logging.ERROR and record.exc_info
    assert "the model file is gone" in caplog.text


def test_the_values_can_be_logged_for_debugging(caplog):
    install(log_values=True)
    logged(schema_error(), caplog)
    assert SECRET in caplog.text
