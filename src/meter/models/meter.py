"""The METER model, composed from a vision encoder, a text encoder, a fusion module, an optional decoder and task
heads."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig

from meter.config import ModelConfig
from meter.errors import ConfigError
from meter.models.decoder import Decoder
from meter.models.fusion import build_fusion
from meter.models.heads import build_head
from meter.models.layers import Pooler, init_bert_weights, key_padding_mask
from meter.models.text import TextEncoder, build_text
from meter.models.vision import VisionEncoder, build_vision

log = logging.getLogger(__name__)
IMAGE_POOLS = ("first", "mean")
ARCHITECTURES = {
    "encoder": "encoder only: heads on the pooled fused features (METER)",
    "encoder-decoder": "a decoder on the fused output: span LM, PrefixLM, captioning; ITM/VQA via a class token",
}


@dataclass
class Fused:
    text: Tensor  # (B, L, width): the fused text stream
    image: Tensor  # (B, N, width): the fused image stream
    joint: Tensor | None  # (B, joint width): what ITM/VQA heads read (pooled text + image, or the decoder's class
    # token); None when fused with pool=False
    text_mask: Tensor | None = None  # (B, L) 1/0: the decoder's cross-attention skips padded text

    def memory(self) -> tuple[Tensor, Tensor | None]:
        return encoder_memory(self.text, self.text_mask, self.image)


def encoder_memory(text: Tensor, text_mask: Tensor | None, image: Tensor) -> tuple[Tensor, Tensor | None]:
    """The encoder output a decoder attends to: text then image tokens, and their key-padding mask."""
    memory = torch.cat([text, image], dim=1)
    if text_mask is None:
        return memory, None
    image_mask = torch.ones(image.shape[:2], dtype=text_mask.dtype, device=image.device)
    return memory, key_padding_mask(torch.cat([text_mask, image_mask], dim=1))


class Meter(nn.Module):
    """Encoders -> projections + modality embeddings -> fusion -> poolers (or a decoder's class token); heads read
    the joint feature."""

    def __init__(
        self,
        vision: VisionEncoder,
        text: TextEncoder,
        fusion: nn.Module,
        width: int,
        heads: dict[str, nn.Module],
        token_types: int = 2,
        image_pool: str = "first",
        decoder: Decoder | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if image_pool not in IMAGE_POOLS:
            raise ConfigError(f"model.image_pool = {image_pool!r}; choose one of: {', '.join(IMAGE_POOLS)}")
        self.vision = vision
        self.text = text
        self.text_proj = nn.Linear(text.width, width)
        self.image_proj = nn.Linear(vision.width, width)
        self.token_type = nn.Embedding(token_types, width)
        self.fusion = fusion
        self.decoder = decoder
        if decoder is None:
            self.text_pooler, self.image_pooler = Pooler(width), Pooler(width)
        else:
            self.class_pooler = Pooler(width)
        self.heads = nn.ModuleDict(heads)
        self.width = width
        self.image_pool = image_pool
        for module in [*self.new_modules(), self.heads]:  # the heads too, as the official code initialises them
            module.apply(functools.partial(init_bert_weights, std=init_std))

    @property
    def joint_width(self) -> int:
        return joint_width(self.width, self.decoder is not None)

    def new_modules(self) -> list[nn.Module]:
        """The parts that never come pretrained with an encoder (they train at a higher learning rate)."""
        poolers = [self.text_pooler, self.image_pooler] if self.decoder is None else [self.decoder, self.class_pooler]
        return [self.text_proj, self.image_proj, self.token_type, self.fusion, *poolers]

    def encode_image(self, pixels: Tensor) -> Tensor:
        if len(pixels) > 1 and pixels.stride(0) == 0:  # one image expanded over the batch: encode it once
            return self.vision(pixels[:1]).expand(len(pixels), -1, -1)
        return self.vision(pixels)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text(input_ids, attention_mask)

    def fuse(
        self, text: Tensor, text_mask: Tensor, image: Tensor, image_token_type: int = 1, pool: bool = True
    ) -> Fused:
        """Fuses encoder outputs; `image_token_type` is 1, or 2 for NLVR2's second image. `pool=False` skips the
        joint feature (a decoder objective does not read it)."""
        text = self.text_proj(text) + self.token_type.weight[0]
        image = self.image_proj(image) + self.token_type.weight[image_token_type]
        text, image = self.fusion(text, text_mask, image, None)
        if not pool:
            return Fused(text, image, None, text_mask)
        if self.decoder is None:
            image_summary = image if self.image_pool == "first" else image.mean(dim=1, keepdim=True)
            joint = torch.cat([self.text_pooler(text), self.image_pooler(image_summary)], dim=-1)
        else:
            joint = self.class_pooler(self.decoder.classify(*encoder_memory(text, text_mask, image)))
        return Fused(text, image, joint, text_mask)

    def decode(self, fused: Fused, decoder_input_ids: Tensor) -> Tensor:
        """The decoder's hidden states (B, T, width) for teacher-forced `decoder_input_ids` on `fused`."""
        if self.decoder is None:
            raise ConfigError("this model has no decoder; set model.architecture=encoder-decoder")
        return self.decoder(decoder_input_ids, *fused.memory())

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Fused:
        return self.fuse(self.encode_text(input_ids, attention_mask), attention_mask, self.encode_image(pixels))


def joint_width(width: int, has_decoder: bool) -> int:
    return width if has_decoder else 2 * width


def parameter_counts(model: Meter) -> dict[str, int]:
    """Parameters by part (each counted once: tied weights are one parameter), and the total."""
    parts = {
        "vision": [model.vision],
        "text": [model.text],
        "projections": [model.text_proj, model.image_proj, model.token_type],
        "fusion": [model.fusion],
        "poolers": [m for m in model.new_modules() if isinstance(m, Pooler)],
        "decoder": [model.decoder] if model.decoder is not None else [],
        "heads": [model.heads],
    }
    counts = {}
    for part, modules in parts.items():
        unique = {id(p): p.numel() for module in modules for p in module.parameters()}
        counts[part] = sum(unique.values())
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def describe_parameters(counts: dict[str, int]) -> str:
    return "parameters: " + ", ".join(f"{part} {n / 1e6:.2f}M" for part, n in counts.items() if n)


def build_meter(
    cfg: ModelConfig,
    vocab_size: int,
    pad_token_id: int,
    heads: dict[str, int],
    token_types: int = 2,
    text_hf_config: PretrainedConfig | None = None,
    base_vocab: int | None = None,
) -> Meter:
    """`heads` maps a head kind (mlm, itm, vqa, ...) to its output size; `text_hf_config` rebuilds a saved text
    encoder exactly (it may have come pretrained, with sizes no preset has); `base_vocab` is the tokenizer's
    vocabulary without its added tokens (checked against a pretrained text encoder's, see `build_text`)."""
    if cfg.architecture not in ARCHITECTURES:
        raise ConfigError(f"model.architecture = {cfg.architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
    width = cfg.fusion.width
    with_decoder = cfg.architecture == "encoder-decoder"
    text = build_text(cfg.text, vocab_size, pad_token_id, text_hf_config, base_vocab)
    # the decoder writes the text encoder's vocabulary (a pretrained one may have more rows than the tokenizer)
    decoder = Decoder(cfg.decoder, width, text.vocab_size, pad_token_id) if with_decoder else None
    model = Meter(
        vision=build_vision(cfg.vision, summary_token=cfg.image_pool == "first"),
        text=text,
        fusion=build_fusion(cfg.fusion),
        width=width,
        heads={kind: build_head(kind, width, size, joint_width(width, with_decoder)) for kind, size in heads.items()},
        token_types=token_types,
        image_pool=cfg.image_pool,
        decoder=decoder,
        init_std=cfg.init_std,
    )
    log.info("%s + %s + %s (%s): %s", cfg.vision.name, cfg.text.name, cfg.fusion.name, cfg.architecture,
             describe_parameters(parameter_counts(model)))  # fmt: skip
    return model
