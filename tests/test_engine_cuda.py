"""The CUDA path: bf16 autocast, fused AdamW, torch.compile. Skipped without a GPU (benchmarks/gpu_check.sh runs it)."""

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import meter
from meter.config import Config, load_config
from meter.data.collate import Collate
from meter.data.loader_watch import watched_batches
from meter.data.shared_rows import to_device
from meter.models.tokenizer_folder import load_tokenizer
from meter.runs import run_pretrain
from meter.tasks.build import build_model, task_tokenizer, tokenizer_path
from meter.tasks.pretrain import PretrainTask, pretrain_heads
from meter.train.checkpoint import TASK_WEIGHTS
from meter.train.metrics_log import read_metrics
from meter.train.optim import build_optimizer
from tests.batches import pretraining_batch
from tests.runner import EXACT, TWO_LAYERS, pretrain_args, run_meter
from tests.test_shared_rows import IMAGE, Questions

NO_DROPOUT = [o for o in EXACT if o != "train.device=cpu"]

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
LOSSES = ["train/mlm_loss", "train/itm_loss", "train/mim_loss"]


def _pretrain(cfg: Config, out, *overrides: str, resume: str | None = None) -> list[dict]:
    run_pretrain(load_config(None, [f"train.out={out}", "train.device=cuda", *overrides], base=cfg), resume)
    return read_metrics(out / "metrics.jsonl")


def test_bf16_pretraining_on_cuda_is_finite_and_mlm_learns(micro_config, tmp_path):
    records = _pretrain(micro_config, tmp_path / "run", "train.max_steps=40", "objectives.mim=1", "train.lr=1e-3")
    assert all(r[k] == r[k] and abs(r[k]) < 1e3 for r in records for k in LOSSES)
    first, last = records[:5], records[-5:]
    assert sum(r["train/mlm_loss"] for r in last) < sum(r["train/mlm_loss"] for r in first)


def test_the_optimizer_is_fused_adamw_on_cuda(micro_config):
    tokenizer = task_tokenizer(micro_config)
    heads = pretrain_heads(tokenizer, micro_config.objectives)
    task = PretrainTask(build_model(micro_config, tokenizer, heads), tokenizer, micro_config, heads).cuda()
    optimizer = build_optimizer(task, micro_config.train, torch.device("cuda"))
    assert optimizer.defaults["fused"] is True


def test_the_pretraining_forward_and_backward_never_wait_for_the_device(micro_config):
    """torch's sync debug mode warns at every host sync (the CPU twin: tests/test_no_host_sync.py); none may come
    from meter's code. (Eager Hugging Face text encoders look at their padding mask, a sync that torch.compile
    skips; not ours to change.) The first pass, which sets up cuBLAS and cuDNN, is not checked."""
    task, batch = pretraining_batch(load_config(None, ["objectives.mim=1"], base=micro_config), 8)
    task.cuda().train()
    pinned = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    batch = to_device(pinned, torch.device("cuda"))
    for checked in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn" if checked else "default")
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    losses, _ = task(batch)
                sum(losses.values()).backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # meter's forward, and the backward (whose syncs the engine reports at the line that called it, here)
    ours = [f"{w.filename}:{w.lineno}" for w in syncs if w.filename.startswith(str(Path(meter.__file__).parent))
            or w.filename == __file__]  # fmt: skip
    assert not ours, ours
    assert all(p.grad is not None for p in task.model.fusion.parameters())


def test_a_run_stopped_and_resumed_on_cuda_ends_bitwise_where_a_straight_run_ends(micro_config, tmp_path):
    """bf16, dropout on (its CUDA generator state travels in the checkpoint), deterministic kernels."""
    steps = ["train.max_steps=6", "train.checkpoint_every=3", "objectives.mim=1", "train.deterministic=true",
             "model.fusion.dropout=0.1"]  # fmt: skip
    straight = _pretrain(micro_config, tmp_path / "straight", *steps)
    _pretrain(micro_config, tmp_path / "resumed", *steps, "train.stop_at=3")
    resumed = _pretrain(micro_config, tmp_path / "resumed", *steps, resume="latest")
    for key in LOSSES:
        assert [r[key] for r in resumed] == [r[key] for r in straight], key
    final = "checkpoints/step_00000006"
    for name in ("model.safetensors", TASK_WEIGHTS):
        a, b = load_file(tmp_path / "straight" / final / name), load_file(tmp_path / "resumed" / final / name)
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{len(differ)} tensors of {name} differ, e.g. {differ[:3]}"


def test_deterministic_attention_gradients_are_bitwise_equal_at_a_real_number_of_keys():
    """train.deterministic on a GPU: warned only, SDPA kept cuDNN's kernel and the memory-efficient one's split keys
    (atomic adds), equal only at the micro sizes above. 577 image keys (576 px), padded text keys, bf16."""
    from meter.config import TrainConfig
    from meter.models.layers import TransformerLayer, key_padding_mask
    from meter.train.runtime import setup_runtime

    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        setup_runtime(TrainConfig(device="cuda", deterministic=True))
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        torch.manual_seed(0)
        layer = TransformerLayer(768, 12, 4.0, 0.0, cross=True).cuda()
        x, context = torch.randn(32, 40, 768, device="cuda"), torch.randn(32, 577, 768, device="cuda")
        mask = torch.ones(32, 40, dtype=torch.long, device="cuda")
        mask[::2, 25:] = 0
        grads = []
        for _ in range(2):
            layer.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                layer(x, key_padding_mask(mask), context, None).float().square().mean().backward()
            grads.append([p.grad.clone() for p in layer.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def test_fsdp2_in_one_process_on_cuda_trains_as_the_unwrapped_task(shapes_world, tmp_path):
    """FSDP2 over a group of one (torchrun, NCCL): fused AdamW on sharded (DTensor) parameters, bf16 autocast, full
    state dicts gathered for the checkpoint; the same losses as the task trained unwrapped."""
    steps = ["train.device=cuda", "train.max_steps=4", "objectives.mim=1", "train.deterministic=true", *NO_DROPOUT]
    run_meter(pretrain_args(shapes_world, tmp_path / "plain", *steps))
    done = run_meter(pretrain_args(shapes_world, tmp_path / "fsdp", *steps, "train.parallel=fsdp"), torchrun=True)
    assert "sharded over 1 process" in done.stderr, done.stderr[-2000:]
    plain = read_metrics(tmp_path / "plain/metrics.jsonl")
    sharded = read_metrics(tmp_path / "fsdp/metrics.jsonl")
    for key in LOSSES:
        assert [r[key] for r in sharded] == pytest.approx([r[key] for r in plain], rel=0.01, abs=1e-3), key
    weights = load_file(tmp_path / "fsdp/checkpoints/step_00000004/model.safetensors")
    assert weights.keys() == load_file(tmp_path / "plain/checkpoints/step_00000004/model.safetensors").keys()


def test_a_blind_batch_is_pinned_and_copied_to_the_gpu_as_one_image(micro_config):
    """torch cannot pin a tensor with a stride-0 dimension as it is (the blind baseline's pixels)."""
    collate = Collate(load_tokenizer(tokenizer_path(micro_config)), max_length=16)
    batch = next(watched_batches(Questions(), 0, 30.0, batch_size=3, collate_fn=collate, pin_memory=True))
    assert batch["pixels"].is_pinned() and batch["pixels"].stride(0) == 0
    pixels = to_device(batch, torch.device("cuda"))["pixels"]
    assert pixels.is_cuda and pixels.stride(0) == 0 and torch.equal(pixels[2].cpu(), IMAGE)


def test_choosing_the_best_checkpoint_leaves_cuda_training_bitwise_as_it_was(micro_checkpoints, shapes_tasks_world,
                                                                              tmp_path):  # fmt: skip
    """The evaluations between steps (a second model on the GPU, seeding, a loader's draw) put the CUDA generator
    back: dropout on, deterministic kernels, the same weights with train.best_on as without."""
    from meter.runs import run_finetune
    from tests.conftest import MICRO

    common = [*MICRO, "task=snli_ve", f"data.root={shapes_tasks_world}", "train.device=cuda", "train.max_steps=10",
              "train.deterministic=true", "model.fusion.dropout=0.1",
              f"train.init_from={micro_checkpoints('pretrain')}"]  # fmt: skip
    run_finetune(load_config(None, [*common, f"train.out={tmp_path / 'plain'}"]))
    run_finetune(load_config(None, [*common, f"train.out={tmp_path / 'best'}", "train.best_on=test",
                                    "train.best_every=3"]))  # fmt: skip
    final = "checkpoints/step_00000010/model.safetensors"
    a, b = load_file(tmp_path / "plain" / final), load_file(tmp_path / "best" / final)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


# last: its three variants compile (one from scratch), the slowest part of the file; cut by gpu_check.sh's
# deadline, it leaves the others' results
@pytest.mark.parametrize(("mode", "recompute"), [("default", False), ("reduce-overhead", False), ("default", True)])
def test_compiled_training_matches_eager_training_in_bf16(micro_config, tmp_path, mode: str, recompute: bool):
    """reduce-overhead replays CUDA graphs: the text encoder and the fusion run twice a step (MLM and ITM); with
    activation checkpointing, the compiled layers recompute in the backward (two layers per stack, so that some do)."""
    steps = ["train.max_steps=4", "objectives.mim=1", *NO_DROPOUT]  # compiled dropout draws differently
    if recompute:
        steps += [*TWO_LAYERS, "train.activation_checkpointing=true"]
    eager = _pretrain(micro_config, tmp_path / "eager", *[s for s in steps if "checkpointing" not in s])
    compiled = _pretrain(micro_config, tmp_path / "compiled", *steps, "train.compile=true",
                         f"train.compile_mode={mode}")  # fmt: skip
    for key in LOSSES:
        assert [r[key] for r in compiled] == pytest.approx([r[key] for r in eager], rel=0.05, abs=0.02), key
