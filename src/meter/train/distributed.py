"""Everything the loop needs to run on many processes, in one place: wrapping the task (DDP or FSDP2, optional
torch.compile), gradient sync under accumulation, reductions across ranks, and full state dicts for checkpoints.

With one process every function here is a no-op or a plain local computation, so the loop reads the same.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from meter.config import TrainConfig
from meter.errors import ConfigError, MeterError
from meter.train.recompute import recompute_layers, repeated_layers
from meter.train.runtime import WAIT_FOR_MAIN, Runtime, is_main_process
from meter.train.stop_signals import (
    INTERRUPTED,
    PREEMPTED,
    RunStopped,
    StopAtOnce,
    nothing_left_to_stop,
    signals_deferred,
)

PARALLEL = ("ddp", "fsdp")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes whose compiled code replays CUDA graphs
log = logging.getLogger(__name__)
T = TypeVar("T")
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def check_parallel(name: str) -> None:
    if name not in PARALLEL:
        raise ConfigError(f"train.parallel = {name!r}; choose one of: {', '.join(PARALLEL)}")


def check_compile_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile_mode = {mode!r}; choose one of: {', '.join(COMPILE_MODES)}")


def uses_cuda_graphs(train: TrainConfig) -> bool:
    """Whether the compiled parts replay CUDA graphs: the loop then marks where each step begins."""
    return train.compile and train.compile_mode in CUDA_GRAPH_MODES


def check_graphs_accumulate(train: TrainConfig) -> None:
    if uses_cuda_graphs(train) and train.parallel == "fsdp":
        # a graph holds each parameter at the address it was recorded with; FSDP2 frees and gathers them again for
        # every layer, and its hooks break the compiled graphs at each one (never run together on a GPU)
        raise ConfigError(
            f"train.compile_mode = {train.compile_mode!r} replays CUDA graphs, which FSDP2's parameters "
            "gathered anew for each layer do not fit (train.parallel = fsdp); choose "
            "train.compile_mode = max-autotune-no-cudagraphs or default, or train.parallel = ddp"
        )
    if uses_cuda_graphs(train) and train.grad_accum > 1:
        # a replay of the backward's graph writes the next micro-batch's gradients over the memory `.grad` holds
        # (pytorch/pytorch#169545): an error, or where torch does not see it, the sum of the wrong gradients
        raise ConfigError(f"train.compile_mode = {train.compile_mode!r} replays CUDA graphs, which cannot "
                          f"accumulate gradients (train.grad_accum = {train.grad_accum}); choose "
                          "train.compile_mode = max-autotune-no-cudagraphs or default")  # fmt: skip


def split_global_batch(train: TrainConfig, world: int) -> None:
    """With train.global_batch set, train.grad_accum becomes the micro-batches that make it on this run's processes
    of train.batch_size samples each, as the official run.py derives its accumulate_grad_batches (which rounds down,
    training on a smaller batch; here a global batch the processes cannot make exactly is an error)."""
    if not train.global_batch:
        return
    wanted = train.global_batch
    accumulate, train.grad_accum = train.grad_accum, global_batch_accumulation(train, world)
    check_graphs_accumulate(train)
    if train.grad_accum != accumulate and is_main_process():  # said once (a plan splits it again)
        given = f" (not the {accumulate} set: train.global_batch=0 lets train.grad_accum be)" if accumulate > 1 else ""
        log.info("train.global_batch = %d: a step is train.grad_accum = %d micro-batches of %d samples on %d "
                 "process(es)%s", wanted, train.grad_accum, train.batch_size, world, given)  # fmt: skip


def global_batch_accumulation(train: TrainConfig, world: int) -> int:
    """The micro-batches of train.batch_size samples on `world` processes that make train.global_batch; a
    ConfigError, naming a batch size that would, where they cannot make it exactly."""
    wanted = train.global_batch
    per_micro_batch = train.batch_size * world
    if wanted % per_micro_batch:
        share = wanted // world if wanted % world == 0 else 0  # each process's samples a step
        fitting = next((size for size in range(min(train.batch_size, share), 0, -1) if share % size == 0), 0)
        hint = f"train.batch_size={fitting} makes it" if fitting else "run on a number of processes that divides it"
        raise ConfigError(f"train.global_batch = {wanted} is not a whole number of micro-batches of train.batch_size "
                          f"= {train.batch_size} on {world} process{'es' if world > 1 else ''} ({per_micro_batch} "
                          f"samples each): {hint}")  # fmt: skip
    return wanted // per_micro_batch


def compile_parts(model: nn.Module, mode: str = "default") -> None:
    """Compiles a model's big parts (vision, text, fusion) in place (state-dict keys stay the same); the task's own
    Python around them (losses, the selection of labelled positions) stays eager."""
    check_compile_mode(mode)
    for part in (model.vision, model.text, model.fusion):
        part.compile(mode=None if mode == "default" else mode)


def distribute(task: nn.Module, runtime: Runtime, train: TrainConfig) -> nn.Module:
    """Returns what the loop calls: the task itself, DDP around it, or the task sharded in place by FSDP2.

    Checkpoints, the optimizer and the model's own methods keep using `task` (FSDP2 shards it in place; DDP holds
    the same parameters)."""
    check_parallel(train.parallel)
    if train.activation_checkpointing:
        layers = recompute_layers(task)
        if runtime.is_main:
            log.info("activation checkpointing: %d layers recompute their activations in the backward", layers)
    if train.compile:
        compile_parts(task.model, train.compile_mode)
    if train.parallel == "fsdp" and dist.is_initialized():  # also one process under a launcher (see setup_runtime)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(runtime.device.type, (runtime.world,))
        units = repeated_layers(task)
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(task, mesh=mesh)
        if runtime.is_main:
            log.info("FSDP2: %d layers and the rest of the task sharded over %d process(es)", len(units),
                     runtime.world)  # fmt: skip
        return task
    if not runtime.distributed:
        return task
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    # which parameters get gradients depends on the objectives switched on (MLM alone never uses the poolers):
    # a static graph finds out in the first step and costs nothing after it
    wrapped = DistributedDataParallel(task, device_ids=device_ids, static_graph=True)
    _first_backward[wrapped] = FirstBackward()
    wrapped.register_comm_hook(_first_backward[wrapped], reduced_unless_first)
    return wrapped


class FirstBackward:
    """The state of `reduced_unless_first`: whether the backward under way is a first one that must not reduce, and
    whether the first has run (DDP's static graph recorded: `no_sync` may follow)."""

    def __init__(self) -> None:
        self.local = False
        self.done = False


# `bucket` unannotated: DDP compares its annotation with dist.GradBucket, and this module's annotations are strings
def reduced_unless_first(state: FirstBackward, bucket):  # -> torch.futures.Future[Tensor]
    """DDP's own reduction (the mean over processes), but for a process's first backward when it is not the last of
    its step's micro-batches: DDP's static graph is recorded by that backward, which cannot run under `no_sync`;
    its gradients stay local here, as `no_sync` keeps them. Reduced there, the partial sum was rounded otherwise
    than in the steps after it: a resumed run (its first backward in a later step) drifted from a run never
    stopped."""
    if state.local:
        kept: torch.futures.Future[Tensor] = torch.futures.Future()
        kept.set_result(bucket.buffer())
        return kept
    return default_hooks.allreduce_hook(None, bucket)


_first_backward: weakref.WeakKeyDictionary[nn.Module, FirstBackward] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, enabled: bool) -> Iterator[None]:
    """Accumulating micro-batches: reduce gradients across processes only on the last backward of the step (see
    `reduced_unless_first` for DDP's first backward)."""
    if not dist.is_initialized():
        yield
    elif hasattr(wrapped, "no_sync"):  # DDP
        state = _first_backward[wrapped]
        if state.done:
            with wrapped.no_sync() if not enabled else contextlib.nullcontext():
                yield
            return
        state.local = not enabled
        try:
            yield
        finally:
            state.local = False
        state.done = True
    elif enabled:
        yield
    elif hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            wrapped.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """In place across processes (sum or max); unchanged with one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def local(tensor: Tensor) -> Tensor:
    """A replicated DTensor (FSDP2's gradient norm) as a plain tensor."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def gather_objects(value: Any) -> list[Any]:
    """Every process's `value`, in rank order (what rank 0 writes into a checkpoint)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value: Any, source: int = 0, group: dist.ProcessGroup | None = None) -> Any:
    """Process `source`'s `value` on every process (a decision one process takes for all: rank 0 reads the disk)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source, group=group)
    return box[0]


_TOLD = itertools.count()  # told_by_main's calls in this process: every process makes the same ones, in order


def told_by_main(news: Any, what: str) -> Any:
    """The first process's `news` on every process, however long the others wait for it (up to WAIT_FOR_MAIN, a
    day): it works alone (writes a checkpoint, checks its checksums, evaluates) longer than a collective of the
    training group may wait (NCCL: 10 minutes). Through the launcher's key-value store, not a second process group:
    one cannot be set up again after torchrun restarts the processes (its peers' old addresses are still in the
    store), so `--max-restarts` failed instead of resuming. `what`: the question answered; processes that reach the
    same call with different questions stop (an answer to another question would be taken without a word)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return news
    store = dist.distributed_c10d._get_default_store()
    key = f"meter/told/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{next(_TOLD)}"
    if dist.get_rank() == 0:
        # a store rank 0 holds (srun's) stays until the others leave (runtime.leave_store_together) when the command
        # ends well; on an error rank 0 may be gone first, and a waiting process then stops as for a lost peer
        store.set(key, pickle.dumps((what, news)))
        return news
    store.wait([key], WAIT_FOR_MAIN)
    asked, news = pickle.loads(store.get(key))
    if asked != what:
        raise MeterError(f"the processes of this run went different ways: this one waits for {what}, the first "
                         f"answered {asked} (did they read the run folder differently?); stop them all and start "
                         "again with --resume latest")  # fmt: skip
    return news


def _site(function: Callable[..., Any]) -> str:
    """Where a function was written (its name and line): the same on every process."""
    code = getattr(function, "__code__", None)
    return f"{getattr(function, '__qualname__', function)}:{code.co_firstlineno if code else ''}"


def main_alone(work: Callable[[], T], others: T) -> T:
    """`work()` on the first process alone (an evaluation that writes files) while the others wait for it, however
    long (the waiting group's day, not a training collective's minutes); they get `others`. An error it raised is
    raised on every process, so that all of them go on, or stop, together."""
    main = is_main_process()
    failure: BaseException | None = None
    result = others
    if main:
        try:
            result = work()
        except BaseException as error:  # a stop signal too: the others are told, not cut off mid-collective
            failure = error
    news = None if failure is None else (stopped_status(failure), f"{type(failure).__name__}: {failure}")
    with signals_deferred() as deferred:  # a signal to a waiting process alone must not split the broadcast
        told = told_by_main(news, f"the end of {_site(work)}")
    if failure is not None:
        failure.told = True  # type: ignore[attr-defined]  # the others stop too: they are waited for as it leaves
        raise failure
    if told is not None:
        status, message = told
        if status:
            raise RunStopped(f"the first process was stopped, so this one stops too: {message}", status)
        raise MeterError(f"the first process failed, so this one stops too: {message}")
    for signum in deferred:  # now to the handler of the moment: training notes it, outside training it stops
        if nothing_left_to_stop(signum):
            log.warning("%s came while the first process evaluated; the run is done: nothing left to stop",
                     signal.Signals(signum).name)  # fmt: skip
            continue
        signal.raise_signal(signum)
    return result


def stopped_status(error: BaseException) -> int:
    """The exit status of a stop (a signal, Ctrl-C), 0 for a failure."""
    if isinstance(error, StopAtOnce):
        return PREEMPTED
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    return getattr(error, "exit_status", 0)


def decided_on_main(decide: Callable[[], T], runtime: Runtime) -> T:
    """`decide()` on rank 0 (it reads, verifies or writes the disk); every process gets its answer, and a MeterError
    it raised is raised on every process."""
    outcome: T | MeterError | None = None
    if runtime.is_main:
        try:
            outcome = decide()
        except MeterError as error:
            outcome = error
    outcome = told_by_main(outcome, _site(decide))  # rank 0 may take long: it checks every file of a checkpoint
    if isinstance(outcome, MeterError):
        raise outcome
    return outcome  # type: ignore[return-value]


def full_model_state(task: nn.Module) -> dict[str, Tensor]:
    """The whole task's weights on the CPU (gathered from the shards under FSDP2; empty on ranks other than 0)."""
    return get_model_state_dict(task, options=FULL)


def full_optimizer_state(task: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter names (not positions), whole, on the CPU."""
    return get_optimizer_state_dict(task, optimizer, options=FULL)


def load_full_state(
    task: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Tensor], optimizer_state: dict[str, Any]
) -> None:
    """Every process loads the whole state and keeps its shard of it. A parameter that never had a gradient (the
    decoder's class token in captioning, a fusion stream MLM alone does not reach) has no AdamW state to load."""
    set_model_state_dict(task, weights, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(task, optimizer, optim_state_dict=optimizer_state,
                             options=StateDictOptions(full_state_dict=True, strict=False))  # fmt: skip
