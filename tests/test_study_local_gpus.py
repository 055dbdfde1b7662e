"""`meter study run --jobs N` on a machine with GPUs: each running cell gets the least busy GPU of its own (with
--executor submitit-local, the least busy group of slurm.gpus_per_node)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from meter.errors import ConfigError
from meter.study.executors import GpuSlots, LocalProcesses, ProcessHandle, Submitit, rendezvous_port, visible_gpus
from meter.study.spec import SlurmSpec

SHOW_AND_WAIT = "import os, sys, time; print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(60)"


def _gpu_of(log: Path) -> str:
    for _ in range(200):
        if log.exists() and log.read_text().strip():
            return log.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{log} stayed empty")


def test_running_cells_are_spread_over_the_gpus_and_a_freed_one_is_used_again(tmp_path):
    local = LocalProcesses(jobs=3, gpus=["2", "5"])
    handles = []
    try:
        gpus = []
        for k in range(3):
            handles.append(local.start([sys.executable, "-c", SHOW_AND_WAIT], tmp_path / f"{k}.log"))
            gpus.append(_gpu_of(tmp_path / f"{k}.log"))
        assert gpus == ["2", "5", "2"]
        handles[1].stop()  # the cell on GPU 5 ends
        handles[1].process.wait(timeout=10)
        handles.append(local.start([sys.executable, "-c", SHOW_AND_WAIT], tmp_path / "3.log"))
        assert _gpu_of(tmp_path / "3.log") == "5"
    finally:
        for handle in handles:
            handle.stop()


@pytest.mark.parametrize(("listed", "gpus"), [("0,1,3", ["0", "1", "3"]), ("", []), ("2,-1,3", ["2"]),
                                              ("GPU-8f1e, GPU-77aa", ["GPU-8f1e", "GPU-77aa"])])  # fmt: skip
def test_the_visible_gpus_are_those_cuda_visible_devices_names(monkeypatch, listed: str, gpus: list[str]):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert visible_gpus() == gpus


def test_jobs_of_two_gpus_each_get_groups_of_their_own_and_a_freed_group_is_used_again():
    """submitit's local executor gave every job the first GPUs (CUDA_VISIBLE_DEVICES=0,1 for all of them)."""
    slots = GpuSlots(["0", "1", "2", "3", "4"], per_job=2)
    assert slots.groups == ["0,1", "2,3"], "the fifth GPU makes no group of two"
    running = []
    try:
        for _ in range(3):
            group = slots.pick()
            handle = ProcessHandle(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
            slots.hold(group, handle)
            running.append((group, handle))
        assert [group for group, _ in running] == ["0,1", "2,3", "0,1"]
        running[1][1].stop()
        running[1][1].process.wait(timeout=10)
        assert slots.pick() == "2,3"
    finally:
        for _, handle in running:
            handle.stop()


def test_submitit_local_refuses_more_gpus_per_job_than_the_machine_shows(tmp_path):
    with pytest.raises(ConfigError, match=r"slurm.gpus_per_node = 4, but this machine shows 2 GPU\(s\) \(0, 1\)"):
        Submitit("local", tmp_path, SlurmSpec(gpus_per_node=4), gpus=["0", "1"])
    pairs = Submitit("local", tmp_path, SlurmSpec(gpus_per_node=2), gpus=["0", "1", "2", "3"])
    assert pairs.gpus.groups == ["0,1", "2,3"]


def test_a_multi_node_rendezvous_port_comes_from_the_job_id():
    """Every node of a job derives the same port (a requeued job keeps its id); jobs submitted one after another
    never share one (a hash of the cell's name took one of 1,000 ports)."""
    ports = [rendezvous_port(str(job)) for job in range(981_000, 993_000)]
    assert len(set(ports)) == len(ports) and all(20000 <= port < 32000 for port in ports)
    assert rendezvous_port("981234") == rendezvous_port("981234")
    assert 20000 <= rendezvous_port("981234_7") < 32000 and rendezvous_port("981234_7") != rendezvous_port("981234_8")
