"""What a study leaves on disk besides the run folders: each run's result and each cell's status.

    RUN/result.json          a finished run: the task's scores (as its own score file holds them), the scores on
                             the selection split (a searched task), seconds; for a pretraining, its final checkpoint
    CELL/status.json         the cell's worker: running (pid, host, job, the run it is on, a heartbeat), done,
                             failed (each failed run's error) or stopped (asked to, in a run, after a checkpoint)
    CELL/worker.log          the worker's output

Files are the truth: a run is done when its result is there, whatever a status says; a status that says running
whose process is gone (same host) or whose heartbeat stopped (another host) was interrupted. A heartbeat rewrites
the status file; its age is read from the file system's clock (the file's time against a file just written beside
it), not from the hosts' clocks, which may differ by minutes across a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from meter.output_folder import WRITE_PROBE
from meter.study.cells import RunPlan
from meter.study.spec import CELL_LOG, CELL_STATUS

RESULT = "result.json"
STATUS = CELL_STATUS
WORKER_LOG = CELL_LOG
HEARTBEAT_S = 30.0
STALE_S = 5 * HEARTBEAT_S  # a running status without a heartbeat for this long (another host): interrupted


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Written to a temporary file and renamed: a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=1, default=str))
    temporary.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_result(run: RunPlan) -> dict[str, Any] | None:
    return read_json(Path(run.folder) / RESULT)


def run_done(run: RunPlan) -> bool:
    """Its result is written, with the evaluation on the selection split the plan now asks for (a search added to
    a study, or its selection changed, re-evaluates the runs that have a result without it)."""
    result = run_result(run)
    return result is not None and (not run.select or result.get("select_overrides") == run.select)


def read_status(cell_folder: str | Path) -> dict[str, Any]:
    return read_json(Path(cell_folder) / STATUS) or {}


def process_alive(pid: int) -> bool:
    """Whether the worker `pid` still runs (on Linux, a process of that number that is not a worker is not it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process of that number
        return False
    if not Path("/proc/self").is_dir():  # no /proc here: trust the number
        return True
    try:
        return b"study" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it ended meanwhile
        return False


def process_start(pid: int) -> str | None:
    """When the process `pid` started, in clock ticks since boot (/proc/PID/stat's 22nd field); None: unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def status_alive(status: dict[str, Any], cell_folder: str | Path) -> bool:
    """Whether a status that says running (read from `cell_folder`) is held by a live worker."""
    if status.get("state") != "running":
        return False
    if status.get("host") == socket.gethostname():
        pid = int(status.get("pid", 0) or 0)
        if not pid or not process_alive(pid):
            return False
        # after a reboot the number may be another process's: the worker's own started when its status says
        return status.get("pid_start") is None or process_start(pid) == status["pid_start"]
    age = seconds_since_written(Path(cell_folder) / STATUS)
    return age is not None and age < STALE_S


def seconds_since_written(path: Path) -> float | None:
    """How long ago `path` was last written, by the clock that stamps the files of its folder (NFS stamps them with
    its server's time: a file written now beside it tells that time; a file system whose clients stamp them, as
    Lustre's do, is no better than the hosts' clocks). None: no such file."""
    try:
        written = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=WRITE_PROBE) as probe:
            now = os.fstat(probe.fileno()).st_mtime
    except OSError:  # a folder this process cannot write to: its own clock is the best it has
        now = time.time()
    return now - written


class CellStatus:
    """The worker's status file: started, the run it is on, failed runs, finished; a heartbeat while alive."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / STATUS
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {}
        self._stop = threading.Event()

    def start(self) -> None:
        now = time.time()
        env = os.environ
        self.data = {"state": "running", "pid": os.getpid(), "pid_start": process_start(os.getpid()),
                     "host": socket.gethostname(), "started": now,
                     "heartbeat": now, "run": "", "errors": {},
                     "job": env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID", ""),
                     "launcher": "torchrun" if "TORCHELASTIC_RUN_ID" in env else "process",
                     "processes": int(env.get("WORLD_SIZE", "1"))}  # fmt: skip
        self._write()
        threading.Thread(target=self._beat, daemon=True, name="study-heartbeat").start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.update(heartbeat=time.time())
            except OSError:  # a full disk, a file server away a while: the worker lives on, and so does its beat
                continue

    def update(self, **values: Any) -> None:
        with self.lock:
            self.data.update(values)
            self._write()

    def _write(self) -> None:
        write_json(self.path, self.data)

    def on_run(self, name: str) -> None:
        self.update(run=name, heartbeat=time.time())

    def failed_run(self, name: str, error: str) -> None:
        with self.lock:
            self.data["errors"][name] = error
            self._write()

    def stopped(self, name: str, reason: str) -> None:
        self.update(state="stopped", run=name, stopped=reason, finished=time.time(), heartbeat=time.time())

    def finish(self) -> None:
        self._stop.set()
        if self.data.get("state") == "stopped":
            return
        state = "failed" if self.data.get("errors") else "done"
        self.update(state=state, run="", finished=time.time(), heartbeat=time.time())


def record_lost_worker(cell_folder: str | Path, reason: str, own: bool = True) -> None:
    """The orchestrator's note when a worker ended without saying how (killed, out of memory, a lost job). `own`:
    the status is that worker's; else it died before it wrote one, and the status an earlier attempt left (its
    errors, or a "done" before a task was added) is replaced, not reported as this worker's end."""
    path = Path(cell_folder) / STATUS
    if not own:
        write_json(path, {"state": "failed", "errors": {"worker": reason}, "finished": time.time()})
        return
    status = read_json(path) or {}
    if status.get("state") in ("done", "failed"):
        return
    errors = dict(status.get("errors", {}))
    errors[status.get("run") or "worker"] = reason
    write_json(path, {**status, "state": "failed", "errors": errors, "finished": time.time()})
