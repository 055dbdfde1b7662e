"""Watched data workers: a worker that dies (killed, out of memory) or stops answering ends the run within a bounded
time, with a message naming the worker, its pid and what it was reading. Never a silent hang.

PyTorch's DataLoader finds a dead worker through a SIGCHLD handler that raises wherever the main process happens to
be (mid-step, mid-checkpoint) and names only the pid; and it waits forever for a worker that hangs, even inside the
hand-over of a batch's tensors when their sender stops. Here the loader's workers are taken off that handler: the
loader finds a dead worker while the main process waits for a batch (it looks every few seconds), and a watchdog
thread ends the worker that holds up the main process once it has waited `data.worker_timeout` seconds for one
batch. Each worker writes what it is reading (a shard, a sample) into its slot of a small shared array, which names
what a dead or silent worker was doing.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils import signal_handling

from meter.data.shared_rows import compacting, restored
from meter.errors import DataError

WORKER_TIMEOUT = 300.0  # data.worker_timeout's default: seconds a worker may hold up a batch
SLOT_BYTES = 256  # per worker: the end of a long path is kept (the shard's name)
STATES = {"R": "running", "S": "sleeping", "D": "waiting on disk or network", "T": "stopped", "t": "stopped"}


class WorkerBoard:
    """What each data worker is reading, in shared memory: written by the worker, read by the main process.

    Given to the DataLoader as its `worker_init_fn`: each worker then knows its slot (see `note_reading`)."""

    def __init__(self, workers: int) -> None:
        self.slots = multiprocessing.RawArray(ctypes.c_char, workers * SLOT_BYTES)

    def __call__(self, worker_id: int) -> None:
        global _this_worker
        _this_worker = (self, worker_id)

    def write(self, worker: int, text: str) -> None:
        data = text.encode("utf-8", "replace")
        if len(data) > SLOT_BYTES:
            data = b"..." + data[-(SLOT_BYTES - 3) :]
        self.slots[worker * SLOT_BYTES : (worker + 1) * SLOT_BYTES] = data.ljust(SLOT_BYTES, b"\0")

    def read(self, worker: int) -> str:
        text = self.slots[worker * SLOT_BYTES : (worker + 1) * SLOT_BYTES].rstrip(b"\0").decode("utf-8", "replace")
        return text or "nothing yet"


_this_worker: tuple[WorkerBoard, int] | None = None  # set in a data worker by its board; None in the main process


def note_reading(what: str | Path) -> None:
    """Records what this data worker is about to read; nothing in the main process."""
    if _this_worker is not None:
        board, worker = _this_worker
        board.write(worker, str(what))


class NotedReads(Dataset):
    """A map-style dataset whose workers note the sample they read."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        note_reading(f"sample {index} of {type(self.dataset).__name__}")
        return self.dataset[index]


def watched_batches(dataset: Dataset, num_workers: int, worker_timeout: float, **loader: Any) -> Iterator[Any]:
    """The batches of `DataLoader(dataset, num_workers=num_workers, **loader)`; a worker that dies, or holds up a
    batch for `worker_timeout` seconds, raises DataError naming it."""
    pinned = bool(loader.get("pin_memory"))
    if pinned:  # a blind batch's one image, expanded over the rows, cannot be pinned as it is
        loader["collate_fn"] = compacting(loader.get("collate_fn"))
    batches = _watched(dataset, num_workers, worker_timeout, **loader)
    try:
        for batch in batches:
            yield restored(batch) if pinned else batch
    finally:
        batches.close()  # the workers are shut down now


def _watched(dataset: Dataset, num_workers: int, worker_timeout: float, **loader: Any) -> Iterator[Any]:
    if num_workers == 0:
        yield from DataLoader(dataset, num_workers=0, **loader)
        return
    board = WorkerBoard(num_workers)
    iterator = iter(DataLoader(dataset, num_workers=num_workers, worker_init_fn=board, **loader))
    _stop_raising_from_signal_handler(iterator)
    workers = list(iterator._workers)  # multiprocessing.Process by worker id: pid and exit code
    watchdog = Watchdog(workers, board, worker_timeout)
    delivered = 0
    try:
        while True:
            watchdog.arm(owed=delivered % num_workers)  # the loader hands batches out from worker 0, 1, ... in turn
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as error:
                # a worker's own exception, raised again here by the loader ("Caught ValueError in DataLoader worker
                # process 0"), is that exception whatever its siblings do meanwhile (one seen exiting with status 0
                # under load was reported as the failure)
                own = "in DataLoader worker process" in str(error)
                failure = watchdog.hang or (None if own else _death(workers, board))
                if failure is None:
                    error.add_note("data workers were reading: " + "; ".join(
                        f"{w}: {board.read(w)}" for w in range(num_workers)))  # fmt: skip
                    raise
            else:
                watchdog.disarm()
                delivered += 1
                yield batch
                continue
            raise DataError(failure)  # outside `except`: nothing keeps the loader's frames (and workers) alive
    finally:
        watchdog.close()
        del iterator  # its workers are shut down now, not when the traceback that holds this frame goes


class Watchdog(threading.Thread):
    """Ends the worker that holds up the main process once it has waited `timeout` seconds for one batch; the
    loader then finds that worker dead, and `hang` says what happened. It looks a few times a timeout (at most
    every second), so that arming it for each batch costs the main process nothing but two assignments."""

    def __init__(self, workers: list[Any], board: WorkerBoard, timeout: float) -> None:
        super().__init__(name="data-worker-watchdog", daemon=True)
        self.workers, self.board, self.timeout = workers, board, timeout
        self.owed = 0
        self.deadline: float | None = None  # set and cleared by the main process
        self.closed = threading.Event()
        self.hang: str | None = None
        self.start()

    def arm(self, owed: int) -> None:
        self.owed = owed
        self.deadline = time.monotonic() + self.timeout

    def disarm(self) -> None:
        self.deadline = None

    def close(self) -> None:
        self.closed.set()

    def run(self) -> None:
        while not self.closed.wait(min(1.0, self.timeout / 4)):
            deadline = self.deadline
            if deadline is not None and time.monotonic() >= deadline:
                self.deadline = None
                self._end_the_culprit()

    def _end_the_culprit(self) -> None:
        """Ends the worker that owes the batch, unless another one is stopped or stuck in I/O: the main process may
        be held receiving a batch from that one (the hand-over of its tensors needs the sender)."""
        states = [_state(process.pid) for process in self.workers]
        worker = next((w for w, s in enumerate(states) if s in ("T", "t", "D")), self.owed)
        pid = self.workers[worker].pid
        state = f", {STATES[states[worker]]}" if states[worker] in STATES else ""
        self.hang = (f"data worker {worker} (pid {pid}{state}) held up a batch for {self.timeout:g} s"
                     f" (data.worker_timeout) while reading {self.board.read(worker)}; the worker was ended and the"
                     f" run stops")  # fmt: skip
        os.kill(pid, signal.SIGKILL)  # after `hang` is said: the main process finds it dead; a stopped worker would
        # also keep the exit waiting for it forever


def _death(workers: list[Any], board: WorkerBoard) -> str | None:
    for worker, process in enumerate(workers):
        if process.exitcode is None:
            continue
        if process.exitcode == -signal.SIGKILL:
            how = "was killed by SIGKILL (the kernel's out-of-memory killer sends it: see `dmesg`)"
        elif process.exitcode < 0:
            how = f"was killed by {signal.Signals(-process.exitcode).name}"
        else:
            how = f"exited with status {process.exitcode}"
        return (f"data worker {worker} (pid {process.pid}) {how} while reading {board.read(worker)}; the run stops"
                f" (resume it from its last checkpoint: --resume latest)")  # fmt: skip
    return None


def _stop_raising_from_signal_handler(iterator: Any) -> None:
    """Takes the loader's workers off PyTorch's SIGCHLD check: their deaths are found while waiting for a batch."""
    if getattr(iterator, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False


def _state(pid: int | None) -> str:
    """The process state letter (R, S, D, T, Z, ...) from /proc; empty where there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""
