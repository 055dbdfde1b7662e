"""`cuda:N` picks one GPU of several, for a run of one process and for the commands that run a trained model; any
other spelling is named with the choices. The machine's GPUs are stood in for where it has none."""

from __future__ import annotations

import pytest
import torch

from meter.config import TrainConfig
from meter.errors import ConfigError
from meter.train.checkpoint import rng_state
from meter.train.runtime import pick_device, setup_runtime


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "cpu:0", "cuda:-1", "auto:1"])
def test_a_misspelt_device_is_named_with_the_choices(name: str):
    with pytest.raises(ConfigError, match=rf"--device {name}; choose one of: auto, cpu, cuda, or cuda:N"):
        pick_device(name, "--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_gpu_index_without_a_gpu_says_there_is_none():
    with pytest.raises(ConfigError, match=r"train.device = 'cuda:0' but no CUDA device is available"):
        pick_device("cuda:0")


@pytest.fixture
def two_gpus(monkeypatch):
    """No GPU runs here: these tests check the choice, not the device (nothing is put on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_a_gpu_index_picks_that_gpu_and_one_past_the_last_is_refused(two_gpus):
    assert pick_device("cuda:1", "--device") == torch.device("cuda", 1)
    assert pick_device("cuda", "--device") == torch.device("cuda")
    with pytest.raises(ConfigError, match=r"--device cuda:2 but this machine shows 2 GPU\(s\), numbered from 0"):
        pick_device("cuda:2", "--device")


def test_a_gpu_index_under_a_launcher_of_several_processes_is_refused(two_gpus, monkeypatch):
    """torchrun gives each process the GPU of its LOCAL_RANK; one index for every process would put all on one."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"train.device = 'cuda:1' under a launcher of 2 processes.*LOCAL_RANK"):
        setup_runtime(TrainConfig(device="cuda:1"))


def test_a_cpu_process_on_a_gpu_machine_keeps_no_gpu_randomness_and_never_starts_cuda(two_gpus, monkeypatch):
    """Asking for the GPU's random state starts CUDA: every CPU process of a GPU machine took 0.5 GiB of GPU 0 at its
    first checkpoint (and failed there where GPUs are exclusive to one process)."""

    def started(*args, **kwargs):
        raise AssertionError("CUDA was started")

    monkeypatch.setattr(torch.cuda, "get_rng_state", started)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # what a process that never used its GPU says
    state = rng_state()
    assert set(state) == {"torch"} and torch.equal(state["torch"], torch.get_rng_state())


@pytest.mark.parametrize(("visible", "local_rank", "gpu"), [(1, 3, 0), (2, 1, 1), (2, 0, 0)])
def test_each_process_takes_its_own_gpu_of_those_it_sees(monkeypatch, visible: int, local_rank: int, gpu: int):
    """srun --gpus-per-task=1 shows each process its own GPU alone, as GPU 0: LOCAL_RANK 3 asked for a GPU 3."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)  # no GPU here to set
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an Ampere card
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    assert setup_runtime(TrainConfig(device="cuda")).device == torch.device("cuda", gpu)


def test_more_processes_than_gpus_on_a_machine_is_named(two_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK 2, but this process sees 2 GPUs"):
        setup_runtime(TrainConfig(device="cuda"))
