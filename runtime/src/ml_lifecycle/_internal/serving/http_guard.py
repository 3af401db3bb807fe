"""The HTTP guard in front of the service's endpoints: request ids, the API key, body size, content types,
errors, and bounded labels on BentoML's HTTP metrics.

A plain ASGI middleware (added with `Predictor.add_asgi_middleware`, BentoML's documented hook), so it
sees every request, BentoML's own routes included, and needs no model: tests use it on a toy app.

- Every response carries `X-Request-ID`: the client's own (when it is a sane token) or a new one. The
  id is put in the ASGI scope (`scope["state"]["request_id"]`, so `request.state.request_id`) for the
  endpoints to echo in their JSON body and the request log, and it is added to JSON error bodies.
- Prediction endpoints (and `GET /model`, the served model's card) answer 401 without `Authorization:
  Bearer <key>` when a key is configured; health and metrics routes never ask for one. The key is
  compared in constant time and never logged. A key variable that is set but blank stops the service
  (`api_key_from`): it must not quietly mean "no key".
- A prediction request whose body is larger than `max_body_bytes` gets a 413 before its body is read: at
  once from its Content-Length, or, for a chunked body, as soon as the bytes received pass the limit. The
  answer is sent at once, but ends only after the rest of the body was read and thrown away (up to
  `max_discarded_bytes`, within `discard_seconds`): most clients (urllib, httpx, requests) send the whole
  body before they read, and a server that closed first would give them a connection reset, not the 413.
- Prediction endpoints accept JSON only: BentoML would try to parse other content types anyway and
  answer some of them (form data, for example) with a 500, so they get a 415 naming what to send.
- JSON error bodies are made readable: `error` names each bad field (`rows.0.size: Field required`),
  an empty body is named as such, and a 503 (adaptive batching shedding load) says to retry.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, cast

REQUEST_ID_HEADER = "x-request-id"
# A client's request id is reused only when it is short and plain, so it cannot inject into logs.
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
JSON_TYPES = {"application/json"}
# The request headers the guard reads (the rest are not decoded: this runs for every request).
_READ_HEADERS = frozenset({b"x-request-id", b"authorization", b"content-type", b"content-length", b"expect"})
# Error summaries name at most this many problems (the full list stays in `detail`).
MAX_PROBLEMS = 10

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

logger = logging.getLogger(__name__)


def request_id_from(headers: dict[str, str]) -> str:
    supplied = headers.get(REQUEST_ID_HEADER, "")
    return supplied if _SANE_ID.match(supplied) else os.urandom(16).hex()  # as random as uuid4().hex


def readable(body: Any) -> Any:
    """BentoML's error bodies made uniform: one object, with `error` naming every bad field."""
    if isinstance(body, list) and len(body) == 1 and isinstance(body[0], dict):
        body = body[0]  # BentoML wraps its 4xx errors in a list
    if not isinstance(body, dict):
        return {"error": str(body)}
    detail = body.get("detail")
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        problems = []
        for item in detail:
            where = ".".join(str(part) for part in item.get("loc", ()))
            problems.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", "invalid"))
        more = len(problems) - MAX_PROBLEMS
        summary = "; ".join(problems[:MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        body = {**body, "error": summary}
    return body


def key_env(api_key_env: str, api_key_block: str, package: str) -> str:
    """The environment variable the API key is read from: serving.api_key_env, or `<PACKAGE>_API_KEY` when
    the key comes from a Prefect Secret block and no variable is named; "" for no key at all."""
    return api_key_env or (f"{package.upper()}_API_KEY" if api_key_block else "")


def key_from_secret_block(block: str, env_name: str) -> None:
    """Put the API key stored in the Prefect Secret block `block` into this process's environment variable
    `env_name`, where RequestGuard reads it: a key kept in Prefect stays out of files and of the
    deployment's own environment. Called once at service start, outside the event loop."""
    from prefect.blocks.system import Secret

    try:
        # load() is typed block-or-coroutine (a coroutine inside an event loop); here it is the block.
        value = cast("Secret[str]", Secret.load(block)).get()
    except ValueError as exc:  # Prefect's "Unable to find block document named ..."
        raise RuntimeError(
            f"serving.api_key_block names the Prefect Secret block {block!r}, which cannot be loaded "
            f"({type(exc).__name__}); create it with `prefect block create secret` or "
            f"Secret(value=...).save({block!r}), or empty serving.api_key_block"
        ) from None
    os.environ[env_name] = str(value)


def api_key_from(env_name: str) -> bytes:
    """The API key in the environment variable `env_name`: b"" (no key) when there is no name or the variable
    is not set at all. Set but blank (empty or only whitespace: an unfilled `.env` line, a secret created
    empty, `KEY=${UNSET}` in a compose file) raises: someone meant the service to have a key, and reading
    blank as "no key" would open it to everyone without a word."""
    if not env_name or env_name not in os.environ:
        return b""
    key = os.environ[env_name].strip()
    if not key:
        raise RuntimeError(
            f"the environment variable {env_name} (serving.api_key_env) is set but blank, which would leave "
            f"the prediction endpoints open to everyone: set it to the API key, or unset it (remove it from "
            f"your .env or the deployment) to serve without a key"
        )
    return key.encode()


class RequestGuard:
    def __init__(
        self,
        app: Any,
        *,
        protected: Iterable[str],
        api_key_env: str = "",
        max_body_bytes: int = 0,
        max_discarded_bytes: int = 0,
        discard_seconds: float = 30,
    ) -> None:
        """`api_key_env` names the environment variable holding the key (the key itself is never passed
        around, so it cannot end up in a repr or a log); no name, or no such variable, means no key, and
        a blank one raises (`api_key_from`). `max_body_bytes` bounds the body of protected routes (0: no
        bound); the rest of a larger one is read and dropped up to `max_discarded_bytes` within
        `discard_seconds` before its 413 ends."""
        self.app = app
        self.protected = set(protected)
        self.max_body_bytes = max_body_bytes
        self.max_discarded_bytes = max_discarded_bytes
        self.discard_seconds = discard_seconds
        self._api_key = api_key_from(api_key_env)
        if self._api_key:
            logger.info(
                "API key on: %s need 'Authorization: Bearer <key>' (key from %s)",
                ", ".join(sorted(self.protected)),
                api_key_env,
            )
        else:
            logger.warning(
                "API key off: %s answer anyone who can reach this port%s",
                ", ".join(sorted(self.protected)),
                f" (set {api_key_env} to require a key)" if api_key_env else "",
            )

    def __repr__(self) -> str:  # never show the key
        return (
            f"RequestGuard(protected={sorted(self.protected)}, api_key={'set' if self._api_key else 'none'})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if (name := k.lower()) in _READ_HEADERS
        }
        request_id = request_id_from(headers)
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope.get("path", "")
        guarded = path in self.protected
        body_size = [0]  # bytes of request body the endpoint read, to name an empty body as such
        unstamped, send = send, self._stamp(send, request_id, body_size if guarded else None)

        if guarded and self._api_key and not self._authorized(headers):  # any method: GET /model too
            await _answer(
                send,
                401,
                "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                request_id,
                extra_headers=[(b"www-authenticate", b"Bearer")],
            )
            return
        if guarded and scope.get("method") == "POST":
            content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if content_type not in JSON_TYPES:
                await _answer(
                    send,
                    415,
                    f"Content-Type {content_type!r} is not supported; send a JSON body with "
                    "'Content-Type: application/json'",
                    request_id,
                )
                return
            if self.max_body_bytes:
                limited, read = await self._within_limit(headers, receive)
                if limited is None:
                    await self._too_large(unstamped, receive, headers, request_id, read)
                    return
                receive = limited
        await self.app(scope, _counting(receive, body_size) if guarded else receive, send)

    async def _within_limit(self, headers: dict[str, str], receive: Receive) -> tuple[Receive | None, int]:
        """`receive` for a body within max_body_bytes, or None when it is larger, known without reading it
        when the client declared its length; and the bytes read here. A chunked body (no Content-Length)
        is read here up to the limit and handed on from memory, so an endless one costs at most
        max_body_bytes."""
        length = headers.get("content-length")
        if length is not None and length.isdigit():  # the HTTP server makes the body match it
            return (receive if int(length) <= self.max_body_bytes else None), 0
        received: list[dict[str, Any]] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return None, size
            if message["type"] != "http.request" or not message.get("more_body"):
                return _replay(received, receive), size

    async def _too_large(
        self, send: Send, receive: Receive, headers: dict[str, str], request_id: str, read: int
    ) -> None:
        """The 413, sent at once; it ends (and the connection closes) once the rest of the body is read and
        dropped, unless the body declares more than max_discarded_bytes or the client waits for a `100
        Continue` that never comes (nothing to read then)."""
        body = json.dumps(
            {
                "error": f"the request body is larger than {self.max_body_bytes} bytes "
                "(serving.max_body_bytes); send fewer rows per request",
                "request_id": request_id,
            }
        ).encode()
        start_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": start_headers})
        await send({"type": "http.response.body", "body": body, "more_body": True})
        length = headers.get("content-length", "")
        declared = int(length) if length.isdigit() else 0
        waits = headers.get("expect", "").lower() == "100-continue"
        if not waits and declared <= self.max_discarded_bytes:
            await _discard(receive, self.max_discarded_bytes - read, self.discard_seconds)
        await send({"type": "http.response.body", "body": b""})

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, supplied = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), self._api_key)

    @staticmethod
    def _stamp(send: Send, request_id: str, body_size: list[int] | None) -> Send:
        """Add the request id header to every response; rewrite JSON error bodies of guarded routes
        (`body_size` is given for those)."""
        held: dict[str, Any] = {}

        async def stamped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                raw.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": raw}
                content_type = dict((k.lower(), v) for k, v in raw).get(b"content-type", b"")
                if (
                    body_size is not None
                    and message["status"] >= 400
                    and content_type.startswith(b"application/json")
                ):
                    held["start"] = message  # wait for the body, which is rewritten below
                    held["body"] = b""
                    return
            elif message["type"] == "http.response.body" and "start" in held:
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                start = held.pop("start")
                empty = body_size is not None and not body_size[0]
                body = _rewrite(held.pop("body"), request_id, start["status"], empty_request=empty)
                raw = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                raw.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": raw})
                message = {"type": "http.response.body", "body": body}
            await send(message)

        return stamped


async def _discard(receive: Receive, limit: int, seconds: float) -> None:
    """Read and drop the rest of a request body: until it ends or the client goes, at most `limit` bytes
    and `seconds` (beyond them the connection is closed with the body unread)."""
    dropped = 0
    try:
        async with asyncio.timeout(seconds):
            while dropped <= limit:
                message = await receive()
                dropped += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
    except TimeoutError:
        return


def _replay(messages: list[dict[str, Any]], receive: Receive) -> Receive:
    """`receive` that hands out `messages` first, then whatever the server sends next (a disconnect)."""
    pending = list(reversed(messages))

    async def replayed() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replayed


def _counting(receive: Receive, size: list[int]) -> Receive:
    async def counted() -> dict[str, Any]:
        message = await receive()
        size[0] += len(message.get("body", b""))
        return message

    return counted


def _rewrite(body: bytes, request_id: str, status: int, *, empty_request: bool) -> bytes:
    try:
        parsed = readable(json.loads(body or b"null"))
    except ValueError:
        return body
    if status == 400 and empty_request:
        parsed["error"] = "the request body is empty; send a JSON object (the schema is at /docs.json)"
    elif status == 503:
        parsed["error"] = (
            "the service is overloaded: the request could not be answered within serving.max_latency_ms; "
            "retry later"
        )
    return json.dumps({**parsed, "request_id": request_id}).encode()


async def _answer(
    send: Send,
    status: int,
    error: str,
    request_id: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": error, "request_id": request_id}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


# The `endpoint` label every request outside the service's own routes gets on BentoML's HTTP metrics.
OTHER_ENDPOINT = "other"
_REAL_PATH = "guard.real_path"


def bounded_endpoint_label(metrics_middleware: type, routes: Iterable[str]) -> type:
    """BentoML's HTTP metrics middleware made to label only `routes` by their path, and every other path with
    OTHER_ENDPOINT.

    BentoML's middleware (the outermost, before any the service adds) labels its request series with the
    raw request path, so each distinct unknown path a client tried became a dozen new series: memory and
    /metrics grew without bound (docs/decisions.md#http-limits). No BentoML setting changes that label, so
    this subclass shows it a scope whose path is OTHER_ENDPOINT and gives the rest of the stack the real
    path back; routing, the access log and the answer (a 404) are unchanged.
    """
    known = frozenset(routes)

    class BoundedEndpointLabel(metrics_middleware):
        def __init__(self, app: Any, **options: Any) -> None:
            super().__init__(_with_real_path(app), **options)

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket") and scope["path"] not in known:
                scope = {**scope, "path": OTHER_ENDPOINT, _REAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    BoundedEndpointLabel.__qualname__ = f"Bounded{metrics_middleware.__name__}"
    return BoundedEndpointLabel


def _with_real_path(app: Any) -> Callable[[Scope, Receive, Send], Any]:
    async def real_path(scope: Scope, receive: Receive, send: Send) -> None:
        if _REAL_PATH in scope:
            scope = dict(scope)
            scope["path"] = scope.pop(_REAL_PATH)
        await app(scope, receive, send)

    return real_path
