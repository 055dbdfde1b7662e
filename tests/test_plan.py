"""`meter plan`: every recipe plans without its data or weights; the meta-device model is the real one; the memory
estimate is of the right size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meter.cli import main as meter_main
from meter.config import Config, load_config
from meter.data.collate import Collate
from meter.models.meter import parameter_counts
from meter.objectives.mim import in_batch_loss
from meter.objectives.randomness import SampleRandomness
from meter.plan import make_plan, render
from meter.runs import downstream_task
from meter.tasks.build import build_model, task_tokenizer
from meter.tasks.pretrain import PretrainTask, pretrain_heads
from meter.train.optim import parameter_groups, warmup_linear
from meter.train.recompute import recompute_layers

CONFIGS = Path(__file__).parents[1] / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))  # every recipe, including ones added later
SHAPES_RECIPES = sorted(CONFIGS.glob("shapes-*.yaml"))
NO_DROPOUT = [
    "model.fusion.dropout=0",
    "model.decoder.dropout=0",
    "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
    "intermediate_size: 64, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
]


def _plan(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = meter_main(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _real_task(cfg: Config) -> torch.nn.Module:
    """The task module the run trains, built for real (weights in memory, data read)."""
    if cfg.task == "pretrain":
        tokenizer = task_tokenizer(cfg)
        heads = pretrain_heads(tokenizer, cfg.objectives)
        return PretrainTask(build_model(cfg, tokenizer, heads), tokenizer, cfg, heads)
    return downstream_task(cfg.task).setup(cfg).task


def _groups(task: torch.nn.Module, cfg: Config) -> list[dict]:
    return [
        {
            "name": g["name"],
            "lr": g["lr"],
            "weight_decay": g["weight_decay"],
            "parameters": sum(p.numel() for p in g["params"]),
        }
        for g in parameter_groups(task, cfg.train)
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_every_recipe_plans_without_its_data_or_weights(recipe: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipes' relative data and weight paths lead nowhere from here
    code, out, err = _plan(capsys, "--config", str(recipe), "--processes", "8", "--json")
    assert code == 0, err
    plan = json.loads(out)
    parts = {k: v for k, v in plan["parameters"].items() if k != "total"}
    assert plan["parameters"]["total"] == sum(parts.values()) > 0
    assert sum(g["parameters"] for g in plan["groups"]) == plan["parameters"]["total"]
    train = plan["config"]["train"]
    assert plan["schedule"]["optimizer_steps"] == train["max_steps"]
    assert plan["batching"]["global_batch"] == train["batch_size"] * 8 * train["grad_accum"]
    assert plan["batching"]["global_batch"] == (train["global_batch"] or plan["batching"]["global_batch"])
    missing = {p["key"] for p in plan["paths"] if not p["found"]}
    assert {"data.root"} | {
        f"model.{part}.weights" for part in ("vision", "text") if plan["config"]["model"][part]["weights"]
    } <= missing
    assert plan["batching"]["examples"] is None and plan["memory"]["total"] > 0

    code, text, err = _plan(capsys, "--config", str(recipe), "--processes", "8")
    assert code == 0, err
    for section in ("parameters", "heads", "optimizer groups (AdamW)", "schedule", "batch", "paths", "memory"):
        assert f"== {section}" in text
    assert f"total       {plan['parameters']['total']:>13,}" in text
    assert all(g["name"] in text for g in plan["groups"])
    assert f"{train['max_steps']:,} optimizer steps" in text
    assert "MISSING  data.root" in text


@pytest.mark.parametrize("recipe", SHAPES_RECIPES, ids=lambda path: path.stem)
def test_the_meta_device_model_counts_as_the_real_build(recipe: Path, shapes_tasks_world: Path):
    cfg = load_config(recipe, [f"data.root={shapes_tasks_world}", "vqa.min_answer_count=1"])
    plan = make_plan(cfg)
    task = _real_task(load_config(recipe, [f"data.root={shapes_tasks_world}", "vqa.min_answer_count=1"]))
    assert {k: v for k, v in plan.parameters.items() if k != "task-only"} == parameter_counts(task.model)
    assert plan.groups == _groups(task, cfg)
    assert plan.vocabulary["known"] and plan.vocabulary["size"] == len(task_tokenizer(cfg))
    assert plan.batching.examples is not None and plan.batching.examples > 0
    assert all(isinstance(h["outputs"], int) for h in plan.heads)


def test_a_plan_from_an_encoder_only_checkpoint_adds_the_captioning_decoder(
    micro_checkpoints, micro_config: Config, shapes_tasks_world: Path
):
    overrides = [
        "task=captioning",
        f"data.root={shapes_tasks_world}",
        f"train.init_from={micro_checkpoints('pretrain')}",
    ]
    plan = make_plan(load_config(None, overrides, base=micro_config))
    task = _real_task(load_config(None, overrides, base=micro_config))
    assert plan.config["model"]["architecture"] == "encoder-decoder"  # as the run saves it
    assert plan.parameters["decoder"] > 0
    assert plan.parameters == parameter_counts(task.model)
    assert any("has no decoder" in note for note in plan.notes)


def test_official_retrieval_is_planned_with_its_itm_head_and_its_candidate_texts(shapes_tasks_world: Path):
    """retrieval.objective=official was planned as the meter objective: without its ITM head (257 of 771 head
    parameters), and with one text a sample instead of 1 + retrieval.negative_texts."""
    overrides = [f"data.root={shapes_tasks_world}", "retrieval.objective=official", "retrieval.negative_texts=7"]
    cfg = load_config(CONFIGS / "shapes-retrieval.yaml", overrides)
    plan = make_plan(cfg)
    task = _real_task(load_config(CONFIGS / "shapes-retrieval.yaml", overrides))
    assert {k: v for k, v in plan.parameters.items() if k != "task-only"} == parameter_counts(task.model)
    assert [h["name"] for h in plan.heads] == list(task.model.heads)
    ours = make_plan(load_config(CONFIGS / "shapes-retrieval.yaml", overrides[:1])).memory.activations
    assert plan.memory.activations["text"] == 8 * ours["text"]


def test_unknown_sizes_are_said_to_be_unknown_not_guessed(tmp_path: Path, capsys):
    code, out, err = _plan(capsys, "--config", str(CONFIGS / "shapes-vqa.yaml"), f"data.root={tmp_path}")
    assert code == 0, err
    assert "outputs unknown until the data is read" in out
    assert "epochs: unknown" in out
    assert f"MISSING  tokenizer (data.root/tokenizers/wordpiece): {tmp_path}/tokenizers/wordpiece" in out
    assert "vocabulary (30,522) is assumed from transformers' default for bert" in out


def test_batch_schedule_and_epochs_follow_the_processes_and_the_data(shapes_world: Path):
    cfg = load_config(
        CONFIGS / "shapes-tiny.yaml",
        [f"data.root={shapes_world}", "train.batch_size=8", "train.grad_accum=2", "train.max_steps=50"],
    )
    plan = make_plan(cfg, processes=4)
    karpathy = json.loads((shapes_world / cfg.data.karpathy).read_text())
    captions = sum(len(i["sentences"]) for i in karpathy["images"] if i["split"] in ("train", "restval"))
    assert (plan.batching.global_batch, plan.batching.samples, plan.batching.examples) == (64, 3200, captions)
    assert plan.batching.epochs == pytest.approx(50 / (captions // 64))  # whole steps an epoch, as the stream reads
    # the schedule the run builds: its learning rate peaks when the warm-up ends
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler, rates = warmup_linear(optimizer, cfg.train.max_steps, cfg.train.warmup_ratio), []
    for _ in range(cfg.train.max_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert plan.schedule.warmup_steps == rates.index(max(rates)) == 5


def test_fsdp_shards_the_optimizer_state_and_ddp_adds_gradient_buckets(micro_config: Config):
    one = make_plan(micro_config).memory.state
    ddp = make_plan(micro_config, processes=4).memory.state
    fsdp = make_plan(load_config(None, ["train.parallel=fsdp"], base=micro_config), processes=4).memory.state
    assert ddp["DDP gradient buckets"] == ddp["gradients (fp32)"] == one["gradients (fp32)"]
    assert sum(fsdp.values()) == pytest.approx(sum(one.values()) / 4, abs=4)


def test_a_validation_error_is_reported_as_the_run_reports_it(capsys):
    wrong = ["objectives.span=1", "model.architecture=encoder"]  # validate.py: span needs a decoder
    code, out, plan_err = _plan(capsys, *wrong)
    assert code == 2 and out == ""
    assert meter_main(["pretrain", *wrong]) == 2
    run_err = capsys.readouterr().err
    assert plan_err == run_err and "objectives.span needs a decoder" in plan_err


def _batch(cfg: Config, task: torch.nn.Module) -> dict:
    """A training batch of every text at its longest."""
    tokenizer, size, length = task_tokenizer(cfg), cfg.model.vision.image_size, cfg.model.text.max_length
    caption = " ".join(["a small red circle left of a big blue square"] * length)  # cut to max_length tokens
    blind = torch.randn(3, size, size)  # data.blind: one constant image, the same tensor for every sample
    samples = [
        {"pixels": blind if cfg.data.blind else torch.randn(3, size, size), "text": caption, "image_id": i}
        for i in range(cfg.train.batch_size)
    ]
    batch = task.prepare(Collate(tokenizer, length)(samples), SampleRandomness.standalone(0, len(samples)))
    assert batch["input_ids"].shape[1] == length
    return batch


def _saved_bytes(cfg: Config) -> int:
    """Bytes of the tensors autograd saves in one training forward pass of the task `cfg` builds, on the CPU."""
    task = _real_task(cfg)
    batch = _batch(cfg, task)
    parameters = {p.untyped_storage().data_ptr() for p in task.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:  # a saved weight costs nothing more; its autocast copy does
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        task(batch)
    return sum(saved.values())


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_activation_estimate_is_within_a_factor_of_two_of_the_saved_tensors(micro_config: Config, precision):
    """Autograd's saved tensors of one training forward pass of a micro model on the CPU, against the plan's estimate
    (dropout off: the CPU runs attention with dropout through SDPA's math kernel, which keeps the probabilities that
    the GPU kernels the estimate assumes do not)."""
    cfg = load_config(None, [*NO_DROPOUT, f"train.precision={precision}", "train.device=cpu"], base=micro_config)
    estimate, saved = sum(make_plan(cfg).memory.activations.values()), _saved_bytes(cfg)
    assert 0.5 < estimate / saved < 2.0, (estimate, saved)


def test_a_blind_baseline_is_planned_with_its_one_image_a_batch(micro_config: Config):
    """data.blind encodes one constant image a batch: the plan counted a vision pass for every sample."""
    overrides = [*NO_DROPOUT, "train.device=cpu", "train.batch_size=16", "model.vision.image_size=128"]
    seeing = load_config(None, overrides, base=micro_config)
    blind = load_config(None, [*overrides, "data.blind=true"], base=micro_config)
    vision = [make_plan(cfg).memory.activations["vision"] for cfg in (seeing, blind)]
    assert vision[1] == pytest.approx(vision[0] / 16, rel=0.01)
    estimate, saved = sum(make_plan(blind).memory.activations.values()), _saved_bytes(blind)
    assert 0.5 < estimate / saved < 2.0, (estimate, saved)


def test_the_estimate_counts_the_in_batch_mim_logits_that_grow_as_the_batch_squared(micro_config: Config):
    """objectives.mim_target=in-batch scores every masked patch of the micro-batch against all its patches (at batch
    64, 384 px and 15% masked, 0.8 GB): the estimate had left those logits out."""
    overrides = [*NO_DROPOUT, "train.device=cpu", "train.batch_size=32", "objectives.mim=1"]
    pixels, in_batch = (load_config(None, [*overrides, f"objectives.mim_target={target}"], base=micro_config)
                        for target in ("pixels", "in-batch"))  # fmt: skip
    plans = [make_plan(cfg).memory.activations for cfg in (pixels, in_batch)]
    task = _real_task(in_batch)
    size, patch = in_batch.model.vision.image_size, task.mim_patch
    patches = (size // patch) ** 2
    masked = round(in_batch.objectives.mim_mask_ratio * patches) * 32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the task: the decoder's predictions under autocast
        predictions = task.mim_decoder(torch.randn(masked, in_batch.model.fusion.width))
    candidates = torch.randn(32 * patches, 3 * patch * patch)
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), torch.autocast("cpu", torch.bfloat16):
        in_batch_loss(predictions, candidates, torch.randint(0, len(candidates), (masked,)))
    assert plans[1]["heads"] - plans[0]["heads"] == pytest.approx(sum(saved.values()), rel=0.02)
    assert {k: v for k, v in plans[1].items() if k != "heads"} == {k: v for k, v in plans[0].items() if k != "heads"}


def test_activation_checkpointing_is_planned_as_each_layers_input_and_one_layer_recomputed(micro_config: Config):
    """The plan ignored train.activation_checkpointing: the same estimate with it and without, where the layers keep
    about a tenth as much. Measured: what the forward pass leaves allocated (the profiler's memory events), and the
    batch's images."""
    layers = [
        "model.vision.timm_kwargs={embed_dim: 32, depth: 4, num_heads: 2, patch_size: 16}",
        "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 4, num_attention_heads: 2, intermediate_size: 64, "
        "hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
        "model.fusion.layers=3", "model.fusion.dropout=0", "train.device=cpu", "model.vision.image_size=128",
    ]  # fmt: skip
    measured, estimated = {}, {}
    for recompute in (False, True):
        cfg = load_config(None, [*layers, f"train.activation_checkpointing={recompute}"], base=micro_config)
        task = _real_task(cfg)
        if recompute:
            assert recompute_layers(task) == 4 + 4 + 2 * 3
        batch = _batch(cfg, task)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as run:
            losses = task(batch)  # held: what the backward will need stays allocated
        measured[recompute] = sum(event.self_cpu_memory_usage for event in run.events()) + batch["pixels"].nbytes
        del losses
        activations = make_plan(cfg).memory.activations
        estimated[recompute] = sum(activations.values()) - activations.get("recomputed layer", 0)
    assert measured[True] < measured[False] / 5
    for recompute in (False, True):
        assert 0.67 < estimated[recompute] / measured[recompute] < 1.5, (recompute, estimated, measured)


def test_the_full_size_model_is_planned_at_its_public_sizes_without_reading_a_weight(tmp_path: Path, monkeypatch):
    """CLIP-ViT-B/16 at 288 px (11 blocks) + RoBERTa-base + 6 co-attention layers (test_paper_configs.py builds it
    for real)."""
    monkeypatch.chdir(tmp_path)  # pretrained/clip-vit-b16.safetensors and pretrained/roberta-base are not here
    counts = make_plan(load_config(CONFIGS / "clip16-roberta-pretrain.yaml")).parameters
    assert (counts["vision"], counts["text"], counts["fusion"]) == (78_809_856, 124_055_040, 113_421_312)
    assert 318e6 < counts["total"] - counts["heads"] < 319e6


def test_a_plan_from_a_checkpoint_plans_the_runs_resolution_dropout_and_text_length(
    micro_checkpoints, micro_config: Config, shapes_tasks_world: Path
):
    """The plan took the folder's model section whole: the paper's VQA recipe at 576 px from a 288 px pretraining
    was planned at 288 px (13.7 GB a GPU instead of 34.4)."""
    overrides = ["task=snli_ve", f"data.root={shapes_tasks_world}", f"train.init_from={micro_checkpoints('pretrain')}",
                 "model.vision.image_size=96", "model.fusion.dropout=0.3"]  # fmt: skip
    plan = make_plan(load_config(None, overrides, base=micro_config))
    task = _real_task(load_config(None, overrides, base=micro_config))
    assert plan.config["model"]["vision"]["image_size"] == 96 and plan.config["model"]["fusion"]["dropout"] == 0.3
    assert plan.parameters == parameter_counts(task.model)  # the resampled position table counted as built


def test_the_vqa_recipes_test_dev_split_needs_no_annotations():
    """The paper's VQA recipe predicts test-dev2015, published without annotations: its plan listed them MISSING."""
    plan = make_plan(load_config(CONFIGS / "clip16-roberta-vqa.yaml"), processes=8)
    keys = {path.key for path in plan.paths}
    assert "vqa.questions (test-dev2015)" in keys and "vqa.annotations (test-dev2015)" not in keys
    assert "vqa.questions (test2015, the submission's)" in keys  # EvalAI's test-dev phase takes all of test2015
    assert {"vqa.annotations (train2014)", "vqa.annotations (val2014)"} <= keys


def test_settings_may_follow_an_option(capsys):
    """`--processes 1 train.batch_size=8` was "unrecognized arguments": argparse takes a positional list once."""
    code, out, _ = _plan(capsys, "--config", "shapes-tiny.yaml", "--json", "train.max_steps=7", "--processes", "1",
                         "train.batch_size=8")  # fmt: skip
    plan = json.loads(out[: out.rindex("}") + 1])
    assert code == 0 and plan["batching"]["per_process"] == 8 and plan["schedule"]["optimizer_steps"] == 7
    with pytest.raises(SystemExit):
        meter_main(["plan", "--config", "shapes-tiny.yaml", "--processes", "1", "--bogus"])


def test_a_pretrained_itm_head_is_planned_frozen_as_official_retrieval_keeps_it(micro_checkpoints,
                                                                                 shapes_tasks_world: Path):  # fmt: skip
    """The run keeps a pretrained ITM head frozen; the plan listed its parameters in the head group, trained at the
    head's rate."""
    overrides = [f"data.root={shapes_tasks_world}", "retrieval.objective=official",
                 f"train.init_from={micro_checkpoints('pretrain')}"]  # fmt: skip
    cfg = load_config(CONFIGS / "shapes-retrieval.yaml", overrides)
    plan = make_plan(cfg)
    task = _real_task(load_config(CONFIGS / "shapes-retrieval.yaml", overrides))
    assert not any(p.requires_grad for p in task.model.heads["itm"].parameters())
    assert plan.groups == _groups(task, cfg)
    assert any("the ITM head of" in note and "stays frozen" in note for note in plan.notes)


def test_weights_and_tokenizer_paths_that_are_there_but_unreadable_are_not_listed_as_found(
    micro_config: Config, tmp_path: Path
):
    """An empty folder or a text file given as model.vision.weights was listed `found`; the run then failed on it.
    The plan's verdict is the reader's: timm's load_state_dict, which the vision loader calls on a file."""
    from safetensors.torch import save_file
    from timm.models import load_state_dict

    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.safetensors").write_text("not weights\n")
    (tmp_path / "junk.pt").write_text("not weights\n")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "ok.safetensors"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "ok.pt")
    problems = {"empty": "an empty folder, not a weights file", "junk.safetensors": "not a readable safetensors file",
                "junk.pt": "not a safetensors or torch.save file", "ok.safetensors": None, "ok.pt": None}  # fmt: skip
    for name, problem in problems.items():
        path = tmp_path / name
        try:
            readable = path.is_file() and bool(load_state_dict(str(path)))
        except Exception:  # what the vision loader reports as "cannot read vision weights"
            readable = False
        cfg = load_config(None, [f"model.vision.weights={path}", f"model.text.tokenizer={tmp_path / 'empty'}"],
                          base=micro_config)  # fmt: skip
        plan = make_plan(cfg)
        checks = {check.key: check for check in plan.paths}
        vision, text = checks["model.vision.weights"], render(plan)
        assert vision.found == readable == (problem is None), (name, vision)
        if problem is None:
            assert vision.problem is None and f"found    model.vision.weights: {path}\n" in text
        else:
            assert vision.problem.startswith(problem)
            assert f"UNUSABLE model.vision.weights: {path} ({vision.problem})" in text
        tokenizer = checks["model.text.tokenizer"]  # an empty tokenizer folder too
        assert not tokenizer.found and tokenizer.problem.startswith("no tokenizer files in this folder")
    cfg = load_config(None, [f"model.text.weights={tmp_path / 'empty'}", "model.text.hf_kwargs={}"], base=micro_config)
    text_weights = {check.key: check for check in make_plan(cfg).paths}["model.text.weights"]
    assert not text_weights.found and text_weights.problem == "no config.json in this folder"
