"""Training-step speed and peak memory: meter's MLM + ITM step against Hugging Face BridgeTower's, in one process.

    python benchmarks/train_step.py                  # CPU, a small config (a few minutes on 2 cores)
    python benchmarks/train_step.py --device cuda    # the paper's config: CLIP-ViT-B/16 at 288 px + RoBERTa-base +
                                                     # 6 co-attention layers, batch 128, bf16; prints MFU as well
    python benchmarks/train_step.py --device cuda --compile   # adds a row for meter with train.compile
    python benchmarks/train_step.py --device cuda --compile --compile-mode default reduce-overhead --only-meter
    python benchmarks/train_step.py --preset paper --recompute --only-meter  # adds activation checkpointing's row
                                                     # a row per torch.compile mode (reduce-overhead: CUDA graphs)

Both models get the same widths and depths, random initialisation from a config (nothing is downloaded), AdamW
(fused on CUDA), gradient clipping, and the very same batches: real shapes-world captions and images, with MLM masks
and ITM pairs drawn once by meter's `PretrainTask.prepare` (identical for both, outside the timing). The baseline
is what a user of transformers would write: `BridgeTowerForMaskedLM` on the masked text (vocabulary logits at every
position), then its `bridgetower` trunk again on the re-paired images for ITM, with BridgeTower's ITM head. meter's
step is the loop's: one vision pass shared by MLM and ITM, vocabulary logits at masked positions only.

Peak memory is the CUDA allocator's peak on GPU; on CPU it is the growth of the process's resident memory while
the model is built and trained (sampled every 2 ms), an approximation. MFU counts the FLOPs of one step with
torch's FlopCounterMode (matmuls and attention, forward and backward) against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import BridgeTowerConfig, BridgeTowerForMaskedLM
from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerITMHead

from meter.cli.common import at_least
from meter.config import load_config
from meter.data.collate import Collate
from meter.data.datasets import CaptionPairs, ImageReader
from meter.data.formats.captions import read_karpathy
from meter.data.images import image_transform
from meter.data.shapes import WorldSpec, generate
from meter.data.shared_rows import to_device
from meter.models.meter import build_meter
from meter.models.tokenizer_folder import load_tokenizer
from meter.objectives.randomness import StepRandomness
from meter.runs import PRETRAIN_SPLITS
from meter.tasks.pretrain import PretrainTask
from meter.train.distributed import COMPILE_MODES, CUDA_GRAPH_MODES, compile_parts
from meter.train.recompute import recompute_layers
from meter.train.runtime import Runtime, pick_device, pick_dtype

# dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


@dataclass(frozen=True)
class Shape:
    """The sizes both models get."""

    name: str
    image_size: int
    patch: int
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    heads: int  # text and fusion; the vision encoder has width / 64 heads (CLIP's rule, BridgeTower's too)
    fusion_layers: int
    vocab: int  # 0: the shapes tokenizer's own
    batch: int
    max_length: int = 40

    def describe(self) -> str:
        return (f"{self.name}: vision {self.vision_width}x{self.vision_layers} at {self.image_size} px (patch "
                f"{self.patch}), text {self.text_width}x{self.text_layers}, {self.fusion_layers} co-attention layers, "
                f"vocabulary {self.vocab}, batch {self.batch}")  # fmt: skip


PRESETS = {
    "small": Shape("small", 96, 16, 128, 4, 128, 4, 4, 2, 0, 16),
    "paper": Shape("paper", 288, 16, 768, 12, 768, 12, 12, 6, 50265, 128),
}


@dataclass
class Result:
    name: str
    samples_per_s: float = float("nan")
    peak_bytes: float = float("nan")
    flops_per_step: float = float("nan")
    error: str = ""


NOT_FAILED = ("out of memory", "not run")  # a row that did not fit the card, or was not asked for


def exit_status(results: list[Result]) -> int:
    """1 when a row failed otherwise (a compile mode that breaks on this card): the table is printed either way, and
    the status tells gpu_check.sh."""
    failed = [r.name for r in results if r.error and r.error not in NOT_FAILED]
    if failed:
        print(f"failed: {', '.join(failed)} (the traceback is above)")
    return 1 if failed else 0


class ResidentPeak:
    """The peak resident memory of this process while active, sampled by a thread (CPU runs)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.start = self._resident()
        self._running = False

    def _resident(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, self._resident())
            time.sleep(0.002)

    def __enter__(self) -> ResidentPeak:
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the next RSS baseline is honest


def meter_task(shape: Shape, tokenizer: Any, vocab: int) -> PretrainTask:
    overrides = [
        "model.vision=clip-vit", f"model.vision.image_size={shape.image_size}",
        f"model.vision.timm_kwargs={{embed_dim: {shape.vision_width}, depth: {shape.vision_layers}, "
        f"num_heads: {shape.vision_width // 64}, patch_size: {shape.patch}}}",
        "model.text=roberta", f"model.text.max_length={shape.max_length}",
        f"model.text.hf_kwargs={{hidden_size: {shape.text_width}, num_hidden_layers: {shape.text_layers}, "
        f"num_attention_heads: {shape.heads}, intermediate_size: {4 * shape.text_width}}}",
        f"model.fusion.layers={shape.fusion_layers}", f"model.fusion.width={shape.text_width}",
        f"model.fusion.heads={shape.heads}", "objectives.mim=0", f"objectives.itm_group_size={shape.batch}",
    ]  # fmt: skip
    cfg = load_config(None, overrides)
    heads = {"mlm": vocab, "itm": 2}
    return PretrainTask(build_meter(cfg.model, vocab, tokenizer.pad_token_id, heads), tokenizer, cfg, heads)


def bridgetower_config(shape: Shape, vocab: int) -> BridgeTowerConfig:
    return BridgeTowerConfig(
        text_config={"vocab_size": vocab, "hidden_size": shape.text_width, "num_hidden_layers": shape.text_layers,
                     "num_attention_heads": shape.heads, "intermediate_size": 4 * shape.text_width,
                     "max_position_embeddings": shape.max_length + 2},
        vision_config={"hidden_size": shape.vision_width, "num_hidden_layers": shape.vision_layers,
                       "patch_size": shape.patch, "image_size": shape.image_size},
        hidden_size=shape.text_width, num_hidden_layers=shape.fusion_layers, num_attention_heads=shape.heads,
    )  # fmt: skip


def bridgetower(shape: Shape, vocab: int) -> tuple[BridgeTowerForMaskedLM, BridgeTowerITMHead]:
    return BridgeTowerForMaskedLM(bridgetower_config(shape, vocab)), BridgeTowerITMHead(2 * shape.text_width)


def shapes_batches(shape: Shape, folder: Path, count: int) -> tuple[list[dict[str, Any]], Any]:
    """`count` collated batches of real shapes-world pairs, and the world's byte-level BPE tokenizer."""
    images = count * shape.batch // 4 + 8  # five captions per training image; 80% of the images are for training
    generate(folder, WorldSpec(images=images, seed=0, questions_per_image=1), progress=False)
    tokenizer = load_tokenizer(folder / "tokenizers/bpe")
    records = read_karpathy(folder / "karpathy/dataset_coco.json", folder / "images", PRETRAIN_SPLITS)
    clip_mean, clip_std = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
    pairs = CaptionPairs(records, ImageReader(image_transform(shape.image_size, clip_mean, clip_std), shape.image_size))
    collate = Collate(tokenizer, shape.max_length)
    batches = [collate([pairs[i] for i in range(k * shape.batch, (k + 1) * shape.batch)]) for k in range(count)]
    return batches, tokenizer


def time_steps(step: Callable[[dict[str, Any]], None], batches: list[dict[str, Any]], warmup: int, steps: int,
               device: torch.device) -> float:  # fmt: skip
    """The median seconds per step, after `warmup` untimed steps (the median shrugs off a busy neighbour)."""
    for k in range(warmup):
        step(batches[k % len(batches)])
    times = []
    for k in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(batches[k % len(batches)])  # each step reads its loss: it ends when the device is done
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, build: Callable[[], tuple[nn.Module, Callable[[dict[str, Any]], None]]],
            batches: list[dict[str, Any]], args: argparse.Namespace, device: torch.device,
            count_flops: bool = True) -> Result:  # fmt: skip
    """Builds, warms up and times one model; FLOPs of one step counted eagerly (a compiled graph hides its ops
    from the counter: pass count_flops=False and reuse the eager count)."""
    result = Result(name)
    release_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    resident = ResidentPeak()
    module = step = None
    try:
        with resident:
            module, step = build()
            seconds = time_steps(step, batches, args.warmup, args.steps, device)
        result.samples_per_s = len(batches[0]["input_ids"]) / seconds
        cuda = device.type == "cuda"
        result.peak_bytes = torch.cuda.max_memory_allocated() if cuda else resident.peak - resident.start
        if count_flops:
            with FlopCounterMode(display=False) as counter:
                step(batches[0])
            result.flops_per_step = counter.get_total_flops()
    except torch.OutOfMemoryError:
        result.error = "out of memory"
    except Exception as error:  # a row that fails (a compile mode never run on this card) must not cost the table
        traceback.print_exc()
        result.error = type(error).__name__
    finally:
        del module, step  # the model goes before the next one is built
        release_memory(device)
    return result


def optimizer_for(module: nn.Module, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(module.parameters(), lr=1e-5, betas=(0.9, 0.98), weight_decay=0.01,
                             fused=device.type == "cuda")  # fmt: skip


def meter_builder(shape: Shape, tokenizer: Any, vocab: int, runtime: Runtime, compile_mode: str | None,
                  recompute: bool = False) -> Callable:  # fmt: skip
    """`compile_mode`: None for eager, else torch.compile's mode (as train.compile_mode); `recompute`: activation
    checkpointing (as train.activation_checkpointing)."""

    def build() -> tuple[nn.Module, Callable[[dict[str, Any]], None]]:
        task = meter_task(shape, tokenizer, vocab).to(runtime.device).train()
        if recompute:
            recompute_layers(task)
        if compile_mode:
            compile_parts(task.model, compile_mode)
        graphs = compile_mode in CUDA_GRAPH_MODES
        optimizer = optimizer_for(task, runtime.device)

        def step(batch: dict[str, Any]) -> None:
            batch = to_device(batch, runtime.device)
            if graphs:  # as the training loop does
                torch.compiler.cudagraph_mark_step_begin()
            with runtime.autocast():
                losses, _ = task(batch)
            loss = sum(losses.values())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()  # the loop reads the loss once per step too

        return task, step

    return build


def bridgetower_builder(shape: Shape, vocab: int, runtime: Runtime) -> Callable:
    def build() -> tuple[nn.Module, Callable[[dict[str, Any]], None]]:
        model, itm_head = bridgetower(shape, vocab)
        module = nn.ModuleList([model, itm_head]).to(runtime.device).train()
        optimizer = optimizer_for(module, runtime.device)

        def step(batch: dict[str, Any]) -> None:
            batch = to_device(batch, runtime.device)
            with runtime.autocast():
                mlm = model(input_ids=batch["mlm_input_ids"], attention_mask=batch["attention_mask"],
                            pixel_values=batch["pixels"], labels=batch["mlm_labels"])  # fmt: skip
                trunk = model.bridgetower(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          pixel_values=batch["pixels"][batch["itm_image_index"]])  # fmt: skip
                itm = F.cross_entropy(itm_head(trunk.pooler_output).float(), batch["itm_labels"])
            loss = mlm.loss + itm
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()

        return module, step

    return build


def _memory(value: float, device: torch.device) -> str:
    if value != value:  # nan
        return "-"
    return f"{value / 2**30:.1f} GiB" if device.type == "cuda" else f"{value / 2**20:.0f} MiB"


class RowsAsMeasured:
    """The table, each row printed as soon as it is measured: a run cut short (gpu_check.sh's deadline, a hung
    compile) still shows every row it measured. Ratios are against `baseline` once it is measured (measure it first),
    else "-"; `finish` prints the whole table again, for copying."""

    def __init__(self, batch: int, device: torch.device) -> None:
        self.batch, self.device = batch, device
        self.peak_flops = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None) \
            if device.type == "cuda" else None  # fmt: skip
        self.rows: list[Result] = []
        self.baseline = Result("BridgeTower (HF)", error="not run")
        print(self._header(), flush=True)

    def _header(self) -> str:
        header = f"{'':<22}{'samples/s':>11}{'peak memory':>14}{'GFLOP/sample':>14}"
        header += f"{'MFU':>8}" if self.peak_flops else ""
        return header + f"{'speed vs BT':>13}{'memory vs BT':>14}"

    def _line(self, r: Result) -> str:
        if r.error:
            return f"{r.name:<22}{r.error:>11}"
        speed = f"{r.samples_per_s:.1f}" if r.samples_per_s >= 10 else f"{r.samples_per_s:.3g}"
        line = f"{r.name:<22}{speed:>11}{_memory(r.peak_bytes, self.device):>14}"
        line += f"{r.flops_per_step / self.batch / 1e9:>14.1f}"
        if self.peak_flops:
            line += f"{r.flops_per_step * r.samples_per_s / self.batch / self.peak_flops:>8.1%}"
        base = self.baseline
        if base.error:
            return line + f"{'-':>13}{'-':>14}"
        return line + f"{r.samples_per_s / base.samples_per_s:>12.2f}x{r.peak_bytes / base.peak_bytes:>13.2f}x"

    def add(self, result: Result, baseline: bool = False) -> Result:
        if baseline:
            self.baseline = result
        self.rows.append(result)
        print(self._line(result), flush=True)
        return result

    def finish(self) -> list[Result]:
        """The whole table once more (meter's rows, then the baseline's); returns its rows in that order."""
        rows = [*(r for r in self.rows if r is not self.baseline), self.baseline]
        print("\n" + self._header())
        for r in rows:
            print(self._line(r))
        return rows


def compare(shape: Shape, args: argparse.Namespace, runtime: Runtime) -> list[Result]:
    """Prints the table for one shape; returns its rows, BridgeTower's last."""
    device = runtime.device
    with tempfile.TemporaryDirectory() as folder:
        batches, tokenizer = shapes_batches(shape, Path(folder), count=3)
    vocab = shape.vocab or len(tokenizer)
    shape = replace(shape, vocab=vocab)
    # masks and pairs drawn once by meter's prepare, the same for both models; this small task's weights are unused
    preparer = meter_task(replace(shape, vision_layers=1, text_layers=1, fusion_layers=1), tokenizer, vocab)
    for k, batch in enumerate(batches):
        preparer.prepare(batch, StepRandomness(0, k, shape.batch).rows(0, shape.batch))
    del preparer
    if device.type == "cuda" and not args.pageable:  # as the training loop's loader gives them
        batches = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    print(f"config {shape.describe()}; {args.warmup} warm-up + {args.steps} timed steps each")
    table = RowsAsMeasured(shape.batch, device)
    if not args.only_meter:  # first: the rows after it get their ratios as they are printed
        table.add(measure("BridgeTower (HF)", bridgetower_builder(shape, vocab, runtime), batches, args, device), True)
    ours = table.add(measure("meter", meter_builder(shape, tokenizer, vocab, runtime, None), batches, args, device))
    if args.recompute:
        recomputing = measure("meter (recomputing)", meter_builder(shape, tokenizer, vocab, runtime, None, True),
                              batches, args, device, count_flops=False)  # fmt: skip
        recomputing.flops_per_step = ours.flops_per_step  # the useful FLOPs: MFU counts the recomputation as waste
        table.add(recomputing)
    for mode in args.compile_mode if args.compile else []:
        name = "meter (compiled)" if mode == "default" else f"meter ({mode})"
        compiled = measure(name, meter_builder(shape, tokenizer, vocab, runtime, mode), batches, args, device,
                           count_flops=False)  # fmt: skip
        compiled.flops_per_step = ours.flops_per_step
        table.add(compiled)
    rows = table.finish()
    if args.profile:
        mode = args.compile_mode[0] if args.profile == "compiled" else None
        profile_step(meter_builder(shape, tokenizer, vocab, runtime, mode), batches, args, device, args.profile)
    return rows


def profile_step(build: Callable, batches: list[dict[str, Any]], args: argparse.Namespace,
                 device: torch.device, kind: str) -> None:  # fmt: skip
    """Where meter's step (eager or compiled) spends its time: the operators (kernels, when compiled) of 3 steps by
    their own device time."""
    from torch.profiler import ProfilerActivity, profile

    release_memory(device)
    module, step = build()
    for k in range(args.warmup):
        step(batches[k % len(batches)])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for k in range(3):
            step(batches[k % len(batches)])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nmeter ({kind}), 3 steps, operators by {sort}:")
    print(prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60))
    try:  # the table above is what matters; a profiler API that moved must not cost it
        print_time_by_kind(prof, device)
    except (AttributeError, TypeError) as error:
        print(f"by kind: not available with this torch ({error})")
    del module, step
    release_memory(device)


# what a kernel or operator is, by its name (the first pattern that matches); for the profile's summary
KINDS = [
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("convolution", r"conv"),
    ("attention", r"flash|fmha|attention|sdpa|cudnn"),
    ("matrix products", r"gemm|nvjet|cutlass|xmma|cublas|\bmm\b|aten::mm|addmm|bmm|matmul|linear"),
    ("fused by inductor", r"^triton_"),
    ("normalisation", r"layer_?norm|norm_"),
    ("copies and casts", r"copy|memcpy|memset|cast"),
]


def print_time_by_kind(prof: Any, device: torch.device) -> None:
    """The profile's time summed by kind: GPU kernels by their own duration (no operator counted twice), or on the
    CPU each operator's self time."""
    from torch.autograd import DeviceType

    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA] if device.type == "cuda" else []
    if kernels:
        items = [(e.name, e.time_range.end - e.time_range.start) for e in kernels]
    else:
        items = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    totals: dict[str, float] = {}
    for name, micros in items:
        kind = next((k for k, pattern in KINDS if re.search(pattern, name, re.IGNORECASE)), "other")
        totals[kind] = totals.get(kind, 0.0) + micros
    whole = sum(totals.values()) or 1.0
    print(f"\nby kind ({'GPU kernels' if kernels else 'CPU operators'}, {whole / 3e3:.1f} ms a step):")
    if kernels:  # idle gaps between kernels: a step the host holds up
        span = max(e.time_range.end for e in kernels) - min(e.time_range.start for e in kernels)
        print(f"  the GPU ran kernels {whole / span:.1%} of the 3 steps' span ({span / 3e3:.1f} ms a step)")
    for kind, micros in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {kind:<20}{micros / whole:>7.1%}{micros / 3e3:>10.1f} ms")


def add_compile_mode_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile-mode",
        nargs="+",
        default=["default"],
        choices=COMPILE_MODES,
        help="with --compile: a row for each torch.compile mode (reduce-overhead: CUDA graphs)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", choices=list(PRESETS), help="default: small on CPU, paper on CUDA")
    parser.add_argument("--batch", type=at_least(2), help="override the preset's batch (at least 2: ITM pairs)")
    parser.add_argument("--steps", type=at_least(1), help="timed steps (default 5 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=at_least(0), help="untimed steps first (default 2 on CPU, 5 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="also time meter with torch.compile")
    add_compile_mode_argument(parser)
    parser.add_argument(
        "--profile",
        nargs="?",
        const="eager",
        choices=["eager", "compiled"],
        help="then profile meter's step, eager (the default) or compiled (the first --compile-mode)",
    )
    parser.add_argument("--only-meter", action="store_true", help="skip the BridgeTower baseline")
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="also time meter with activation checkpointing (train.activation_checkpointing)",
    )
    parser.add_argument("--pageable", action="store_true", help="CUDA: batches in pageable memory (default: pinned)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    shape = PRESETS[args.preset or ("paper" if cuda else "small")]
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
    rows = compare(shape, args, runtime)
    if rows[-1].error == "out of memory" and shape.batch >= 4:  # ITM needs a batch of 2 at least
        print(f"\nBridgeTower does not fit a batch of {shape.batch} here; both again at {shape.batch // 2}:")
        rows += compare(replace(shape, batch=shape.batch // 2), args, runtime)
    return exit_status(rows)


if __name__ == "__main__":
    sys.exit(main())
