"""Dynamic batching for the CNN: slices of concurrent requests run as one batch.

The pattern of Triton's dynamic batcher and Ray Serve's ``@serve.batch``: a request hands its
items to the batcher and waits; one worker thread takes every item queued, waits up to
``max_wait_ms`` for more while the batch is under ``max_batch`` items, runs them in one call,
and hands each request back its own results, in its own order. One call at a time: the CNN and
its caches are used by this thread only (``lock`` is held around each call, so other CNN users,
heatmaps and studies, take turns with it). A result that is an error for one item (an unreadable
file) stays that item's; an exception of the whole call goes to every request of that batch.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class DynamicBatcher(Generic[T, R]):
    """``run``: items -> one result per item, in order."""

    def __init__(self, run: Callable[[list[T]], Sequence[R]], max_batch: int = 32, max_wait_ms: float = 10.0,
                 lock: threading.Lock | None = None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be at least 1 and max_wait_ms at least 0")
        self.run, self.max_batch, self.max_wait = run, int(max_batch), max_wait_ms / 1000.0
        self.lock = lock or threading.Lock()
        self._queue: list[tuple[list[T], Future]] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches: list[int] = []  # items per call, for tests and the bench
        self._thread = threading.Thread(target=self._loop, name="cnn-batcher", daemon=True)
        self._thread.start()

    def submit(self, items: Sequence[T], timings: dict[str, float] | None = None) -> list[R]:
        """Run ``items`` in the next batch; returns their results (raises the batch's exception).
        ``timings`` gets the seconds spent waiting for the batch (``queue``) and in its call (``cnn``)."""
        items = list(items)
        if not items:
            return []
        submitted = time.perf_counter()
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append((items, future))
            self._cond.notify()
        try:
            return future.result()
        finally:
            if timings is not None and getattr(future, "call", None):
                began, ended = future.call
                timings["queue"] = timings.get("queue", 0.0) + began - submitted
                timings["cnn"] = timings.get("cnn", 0.0) + ended - began

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _take(self) -> list[tuple[list[T], Future]]:
        """The requests of the next batch: at least one, then more until the batch is full or the
        wait window since the first has passed."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if not self._queue:
                return []
            deadline = time.monotonic() + self.max_wait
            while sum(len(i) for i, _ in self._queue) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken, size = [], 0
            while self._queue and (not taken or size + len(self._queue[0][0]) <= self.max_batch):
                items, future = self._queue.pop(0)
                taken.append((items, future))
                size += len(items)
            return taken

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                return
            flat = [item for items, _ in taken for item in items]
            began = time.perf_counter()
            try:
                with self.lock:
                    results = list(self.run(flat))
                if len(results) != len(flat):
                    raise RuntimeError(f"the batch call gave {len(results)} results for {len(flat)} items")
            except BaseException as exc:  # every request of the batch hears of it
                for _, future in taken:
                    future.set_exception(exc)
                continue
            ended = time.perf_counter()
            self.batches.append(len(flat))
            start = 0
            for items, future in taken:
                future.call = (began, ended)  # when the call that served it ran (the request's timings)
                future.set_result(results[start:start + len(items)])
                start += len(items)
