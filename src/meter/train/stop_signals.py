"""Stopping a run from outside: a cluster's preemption signals, and Ctrl-C.

SIGTERM (what `scancel` and a preempting scheduler send), SIGUSR1 (what SLURM sends ahead of the time limit with
`--signal=USR1@SECONDS`) and SIGUSR2 (submitit's choice for that warning) ask the run to stop: every process finishes
the optimizer step it is in; the request travels with the step's one reduction across processes, so all of them stop
after the same step, even when only one was signalled; rank 0 writes a checkpoint of it; every process exits with
PREEMPTED, on which a job script requeues the job, to go on with `--resume latest`. A second signal while that
happens stops at once: the checkpoint being written is dropped (its temporary folder removed: never a partial step_*
folder), the last complete one stays. The same signal again within REPEAT_WINDOW seconds is the first one delivered
twice, not a second request: a scheduler signals every process of a job, and torchrun forwards the one it received
to its workers as well.

Ctrl-C (SIGINT) stops at once, with INTERRUPTED, and says where the last checkpoint is.

Outside training (`meter finetune` loading its data, or evaluating the trained model) there is nothing to save: the
first signal stops at once, with PREEMPTED all the same (`stopped_outside_training`), and the requeued job's
`--resume latest` evaluates again.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from meter.errors import MeterError

PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, try again; job scripts requeue on it
INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
REPEAT_WINDOW = 5.0  # seconds
EXIT_STATUSES = (
    f"exit status: 0 done; 2 a config or data error (the message says which); {PREEMPTED} stopped by SIGTERM, "
    f"SIGUSR1 or SIGUSR2 after a checkpoint, or outside training with nothing to save (requeue the job, then "
    f"--resume latest where the run has a checkpoint); {INTERRUPTED} interrupted by Ctrl-C"
)


class RunStopped(MeterError):
    """The run stopped before its end, as asked; the command exits with `exit_status`."""

    def __init__(self, message: str, exit_status: int, alone: bool = False) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        # stopped without the other processes of the run being told (a signal to this one, outside training): they
        # are not waited for as it leaves (they wait for it in a collective, and would make it wait a minute)
        self.alone = alone

    def __reduce__(self) -> tuple[Any, ...]:  # told to another process whole (its status too)
        return type(self), (str(self.args[0]), self.exit_status, self.alone)


class StopAtOnce(BaseException):
    """A second stop signal, raised wherever the process is (a BaseException: no `except Exception` holds it up)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequests:
    """While entered, SIGTERM, SIGUSR1 and SIGUSR2 set `received`; a second one raises StopAtOnce (but the first one
    repeated within REPEAT_WINDOW seconds: the same request delivered twice). The handlers are those of the process
    that entered: data workers forked meanwhile inherit them and ignore the signals (their main process stops
    them)."""

    def __init__(self, at_once: bool = False) -> None:
        self.at_once = at_once  # the first request raises StopAtOnce (later ones: the stop is under way)
        self.received = 0  # the signal number of the first request; 0: none
        self._received_at = 0.0
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        self._previous = install(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        restore(self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return
        if not self.received:
            self.received, self._received_at = signum, time.monotonic()
            if self.at_once:
                raise StopAtOnce(signum)
            return
        if self.at_once:
            return
        if signum == self.received and time.monotonic() - self._received_at < REPEAT_WINDOW:
            return
        raise StopAtOnce(signum)


def install(handler: Any) -> dict[int, Any]:
    """`handler` for the stop signals; returns the handlers it replaced, for `restore`. Python runs handlers in the
    main thread only: in another thread nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: not set from Python


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """While entered, a stop signal is noted, not handled: the list holds it after (for the caller to hand on once
    what must not be cut in two, a collective, is done)."""
    received: list[int] = []
    previous = install(lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        restore(previous)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@contextlib.contextmanager
def stopped_outside_training() -> Iterator[None]:
    """Around a training command (training installs its own handlers within): a stop signal before or after training
    (loading data, the final evaluation) ends it at once with PREEMPTED, where Python's default would end the process
    with 143, which a job script that requeues on PREEMPTED takes for a failure."""
    try:
        with StopRequests(at_once=True):
            yield
    except StopAtOnce as stop:
        if isinstance(stop.__context__, RunStopped):  # training's own stop, its signal delivered again on the way out
            raise stop.__context__ from None
        raise RunStopped(f"stopped by {signal_name(stop.signum)} outside training, nothing to save: requeue, with "
                         "`--resume latest` where the run has a checkpoint (a finished one is evaluated again)",
                         PREEMPTED, alone=not getattr(stop, "told", False)) from None  # fmt: skip


_ENDS_WITH_ITS_EVALUATION: contextvars.ContextVar[bool] = contextvars.ContextVar("ends_with_evaluation", default=False)


@contextlib.contextmanager
def ending_with_its_evaluation() -> Iterator[None]:
    """Around a command whose work outside training ends with one evaluation by the first process (`meter
    finetune`): a stop signal that a waiting process got while that evaluation ran is dropped once it is done, where
    it stopped that process with PREEMPTED, and the requeued job evaluated the whole split again."""
    token = _ENDS_WITH_ITS_EVALUATION.set(True)
    try:
        yield
    finally:
        _ENDS_WITH_ITS_EVALUATION.reset(token)


def nothing_left_to_stop(signum: int) -> bool:
    """Whether a stop signal held while the first process worked alone has nothing left to stop now that it is done:
    the command ends with that work, and the handler of the moment is the outside-training one (during training the
    signal stops the run after its step, as asked)."""
    owner = getattr(signal.getsignal(signum), "__self__", None)
    return _ENDS_WITH_ITS_EVALUATION.get() and isinstance(owner, StopRequests) and owner.at_once
