"""Real faults in real training processes: `meter` started through a small launcher that, at a chosen call of the
training (the N-th backward, the N-th gradient clipping, the write of a checkpoint's training state), sends a real
signal to its own process or writes NaN into the gradients of its own process. One process, or several started the
way `srun` starts them (one `python -m meter` each, with RANK, WORLD_SIZE and a rendezvous address in the
environment).

Faults are given as arguments `WHEN:AT:WHAT[:RANK]`:
    backward:9:SIGTERM          the 9th call of Tensor.backward sends SIGTERM to this process (before it runs)
    backward:9:group-SIGUSR1    ... SIGUSR1 to its process group: its data workers too (start it with
                                start_new_session=True, so that the group is its own)
    save:.step_00000005.tmp:SIGTERM   the torch.save whose file is in that temporary checkpoint folder
    init:1:SIGTERM:0            right after this process joined the launcher's group (loading data, building the
                                model come next)
    evaluate:1:SIGTERM:0        the 1st evaluation of a model folder (inside meter.runs.evaluate_run, on the process
                                that evaluates: the first)
    replace:vqa_accuracy:SIGKILL    the os.replace that puts a file whose name holds that text in place (an atomic
                                write's last act: the file is not written)
    clip:3:nan:1                at the 3rd gradient clipping (the 3rd optimizer step) of rank 1, after its backward
                                and the gradient all-reduce, one gradient of that rank becomes NaN
    clip:6+:nan:1               the same at every step from the 6th on
A process that torchrun restarted (TORCHELASTIC_RESTART_COUNT > 0) runs without faults.
With STEP_LOG in the environment, each process appends to STEP_LOG.RANK the optimizer steps it applied.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.runner import environment

LAUNCHER = r"""
import os, signal, sys
import torch

# Ctrl-C as in a terminal: a process started in the background of a non-interactive shell (as CI may start the
# tests) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler
signal.signal(signal.SIGINT, signal.default_int_handler)
rank = int(os.environ.get("RANK", "0"))
faults = [arg.split(":") for arg in sys.argv[1:sys.argv.index("--")]]
if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
    faults = []  # torchrun restarted the processes after the fault: they run as they would on a cluster
counts = {"backward": 0, "clip": 0}


def due(when, at, count, target):
    if target is not None and int(target) != rank:
        return False
    if when == "save":
        return False
    return count >= int(at[:-1]) if at.endswith("+") else count == int(at)


def act(what):
    if what == "nan":
        return
    if what.startswith("group-"):  # every process of the group: the data workers too, as a cluster signals a job
        os.killpg(os.getpgrp(), getattr(signal, what.removeprefix("group-")))
    else:
        os.kill(os.getpid(), getattr(signal, what))


original_backward = torch.Tensor.backward
def backward(self, *args, **kwargs):
    counts["backward"] += 1
    for when, at, what, *target in faults:
        if when == "backward" and due(when, at, counts["backward"], target[0] if target else None):
            act(what)
    return original_backward(self, *args, **kwargs)
torch.Tensor.backward = backward

original_clip = torch.nn.utils.clip_grad_norm_
def clip(parameters, *args, **kwargs):
    parameters = list(parameters)
    counts["clip"] += 1
    for when, at, what, *target in faults:
        if when == "clip" and due(when, at, counts["clip"], target[0] if target else None):
            if what == "nan":
                with torch.no_grad():
                    next(p for p in parameters if p.grad is not None).grad.view(-1)[0] = float("nan")
            else:
                act(what)
    return original_clip(parameters, *args, **kwargs)
torch.nn.utils.clip_grad_norm_ = clip

original_save = torch.save
def save(obj, f, *args, **kwargs):
    for when, at, what, *target in faults:
        if when == "save" and at in str(getattr(f, "name", f)) and (not target or int(target[0]) == rank):
            act(what)
    return original_save(obj, f, *args, **kwargs)
torch.save = save

original_replace = os.replace
def replace(source, destination, *args, **kwargs):
    for when, at, what, *target in faults:
        if when == "replace" and at in os.path.basename(str(destination)) and (not target or int(target[0]) == rank):
            act(what)
    return original_replace(source, destination, *args, **kwargs)
os.replace = replace

import torch.distributed
original_init = torch.distributed.init_process_group
counts["init"] = 0
def init_process_group(*args, **kwargs):
    joined = original_init(*args, **kwargs)
    counts["init"] += 1
    for when, at, what, *target in faults:
        if when == "init" and due(when, at, counts["init"], target[0] if target else None):
            act(what)
    return joined
torch.distributed.init_process_group = init_process_group

import meter.runs
original_evaluate = meter.runs.evaluate_into
counts["evaluate"] = 0
def evaluate_into(*args, **kwargs):
    counts["evaluate"] += 1
    for when, at, what, *target in faults:
        if when == "evaluate" and due(when, at, counts["evaluate"], target[0] if target else None):
            act(what)
    return original_evaluate(*args, **kwargs)
meter.runs.evaluate_into = evaluate_into

if os.environ.get("STEP_LOG"):
    original_step = torch.optim.AdamW.step
    def step(self, *args, **kwargs):
        with open(f"{os.environ['STEP_LOG']}.{rank}", "a") as log:
            log.write(f"{counts['clip']}\n")
        return original_step(self, *args, **kwargs)
    torch.optim.AdamW.step = step

from meter.cli import main
sys.argv = ["meter", *sys.argv[sys.argv.index("--") + 1:]]
sys.exit(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_meter(args: list[str], faults: list[str] = (), processes: int = 1, env: dict[str, str] | None = None,
                **popen) -> list[subprocess.Popen]:  # fmt: skip
    """`meter ARGS` with `faults`, as `processes` processes started as srun starts them (gloo on the CPU)."""
    base = environment() | (env or {})
    if processes > 1:
        base |= {"WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    started = []
    for rank in range(processes):
        rank_env = base | ({"RANK": str(rank), "LOCAL_RANK": str(rank)} if processes > 1 else {})
        command = [sys.executable, "-c", LAUNCHER, *faults, "--", *args]
        started.append(subprocess.Popen(command, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, **popen))  # fmt: skip
    return started


def torchrun_with_faults(args: list[str], faults: list[str], processes: int, folder: Path, *torchrun: str,
                         timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
    """`meter ARGS` under `torchrun --standalone --nproc_per_node PROCESSES TORCHRUN...` (gloo on the CPU), each process
    with `faults`; a process that torchrun restarted (--max-restarts) runs without them."""
    script = folder / "launcher.py"
    script.write_text(LAUNCHER)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *torchrun, str(script), *faults, "--", *args]  # fmt: skip
    return subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=timeout)


def run_meter_with_faults(args: list[str], faults: list[str] = (), processes: int = 1, timeout: float = 180,
                          env: dict[str, str] | None = None, **popen) -> list[tuple[int, str]]:  # fmt: skip
    """Runs them to their end: (exit status, stderr) of each process."""
    started = start_meter(args, faults, processes, env, **popen)
    results = []
    try:
        for process in started:
            _, stderr = process.communicate(timeout=timeout)
            results.append((process.returncode, stderr))
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
    return results


def applied_steps(step_log: Path, rank: int) -> list[int]:
    """The optimizer steps a process applied (see STEP_LOG above)."""
    path = Path(f"{step_log}.{rank}")
    return [int(line) for line in path.read_text().split()] if path.is_file() else []


def damage(path: Path, how: str) -> None:
    """A real damaged file: `truncate` (half of it), `flip` (one byte in the middle), `delete`."""
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    elif how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        raise ValueError(how)
