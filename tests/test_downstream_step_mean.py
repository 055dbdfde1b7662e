"""VQA, NLVR2 and SNLI-VE average their loss over the examples of the whole step: a step split into micro-batches of
uneven sizes (a short last one, one left short by unreadable samples) computes the gradient of one batch."""

from pathlib import Path

import pytest
import torch

from meter.config import load_config
from meter.tasks.catalog import DOWNSTREAM
from meter.train.loop import backward_step, loss_denominators
from meter.train.runtime import setup_runtime
from tests.conftest import MICRO


@pytest.mark.parametrize("task_name", ["vqa", "nlvr2", "snli_ve"])
def test_a_step_of_micro_batches_3_and_1_has_the_gradient_of_one_batch_of_4(
    task_name: str, shapes_tasks_world: Path, tmp_path: Path
):
    cfg = load_config(None, [f"data.root={shapes_tasks_world}", f"train.out={tmp_path / 'run'}",
                             "vqa.min_answer_count=1", f"task={task_name}", "train.device=cpu", *MICRO])  # fmt: skip
    finetuning = DOWNSTREAM.get(task_name).setup(cfg)
    task, collate = finetuning.task, finetuning.collate
    task.eval()  # no dropout: the two splits of the step run the same function
    runtime = setup_runtime(cfg.train)
    samples = [finetuning.dataset[i] for i in range(4)]

    def gradient(sizes: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        task.zero_grad(set_to_none=True)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        micro_batches = [collate(samples[start : start + size]) for start, size in zip(starts, sizes, strict=True)]
        denominators = loss_denominators(task, micro_batches, runtime)
        values, _ = backward_step(task, micro_batches, denominators, runtime, cuda_graphs=False)
        return torch.cat([p.grad.flatten() for p in task.parameters() if p.grad is not None]), values

    whole, whole_values = gradient([4])
    split, split_values = gradient([3, 1])
    assert whole.abs().sum() > 0
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-6)
    for key, value in whole_values.items():  # the logged loss and accuracy are the step's means too
        torch.testing.assert_close(split_values[key], value, rtol=1e-4, atol=1e-6)
