"""Where cells run: worker processes on this machine (`--jobs N`), or jobs submitted through submitit (its local
executor, or Slurm), each job a torchrun of the cell's worker (`python -m meter study cell CELL.json`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meter.errors import ConfigError, MeterError
from meter.study.cells import CELL, CellPlan
from meter.study.records import WORKER_LOG, read_json, write_json
from meter.study.spec import SlurmSpec

EXECUTORS = ("local", "submitit-local", "slurm")
SUBMITTED = "slurm_job.json"  # CELL/: the Slurm job last submitted for the cell, until it has a status of its own
# the states of a job that may still run the cell (squeue's long names); any other, or none, is a job that ended
WAITING_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                  "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING")  # fmt: skip


class Handle(Protocol):
    def poll(self) -> str | None:
        """None while it runs; "" when it ended well; else why it did not."""

    def describe(self) -> str: ...

    def owns(self, status: dict[str, Any]) -> bool:
        """Whether the cell's status was written by this handle's worker (not an earlier or another one)."""

    def stop(self) -> None: ...


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_env(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def worker_command(cell: CellPlan) -> list[str]:
    return [sys.executable, "-m", "meter", "study", "cell", str(Path(cell.folder) / CELL)]


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"the worker was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the worker was killed by signal {-code}"
    return f"the worker exited with code {code}"


@dataclass
class ProcessHandle:
    process: subprocess.Popen

    def poll(self) -> str | None:
        code = self.process.poll()
        if code is None:
            return None
        return "" if code == 0 else exit_reason(code)

    def describe(self) -> str:
        return f"pid {self.process.pid}"

    def owns(self, status: dict[str, Any]) -> bool:
        return status.get("pid") == self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()


def visible_gpus() -> list[str]:
    """The GPUs this machine's processes may use, as CUDA_VISIBLE_DEVICES names them (else by index)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        import torch

        return [str(index) for index in range(torch.cuda.device_count())]
    gpus = []
    for name in (part.strip() for part in listed.split(",")):
        if not name or name.startswith("-"):  # CUDA reads the list up to its first invalid entry
            break
        gpus.append(name)
    return gpus


class GpuSlots:
    """The GPUs of this machine handed out to running cells, `per_job` each: a new cell gets the least busy group
    (as CUDA_VISIBLE_DEVICES names them); a group is free again once its cell's handle has ended."""

    def __init__(self, gpus: list[str], per_job: int) -> None:
        count = len(gpus) // per_job if per_job > 0 else 0
        self.groups = [",".join(gpus[k * per_job : (k + 1) * per_job]) for k in range(count)]
        self._held: list[tuple[str, Handle]] = []

    def pick(self) -> str | None:
        """The next cell's group, the first of the least busy (None: no GPUs to hand out)."""
        if not self.groups:
            return None
        self._held = [(group, handle) for group, handle in self._held if handle.poll() is None]
        busy = [group for group, _ in self._held]
        return min(self.groups, key=busy.count)

    def hold(self, group: str | None, handle: Handle) -> None:
        if group is not None:
            self._held.append((group, handle))


class LocalProcesses:
    """`jobs` worker processes at a time on this machine, each with cores // jobs threads and, where there are GPUs,
    the least busy one of them (CUDA_VISIBLE_DEVICES): `--jobs 8` on 8 GPUs runs a cell on each."""

    parallel: int

    def __init__(self, jobs: int, gpus: list[str] | None = None) -> None:
        if jobs < 1:
            raise ConfigError(f"--jobs = {jobs} must be at least 1")
        self.parallel = jobs
        self.processes = 1  # a cell's runs: one process each
        self.threads = max(1, cores() // jobs)
        self.gpus = GpuSlots(visible_gpus() if gpus is None else gpus, 1)

    def submit(self, cell: CellPlan) -> ProcessHandle:
        return self.start(worker_command(cell), Path(cell.folder) / WORKER_LOG)

    def start(self, command: list[str], log_path: Path) -> ProcessHandle:
        env = {**os.environ, **thread_env(self.threads)}
        gpu = self.gpus.pick()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        with log_path.open("ab") as log:  # a session of its own: Ctrl-C in the terminal reaches only `meter study run`,
            process = subprocess.Popen(  # which asks its workers to stop after a checkpoint (SIGTERM)
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        handle = ProcessHandle(process)
        self.gpus.hold(gpu, handle)
        return handle


def worker_processes(parent: int) -> list[int]:
    """The processes whose parent is `parent` (Linux: read from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (command name)": state, ppid, ...
        except (OSError, IndexError):
            continue  # it ended meanwhile
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def _ignore_warning_signal() -> None:
    """In torchrun (before exec): SLURM sends its time-limit warning to every process of the job, and torchrun, which
    does not handle SIGUSR2, would die of it and leave its workers; ignored, torchrun waits for them to stop. The
    workers inherit the setting and install their own handlers (meter.study.worker, meter.train.stop_signals)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class TorchrunCell:
    """A submitit job: the cell's worker under torchrun, `processes` per node (one per GPU) on `nodes` nodes, each
    with `threads` threads. Checkpointable: ahead of the time limit, or on a preemption, submitit calls `checkpoint`,
    which asks the workers to stop after a checkpoint (SIGUSR2), waits up to `stop_wait_s` for them, and has the
    job requeued; the requeued job runs the cell again, which resumes where it stopped."""

    def __init__(self, stop_wait_s: float = 60.0) -> None:
        self.stop_wait_s = stop_wait_s
        self._torchrun: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"stop_wait_s": self.stop_wait_s, "_torchrun": None}

    def __call__(self, cell_file: str, processes: int, nodes: int, threads: int, gpus: str = "") -> None:
        """`gpus`: the job's CUDA_VISIBLE_DEVICES where meter hands them out (submitit's local executor gives every
        job the first GPUs); empty: as the cluster set it."""
        import submitit

        command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={processes}"]
        if nodes > 1:
            job = submitit.JobEnvironment()
            command += [f"--node-rank={job.node}", f"--master-addr={job.hostnames[0]}",
                        f"--master-port={rendezvous_port(job.job_id)}"]  # fmt: skip
        else:
            command += ["--standalone"]  # a free port of its own
        command += ["-m", "meter", "study", "cell", cell_file]
        env = {**os.environ, **thread_env(threads)}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus
        self._torchrun = subprocess.Popen(command, env=env, preexec_fn=_ignore_warning_signal)
        while (code := self._torchrun.poll()) is None:  # polled, not waited: `checkpoint` may run meanwhile
            time.sleep(0.5)
        if code:
            raise subprocess.CalledProcessError(code, command)

    def checkpoint(self, *args: Any) -> Any:
        """Called by submitit (in its signal handler) before it requeues the job."""
        from submitit.helpers import DelayedSubmission

        torchrun = self._torchrun
        if torchrun is not None and _running(torchrun.pid):
            workers = worker_processes(torchrun.pid)
            _signal(workers, signal.SIGUSR2)  # SLURM signals them too: twice is one request
            deadline = time.monotonic() + self.stop_wait_s
            while _running(torchrun.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _running(torchrun.pid):  # still evaluating, say: what it did since its checkpoint is lost either way,
                _signal([*worker_processes(torchrun.pid), torchrun.pid], signal.SIGKILL)  # and none is left behind
        return DelayedSubmission(TorchrunCell(self.stop_wait_s), *args)


def rendezvous_port(job_id: str) -> int:
    """The port of a multi-node job's rendezvous, which every node derives alike from the job's id (a requeued job
    keeps it): two jobs on one node get different ports unless their ids are 12,000 apart (a hash of the cell's name
    took one of 1,000, and two cells met there); below Linux's ephemeral ports (32768 on)."""
    number = int(job_id) if job_id.isdecimal() else zlib.crc32(job_id.encode())  # an array task: "1234_5"
    return 20000 + number % 12000


def _running(pid: int) -> bool:
    """Whether the child `pid` has not exited; it is not reaped (Popen.poll, whose lock the interrupted main loop may
    hold, is not called from the signal handler this runs in)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def _signal(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


@dataclass
class JobHandle:
    job: Any  # a submitit Job

    def poll(self) -> str | None:
        if not self.job.done():
            return None
        error = self.job.exception()
        if error is None:
            return ""
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        return f"job {self.job.job_id} failed: {lines[-1] if lines else type(error).__name__}"

    def describe(self) -> str:
        return f"job {self.job.job_id}"

    def owns(self, status: dict[str, Any]) -> bool:
        return str(status.get("job", "")) == str(self.job.job_id)  # a requeued job keeps its id

    def stop(self) -> None:
        self.job.cancel(check=False)


class Submitit:
    """Each cell a submitit job: on Slurm (`slurm`), or as a local process (`local`, the same path on one machine).
    `stop_s` before the time limit submitit signals the job: its cell checkpoints and stops, and the job is requeued
    (at most `requeues` times), to resume (TorchrunCell)."""

    def __init__(self, cluster: str, folder: Path, settings: SlurmSpec, parallel: int = 0,
                 gpus: list[str] | None = None) -> None:  # fmt: skip
        """`gpus` (the local executor): the machine's GPUs to hand out, `settings.gpus_per_node` to a job (default:
        those CUDA_VISIBLE_DEVICES names)."""
        import submitit

        self.settings = settings
        self.parallel = parallel or 1_000_000  # slurm queues; submitit-local: --jobs at a time
        self.processes = max(1, settings.gpus_per_node) * max(1, settings.nodes)  # a cell's runs: torchrun's
        self.stop_wait_s = max(10.0, settings.stop_s - 30.0)  # leaves the requeue its time before the limit
        params: dict[str, Any] = {"timeout_min": settings.time_min, "tasks_per_node": 1,
                                  "gpus_per_node": settings.gpus_per_node}  # fmt: skip
        self.gpus: GpuSlots | None = None
        if cluster != "slurm":  # one machine; its controller signals the job signal_delay_s before the time limit
            local_gpus = visible_gpus() if gpus is None else gpus
            if 0 < len(local_gpus) < settings.gpus_per_node:
                raise ConfigError(f"slurm.gpus_per_node = {settings.gpus_per_node}, but this machine shows "
                                  f"{len(local_gpus)} GPU(s) ({', '.join(local_gpus)})")  # fmt: skip
            self.gpus = GpuSlots(local_gpus, settings.gpus_per_node)
            self.executor: Any = submitit.LocalExecutor(folder=folder, max_num_timeout=settings.requeues)
            self.executor.update_parameters(**params, signal_delay_s=settings.stop_s)
            return
        try:
            requeues = settings.requeues
            self.executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=requeues)
        except RuntimeError as error:  # e.g. no srun here: not a Slurm machine
            raise MeterError(f"--executor slurm: {error}") from None
        params.update(nodes=settings.nodes, cpus_per_task=settings.cpus_per_task, name="meter-study",
                      slurm_signal_delay_s=settings.stop_s)  # fmt: skip
        if settings.mem_gb:
            params["mem_gb"] = settings.mem_gb
        if settings.partition:
            params["slurm_partition"] = settings.partition
        if settings.extra:
            params["slurm_additional_parameters"] = dict(settings.extra)
        self.executor.update_parameters(**params)

    def submit(self, cell: CellPlan) -> JobHandle:
        processes = max(1, self.settings.gpus_per_node)
        threads = max(1, self.settings.cpus_per_task // processes)
        cell_file = str(Path(cell.folder) / CELL)
        gpus = self.gpus.pick() if self.gpus is not None else None
        job = self.executor.submit(TorchrunCell(self.stop_wait_s), cell_file, processes, self.settings.nodes, threads,
                                   gpus or "")  # fmt: skip
        handle = JobHandle(job)
        if self.gpus is not None:
            self.gpus.hold(gpus, handle)
        else:  # a Slurm job may wait in the queue for days, with no status yet: a later run must not submit it again
            write_json(Path(cell.folder) / SUBMITTED, {"job": str(job.job_id), "submitted": time.time()})
        return handle


def queued_job(cell_folder: str | Path) -> str:
    """The Slurm job submitted for the cell that is still in the queue (waiting, or starting and yet to write its
    status), as "job N (STATE)"; "" when there is none, or no squeue here to ask."""
    submitted = read_json(Path(cell_folder) / SUBMITTED)
    if not submitted or not shutil.which("squeue"):
        return ""
    job = str(submitted.get("job", ""))
    try:
        asked = subprocess.run(["squeue", "--noheader", "--jobs", job, "--format=%T"], capture_output=True, text=True,
                               timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    states = [line.strip() for line in asked.stdout.splitlines() if line.strip()]
    waiting = [state for state in states if state in WAITING_STATES]  # an array job lists each task
    return f"job {job} ({waiting[0]})" if asked.returncode == 0 and waiting else ""
