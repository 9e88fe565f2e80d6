"""The dynamic batcher: each request gets its own results, in order, under concurrency."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batcher import DynamicBatcher


def test_sixteen_threads_with_mixed_requests_each_get_their_own_rows_in_order():
    seen = []

    def run(items):
        seen.append(len(items))
        time.sleep(0.02)  # a CNN pass
        return [f"row:{item}" if not str(item).startswith("bad") else f"error:{item}" for item in items]

    batcher = DynamicBatcher(run, max_batch=8, max_wait_ms=20)

    def request(i):
        items = [f"r{i}-{j}" for j in range(i % 3 + 1)] + ([f"bad{i}"] if i % 4 == 0 else [])
        return items, batcher.submit(items)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(request, range(16)))
    batcher.close()
    for items, rows in results:
        assert rows == [f"error:{x}" if x.startswith("bad") else f"row:{x}" for x in items]
    assert max(seen) > 1 and max(seen) <= 8  # requests shared batches, none over the limit
    assert sum(seen) == sum(len(items) for items, _ in results)


def test_a_failing_batch_fails_its_requests_only_and_the_batcher_goes_on():
    calls = []

    def run(items):
        calls.append(items)
        if "boom" in items:
            raise RuntimeError("the CNN fell over")
        return [x.upper() for x in items]

    batcher = DynamicBatcher(run, max_batch=4, max_wait_ms=0)
    with pytest.raises(RuntimeError, match="fell over"):
        batcher.submit(["boom"])
    assert batcher.submit(["a", "b"]) == ["A", "B"]
    assert batcher.submit([]) == []
    batcher.close()


def test_the_lock_is_held_around_each_batch():
    lock = threading.Lock()
    held = []
    batcher = DynamicBatcher(lambda items: [lock.locked() for _ in items], max_batch=2, max_wait_ms=0, lock=lock)
    held += batcher.submit([1, 2])
    batcher.close()
    assert held == [True, True]
