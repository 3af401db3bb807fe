"""Adaptive batching inside a service worker, with the dispatcher BentoML puts behind batchable endpoints.

Why not `@bentoml.api(batchable=True)` behind the public endpoints: BentoML batches only requests that
arrive over HTTP at the batchable endpoint itself, and an endpoint reaches another endpoint of its own
service only through BentoML's client (`self.to_async`): a second request through the whole ASGI stack,
JSON both ways, which cost most of the throughput, and the client's session renewal failed requests in
flight (github.com/bentoml/BentoML/issues/5544; docs/decisions.md#batching).

So the endpoints hand their rows to BentoML's own `CorkDispatcher` directly: the same adaptive algorithm
(it learns the model's cost per batch and waits only while waiting pays), the same bounds
(serving.max_batch_size rows, serving.max_latency_ms), and the same load shedding: a request that would
wait here longer than max_latency_ms is answered 503, visibly, never queued without bound. Only the wait
here counts, not the time a request spent in the HTTP stack before (docs/decisions.md#overload). The
import is from BentoML's internal package (pinned in pyproject.toml); tests/serving/test_batching.py fails
if its API changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from bentoml._internal.marshal.dispatcher import CorkDispatcher
from bentoml.exceptions import ServiceUnavailable


def _shed() -> Any:
    raise ServiceUnavailable("the service is overloaded: retry later")


class Batcher:
    """`await batcher(rows)` predicts `rows` together with the rows of concurrent callers.

    `predict` takes a list of rows and returns one result per row, in order. It runs in the event loop,
    one batch at a time, not in a thread as BentoML runs batchable methods: a model call holds the GIL
    for most of its duration, and handing it to a thread made the two threads fight for the GIL and cost
    more CPU per request (docs/decisions.md#batching). Requests that arrive meanwhile wait in the socket's
    queue and make the next batch.
    `on_batch` is told each batch's size (for the batch-size histogram on /metrics).
    """

    def __init__(
        self,
        predict: Callable[[list[Any]], list[Any]],
        *,
        max_batch_size: int,
        max_latency_ms: int,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._predict = predict
        self._on_batch = on_batch
        self._limits = (max_batch_size, max_latency_ms)
        self._call: Callable[[list[Any]], Awaitable[list[Any]]] | None = None

    async def __call__(self, rows: list[Any]) -> list[Any]:
        if self._call is None:  # created on first use: the dispatcher binds to the running event loop
            max_batch_size, max_latency_ms = self._limits
            dispatcher: CorkDispatcher[list[Any], list[Any]] = CorkDispatcher(
                max_latency_in_ms=max_latency_ms,
                max_batch_size=max_batch_size,
                fallback=_shed,
                get_batch_size=len,
                batch_dim=(0, 0),
            )
            # BentoML annotates the wrapper as returning `T_OUT | None`; it returns T_OUT or raises.
            self._call = cast(Callable[[list[Any]], Awaitable[list[Any]]], dispatcher(self._infer))
        return await self._call(rows)

    async def _infer(self, requests: Sequence[list[Any]]) -> list[list[Any]]:
        rows = [row for request in requests for row in request]
        if not rows:
            return [[] for _ in requests]
        self._on_batch(len(rows))
        results = self._predict(rows)
        answers, start = [], 0
        for request in requests:
            answers.append(results[start : start + len(request)])
            start += len(request)
        return answers
