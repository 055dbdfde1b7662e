"""The training step's forward, for every task, on CUDA tensors without a GPU: no operation may need the data on
the host (a boolean selection, `.item()`, `float(tensor)`), each of which would be a host sync in the middle of
every step on a real GPU. The step's one deliberate sync is the loop's reading of the loss, after the backward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meter.config import Config, load_config
from meter.objectives.positions import at_positions, positions_of
from meter.runs import downstream_task
from tests.batches import finetuning_batch, pretraining_batch
from tests.conftest import MICRO
from tests.fake_cuda import forward_on_fake_cuda

ROWS = 4
SWIN = "model.vision.timm_kwargs={embed_dim: 8, depths: [1, 1, 1, 1], num_heads: [1, 1, 2, 2], patch_size: 4}"
PRETRAINING = {
    "co-attention, MLM + ITM + MIM": ["objectives.mim=1"],
    "merged attention": ["model.fusion=merged", "objectives.mim=1"],
    "swin, mean-pooled": ["model.vision=swin", SWIN, "model.image_pool=mean"],
    "encoder-decoder, span + PrefixLM + ITM": ["model.architecture=encoder-decoder", "objectives.mlm=0",
                                               "objectives.span=1", "objectives.prefix_lm=1"],
}  # fmt: skip


@pytest.mark.parametrize("overrides", PRETRAINING.values(), ids=PRETRAINING.keys())
def test_the_pretraining_forward_needs_nothing_from_the_device(micro_config: Config, overrides: list[str]):
    cfg = load_config(None, overrides, base=micro_config)
    task, batch = pretraining_batch(cfg, ROWS)
    losses, report = forward_on_fake_cuda(task, batch)
    objectives = [name for name in ("mlm", "itm", "mim", "span", "prefix_lm") if getattr(cfg.objectives, name) > 0]
    assert sorted(losses) == sorted(f"{name}_loss" for name in objectives)
    assert all(value.device.type == "cuda" for value in [*losses.values(), *report.values()])


@pytest.mark.parametrize("task_name", ["vqa", "nlvr2", "snli_ve", "retrieval", "retrieval-official", "captioning"])
def test_the_finetuning_forward_needs_nothing_from_the_device(
    micro_checkpoints, shapes_tasks_world: Path, task_name: str, tmp_path: Path
):
    task = (
        ["task=retrieval", "retrieval.objective=official"]
        if task_name == "retrieval-official"
        else [f"task={task_name}"]
    )
    cfg = load_config(None, [f"data.root={shapes_tasks_world}", "vqa.min_answer_count=1", *MICRO, *task,
                             f"train.init_from={micro_checkpoints('pretrain')}", f"train.out={tmp_path}"])  # fmt: skip
    job = downstream_task(cfg.task).setup(cfg)
    losses, report = forward_on_fake_cuda(job.task, finetuning_batch(job, ROWS))
    assert losses and all(value.device.type == "cuda" for value in [*losses.values(), *report.values()])


def test_selecting_at_positions_found_beforehand_is_selecting_by_the_mask():
    x = torch.randn(3, 5, 4, requires_grad=True)
    mask = torch.rand(3, 5) < 0.4
    mask[1] = False  # a row with nothing selected
    selected = at_positions(x, positions_of(mask))
    assert torch.equal(selected, x[mask])
    selected.sum().backward()
    assert torch.equal(x.grad, mask[..., None].float().expand_as(x))
