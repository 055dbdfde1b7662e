"""A model as a self-contained folder: our config, weights as safetensors, the tokenizer, and what the heads mean.

    config.json               {"config": <the run's config>, "heads": {"mlm": 1000, "itm": 2}, "answers": [...]}
    model.safetensors         the weights
    text_encoder/config.json  the transformers config of the text encoder (it may have come pretrained)
    tokenizer files           as `save_pretrained` writes them (an imported model may lack them: the card says so)
    README.md                 the model card: architecture, parts, source, intended use
    checksums.json            the size and sha256 of each file above (see `meter.models.checksums`)

Loading never unpickles: weights come from safetensors, everything else from JSON. It verifies the checksums first,
so a damaged file is refused by name instead of loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from meter.atomic_files import cannot_write, with_usual_mode
from meter.config import config_from_dict
from meter.errors import ConfigError, DataError, first_line
from meter.models.checksums import CHECKSUMS, record_checksums, verify_checksums
from meter.models.class_rows import current_classes, in_current_order, saved_classes
from meter.models.folder_description import ModelFolder
from meter.models.meter import Meter, build_meter
from meter.models.model_card import model_card
from meter.models.tokenizer_folder import has_tokenizer, load_tokenizer

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"
TEXT_CONFIG = "text_encoder"
MODEL_CARD = "README.md"
EXPORT = "model"  # a training run's final model, under its output folder
Weights = dict[str, torch.Tensor]


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, unshared copies: safetensors refuses tensors that share storage (tied embeddings)."""
    return {k: v.detach().contiguous().clone() if v.data_ptr() else v for k, v in model.state_dict().items()}


def save_model_folder(
    path: str | Path,
    model: Meter,
    tokenizer: PreTrainedTokenizerBase | None,
    description: ModelFolder,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Writes the folder; `tokenizer` None leaves it without one (an import whose tokenizer was not given).
    `weights`, when given, replace the model's own state dict (gathered from the shards of a sharded model)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if weights is None:
        weights = state_dict_for_saving(model)
    else:  # unshared copies, as state_dict_for_saving makes
        weights = {k: v.detach().contiguous().clone() for k, v in weights.items()}
    save_file(weights, str(path / WEIGHTS))
    with_usual_mode(path / WEIGHTS)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    model.text.model.config.save_pretrained(str(path / TEXT_CONFIG))
    (path / MODEL_CONFIG).write_text(json.dumps(description.to_json(), indent=1))
    (path / MODEL_CARD).write_text(model_card(model, description, has_tokenizer=tokenizer is not None))
    record_checksums(path, "model")


def export_model_folder(
    path: str | Path,
    model: Meter,
    tokenizer: PreTrainedTokenizerBase | None,
    description: ModelFolder,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A model folder without training state, written to a temporary folder and renamed into place. A write that
    fails (a full disk, no permission) leaves no temporary folder and any earlier folder at `path` as it was. Only a
    model folder is replaced (check_replaceable)."""
    path = Path(path)
    check_replaceable(path)
    temporary = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        save_model_folder(temporary, model, tokenizer, description, weights)
    except BaseException as error:  # a signal or Ctrl-C too: no half-written folder stays behind
        shutil.rmtree(temporary, ignore_errors=True)
        failed = as_os_error(error)
        if failed is None:
            raise
        needed = tensor_bytes(weights if weights is not None else model.state_dict())
        raise DataError(cannot_write(path, failed, needed)) from None
    replaced = path.with_name(f".{path.name}.replaced")
    shutil.rmtree(replaced, ignore_errors=True)  # an earlier export's, killed before it deleted it
    if path.exists():  # set aside whole, not deleted in place: a kill mid-way left a model folder without its config
        os.replace(path, replaced)
    os.replace(temporary, path)
    shutil.rmtree(replaced, ignore_errors=True)
    return path


def check_replaceable(path: str | Path) -> None:
    """Refuses a `path` that a model folder written there would replace, unless it is empty or a meter model folder
    itself (its config.json says so): a folder of the user's is never deleted."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    try:
        kind = json.loads((path / MODEL_CONFIG).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != "meter-model":
        what = "a folder that is not a meter model folder" if path.is_dir() else "a file"
        raise ConfigError(f"{path} is {what}; a model folder written there would replace it, so it is left as it "
                          "is: give a new or empty folder (or an earlier model folder to replace)")  # fmt: skip
    others = files_not_of_the_model(path)
    if others:
        listed = ", ".join(others[:3]) + (f", ... ({len(others)} in all)" if len(others) > 3 else "")
        raise ConfigError(f"{path} holds files that are not its model's ({listed}: an evaluation's, or yours); a model "
                          "folder written there would delete them, so it is left as it is: move them, or give a new "
                          "folder")  # fmt: skip


def files_not_of_the_model(path: Path) -> list[str]:
    """The files of a model folder that its checksums do not record (`meter evaluate` writes into DIR/eval by
    default); of a folder written before checksums were recorded, those in its eval/."""
    try:
        recorded = {name for files in json.loads((path / CHECKSUMS).read_text())["parts"].values() for name in files}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return sorted(str(p.relative_to(path)) for p in (path / "eval").rglob("*") if p.is_file())
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if p.is_file() and str(p.relative_to(path)) not in {CHECKSUMS, *recorded})  # fmt: skip


def tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in a (nested) state: about what writing it takes on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


def as_os_error(error: BaseException) -> OSError | None:
    """The operating system's error behind a failed write: an OSError, or safetensors' error that quotes one."""
    if isinstance(error, OSError):
        return error
    found = re.search(r"os error (\d+)", str(error)) if isinstance(error, SafetensorError) else None
    return OSError(int(found[1]), os.strerror(int(found[1]))) if found else None


def read_model_folder(path: str | Path) -> ModelFolder:
    """The folder's description (config.json), without its weights; a DataError naming the path if it is not one."""
    path = Path(path)
    file = path / MODEL_CONFIG
    if not path.exists():
        raise DataError(f"{path}: no such model folder")
    if not file.is_file():
        # a run folder given for its model (train.init_from=RUN): the model folders it holds (model/, best/) named
        inner = sorted(str(p) for p in path.iterdir() if (p / MODEL_CONFIG).is_file()) if path.is_dir() else []
        held = f"; it holds {' and '.join(inner)}" if inner else ""
        raise DataError(f"{path}: not a meter model folder (it needs {MODEL_CONFIG} and {WEIGHTS}){held}")
    if not (path / WEIGHTS).is_file():
        raise DataError(f"{path / WEIGHTS}: missing (a meter model folder holds its weights there)")
    try:
        data = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{file}: not JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != "meter-model":
        raise DataError(f'{file}: not a meter model config (no "format": "meter-model")')
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("heads"), dict):
        raise DataError(f'{file}: a meter model config needs "config" and "heads" mappings')
    try:
        config = config_from_dict(data["config"])
    except ConfigError as error:
        raise DataError(f"{file}: {error}") from None
    return ModelFolder(
        config=config,
        heads=data["heads"],
        answers=data.get("answers", []),
        token_types=data.get("token_types", 2),
        source=data.get("source", ""),
        notes=data.get("notes", []),
        classes=saved_classes(data, str(file)),
        frozen=[str(head) for head in data["frozen"]] if isinstance(data.get("frozen"), list) else None,
    )


def load_weights(
    model: nn.Module,
    path: str | Path,
    skip_heads: bool = False,
    adapt: Callable[[Weights], Weights] | None = None,
    classes: dict[str, list[str]] | None = None,
    refuse_unplaced: bool = False,
) -> list[str]:
    """Loads safetensors weights into `model`; returns what was not loaded. Shapes that differ are skipped.
    `adapt` first fits the weights to the model (fine-tuning at another resolution resamples positions).
    `classes`: the class of each classifier row in the file (its folder's record); the rows load in today's order.
    `refuse_unplaced`: a weight the model has no place for (no such name, another shape) is an error, not skipped."""
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise DataError(f"{path}: not a safetensors weights file ({error})") from None
    weights = in_current_order(weights, classes or {})
    if adapt is not None:
        weights = adapt(weights)
    own = model.state_dict()
    unplaced = _unplaced_weights(weights, model) if refuse_unplaced else []
    if unplaced:
        raise DataError(f"{path}: {len(unplaced)} weights have no place in the model that config.json describes, "
                        f"e.g. {'; '.join(unplaced[:3])}: the weights and config.json are not of one model; put "
                        "back the config.json written with these weights, or export the model again")  # fmt: skip
    usable = {
        k: v for k, v in weights.items()
        if k in own and own[k].shape == v.shape and not (skip_heads and k.startswith("heads."))
    }  # fmt: skip
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def _unplaced_weights(weights: Weights, model: nn.Module) -> list[str]:
    """The weights of a file that `model` has no place for, each with why: a name it lacks, or another shape. Its
    non-persistent buffers (computed, as position ids) are places too: an older transformers saved them."""
    own = model.state_dict()
    computed = {name for name, _ in model.named_buffers()} - set(own)
    unplaced = []
    for name, tensor in sorted(weights.items()):
        if name in own and own[name].shape != tensor.shape:
            unplaced.append(f"{name} (shape {list(tensor.shape)}; the model's is {list(own[name].shape)})")
        elif name not in own and name not in computed:
            unplaced.append(f"{name} (no such weight)")
    return unplaced


def load_model(path: str | Path) -> tuple[Meter, ModelFolder]:
    """Rebuilds the model of a folder (a checkpoint, an export or an import) with its weights; no tokenizer. In
    evaluation mode (no dropout), as transformers' from_pretrained gives a model: `.train()` to train it."""
    path = Path(path)
    description = read_model_folder(path)
    verify_checksums(path, ("model",))
    model_cfg = description.config.model
    model_cfg.vision.weights = None  # the folder's weights replace any pretrained starting point
    model_cfg.text.weights = None
    text_hf_config = read_text_config(path)
    model = build_meter(
        model_cfg, text_hf_config.vocab_size, text_hf_config.pad_token_id, description.heads,
        description.token_types, text_hf_config,
    )  # fmt: skip
    missing = load_weights(model, path / WEIGHTS, classes=description.classes, refuse_unplaced=True)
    if missing:
        raise DataError(f"{path / WEIGHTS}: {len(missing)} weights missing, e.g. {missing[:3]}")
    description.classes = current_classes(description.heads)  # the loaded rows are in today's order
    return model.eval(), description


def read_text_config(path: str | Path) -> PretrainedConfig:
    """The transformers config of the folder's text encoder (text_encoder/config.json)."""
    folder = Path(path) / TEXT_CONFIG
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:  # missing, not JSON, or no model_type
        first = first_line(error) or type(error).__name__
        raise DataError(f"{folder}: not a readable text encoder config ({first})") from None


def load_model_folder(path: str | Path) -> tuple[Meter, PreTrainedTokenizerBase, ModelFolder]:
    """The model of a folder with its tokenizer (a clear error if the folder has none)."""
    read_model_folder(path)  # a path that is not a model folder, or a damaged one, is named as such before its
    verify_checksums(path, ("model",))  # tokenizer is looked for
    if not has_tokenizer(path):
        raise DataError(
            f"{path}: this model folder has no tokenizer; copy the text encoder's tokenizer files into it"
            " (or re-run `meter import ... --tokenizer DIR`)"
        )
    model, description = load_model(path)
    tokenizer = load_tokenizer(path)
    rows = model.text.vocab_size
    if len(tokenizer) > rows:  # its last ids would index past the embedding table: an error deep in a forward pass
        raise DataError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the text embedding has {rows} rows "
                        f"({TEXT_CONFIG}/config.json vocab_size): not this model's tokenizer; copy in the tokenizer "
                        "files the model was trained with")  # fmt: skip
    pad = model.text.model.config.pad_token_id
    if pad is not None and tokenizer.pad_token_id != pad:  # another numbering of the same size or smaller
        raise DataError(f"{path}: the tokenizer pads with token id {tokenizer.pad_token_id} but the text encoder with "
                        f"{pad} ({TEXT_CONFIG}/config.json pad_token_id): not this model's tokenizer; copy in the "
                        "tokenizer files the model was trained with")  # fmt: skip
    return model, tokenizer, description


def names_its_answers(description: ModelFolder) -> bool:
    """Whether a model answers VQA questions: a vqa head and the answer of each of its rows (an official checkpoint
    imported without --vqa-answers has the head and no answers)."""
    rows = description.heads.get("vqa")
    return rows is not None and len(description.answers) == rows


def require_answers(description: ModelFolder, path: str | Path) -> None:
    """VQA needs the answer of every classifier row."""
    rows = description.heads.get("vqa")
    if rows is None:
        raise DataError(f"{path}: this model has no VQA head (heads: {', '.join(description.heads) or 'none'})")
    if len(description.answers) != rows:
        raise DataError(
            f"{path}: the VQA head has {rows} rows but the folder names {len(description.answers)} answers; "
            "import the model with --vqa-answers DIR (the folder of the VQAv2 annotations; or an answer-to-label JSON)"
        )
