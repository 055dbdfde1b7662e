"""Text encoders through Hugging Face transformers, from a local pretrained folder or built from a size preset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from meter.config import TextConfig
from meter.errors import ConfigError, DataError
from meter.registry import Registry

TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


@dataclass(frozen=True)
class TextSpec:
    model_type: str  # the transformers model type
    tokenizer_kind: str  # which tokenizer family the shapes world trains for it: wordpiece or bpe
    sizes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"tiny": TINY, "base": BASE})
    position_offset: int = 0  # RoBERTa numbers positions from pad_token_id + 1
    has_pooler: bool = True


TEXT: Registry[TextSpec] = Registry("text encoder")
TEXT.add("bert", TextSpec("bert", "wordpiece"), "BERT (transformers BertModel)")
TEXT.add("roberta", TextSpec("roberta", "bpe", position_offset=2), "RoBERTa (transformers RobertaModel)")


class TextEncoder(nn.Module):
    """A transformers encoder returning its last hidden states (B, L, width)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.width: int = model.config.hidden_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def text_config(cfg: TextConfig, vocab_size: int, pad_token_id: int) -> PretrainedConfig:
    """The transformers config of a randomly initialised text encoder of the chosen preset."""
    spec = TEXT.get(cfg.name, key="model.text")
    if cfg.size not in spec.sizes:
        raise ConfigError(
            f"model.text.size = {cfg.size!r} is not a size of {cfg.name}; choose one of: " + ", ".join(spec.sizes)
        )
    return AutoConfig.for_model(
        spec.model_type,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        max_position_embeddings=cfg.max_length + spec.position_offset,
        **{**spec.sizes[cfg.size], **cfg.hf_kwargs},
    )


def _load_kwargs(spec: TextSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa"}
    if spec.has_pooler:
        kwargs["add_pooling_layer"] = False  # METER pools the fused stream, not the text encoder's output
    return kwargs


def build_text(
    cfg: TextConfig, vocab_size: int, pad_token_id: int, hf_config: PretrainedConfig | None = None
) -> TextEncoder:
    """From `hf_config` when given (rebuilding a saved model), else pretrained `cfg.weights`, else the preset."""
    spec = TEXT.get(cfg.name, key="model.text")
    if hf_config is not None:
        model = AutoModel.from_config(hf_config, **_load_kwargs(spec))
    elif cfg.weights:
        path = Path(cfg.weights)
        if not (path / "config.json").is_file():
            raise DataError(f"text encoder folder not found or has no config.json: {path} (model.text.weights)")
        model = AutoModel.from_pretrained(str(path), local_files_only=True, **_load_kwargs(spec))
    else:
        model = AutoModel.from_config(text_config(cfg, vocab_size, pad_token_id), **_load_kwargs(spec))
    return TextEncoder(model)
