"""Requests that arrive together run together: a micro-batcher over one model thread, with a bounded queue.

Each job has a key (what kind of work, with the settings that must match: a caption's beam size, an explanation's
method). The first job waiting starts a batch: the batcher waits up to `max_wait` seconds for more jobs of its key,
or until `max_batch` of them are there, and runs them in one call of `run(key, items)` on its single worker thread
(so the event loop keeps accepting requests, and the model runs one batch at a time). A batch that fails is run
again one job at a time, so that one bad input fails alone. `max_pending` bounds the jobs waiting or running:
past it, `submit` raises Overloaded at once instead of queueing without end.

The wait is only worth it when more jobs are on their way: a server counts the requests it is reading (`incoming`),
and a batch waits only while some of them have not submitted their job yet. A lone client's request then runs at
once, and requests that arrive together still wait for each other (up to `max_wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

Runner = Callable[[Hashable, list[Any]], list[Any]]


class Overloaded(Exception):
    """The queue is full."""


@dataclass
class Done:
    """A job's result, and the batch it ran in."""

    result: Any
    batch_size: int
    run_seconds: float  # the batch's time on the model thread


@dataclass(eq=False)  # jobs are told apart by identity
class _Job:
    key: Hashable
    item: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(self, run: Runner, max_batch: int, max_wait: float, max_pending: int) -> None:
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_pending = max_pending
        self.pending = 0  # jobs submitted and not yet answered
        self.incoming = 0  # requests being read or answered (see `expecting`); `incoming - pending` are on their way
        self.stopping = False  # see `drain`
        self.batches_run = 0
        self._jobs: list[_Job] = []
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._worker = asyncio.create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.drain()

    def drain(self) -> None:
        """The server is stopping: the jobs not yet started are answered Overloaded now (a 503 the client may retry
        elsewhere), and new ones at once; the batch running finishes. (Left queued, they outlived the server's grace
        period and were cancelled: plain-text 500s.)"""
        self.stopping = True
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is stopping"))
        self._jobs.clear()

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """A request that may submit a job once it is read: a batch waits for it (up to `max_wait`)."""
        self.incoming += 1
        try:
            yield
        finally:
            self.incoming -= 1
            if self._arrived is not None:
                self._arrived.set()  # a waiting batch re-checks whether anyone is still on the way

    async def submit(self, key: Hashable, item: Any) -> Done:
        if self._worker is None:
            raise RuntimeError("the batcher is not started")
        if self.stopping:
            raise Overloaded("the server is stopping")
        if self.pending >= self.max_pending:
            raise Overloaded(
                f"{self.pending} requests are already waiting or running (the limit is {self.max_pending})"
            )
        job = _Job(key, item, asyncio.get_running_loop().create_future())
        self.pending += 1
        self._jobs.append(job)
        self._arrived.set()
        try:
            return await job.future
        finally:
            self.pending -= 1

    def _ready(self, key: Hashable) -> int:
        return sum(1 for job in self._jobs if job.key == key)

    async def _work(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if not self._jobs:
                continue
            first = self._jobs[0]
            while self._ready(first.key) < self.max_batch and self.incoming > self.pending:
                delay = first.arrived + self.max_wait - time.monotonic()
                if delay <= 0:
                    break
                try:
                    await asyncio.wait_for(self._arrived.wait(), delay)
                except TimeoutError:
                    break
                self._arrived.clear()
            batch = [job for job in self._jobs if job.key == first.key][: self.max_batch]
            self._jobs = [job for job in self._jobs if job not in batch]
            if self._jobs:
                self._arrived.set()  # jobs of another key (or more of this one) are waiting
            await self._run([job for job in batch if not job.future.done()])

    async def _run(self, batch: list[_Job]) -> None:
        if not batch:
            return
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.run, batch[0].key, [job.item for job in batch])
        except Exception as error:
            if len(batch) > 1:  # find the job that failed: the others still get their answers
                for job in batch:
                    if not job.future.done():  # its client may have gone meanwhile
                        await self._run([job])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(error)
            return
        self.batches_run += 1
        seconds = time.perf_counter() - start
        for job, result in zip(batch, results, strict=True):
            if not job.future.done():
                job.future.set_result(Done(result, len(batch), seconds))
