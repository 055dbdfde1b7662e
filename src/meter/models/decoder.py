"""The decoder of the encoder-decoder architecture: a transformer decoder on the fused encoder output.

Each layer: causal self-attention, cross-attention to the fused text and image tokens, feed-forward; post-LN
residuals, like the fusion layers. It reads tokens for span reconstruction, PrefixLM and captioning (output
embedding tied to the input one, as T5's), and one learned class token for ITM and VQA (the paper's
encoder-decoder: the text goes to the encoder, a class token to the decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meter.config import DecoderConfig
from meter.errors import ConfigError
from meter.models.heads import in_fp32
from meter.models.layers import LAYER_NORM_EPS, KeyValues, TransformerLayer


class DecoderEmbeddings(nn.Module):
    """Word + learned position embeddings, LayerNorm, dropout (BERT's embedding layout)."""

    def __init__(self, vocab_size: int, width: int, max_length: int, pad_token_id: int, dropout: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_length, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: Tensor, first_position: int = 0) -> Tensor:
        length = input_ids.shape[1]
        if first_position + length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"decoder input of {first_position + length} positions; model.decoder.max_length is "
                f"{self.position_embeddings.num_embeddings}"
            )
        positions = torch.arange(first_position, first_position + length, device=input_ids.device)
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions)))


class LmHead(nn.Module):
    """Dense + GELU + LayerNorm, then the (tied) word embedding matrix and a bias."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: Tensor, embedding: Tensor) -> Tensor:
        return F.linear(self.LayerNorm(F.gelu(self.dense(hidden))), embedding, self.bias)


@dataclass
class DecodingState:
    """What incremental decoding carries from step to step, one row per sequence (beam search reorders rows)."""

    context: list[KeyValues]  # per layer: cross-attention keys/values of the encoder output (computed once)
    context_mask: Tensor | None  # (rows, 1, 1, memory length) boolean, or None when nothing is padded
    past: list[KeyValues] | None = None  # per layer: self-attention keys/values of the positions decoded so far
    length: int = 0  # positions decoded so far

    def select(self, rows: Tensor) -> DecodingState:
        """The sequences of `rows`, each continuing one of its own image's beams (beam search): the image's keys and
        values, alike in all of its rows, are kept as they are (copied, they took a third of a beam step)."""
        past = None if self.past is None else [kv.select(rows) for kv in self.past]
        return DecodingState(self.context, self.context_mask, past, self.length)


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, width: int, vocab_size: int, pad_token_id: int) -> None:
        super().__init__()
        if cfg.layers < 1 or cfg.max_length < 2:
            raise ConfigError("model.decoder needs layers >= 1 and max_length >= 2")
        self.pad_token_id = pad_token_id
        self.max_length = cfg.max_length
        self.embeddings = DecoderEmbeddings(vocab_size, width, cfg.max_length, pad_token_id, cfg.dropout)
        self.class_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.layers = nn.ModuleList(
            TransformerLayer(width, cfg.heads, cfg.mlp_ratio, cfg.dropout, cross=True) for _ in range(cfg.layers)
        )
        self.lm_head = LmHead(width, vocab_size)

    def _run(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None) -> Tensor:
        for layer in self.layers:
            x = layer(x, None, memory, memory_mask, causal=True)
        return x

    def forward(self, input_ids: Tensor, memory: Tensor, memory_mask: Tensor | None) -> Tensor:
        """Hidden states (B, T, width) of teacher-forced `input_ids` (B, T); `memory_mask` is a key-padding mask
        as `key_padding_mask` makes it. Right padding needs no mask: causal attention never looks ahead."""
        return self._run(self.embeddings(input_ids), memory, memory_mask)

    def classify(self, memory: Tensor, memory_mask: Tensor | None) -> Tensor:
        """The decoder's output (B, 1, width) for the class token alone: ITM and VQA read it."""
        return self._run(self.class_token.expand(memory.shape[0], -1, -1), memory, memory_mask)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.lm_head(hidden, self.embeddings.word_embeddings.weight)

    def start(self, memory: Tensor, memory_mask: Tensor | None) -> DecodingState:
        return DecodingState([layer.crossattention.self.keys_values(memory) for layer in self.layers], memory_mask)

    def step(self, input_ids: Tensor, state: DecodingState) -> tuple[Tensor, DecodingState]:
        """Logits (B, vocab) after `input_ids` (B, T), the positions that follow `state`'s; T = 1 after the first
        step. The keys and values of earlier positions come from the state, not recomputed."""
        x = self.embeddings(input_ids, first_position=state.length)
        past = []
        for i, layer in enumerate(self.layers):
            x, kv = layer.step(x, None if state.past is None else state.past[i], state.context[i], state.context_mask)
            past.append(kv)
        new_state = DecodingState(state.context, state.context_mask, past, state.length + input_ids.shape[1])
        return in_fp32(self.logits, x[:, -1]), new_state  # ranked: argmax, top-k
