"""`make_plan`: what a recipe will do, worked out without training, data or weights."""

from __future__ import annotations

import copy
import dataclasses
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from meter.config import Config, to_dict
from meter.data.stream import micro_batches_per_epoch
from meter.errors import ConfigError, first_line
from meter.models.meter import Meter
from meter.models.text import TEXT, WEIGHT_FILES
from meter.models.tokenizer_folder import TOKENIZER_FILES, has_tokenizer
from meter.models.weight_files import is_torchscript_archive
from meter.plan.memory import FP32, MemoryEstimate, estimate_memory
from meter.plan.model import plan_model
from meter.plan.tasks import TASK_PLANS, UNKNOWN, Head, TaskPlan, read_data, task_plan
from meter.tasks.best_checkpoint import BestCheckpoint
from meter.tasks.catalog import DOWNSTREAM
from meter.train.distributed import split_global_batch
from meter.validate import validate


@dataclass
class PathCheck:
    key: str
    path: str
    found: bool  # there and usable: False for a path that is there but that the run would refuse (see `problem`)
    problem: str | None = None  # why a path that is there is not usable (None: usable, or missing)


@dataclass
class Schedule:
    optimizer_steps: int
    warmup_steps: int  # linear warm-up, then linear decay to 0 at optimizer_steps (train.optim.warmup_linear)
    stop_at: int  # the run stops here (train.stop_at) and resumes later; equals optimizer_steps when not set
    # train.best_on: how many times the run scores that split (None: unknown until the training data is counted)
    best_evaluations: int | None = 0


@dataclass
class Batching:
    per_process: int  # train.batch_size: one micro-batch
    processes: int
    grad_accum: int
    global_batch: int  # samples per optimizer step
    samples: int  # over the whole schedule
    examples: int | None  # in the training split; None: unknown
    data: str
    epochs: float | None


@dataclass
class Plan:
    task: str
    config: dict[str, Any]  # the resolved config, as the run saves it
    parameters: dict[str, int]
    vocabulary: dict[str, Any]
    heads: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    schedule: Schedule
    batching: Batching
    paths: list[PathCheck]
    memory: MemoryEstimate
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def configured_paths(cfg: Config, plan: TaskPlan) -> list[PathCheck]:
    """Every path the config names (or implies, as the tokenizer folder), found or missing."""
    paths = [("data.root", Path(cfg.data.root)), *plan.files(cfg)]
    model, init_from = cfg.model, cfg.train.init_from
    if model.vision.weights:
        paths.append(("model.vision.weights", Path(model.vision.weights)))
    if model.text.weights:
        paths.append(("model.text.weights", Path(model.text.weights)))
    if init_from:
        paths.append(("train.init_from", Path(init_from)))  # its tokenizer and architecture take over
    elif model.text.tokenizer:
        paths.append(("model.text.tokenizer", Path(model.text.tokenizer)))
    elif not model.text.weights:
        kind = TEXT.get(model.text.name, key="model.text").tokenizer_kind
        paths.append((f"tokenizer (data.root/tokenizers/{kind})", Path(cfg.data.root) / "tokenizers" / kind))
    checks = []
    for key, path in paths:
        problem = _unusable(key, path) if path.exists() else None
        checks.append(PathCheck(key, str(path), path.exists() and problem is None, problem))
    return checks


def _unusable(key: str, path: Path) -> str | None:
    """Why an existing weights or tokenizer path would be refused by its reader (a folder for a file, an empty
    folder, a file that is not weights), checked cheaply; None when it looks usable. Other paths are not checked."""
    if key == "model.vision.weights":
        return vision_weights_problem(path)
    if key == "model.text.weights":  # models.text._pretrained: a Hugging Face folder, its config.json and weights
        if not path.is_dir():
            return "a file, not a pretrained text encoder's Hugging Face folder"
        if not (path / "config.json").is_file():
            return "no config.json in this folder"
        if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
            return "no text encoder weights in this folder: no model.safetensors or pytorch_model.bin"
        return None
    if key == "model.text.tokenizer" or key.startswith("tokenizer ("):  # tokenizer_folder.load_tokenizer
        if not path.is_dir():
            return "a file, not a Hugging Face tokenizer folder"
        if not has_tokenizer(path):
            return f"no tokenizer files in this folder: none of {', '.join(TOKENIZER_FILES)}"
        return None
    return None


def vision_weights_problem(path: Path) -> str | None:
    """Why models.vision_weights.load_vision_weights would refuse `path`, as far as its header tells, without
    reading its tensors; None when it looks like weights. timm reads a name ending in .safetensors as safetensors
    and anything else with torch.load (a torch.save zip, or a legacy pickle)."""
    if path.is_dir():  # vision.build_vision reads a file only
        return "a folder, not a weights file" if any(path.iterdir()) else "an empty folder, not a weights file"
    if not path.is_file():
        return "not a regular file"
    if path.stat().st_size == 0:
        return "an empty file"
    if str(path).endswith(".safetensors"):
        try:
            with safe_open(str(path), framework="pt"):  # parses the header only (the tensors are mapped, not read)
                return None
        except (SafetensorError, OSError) as error:
            return f"not a readable safetensors file: {first_line(error)}"
    if is_torchscript_archive(path):
        return "a TorchScript archive, not a state dict: loading it would run its code"
    with path.open("rb") as file:
        legacy_pickle = file.read(1) == b"\x80"  # torch.save's legacy format opens with a pickle PROTO opcode
    if legacy_pickle or zipfile.is_zipfile(path):
        return None
    return "not a safetensors or torch.save file: neither a zip archive nor a pickle"


def activation_bytes_per_value(cfg: Config) -> tuple[int, str | None]:
    """2 under bf16 autocast, 4 in fp32; `auto` plans for the GPU the recipe is meant for."""
    train = cfg.train
    if train.precision == "fp32" or (train.precision == "auto" and train.device == "cpu"):
        return FP32, None
    if train.precision == "auto":
        return 2, "train.precision = auto: planned for a CUDA device, where it means bf16 autocast"
    return 2, None


def make_plan(cfg: Config, processes: int = 1) -> Plan:
    """The plan of a run of `cfg` on `processes` processes (torchrun's --nproc_per_node x nodes). Raises the errors
    the run would raise at its start (validate)."""
    if processes < 1:
        raise ConfigError(f"--processes = {processes} must be at least 1")
    validate(cfg)
    cfg = copy.deepcopy(cfg)
    plan = task_plan(cfg.task)
    notes = [] if cfg.task in TASK_PLANS else [f"`meter plan` does not know task {cfg.task!r}: no heads or data"]
    paths = configured_paths(cfg, plan)
    data = read_data(cfg, plan)
    model, heads = plan_model(cfg, plan, lambda vocabulary: plan.heads(cfg, vocabulary, data))
    notes += model.notes
    train = cfg.train
    split_global_batch(train, processes)
    global_batch = train.batch_size * processes * train.grad_accum
    samples = global_batch * train.max_steps
    bytes_per_value, precision_note = activation_bytes_per_value(cfg)
    notes += [precision_note] if precision_note else []
    forward = plan.forward(cfg, model.vocabulary.size)
    if cfg.data.blind:  # a blind batch's one constant image is encoded once (its rows share it)
        forward = dataclasses.replace(forward, images=forward.images / train.batch_size)
    groups = [
        {"name": g["name"], "lr": g["lr"], "weight_decay": g["weight_decay"], "parameters": _count(g["params"])}
        for g in model.groups
    ]
    stop_at = min(train.stop_at, train.max_steps) if train.stop_at > 0 else train.max_steps
    # an epoch is its whole steps (data.stream): the samples of a last incomplete one are not read
    read = micro_batches_per_epoch(data.examples or 0, train.batch_size, processes, train.grad_accum)
    epochs = train.max_steps * train.grad_accum / read if read else None
    return Plan(
        task=cfg.task,
        config=to_dict(cfg),
        parameters=model.counts,
        vocabulary=asdict(model.vocabulary),
        heads=[_head(h, model.model) for h in heads],
        groups=groups,
        schedule=Schedule(
            train.max_steps,
            int(train.max_steps * train.warmup_ratio),
            stop_at,
            best_evaluations(cfg, data.examples, processes),
        ),
        batching=Batching(
            train.batch_size,
            processes,
            train.grad_accum,
            global_batch,
            samples,
            data.examples,
            data.description,
            epochs,
        ),
        paths=paths,
        memory=estimate_memory(
            model.shape,
            forward,
            train.batch_size,
            bytes_per_value,
            processes,
            train.parallel,
            train.activation_checkpointing,
        ),
        notes=notes,
    )


def _count(parameters: list) -> int:
    return sum(p.numel() for p in parameters)


def _head(head: Head, model: Meter) -> dict[str, Any]:
    """A head's outputs and parameters; an unknown size is built with no output rows, and each adds a known count."""
    module = model.heads[head.name]
    result = {
        "name": head.name,
        "outputs": head.size,
        "meaning": head.meaning,
        "parameters": _count(module.parameters()),
    }
    if head.size is None:
        last = [m for m in module.modules() if hasattr(m, "in_features")][-1]
        result["parameters_per_output"] = last.in_features + 1
        result["outputs"] = UNKNOWN
    return result


def best_evaluations(cfg: Config, examples: int | None, processes: int) -> int | None:
    """How many times train.best_on scores its split over the run (see BestCheckpoint.wants)."""
    if not cfg.train.best_on:
        return 0
    if not examples and not cfg.train.best_every:
        return None
    cfg = copy.deepcopy(cfg)
    split_global_batch(cfg.train, processes)  # the micro-batches of a step on `processes`
    epoch = micro_batches_per_epoch(examples or 0, cfg.train.batch_size, processes, cfg.train.grad_accum)
    best = BestCheckpoint(cfg, DOWNSTREAM.get(cfg.task, key="task"), batches_per_epoch=epoch)
    return sum(best.wants(step) for step in range(1, cfg.train.max_steps + 1))
