"""AdamW with METER's parameter groups, and warmup-then-linear-decay counted in optimizer steps."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from meter.config import TrainConfig

log = logging.getLogger(__name__)
NO_DECAY_MARKERS = ("bias", "norm", "LayerNorm", "ln_", "token_type", "position", "pos_embed", "cls_token")


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or any(marker in name for marker in NO_DECAY_MARKERS)


def parameter_groups(task: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Encoders at the base LR, new cross-modal parts at lr_mult_cross_modal, heads (the model's, and a task's
    own pretraining-only parts such as the MIM pixel decoder) at lr_mult_head; each split into weight-decayed and
    not (biases, norms, embeddings of positions and types). `task` is a task holding `model`, or a model."""
    model = getattr(task, "model", task)
    in_model = {id(p) for p in model.parameters()}
    heads = {id(p) for p in model.heads.parameters()} | {id(p) for p in task.parameters() if id(p) not in in_model}
    new = {id(p) for module in model.new_modules() for p in module.parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in task.named_parameters():
        if not param.requires_grad:
            continue
        part = "head" if id(param) in heads else "cross_modal" if id(param) in new else "encoder"
        key = (part, _no_decay(name, param))
        groups.setdefault(key, []).append(param)
    mult = {"encoder": 1.0, "cross_modal": cfg.lr_mult_cross_modal, "head": cfg.lr_mult_head}
    result = []
    for (part, no_decay), params in sorted(groups.items()):
        result.append(
            {
                "params": params,
                "lr": cfg.lr * mult[part],
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": f"{part}{'/no_decay' if no_decay else ''}",
            }
        )
    return result


def describe_groups(groups: list[dict]) -> str:
    lines = ["parameter groups:"]
    for g in groups:
        count = sum(p.numel() for p in g["params"])
        lines.append(f"  {g['name']:<22} lr {g['lr']:.2e}  wd {g['weight_decay']:<5} {count:>12,} parameters")
    return "\n".join(lines)


def build_optimizer(task: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the task's parameters (the model's and the task's own); fused into one kernel on CUDA."""
    groups = parameter_groups(task, cfg)
    log.info(describe_groups(groups))
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",
    )  # fmt: skip


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> LambdaLR:
    """Linear warmup over warmup_ratio of the optimizer steps, then linear decay to 0 at total_steps: the official
    schedule (transformers' polynomial decay of power 1 to 0, meter_utils.py:289-295), whose first step is at 0."""
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)
