"""`meter study run --jobs N` on a machine with GPUs: each running cell gets the least busy GPU of its own."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from meter.study.executors import LocalProcesses, visible_gpus

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
