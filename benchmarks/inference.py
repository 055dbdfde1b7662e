"""Inference speed and peak memory: meter's VQA logits against Hugging Face BridgeTower's forward, in one process.

    python benchmarks/inference.py                  # CPU, a small config
    python benchmarks/inference.py --device cuda    # the paper's VQA fine-tuning setting: CLIP-ViT-B/16 at 576 px +
                                                    # RoBERTa-base + 6 co-attention layers, batch 128, bf16
    python benchmarks/inference.py --device cuda --compile   # adds a row for meter with its parts compiled
    python benchmarks/inference.py --device cuda --compile --compile-mode default reduce-overhead  # + CUDA graphs

Both models get the same widths and depths, random initialisation from a config, and the very same batches of
shapes-world questions and images (see train_step.py). Both end in METER's VQA classifier (3,129 answers) on the
pooled joint feature: meter's own head, and the same classifier on BridgeTower's `pooler_output`. Timed under
`torch.inference_mode` with bf16 autocast on CUDA; the median of the timed forwards, each ending when the logits are
on the host (as an evaluation loop reads them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BridgeTowerModel

sys.path.insert(0, str(Path(__file__).parent))
from train_step import (
    PRESETS,
    RowsAsMeasured,
    Shape,
    add_compile_mode_argument,
    bridgetower_config,
    exit_status,
    measure,
    shapes_batches,
)

from meter.cli.common import at_least
from meter.config import load_config
from meter.data.shared_rows import to_device
from meter.models.heads import classifier, in_fp32
from meter.models.meter import build_meter
from meter.train.distributed import CUDA_GRAPH_MODES, compile_parts
from meter.train.runtime import Runtime, pick_device, pick_dtype

ANSWERS = 3129  # the VQAv2 answer vocabulary of METER and ViLT
INFERENCE = {  # the training presets at the fine-tuning resolutions (VQA: 576 px in the official recipe)
    "small": replace(PRESETS["small"], image_size=128),
    "paper": replace(PRESETS["paper"], image_size=576),
}


def meter_vqa(shape: Shape, vocab: int, pad_id: int) -> nn.Module:
    overrides = [
        "model.vision=clip-vit", f"model.vision.image_size={shape.image_size}",
        f"model.vision.timm_kwargs={{embed_dim: {shape.vision_width}, depth: {shape.vision_layers}, "
        f"num_heads: {shape.vision_width // 64}, patch_size: {shape.patch}}}",
        "model.text=roberta", f"model.text.max_length={shape.max_length}",
        f"model.text.hf_kwargs={{hidden_size: {shape.text_width}, num_hidden_layers: {shape.text_layers}, "
        f"num_attention_heads: {shape.heads}, intermediate_size: {4 * shape.text_width}}}",
        f"model.fusion.layers={shape.fusion_layers}", f"model.fusion.width={shape.text_width}",
        f"model.fusion.heads={shape.heads}",
    ]  # fmt: skip
    return build_meter(load_config(None, overrides).model, vocab, pad_id, {"vqa": ANSWERS})


def meter_builder(shape: Shape, vocab: int, pad_id: int, runtime: Runtime, compile_mode: str | None) -> Callable:
    """`compile_mode`: None for eager, else torch.compile's mode (as train.compile_mode)."""

    def build() -> tuple[nn.Module, Callable[[dict[str, Any]], None]]:
        model = meter_vqa(shape, vocab, pad_id).to(runtime.device).eval()
        if compile_mode:
            compile_parts(model, compile_mode)
        graphs = compile_mode in CUDA_GRAPH_MODES

        @torch.inference_mode()
        def forward(batch: dict[str, Any]) -> None:
            batch = to_device(batch, runtime.device)
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with runtime.autocast():  # the head in fp32, as VqaTask.logits
                joint = model(batch["pixels"], batch["input_ids"], batch["attention_mask"]).joint
                logits = in_fp32(model.heads["vqa"], joint)
            logits.cpu()

        return model, forward

    return build


def bridgetower_builder(shape: Shape, vocab: int, runtime: Runtime) -> Callable:
    def build() -> tuple[nn.Module, Callable[[dict[str, Any]], None]]:
        trunk = BridgeTowerModel(bridgetower_config(shape, vocab))
        head = classifier(2 * shape.text_width, 2 * shape.text_width, ANSWERS)
        module = nn.ModuleList([trunk, head]).to(runtime.device).eval()

        @torch.inference_mode()
        def forward(batch: dict[str, Any]) -> None:
            batch = to_device(batch, runtime.device)
            with runtime.autocast():
                pooled = trunk(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               pixel_values=batch["pixels"]).pooler_output  # fmt: skip
                logits = head(pooled)
            logits.float().cpu()

        return module, forward

    return build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", choices=list(INFERENCE), help="default: small on CPU, paper on CUDA")
    parser.add_argument("--batch", type=at_least(1), help="override the preset's batch")
    parser.add_argument("--steps", type=at_least(1), help="timed forwards (default 5 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=at_least(0), help="untimed forwards first (default 2 on CPU, 5 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="also time meter with its parts compiled")
    add_compile_mode_argument(parser)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    shape = INFERENCE[args.preset or ("paper" if cuda else "small")]
    shape = replace(shape, batch=shape.batch if args.batch is None else args.batch)
    args.steps = (20 if cuda else 5) if args.steps is None else args.steps
    args.warmup = (5 if cuda else 2) if args.warmup is None else args.warmup  # 0: no warm-up
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    runtime = Runtime(device=device, dtype=pick_dtype("auto", device))
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; precision: {str(runtime.dtype).removeprefix('torch.')}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        batches, tokenizer = shapes_batches(shape, Path(folder), count=3)
    vocab = shape.vocab or len(tokenizer)
    shape = replace(shape, vocab=vocab)
    print(f"VQA inference, {shape.describe()}, {ANSWERS} answers; {args.warmup} warm-up + {args.steps} timed "
          "forwards each")  # fmt: skip
    table = RowsAsMeasured(shape.batch, device)
    table.add(measure("BridgeTower (HF)", bridgetower_builder(shape, vocab, runtime), batches, args, device), True)
    ours = table.add(measure("meter", meter_builder(shape, vocab, tokenizer.pad_token_id, runtime, None), batches,
                             args, device))  # fmt: skip
    for mode in args.compile_mode if args.compile else []:
        name = "meter (compiled)" if mode == "default" else f"meter ({mode})"
        compiled = measure(name, meter_builder(shape, vocab, tokenizer.pad_token_id, runtime, mode), batches, args,
                           device, count_flops=False)  # fmt: skip
        compiled.flops_per_step = ours.flops_per_step
        table.add(compiled)
    return exit_status(table.finish())


if __name__ == "__main__":
    sys.exit(main())
