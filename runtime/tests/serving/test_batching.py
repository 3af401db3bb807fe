"""The adaptive batcher on its own (no model, no server): concurrent callers share model calls."""

import asyncio

import pytest
from bentoml.exceptions import ServiceUnavailable
from ml_lifecycle._internal.serving.batching import Batcher


def run_concurrently(batcher: Batcher, requests: list[list[int]]) -> list[list[int]]:
    async def all_at_once() -> list[list[int]]:
        return await asyncio.gather(*(batcher(rows) for rows in requests))

    return asyncio.run(all_at_once())


def test_each_caller_gets_its_own_rows_back_in_order():
    sizes: list[int] = []
    times_ten = Batcher(
        lambda rows: [row * 10 for row in rows],
        max_batch_size=100,
        max_latency_ms=5000,
        on_batch=sizes.append,
    )
    requests = [[i, i + 1000] for i in range(60)]
    answers = run_concurrently(times_ten, requests)
    assert answers == [[i * 10, (i + 1000) * 10] for i in range(60)]
    assert sum(sizes) == 120
    assert len(sizes) < 60, f"batches of {sizes}: concurrent requests were never predicted together"


def test_a_model_error_reaches_every_caller_of_that_batch():
    def broken(rows):
        raise ValueError("the model refused")

    batcher = Batcher(broken, max_batch_size=10, max_latency_ms=5000)
    with pytest.raises(ValueError, match="the model refused"):
        run_concurrently(batcher, [[1], [2]])


def test_a_request_that_would_wait_too_long_is_shed_with_a_503():
    def slow(rows):
        import time

        time.sleep(0.05)
        return rows

    batcher = Batcher(slow, max_batch_size=1, max_latency_ms=1)
    with pytest.raises(ServiceUnavailable):
        run_concurrently(batcher, [[i] for i in range(200)])
