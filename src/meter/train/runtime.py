"""Where and how a run executes: device, precision, seeds, determinism, and the process group under torchrun."""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import random
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from meter.config import TrainConfig
from meter.errors import ConfigError
from meter.train.stop_signals import INTERRUPTED, PREEMPTED, StopAtOnce, signal_name

log = logging.getLogger(__name__)
DEVICES = ("auto", "cpu", "cuda")
WAIT_FOR_MAIN = timedelta(days=1)  # see distributed.told_by_main
LEAVING = timedelta(seconds=60)  # see leave_store_together
JOINED_AFTER_STOP = 2.0  # seconds: a rendezvous that ends as the stop comes is let end (see joined_hearing_signals)
_LEFT = itertools.count()  # process groups this process has left (a process that sets up a group again)
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means no autocast
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def is_main_process() -> bool:
    """The first process of a launcher's group (torchrun sets RANK), or a process alone."""
    return os.environ.get("RANK", "0") == "0"


def pick_device(name: str, option: str = "train.device") -> torch.device:
    """`option`: how the user gave it (train.device, or a command's --device), named in an error. `cuda:N` picks
    one GPU of several (as CUDA_VISIBLE_DEVICES numbers them)."""
    spelled = f"{option} = {name!r}" if option.startswith("train.") else f"{option} {name}"
    kind, colon, index = name.partition(":")
    if kind not in DEVICES or (colon and (kind != "cuda" or not index.isdecimal())):
        raise ConfigError(f"{spelled}; choose one of: {', '.join(DEVICES)}, or cuda:N for the GPU numbered N")
    if kind == "cuda" and not torch.cuda.is_available():
        use = "train.device=cpu" if option.startswith("train.") else f"{option} cpu"
        raise ConfigError(f"{spelled} but no CUDA device is available; use {use}")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"{spelled} but this machine shows {torch.cuda.device_count()} GPU(s), numbered from 0")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def gpu_of(local_rank: int) -> int:
    """The GPU of the process of this LOCAL_RANK: its own number among the GPUs it sees, or the one GPU it sees (srun
    --gpus-per-task=1 shows each process its own GPU alone, numbered 0: LOCAL_RANK 1 asked for a GPU 1 it did not
    see, "invalid device ordinal")."""
    visible = torch.cuda.device_count()
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise ConfigError(f"LOCAL_RANK {local_rank}, but this process sees {visible} GPUs (CUDA_VISIBLE_DEVICES): "
                          "start at most one process per GPU on a machine")  # fmt: skip
    return local_rank


def pick_dtype(precision: str, device: torch.device, option: str = "train.precision") -> torch.dtype:
    """`option`: how the user gave it (train.precision, or an argument's name), named in an error."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{option} = {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        # a card without bf16 units (before Ampere: a T4, a V100) emulates it, and attention falls back to its slow,
        # memory-hungry math kernel: fp32 there (fp16 would need loss scaling, which the loop does not do)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        log.warning("%s = auto: this GPU has no bf16 units: training and predicting in fp32", option)
        return torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def allow_tf32(device: torch.device, allowed: bool) -> None:
    """TF32 for the matrix products and convolutions autocast leaves in fp32, unless fp32 itself was asked for."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allowed
        torch.backends.cudnn.allow_tf32 = allowed


DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")  # the CUBLAS_WORKSPACE_CONFIG values that make cuBLAS deterministic


def check_deterministic_cublas() -> None:
    """Deterministic matrix products on CUDA need CUBLAS_WORKSPACE_CONFIG, which PyTorch reads once, at the process's
    first matrix product on CUDA: set it here only if CUDA is untouched, else refuse up front (a study's cell that ran
    a non-deterministic run first failed at its deterministic run's first step)."""
    value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if value in DETERMINISTIC_CUBLAS:
        return
    if value is None and not torch.cuda.is_initialized():
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = DETERMINISTIC_CUBLAS[0]
        return
    found = "unset" if value is None else f"{value!r}"
    when = " when this process first used CUDA" if value is None else ""
    wanted, other = DETERMINISTIC_CUBLAS
    raise ConfigError(f"train.deterministic=true on CUDA needs CUBLAS_WORKSPACE_CONFIG={wanted} (or {other}), which "
                      f"cuBLAS reads once per process; it was {found}{when}. Set it in the environment before the "
                      f"process starts (the meter command sets {wanted} unless told otherwise), or use "
                      "train.deterministic=false")  # fmt: skip


def setup_runtime(cfg: TrainConfig) -> Runtime:
    """Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and joins the process group if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device)
    if device.type == "cuda":
        if cfg.deterministic:
            check_deterministic_cublas()
        if device.index is not None and world > 1:  # torchrun gives each process the GPU of its LOCAL_RANK
            raise ConfigError(f"train.device = {cfg.device!r} under a launcher of {world} processes: each process "
                              "uses the GPU of its LOCAL_RANK; use train.device=cuda, and CUDA_VISIBLE_DEVICES to "
                              "choose the GPUs")  # fmt: skip
        device = torch.device("cuda", gpu_of(local_rank) if device.index is None else device.index)
        torch.cuda.set_device(device)
    # train.precision=fp32 asks for fp32 itself (the advice the loop gives after non-finite steps)
    allow_tf32(device, cfg.precision != "fp32")
    # a launcher's rendezvous (torchrun, or srun with MASTER_ADDR) with train.parallel=fsdp: a group even of one
    # process, so that FSDP2 shards on one GPU as on many (what a single-GPU debugging run of a sharded job wants)
    launched_sharded = cfg.parallel == "fsdp" and "MASTER_ADDR" in os.environ
    if cfg.parallel == "fsdp" and world == 1 and not launched_sharded:
        log.warning("train.parallel = fsdp without a launcher (torchrun, or srun with MASTER_ADDR): one process, its "
                    "model and optimizer state not sharded")  # fmt: skip
    if (world > 1 or launched_sharded) and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # it waits, silent, until every process has come (torch's limit for the backend)
        log.info("joining the run's %d processes at %s:%s (waits until every one has started, at most %d minutes)",
                 world, os.environ.get("MASTER_ADDR", "?"), os.environ.get("MASTER_PORT", "?"),
                 rendezvous_timeout(backend).total_seconds() // 60)  # fmt: skip
        joined_hearing_signals(lambda: dist.init_process_group(backend=backend, **attempts_own_store(rank, world)),
                               device, world)  # fmt: skip
    # on a GPU the strict mode is what makes attention deterministic: warned only, SDPA keeps cuDNN's kernel and the
    # memory-efficient one's split keys (atomic adds), and gradients differ from run to run at real sizes; an
    # operation without a deterministic CUDA kernel then stops the run, naming it. Set either way: a process that
    # runs several runs (a study's cell) keeps no earlier run's slower kernels
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=device.type != "cuda")
    seed_everything(cfg.seed)
    return Runtime(
        device=device, dtype=pick_dtype(cfg.precision, device), rank=rank, world=world, local_rank=local_rank
    )


def joined_hearing_signals(join: Callable[[], None], device: torch.device, world: int) -> None:
    """`join` (the rendezvous) on a thread of its own while the main thread waits for it: within torch's wait, a C++
    call, Python runs no signal handler, so a scheduler's SIGTERM or a Ctrl-C went unheard for as long as a process
    failed to come (the backend's whole limit, 30 minutes with gloo; then SIGKILL, 137, and no requeue). A stop that
    comes while it waits ends the process at once, with its status (PREEMPTED, INTERRUPTED) and one line saying so:
    `os._exit`, as nothing stops the C++ wait, and an interpreter that exits around it may abort."""
    failed: list[BaseException] = []
    ended = threading.Event()  # not Thread.join: a join that a signal interrupts may take the thread for ended

    def rendezvous() -> None:
        try:
            if device.type == "cuda":  # the device is the calling thread's: NCCL's group takes this thread's
                torch.cuda.set_device(device)
            join()
        except BaseException as error:  # raised in the main thread, as a rendezvous there raised it
            failed.append(error)
        finally:
            ended.set()

    threading.Thread(target=rendezvous, name="meter-rendezvous", daemon=True).start()
    try:
        while not ended.wait(0.5):  # a wait that signals interrupt: their handlers run here
            pass
    except (StopAtOnce, KeyboardInterrupt) as stop:
        if not ended.wait(JOINED_AFTER_STOP):  # else the rendezvous ended as the stop came: the usual stop follows
            preempted = isinstance(stop, StopAtOnce)
            stopped = f"stopped by {signal_name(stop.signum)}" if preempted else "interrupted"
            print(f"meter: {stopped} while waiting for the run's {world} processes to join, nothing to save"
                  + (": requeue the job as it was" if preempted else ""), file=sys.stderr, flush=True)  # fmt: skip
            sys.stdout.flush()
            os._exit(PREEMPTED if preempted else INTERRUPTED)
        raise
    if failed:
        raise failed[0]


def rendezvous_timeout(backend: str) -> timedelta:
    """How long torch waits for the processes of a group of `backend` (NCCL's is shorter than gloo's)."""
    default = getattr(dist.distributed_c10d, "_get_default_timeout", None)
    return default(backend) if default is not None else default_pg_timeout


def leave_store_together(wait: timedelta = LEAVING, wait_for_others: bool = True) -> None:
    """Rank 0 waits (a little) for the others to leave before its process group goes: under srun the key-value store
    is rank 0's, and a process still reading the last news rank 0 left there (distributed.told_by_main) would lose
    it. A process that never comes (it failed) is not waited for longer than `wait`."""
    store = dist.distributed_c10d._get_default_store()
    key = f"meter/leaving/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{next(_LEFT)}"
    try:
        if dist.get_rank() == 0:
            if wait_for_others:
                store.wait([f"{key}/{rank}" for rank in range(1, dist.get_world_size())], wait)
        else:  # said always (a moment): rank 0 may wait for it
            store.set(f"{key}/{dist.get_rank()}", b"")
    except RuntimeError as error:  # a DistStoreError: the others are gone already: nothing more to wait for
        log.debug("leaving the process group without the others: %s", error)


def attempts_own_store(rank: int, world: int) -> dict[str, object]:
    """Under torchrun, the rendezvous keys of this attempt apart from those of the attempts before it: torchrun's
    store outlives a restart (--max-restarts), and a process started again read a killed peer's address of the attempt
    before from it (gloo: "connectFullMesh failed ... Connection refused"), so the restart failed."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}  # srun's or a user's rendezvous: the store is made anew with the processes
    agent = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=default_pg_timeout
    )  # as torch's own rendezvous: processes may start far apart
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"meter/attempt_{attempt}", agent), "rank": rank, "world_size": world}


def release_cached_memory() -> None:
    """Frees what nothing refers to any more and gives the CUDA allocator's cached blocks back (one model goes, the
    next comes: an evaluation's copy beside the training, the trained model before the final evaluation)."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def teardown_runtime(wait_for_others: bool = True) -> None:
    """Leaves the process group; `wait_for_others`: rank 0 first waits (a little) for the others to leave too."""
    if dist.is_initialized():
        leave_store_together(wait_for_others=wait_for_others)
        dist.destroy_process_group()
