"""The encoder-decoder: cached decoding, greedy and beam search, the class token, and what trains it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from meter.config import Config, DecoderConfig
from meter.errors import ConfigError
from meter.models.decoder import Decoder
from meter.models.folder import ModelFolder, load_model_folder, save_model_folder
from meter.models.generation import beam_search, generate, greedy_search
from meter.models.layers import key_padding_mask
from meter.models.meter import build_meter
from meter.models.tokenizer_folder import load_tokenizer
from meter.objectives.span import add_sentinels
from meter.tasks.build import tokenizer_path
from meter.train.optim import parameter_groups
from meter.validate import validate


def _decoder(vocab: int = 7, width: int = 16, max_length: int = 8) -> Decoder:
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig(layers=2, heads=2, dropout=0.0, max_length=max_length), width, vocab, 0)
    for p in decoder.parameters():  # large weights make the next-token distribution peaked and varied
        torch.nn.init.normal_(p, std=0.5)
    return decoder.eval()


def _memory(batch: int = 3, width: int = 16) -> tuple[torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(1)
    mask = torch.ones(batch, 5, dtype=torch.long)
    mask[0, 3:] = 0  # a padded memory: its masked keys must not count
    return torch.randn(batch, 5, width), key_padding_mask(mask)


def _log_likelihood(decoder: Decoder, memory, mask, start: int, tokens: torch.Tensor, lengths: torch.Tensor):
    """Teacher-forced log-probability of each row's first `lengths` tokens."""
    inputs = torch.cat([torch.full_like(tokens[:, :1], start), tokens[:, :-1]], dim=1)
    with torch.no_grad():
        log_probs = decoder.logits(decoder(inputs, memory, mask)).log_softmax(-1)
    picked = log_probs.gather(2, tokens[:, :, None]).squeeze(2)
    keep = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    return (picked * keep).sum(dim=1)


def test_cached_steps_give_the_logits_of_the_whole_sequence():
    decoder, (memory, mask) = _decoder(), _memory()
    tokens = torch.randint(1, 7, (3, 6))
    with torch.no_grad():
        full = decoder.logits(decoder(tokens, memory, mask))
        logits, state = decoder.step(tokens[:, :2], decoder.start(memory, mask))  # a two-token prompt first
        steps = [logits]
        for t in range(2, 6):
            logits, state = decoder.step(tokens[:, t : t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, 1:], atol=1e-5, rtol=1e-5)


def test_under_bf16_autocast_the_next_token_is_chosen_from_fp32_logits():
    """Greedy and beam search rank the logits: in bf16 (steps of 0.0625 near 10) near tokens tie and the lower id
    wins, so captions written on a GPU differed from fp32 ones. The decoder's layers run in bf16, its logits not."""
    decoder, (memory, mask) = _decoder(vocab=300, width=32), _memory(width=32)
    start = torch.ones(3, 1, dtype=torch.long)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = decoder.step(start, decoder.start(memory, mask))
        trained = decoder.logits(decoder(start, memory, mask))
    assert trained.dtype == torch.bfloat16, "training's logits (every position) stay in bf16"
    assert logits.dtype == torch.float32
    assert logits.unique().numel() > logits.float().bfloat16().unique().numel(), "finer than bf16's grid"


def test_padded_memory_keys_do_not_change_the_decoder_output():
    decoder, (memory, mask) = _decoder(), _memory()
    tokens = torch.randint(1, 7, (3, 4))
    changed = memory.clone()
    changed[0, 3:] = 100.0  # only the masked keys of row 0
    with torch.no_grad():
        torch.testing.assert_close(decoder(tokens, changed, mask)[0], decoder(tokens, memory, mask)[0])


def test_greedy_and_one_beam_agree_and_report_the_sequences_likelihood():
    decoder, (memory, mask) = _decoder(), _memory()
    greedy = greedy_search(decoder, memory, mask, start_id=1, end_id=2, max_length=6)
    beam = beam_search(decoder, memory, mask, start_id=1, end_id=2, max_length=6, beam_size=1, length_penalty=0)
    assert torch.equal(greedy.tokens, beam.tokens) and torch.equal(greedy.lengths, beam.lengths)
    expected = _log_likelihood(decoder, memory, mask, 1, greedy.tokens, greedy.lengths)
    torch.testing.assert_close(greedy.scores, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(beam.scores, expected, atol=1e-4, rtol=1e-4)
    for row, length in zip(greedy.tokens, greedy.lengths.tolist(), strict=True):
        assert (row[length:] == decoder.pad_token_id).all()  # nothing after the end token
        assert 2 not in row[: length - 1].tolist()


def _best_sequence(decoder: Decoder, memory, mask, vocab: int, max_length: int, end: int) -> list[float]:
    """Brute force: the highest log-probability over every sequence of up to `max_length` tokens."""
    best = [float("-inf")] * memory.shape[0]
    for sequence in itertools.product(range(vocab), repeat=max_length):
        length = sequence.index(end) + 1 if end in sequence else max_length
        tokens = torch.tensor([sequence] * memory.shape[0])
        scores = _log_likelihood(decoder, memory, mask, 1, tokens, torch.full((memory.shape[0],), length))
        best = [max(b, float(s)) for b, s in zip(best, scores, strict=True)]
    return best


def test_a_wide_enough_beam_finds_the_most_likely_sequence():
    vocab, max_length = 4, 3
    decoder, (memory, mask) = _decoder(vocab=vocab), _memory()
    beam = beam_search(decoder, memory, mask, start_id=1, end_id=2, max_length=max_length,
                       beam_size=vocab ** (max_length - 1), length_penalty=0)  # fmt: skip
    expected = _best_sequence(decoder, memory, mask, vocab, max_length, end=2)
    torch.testing.assert_close(beam.scores, torch.tensor(expected), atol=1e-4, rtol=1e-4)
    greedy = greedy_search(decoder, memory, mask, start_id=1, end_id=2, max_length=max_length)
    assert (beam.scores >= greedy.scores - 1e-4).all()


def _encoder_decoder(cfg: Config):
    cfg.model.architecture = "encoder-decoder"
    cfg.model.decoder = DecoderConfig(layers=1, heads=2, max_length=12)
    tokenizer = load_tokenizer(tokenizer_path(cfg))
    add_sentinels(tokenizer)
    model = build_meter(cfg.model, len(tokenizer), tokenizer.pad_token_id, {"itm": 2, "vqa": 3})
    return model, tokenizer


def test_classification_heads_read_the_decoders_class_token(micro_config: Config):
    model, tokenizer = _encoder_decoder(micro_config)
    width = micro_config.model.fusion.width
    assert model.heads["vqa"][0].in_features == width  # one token of the fusion width, not two pooled streams
    encoded = tokenizer(["is there a red circle?", "what colour is the square?"], padding=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        fused = model(pixels, encoded["input_ids"], encoded["attention_mask"])
        class_token = model.decoder.classify(*fused.memory())
    torch.testing.assert_close(fused.joint, model.class_pooler(class_token))
    assert model.heads["vqa"](fused.joint).shape == (2, 3)


def test_generation_survives_a_save_and_load(micro_config: Config, tmp_path: Path):
    model, tokenizer = _encoder_decoder(micro_config)
    model.eval()
    save_model_folder(tmp_path / "m", model, tokenizer, ModelFolder(micro_config, {"itm": 2, "vqa": 3}))
    loaded, loaded_tokenizer, _ = load_model_folder(tmp_path / "m")
    assert len(loaded_tokenizer) == len(tokenizer)
    prompt = tokenizer(["", ""], return_tensors="pt")  # [CLS] [SEP]: captioning from the image alone
    pixels = torch.randn(2, 3, 64, 64)
    ids = {"start_id": tokenizer.cls_token_id, "end_id": tokenizer.sep_token_id}
    for beam_size in (1, 3):
        a = generate(model, pixels, prompt["input_ids"], prompt["attention_mask"], beam_size=beam_size, **ids)
        b = generate(loaded.eval(), pixels, prompt["input_ids"], prompt["attention_mask"], beam_size=beam_size, **ids)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.scores, b.scores)
        assert a.tokens.shape[1] <= micro_config.model.decoder.max_length


def test_the_decoder_trains_with_the_cross_modal_learning_rate(micro_config: Config):
    micro_config.model.text.name = "embedding-only"
    model, _ = _encoder_decoder(micro_config)
    micro_config.train.lr_mult_cross_modal, micro_config.train.lr_mult_head = 5.0, 10.0
    groups = parameter_groups(model, micro_config.train)
    part_of = {id(p): g["name"].split("/")[0] for g in groups for p in g["params"]}
    lr_of = {g["name"].split("/")[0]: g["lr"] for g in groups}
    assert {part_of[id(p)] for p in model.decoder.parameters()} == {"cross_modal"}
    assert {part_of[id(p)] for p in model.class_pooler.parameters()} == {"cross_modal"}
    assert {part_of[id(p)] for p in model.text.parameters()} == {"encoder"}  # the (pretrainable) embeddings
    assert lr_of["cross_modal"] == 5 * lr_of["encoder"]
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.decoder.lm_head.bias) in no_decay
    assert id(model.decoder.embeddings.LayerNorm.weight) in no_decay


@pytest.mark.parametrize("objective", ["span", "prefix_lm"])
def test_decoder_objectives_need_the_encoder_decoder(micro_config: Config, objective: str):
    setattr(micro_config.objectives, objective, 1.0)
    with pytest.raises(ConfigError, match=f"objectives.{objective} needs a decoder"):
        validate(micro_config)
    micro_config.model.architecture = "encoder-decoder"
    validate(micro_config)
