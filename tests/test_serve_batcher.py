"""The micro-batcher alone: what arrives together runs together, within its limits; overload and failures stay local."""

import asyncio
import threading

from meter.serve.batcher import MicroBatcher, Overloaded


class Recorder:
    """A batch function that squares numbers and remembers each batch it was given (and on which thread)."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[tuple[object, list[int]]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def __call__(self, key, items: list[int]) -> list[int]:
        self.batches.append((key, list(items)))
        self.threads.add(threading.current_thread().name)
        if self.fail_on in items:
            raise ValueError(f"cannot square {self.fail_on}")
        return [x * x for x in items]


async def with_batcher(run: Recorder, work, **limits):
    batcher = MicroBatcher(run, **({"max_batch": 4, "max_wait": 0.2, "max_pending": 100} | limits))
    await batcher.start()
    try:
        return await work(batcher)
    finally:
        await batcher.stop()


def test_jobs_that_arrive_together_run_as_one_batch_on_the_model_thread():
    run = Recorder()

    async def work(batcher):
        return await asyncio.gather(*(batcher.submit(("square",), x) for x in (1, 2, 3)))

    done = asyncio.run(with_batcher(run, work))
    assert [d.result for d in done] == [1, 4, 9] and [d.batch_size for d in done] == [3, 3, 3]
    assert run.batches == [(("square",), [1, 2, 3])]
    assert len(run.threads) == 1 and next(iter(run.threads)).startswith("model")


def test_a_batch_holds_at_most_max_batch_jobs():
    run = Recorder()

    async def work(batcher):
        return await asyncio.gather(*(batcher.submit("k", x) for x in range(10)))

    done = asyncio.run(with_batcher(run, work, max_batch=4))
    assert [d.result for d in done] == [x * x for x in range(10)]
    assert [len(items) for _, items in run.batches] == [4, 4, 2]


def test_jobs_of_different_keys_never_share_a_batch():
    run = Recorder()

    async def work(batcher):
        return await asyncio.gather(*(batcher.submit(("beam", x % 2), x) for x in range(6)))

    asyncio.run(with_batcher(run, work))
    assert sorted(run.batches) == [(("beam", 0), [0, 2, 4]), (("beam", 1), [1, 3, 5])]


def test_a_job_that_fails_fails_alone():
    run = Recorder(fail_on=3)

    async def work(batcher):
        return await asyncio.gather(*(batcher.submit("k", x) for x in (1, 2, 3, 4)), return_exceptions=True)

    results = asyncio.run(with_batcher(run, work))
    assert [r.result for r in results if not isinstance(r, Exception)] == [1, 4, 16]
    assert isinstance(results[2], ValueError) and "cannot square 3" in str(results[2])


def test_past_max_pending_jobs_are_refused_at_once_and_later_ones_run():
    run = Recorder()

    async def work(batcher):
        results = await asyncio.gather(*(batcher.submit("k", x) for x in range(5)), return_exceptions=True)
        after = await batcher.submit("k", 7)
        return results, after

    results, after = asyncio.run(with_batcher(run, work, max_pending=2))
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 3 and "2 requests are already waiting or running (the limit is 2)" in str(refused[0])
    assert [r.result for r in results if not isinstance(r, Exception)] == [0, 1] and after.result == 49


def test_a_batch_waits_for_requests_still_on_their_way():
    run = Recorder()

    async def work(batcher):
        async def request(x: int, reading: float):
            with batcher.expecting():
                await asyncio.sleep(reading)  # the upload is still being read
                return await batcher.submit("k", x)

        return await asyncio.gather(request(1, 0), request(2, 0.05), request(3, 0.1))

    done = asyncio.run(with_batcher(run, work, max_wait=2.0))
    assert [d.batch_size for d in done] == [3, 3, 3] and run.batches == [("k", [1, 2, 3])]


async def timed_submit(batcher, x: int) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with batcher.expecting():
        await batcher.submit("k", x)
    return loop.time() - start


def test_a_lone_request_runs_at_once():
    run = Recorder()
    assert asyncio.run(with_batcher(run, lambda batcher: timed_submit(batcher, 5), max_wait=1.0)) < 0.5


def test_a_request_that_never_comes_is_waited_for_no_longer_than_max_wait():
    run = Recorder()

    async def work(batcher):
        with batcher.expecting():  # being read, and it will never submit
            return await timed_submit(batcher, 6)

    assert 0.45 < asyncio.run(with_batcher(run, work, max_wait=0.5)) < 2.0
