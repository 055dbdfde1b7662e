"""Text generation with the decoder: greedy and beam search, one encoder pass, cached decoder keys and values.

The image and a text prompt (a question, a caption prefix, or just [CLS] [SEP] for captioning) are encoded and
fused once; the decoder then writes token after token from `start_id` until `end_id` or `max_length` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from meter.models.decoder import Decoder
from meter.models.meter import Meter


@dataclass
class Generated:
    tokens: Tensor  # (B, T) the generated ids, without the start token; padding after `end_id`
    scores: Tensor  # (B,) summed log-probabilities of the tokens (end token included)
    lengths: Tensor  # (B,) tokens generated, end token included


def _finish(tokens: Tensor, scores: Tensor, end_id: int, pad_id: int) -> Generated:
    """Pads everything after the first end token; lengths count up to it."""
    ended = (tokens == end_id).long().cumsum(dim=1)
    after_end = (ended - (tokens == end_id).long()) > 0
    lengths = (~after_end).sum(dim=1)
    return Generated(tokens.masked_fill(after_end, pad_id), scores, lengths)


@torch.no_grad()
def greedy_search(
    decoder: Decoder, memory: Tensor, memory_mask: Tensor | None, start_id: int, end_id: int, max_length: int
) -> Generated:
    rows = memory.shape[0]
    state = decoder.start(memory, memory_mask)
    last = torch.full((rows, 1), start_id, dtype=torch.long, device=memory.device)
    tokens, scores = [], torch.zeros(rows, device=memory.device)
    done = torch.zeros(rows, dtype=torch.bool, device=memory.device)
    for _ in range(max_length):
        logits, state = decoder.step(last, state)
        log_probs = logits.float().log_softmax(dim=-1)
        best = log_probs.argmax(dim=-1)
        scores += torch.where(done, 0.0, log_probs.gather(1, best[:, None]).squeeze(1))
        best = best.masked_fill(done, end_id)
        tokens.append(best)
        done |= best == end_id
        if bool(done.all()):
            break
        last = best[:, None]
    return _finish(torch.stack(tokens, dim=1), scores, end_id, decoder.pad_token_id)


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    memory: Tensor,
    memory_mask: Tensor | None,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int,
    length_penalty: float = 1.0,
) -> Generated:
    """Keeps the `beam_size` best partial sequences by summed log-probability; a finished one stays in the beam at
    its score (it can only be extended by end tokens, at no cost). The answer is the best of the final beams by
    score / length ** length_penalty (0: raw log-probability; 1: per token)."""
    batch, device = memory.shape[0], memory.device
    rows = torch.arange(batch, device=device).repeat_interleave(beam_size)
    state = decoder.start(memory[rows], None if memory_mask is None else memory_mask[rows])
    last = torch.full((batch * beam_size, 1), start_id, dtype=torch.long, device=device)
    scores = torch.full((batch, beam_size), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: only one of them may expand at the first step
    tokens = torch.zeros((batch * beam_size, 0), dtype=torch.long, device=device)
    done = torch.zeros(batch * beam_size, dtype=torch.bool, device=device)
    for _ in range(max_length):
        logits, state = decoder.step(last, state)
        log_probs = logits.float().log_softmax(dim=-1)
        vocab = log_probs.shape[-1]
        finished_row = torch.full_like(log_probs[0], float("-inf"))
        finished_row[end_id] = 0.0
        log_probs = torch.where(done[:, None], finished_row, log_probs)
        candidates = (scores.view(-1, 1) + log_probs).view(batch, beam_size * vocab)
        scores, choice = candidates.topk(beam_size, dim=1)
        source = (torch.arange(batch, device=device)[:, None] * beam_size + choice // vocab).view(-1)
        token = (choice % vocab).view(-1)
        tokens = torch.cat([tokens[source], token[:, None]], dim=1)
        state = state.select(source)
        done = done[source] | (token == end_id)
        if bool(done.all()):
            break
        last = token[:, None]
    finished = _finish(tokens, scores.view(-1), end_id, decoder.pad_token_id)
    normalised = scores / finished.lengths.view(batch, beam_size).float() ** length_penalty
    best = torch.arange(batch, device=device) * beam_size + normalised.argmax(dim=1)
    return Generated(finished.tokens[best], finished.scores[best], finished.lengths[best])


@torch.no_grad()
def generate(
    model: Meter,
    pixels: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    start_id: int,
    end_id: int,
    max_length: int | None = None,
    beam_size: int = 1,
    length_penalty: float = 1.0,
) -> Generated:
    """Writes text for each image and prompt (put the model in eval mode first); at most `max_length` tokens,
    and no more than the decoder has positions for."""
    if model.decoder is None:
        raise ValueError("generation needs a decoder: model.architecture=encoder-decoder")
    max_length = min(max_length or model.decoder.max_length, model.decoder.max_length)
    text = model.encode_text(input_ids, attention_mask)
    memory, memory_mask = model.fuse(text, attention_mask, model.encode_image(pixels), pool=False).memory()
    if beam_size == 1:
        return greedy_search(model.decoder, memory, memory_mask, start_id, end_id, max_length)
    return beam_search(model.decoder, memory, memory_mask, start_id, end_id, max_length, beam_size, length_penalty)
