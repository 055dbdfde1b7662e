"""Text encoders through Hugging Face transformers, from a local pretrained folder or built from a size preset.

Attention runs through SDPA wherever the architecture supports it (DeBERTa's disentangled attention does not: it
runs eagerly). The encoders' own poolers are not built: METER pools the fused stream. `embedding-only` is a BERT
with no transformer layers: word, position and type embeddings with their LayerNorm, nothing else.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import MODEL_MAPPING, AutoConfig, AutoModel, PretrainedConfig

from meter.config import TextConfig
from meter.errors import ConfigError, DataError, first_line
from meter.models.weight_files import unpickler_reason
from meter.registry import Registry

try:
    from huggingface_hub.errors import StrictDataclassError
except ImportError:  # an older huggingface_hub: transformers' configs are not strict dataclasses, nothing raises it

    class StrictDataclassError(Exception):  # type: ignore[no-redef]
        pass


log = logging.getLogger(__name__)

TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
        "max_position_embeddings": 512}  # fmt: skip
DEBERTA = {  # microsoft/deberta-base: relative (disentangled) attention instead of absolute positions
    "relative_attention": True, "max_relative_positions": -1, "position_biased_input": False,
    "pos_att_type": ["c2p", "p2c"], "type_vocab_size": 0, "layer_norm_eps": 1e-7,
}  # fmt: skip


@dataclass(frozen=True)
class TextSpec:
    model_type: str  # the transformers model type
    tokenizer_kind: str  # which tokenizer family the shapes world trains for it: wordpiece or bpe
    sizes: dict[str, dict[str, Any]] = field(default_factory=lambda: {"tiny": TINY, "base": BASE})
    position_offset: int = 0  # RoBERTa numbers positions from pad_token_id + 1
    embedding_only: bool = False  # keep the embeddings of the model, none of its layers


def _sizes(**extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"tiny": {**TINY, **extra.get("tiny", {})}, "base": {**BASE, **extra.get("base", {})}}


TEXT: Registry[TextSpec] = Registry("text encoder")
TEXT.add("bert", TextSpec("bert", "wordpiece"), "BERT (transformers BertModel)")
ROBERTA_BASE = {"max_position_embeddings": 514, "layer_norm_eps": 1e-5, "type_vocab_size": 1}
TEXT.add("roberta", TextSpec("roberta", "bpe", _sizes(base=ROBERTA_BASE), 2), "RoBERTa (transformers RobertaModel)")
TEXT.add(
    "electra",
    TextSpec("electra", "wordpiece", _sizes(tiny={"embedding_size": 128}, base={"embedding_size": 768})),
    "ELECTRA discriminator (transformers ElectraModel)",
)
TEXT.add(
    "albert",
    TextSpec("albert", "wordpiece", _sizes(tiny={"embedding_size": 64}, base={"embedding_size": 128})),
    "ALBERT, one layer shared across depth (transformers AlbertModel)",
)
TEXT.add(
    "deberta", TextSpec("deberta", "bpe", _sizes(tiny=DEBERTA, base=DEBERTA)), "DeBERTa (transformers DebertaModel)"
)
TEXT.add(
    "embedding-only",
    TextSpec("bert", "wordpiece", _sizes(tiny={"num_hidden_layers": 0}, base={"num_hidden_layers": 0}),
             embedding_only=True),
    "a BERT's embeddings (word, position, type; LayerNorm) without its layers",
)  # fmt: skip


class TextEncoder(nn.Module):
    """A transformers encoder returning its last hidden states (B, L, width)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.width: int = model.config.hidden_size
        self.vocab_size: int = model.get_input_embeddings().num_embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def position_offset(model_type: str) -> int:
    """The first position id a transformers model type's encoder uses (RoBERTa's 2: its pad id + 1), read by model
    type: embedding-only keeps the numbering of whichever encoder's folder it comes from."""
    offsets = [entry.target.position_offset for entry in TEXT.entries() if entry.target.model_type == model_type]
    return max(offsets, default=0)


def text_config(cfg: TextConfig, vocab_size: int, pad_token_id: int) -> PretrainedConfig:
    """The transformers config of a randomly initialised text encoder of the chosen preset."""
    spec = TEXT.get(cfg.name, key="model.text")
    if cfg.size not in spec.sizes:
        raise ConfigError(
            f"model.text.size = {cfg.size!r} is not a size of {cfg.name}; choose one of: " + ", ".join(spec.sizes)
        )
    check_hf_kwargs(cfg.hf_kwargs, spec.model_type)
    preset = {**spec.sizes[cfg.size], **cfg.hf_kwargs}
    if spec.embedding_only:
        preset["num_hidden_layers"] = 0
    positions = max(preset.pop("max_position_embeddings", 0), cfg.max_length + spec.position_offset)
    return AutoConfig.for_model(
        spec.model_type, vocab_size=vocab_size, pad_token_id=pad_token_id, max_position_embeddings=positions, **preset
    )


def check_preset_kwargs(cfg: TextConfig) -> None:
    """hf_kwargs the preset would overrule: a position table too short for model.text.max_length (it is made as long
    as that needs). Layer settings on embedding-only are left as they are: one override turns a base's encoder into
    its embeddings alone. Checked before a run, not on loading a folder (one saved before loads as it trained)."""
    spec = TEXT.get(cfg.name, key="model.text")
    needed = cfg.max_length + spec.position_offset
    positions = cfg.hf_kwargs.get("max_position_embeddings")
    if positions is not None and positions < needed:
        raise ConfigError(f"model.text.hf_kwargs.max_position_embeddings = {positions} is fewer positions than "
                          f"model.text.max_length = {cfg.max_length} needs ({needed}); raise it, or leave it out "
                          "(the table is made as long as max_length needs)")  # fmt: skip


def check_hf_kwargs(hf_kwargs: dict[str, Any], model_type: str) -> None:
    """Every key a setting of `model_type`'s config: transformers keeps an unknown one as an attribute nobody reads
    (`intermediate_sise: 64` trained with the preset's 512 and said nothing)."""
    known = set(AutoConfig.for_model(model_type).to_dict())
    for key in hf_kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"model.text.hf_kwargs.{key} is not a setting of {model_type}'s config{hint}; its "
                              f"settings: {', '.join(sorted(known))}")  # fmt: skip


def _model_kwargs(config: PretrainedConfig) -> dict[str, Any]:
    model_class = MODEL_MAPPING[type(config)]
    # fp32 weights whatever the folder's dtype (transformers 5 loads a half-precision folder as saved: trained so,
    # autocast hides it and AdamW's small updates round away); autocast makes the half-precision computation
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa" if model_class._supports_sdpa else "eager",
                              "dtype": torch.float32}  # fmt: skip
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False  # METER pools the fused stream, not the text encoder's output
    return kwargs


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")  # transformers' names


def _read_error(path: Path, error: Exception) -> DataError:
    """A weights file transformers could not read, named (a damaged download, or not a weights file at all)."""
    files = sorted({file.name for pattern in WEIGHT_FILES for file in path.glob(pattern)})
    if not files:
        return DataError(f"{path}: no text encoder weights in this folder (model.safetensors or pytorch_model.bin;"
                         " model.text.weights): copy the pretrained folder's weights file in")  # fmt: skip
    named = path / files[0] if len(files) == 1 else f"{path} ({', '.join(files)})"
    if "ignore_mismatched_sizes" in str(error):  # read, but shaped otherwise than config.json says (transformers)
        return DataError(f"{named}: the text encoder's weights do not have the shapes its config.json gives "
                         "(model.text.weights): the folder's config.json is not these weights'; copy both from one "
                         "pretrained folder")  # fmt: skip
    return DataError(f"{named}: cannot read the text encoder's weights ({unpickler_reason(error)}; "
                     "model.text.weights): a damaged or partly downloaded file, or not a Hugging Face weights file;"
                     " download it again")  # fmt: skip


def _check_pad(cfg: TextConfig, config: PretrainedConfig, pad_token_id: int) -> None:
    """The tokenizer pads with the id the text encoder was trained to pad with: another tokenizer numbers its
    tokens otherwise (and RoBERTa numbers its positions from its pad id)."""
    if config.pad_token_id is None or pad_token_id == config.pad_token_id:  # a config without one: nothing to check
        return
    tokenizer = f"model.text.tokenizer = {cfg.tokenizer!r}" if cfg.tokenizer else "the tokenizer"
    raise ConfigError(f"{tokenizer} pads with token id {pad_token_id}, but the text encoder of model.text.weights = "
                      f"{cfg.weights!r} has pad_token_id {config.pad_token_id} (its config.json): the tokenizer is "
                      "not this encoder's; use the encoder's own tokenizer (leave model.text.tokenizer unset to read"
                      " it from model.text.weights)")  # fmt: skip


# rows a pretrained table may have beyond its tokenizer's tokens (a table padded to a multiple of 64 or 128, an
# encoder saved with sentinels added); a tokenizer reaching far fewer rows numbers its tokens otherwise
SPARE_ROWS = 128


def _check_vocabulary(cfg: TextConfig, config: PretrainedConfig, vocab_size: int, base_vocab: int | None) -> None:
    """The tokenizer's own vocabulary (its added tokens, such as the span sentinels, get rows of their own) fits the
    pretrained embedding table: another tokenizer padding with the same id trained on ids meaning other words."""
    rows = getattr(config, "vocab_size", None)
    if base_vocab is None or not rows:
        return
    tokenizer = f"model.text.tokenizer = {cfg.tokenizer!r}" if cfg.tokenizer else "the tokenizer"
    if base_vocab > rows:
        raise ConfigError(f"{tokenizer} has {base_vocab} tokens, but the text encoder of model.text.weights = "
                          f"{cfg.weights!r} embeds only {rows} (its config.json vocab_size): the tokenizer is not this"
                          " encoder's; use the encoder's own tokenizer (leave model.text.tokenizer unset to read it "
                          "from model.text.weights)")  # fmt: skip
    if rows - vocab_size > SPARE_ROWS:
        log.warning("%s has %d tokens, but the text encoder of model.text.weights = %r embeds %d: is it this "
                    "encoder's tokenizer? (another tokenizer's ids name other words; leave model.text.tokenizer "
                    "unset to read the encoder's own from model.text.weights)", tokenizer, vocab_size, cfg.weights,
                    rows)  # fmt: skip


def _pretrained(
    cfg: TextConfig, spec: TextSpec, vocab_size: int, pad_token_id: int, base_vocab: int | None = None
) -> nn.Module:
    path = Path(cfg.weights)
    if not (path / "config.json").is_file():
        raise DataError(f"text encoder folder not found or has no config.json: {path} (model.text.weights)")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, StrictDataclassError) as error:  # not JSON, no model_type, a wrong type
        reason = first_line(error) or type(error).__name__
        raise DataError(f"{path / 'config.json'}: not a config transformers can read ({reason}) "
                        "(model.text.weights)") from None  # fmt: skip
    if config.model_type != spec.model_type and not spec.embedding_only:
        raise ConfigError(
            f"model.text = {cfg.name!r} but model.text.weights = {str(path)!r} holds a {config.model_type} model"
        )
    _check_pad(cfg, config, pad_token_id)
    _check_vocabulary(cfg, config, vocab_size, base_vocab)
    if spec.embedding_only:
        config.num_hidden_layers = 0
    try:
        model, loading = AutoModel.from_pretrained(
            str(path), config=config, local_files_only=True, output_loading_info=True, **_model_kwargs(config)
        )
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
        raise _read_error(path, error) from None
    # weights the file lacks are left random (a folder of another layout: every tensor under another prefix): an
    # error, as for the vision weights; the pooler (meter has its own) and position ids (a buffer) may be missing
    missing = [k for k in loading["missing_keys"] if not k.startswith("pooler.") and not k.endswith("position_ids")]
    if missing:  # embedding-only too: the embeddings are all it has (the paper's Emb-only row starts from BERT's)
        raise DataError(f"{path}: the text encoder's weights lack {len(missing)} of this model's, e.g. "
                        f"{sorted(missing)[:3]} (model.text.weights): they would train from random values")  # fmt: skip
    if vocab_size > model.get_input_embeddings().num_embeddings:  # tokens added to the tokenizer (sentinels)
        model.resize_token_embeddings(vocab_size)
    return model


def build_text(
    cfg: TextConfig,
    vocab_size: int,
    pad_token_id: int,
    hf_config: PretrainedConfig | None = None,
    base_vocab: int | None = None,
) -> TextEncoder:
    """From `hf_config` when given (rebuilding a saved model), else pretrained `cfg.weights`, else the preset.
    `vocab_size` is the tokenizer's length; `base_vocab` its vocabulary without the tokens added to it (the span
    sentinels), checked against a pretrained embedding table when given."""
    spec = TEXT.get(cfg.name, key="model.text")
    if hf_config is not None:
        model = AutoModel.from_config(hf_config, **_model_kwargs(hf_config))
    elif cfg.weights:
        model = _pretrained(cfg, spec, vocab_size, pad_token_id, base_vocab)
    else:
        config = text_config(cfg, vocab_size, pad_token_id)
        model = AutoModel.from_config(config, **_model_kwargs(config))
    return TextEncoder(model)
