"""Activation checkpointing: the same losses and gradients as the plain step (dropout on), far less kept for the
backward, and the same model (state-dict keys) for checkpoints."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from meter.config import Config, load_config
from meter.runs import run_pretrain
from meter.train.metrics_log import read_metrics
from meter.train.recompute import innermost, recompute_layers, repeated_layers
from tests.batches import pretraining_batch
from tests.runner import EXACT, TWO_LAYERS

DEEPER = [
    "model.vision.timm_kwargs={embed_dim: 32, depth: 2, num_heads: 2, patch_size: 16}",
    "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}",
    "model.fusion.layers=2",
    "model.fusion.dropout=0.1",
    "objectives.mim=1",
]


def _step(task: nn.Module, batch: dict) -> tuple[dict[str, float], dict[str, torch.Tensor], int]:
    """Losses, gradients, and the bytes autograd keeps for the backward (outside recomputed layers)."""
    kept = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept[0] += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(0)  # the same dropout masks for both
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        losses, _ = task(batch)
    sum(losses.values()).backward()
    grads = {name: p.grad.clone() for name, p in task.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in losses.items()}, grads, kept[0]


def test_recomputed_layers_give_the_plain_gradients_and_keep_far_less_for_the_backward(micro_config: Config):
    task, batch = pretraining_batch(load_config(None, DEEPER, base=micro_config), 8)
    recomputing = copy.deepcopy(task)
    assert recompute_layers(recomputing) == 2 + 2 + 2 * 2  # vision blocks, text layers, both fusion streams
    assert recomputing.state_dict().keys() == task.state_dict().keys()
    plain_losses, plain_grads, plain_kept = _step(task.train(), batch)
    losses, grads, kept = _step(recomputing.train(), batch)
    assert losses == plain_losses
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)
    assert kept < 0.5 * plain_kept, (kept, plain_kept)


def test_only_the_innermost_repeated_layers_are_recomputed():
    """A stack of stacks (Swin's stages of blocks): the blocks, not the stages too (that would recompute twice)."""
    stages = nn.ModuleList(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)) for _ in range(2))
    assert set(map(id, innermost(repeated_layers(stages)))) == {id(block) for stage in stages for block in stage}


def test_a_run_with_activation_checkpointing_logs_the_losses_of_a_plain_run(micro_config: Config, tmp_path, caplog):
    steps = [*DEEPER, "train.max_steps=3"]
    caplog.set_level(logging.INFO, logger="meter")
    for name, extra in (("plain", []), ("recomputed", ["train.activation_checkpointing=true"])):
        run_pretrain(load_config(None, [f"train.out={tmp_path / name}", *steps, *extra], base=micro_config))
    assert "activation checkpointing: 8 layers recompute" in caplog.text
    plain, recomputed = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("plain", "recomputed"))
    keys = ["train/mlm_loss", "train/itm_loss", "train/grad_norm"]
    assert [r[k] for r in recomputed for k in keys] == pytest.approx([r[k] for r in plain for k in keys], rel=1e-5)


@pytest.mark.slow
def test_compiled_layers_recompute_as_the_eager_ones(micro_config: Config, tmp_path):
    """torch.compile traces through the wrapped forwards (the recomputation becomes part of the compiled backward)."""
    steps = [*EXACT, *TWO_LAYERS, "train.max_steps=1"]  # one step: a second text length would compile it all again
    run_pretrain(load_config(None, [f"train.out={tmp_path / 'eager'}", *steps], base=micro_config))
    run_pretrain(load_config(None, [f"train.out={tmp_path / 'compiled'}", *steps, "train.compile=true",
                                    "train.activation_checkpointing=true"], base=micro_config))  # fmt: skip
    eager, compiled = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("eager", "compiled"))
    keys = ["train/mlm_loss", "train/itm_loss", "train/grad_norm"]
    assert [r[k] for r in compiled for k in keys] == pytest.approx([r[k] for r in eager for k in keys], rel=1e-4)
