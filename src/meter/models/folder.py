"""A model as a self-contained folder: our config, weights as safetensors, the tokenizer, and what the heads mean.

    config.json               {"config": <the run's config>, "heads": {"mlm": 1000, "itm": 2}, "answers": [...]}
    model.safetensors         the weights
    text_encoder/config.json  the transformers config of the text encoder (it may have come pretrained)
    tokenizer files           as `save_pretrained` writes them

Loading never unpickles: weights come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, PreTrainedTokenizerBase

from meter.config import Config, config_from_dict, to_dict
from meter.data.tokenizers import load_tokenizer
from meter.errors import DataError
from meter.models.meter import Meter, build_meter

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"
TEXT_CONFIG = "text_encoder"


@dataclass
class ModelFolder:
    config: Config
    heads: dict[str, int]
    answers: list[str] = field(default_factory=list)  # VQA: the answer of each classifier row
    token_types: int = 2

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "meter-model",
            "config": to_dict(self.config),
            "heads": self.heads,
            "answers": self.answers,
            "token_types": self.token_types,
        }


def state_dict_for_saving(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous, unshared copies: safetensors refuses tensors that share storage (tied embeddings)."""
    return {k: v.detach().contiguous().clone() if v.data_ptr() else v for k, v in model.state_dict().items()}


def save_model_folder(
    path: str | Path, model: Meter, tokenizer: PreTrainedTokenizerBase, description: ModelFolder
) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(state_dict_for_saving(model), str(path / WEIGHTS))
    tokenizer.save_pretrained(str(path))
    model.text.model.config.save_pretrained(str(path / TEXT_CONFIG))
    (path / MODEL_CONFIG).write_text(json.dumps(description.to_json(), indent=1))


def read_model_folder(path: str | Path) -> ModelFolder:
    path = Path(path)
    file = path / MODEL_CONFIG
    if not file.is_file() or not (path / WEIGHTS).is_file():
        raise DataError(f"{path}: not a meter model folder (it needs {MODEL_CONFIG} and {WEIGHTS})")
    data = json.loads(file.read_text())
    if data.get("format") != "meter-model":
        raise DataError(f'{file}: not a meter model config (no "format": "meter-model")')
    return ModelFolder(
        config=config_from_dict(data["config"]),
        heads=data["heads"],
        answers=data.get("answers", []),
        token_types=data.get("token_types", 2),
    )


def load_weights(model: nn.Module, path: str | Path, skip_heads: bool = False) -> list[str]:
    """Loads safetensors weights into `model`; returns what was not loaded. Shapes that differ are skipped."""
    weights = load_file(str(path))
    own = model.state_dict()
    usable = {
        k: v for k, v in weights.items()
        if k in own and own[k].shape == v.shape and not (skip_heads and k.startswith("heads."))
    }  # fmt: skip
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def load_model_folder(path: str | Path) -> tuple[Meter, PreTrainedTokenizerBase, ModelFolder]:
    """Rebuilds the model of a folder (a checkpoint or an export) with its weights and tokenizer."""
    path = Path(path)
    description = read_model_folder(path)
    tokenizer = load_tokenizer(path)
    model_cfg = description.config.model
    model_cfg.vision.weights = None  # the folder's weights replace any pretrained starting point
    model_cfg.text.weights = None
    text_hf_config = AutoConfig.from_pretrained(str(path / TEXT_CONFIG), local_files_only=True)
    model = build_meter(
        model_cfg, len(tokenizer), tokenizer.pad_token_id, description.heads, description.token_types, text_hf_config
    )
    missing = load_weights(model, path / WEIGHTS)
    if missing:
        raise DataError(f"{path / WEIGHTS}: {len(missing)} weights missing, e.g. {missing[:3]}")
    return model, tokenizer, description
