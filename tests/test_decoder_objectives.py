"""Span corruption and PrefixLM: what the encoder reads and the decoder writes, for WordPiece and BPE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meter.config import Config
from meter.data.collate import Collate
from meter.models.tokenizer_folder import load_tokenizer
from meter.objectives.mlm import IGNORE
from meter.objectives.prefix_lm import split_prefix
from meter.objectives.randomness import SampleRandomness
from meter.objectives.seq2seq import Targets, captions_of
from meter.objectives.span import add_sentinels, corrupt_spans, sentinel_ids, span_mask
from meter.tasks.build import build_model, task_tokenizer
from meter.tasks.pretrain import PretrainTask, pretrain_heads

CAPTIONS = [
    "a small red circle is to the left of a large blue square",
    "there are two green triangles and one yellow circle",
    "one purple square",
    "nothing",
]


def _batch(shapes_world: Path, kind: str):
    tokenizer = load_tokenizer(shapes_world / "tokenizers" / kind)
    add_sentinels(tokenizer)
    encoded = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    word_ids = torch.tensor([[-1 if w is None else w for w in encoded.word_ids(i)] for i in range(len(CAPTIONS))])
    captions = captions_of(encoded["input_ids"], word_ids, encoded["attention_mask"])
    return tokenizer, encoded, captions, Targets.of(tokenizer, 64)


def _rows(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def _targets(labels: torch.Tensor) -> list[list[int]]:
    return [row[row != IGNORE].tolist() for row in labels]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_filling_the_sentinels_with_the_decoders_spans_restores_the_caption(shapes_world: Path, kind: str):
    tokenizer, encoded, captions, targets = _batch(shapes_world, kind)
    sentinels = sentinel_ids(tokenizer)
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        out = corrupt_spans(captions, sentinels, 0.3, 2.0, [generator] * len(captions), targets)
        originals = _rows(encoded["input_ids"], encoded["attention_mask"])
        for original, encoder, target in zip(originals, _rows(out.input_ids, out.attention_mask),
                                             _targets(out.labels), strict=True):  # fmt: skip
            assert target[-1] == targets.end_id
            spans, current = {}, None
            for token in target[:-1]:  # <extra_id_k> opens span k
                if token in sentinels:
                    current = token
                    spans[current] = []
                else:
                    spans[current].append(token)
            assert list(spans) == sentinels[: len(spans)] and all(spans.values())
            restored = [t for token in encoder for t in (spans[token] if token in sentinels else [token])]
            assert restored == original
            # whole words: the token after a span never continues a word of the span
            words = tokenizer.decode(restored, skip_special_tokens=True).split()
            assert words == tokenizer.decode(original, skip_special_tokens=True).split()
        # the teacher-forced decoder input is the start token, then the targets shifted right
        assert (out.decoder_input_ids[:, 0] == targets.start_id).all()
        real = out.labels[:, 1:] != IGNORE  # positions t + 1 of each row's own length
        assert torch.equal(out.decoder_input_ids[:, 1:][real], out.labels[:, :-1][real])


def test_span_masks_keep_their_proportion_and_stay_apart():
    generator = torch.Generator().manual_seed(0)
    for words in (1, 2, 5, 13, 40):
        for _ in range(20):
            mask = span_mask(words, 0.15, 3.0, 100, generator)
            assert len(mask) == words
            assert sum(mask) == min(max(1, round(words * 0.15)), words)
            spans = sum(1 for i, noisy in enumerate(mask) if noisy and (i == 0 or not mask[i - 1]))
            assert spans >= 1 and spans <= max(1, round(sum(mask) / 3.0))


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_prefix_and_continuation_make_the_caption_split_between_words(shapes_world: Path, kind: str):
    tokenizer, encoded, captions, targets = _batch(shapes_world, kind)
    splits = set()
    for seed in range(10):
        out = split_prefix(captions, [torch.Generator().manual_seed(seed)] * len(captions), targets)
        originals = _rows(encoded["input_ids"], encoded["attention_mask"])
        for original, prefix, target in zip(originals, _rows(out.input_ids, out.attention_mask),
                                            _targets(out.labels), strict=True):  # fmt: skip
            assert prefix[0] == original[0] and prefix[-1] == original[-1]  # the encoder keeps [CLS] .. [SEP]
            assert target[-1] == targets.end_id and len(target) >= 2  # at least one word to write
            assert prefix[:-1] + target[:-1] == original[:-1]
            prefix_text = tokenizer.decode(prefix, skip_special_tokens=True)
            target_text = tokenizer.decode(target, skip_special_tokens=True)
            assert (prefix_text + " " + target_text).split() == tokenizer.decode(original[1:-1]).split()
            splits.add(len(prefix))
    assert len(splits) > 3  # the split point varies


def test_long_targets_are_cut_to_the_decoders_positions(shapes_world: Path):
    _, _, captions, targets = _batch(shapes_world, "wordpiece")
    short = Targets(targets.start_id, targets.end_id, targets.pad_id, max_length=4)
    out = split_prefix(captions, [torch.Generator().manual_seed(0)] * len(captions), short)
    assert out.labels.shape[1] <= 4 and out.decoder_input_ids.shape == out.labels.shape


def test_pretraining_an_encoder_decoder_trains_every_objective(micro_config: Config):
    cfg = micro_config
    cfg.model.architecture = "encoder-decoder"
    cfg.objectives.span = cfg.objectives.prefix_lm = 1.0
    tokenizer = task_tokenizer(cfg)
    assert len(sentinel_ids(tokenizer)) == 100
    heads = pretrain_heads(tokenizer, cfg.objectives)
    task = PretrainTask(build_model(cfg, tokenizer, heads), tokenizer, cfg, heads)
    samples = [{"pixels": torch.randn(3, 64, 64), "text": text, "image_id": i} for i, text in enumerate(CAPTIONS)]
    batch = task.prepare(Collate(tokenizer, 40)(samples), SampleRandomness.standalone(0, len(samples)))
    losses, report = task(batch)
    assert set(losses) == {"mlm_loss", "itm_loss", "span_loss", "prefix_lm_loss"}
    assert {"span_accuracy", "prefix_lm_accuracy"} <= set(report)
    sum(losses.values()).backward()
    no_grad = [n for n, p in task.named_parameters() if p.grad is None]
    assert no_grad == [], no_grad


def test_with_cuda_graphs_the_encoder_text_of_span_lm_and_prefix_lm_is_padded_to_a_multiple_of_eight(
    micro_config: Config,
):
    """The loop pads the batch's text to a multiple of 8 for CUDA graphs; the decoder objectives rebuilt their
    encoder text at each batch's own longest length, so the compiled encoder recorded a graph for nearly every step.
    The padding changes nothing the model reads (the mask hides it)."""
    cfg = micro_config
    cfg.model.architecture = "encoder-decoder"
    cfg.objectives.span = cfg.objectives.prefix_lm = 1.0
    tokenizer = task_tokenizer(cfg)
    heads = pretrain_heads(tokenizer, cfg.objectives)
    model = build_model(cfg, tokenizer, heads)
    samples = [{"pixels": torch.randn(3, 64, 64), "text": text, "image_id": i} for i, text in enumerate(CAPTIONS)]
    prepared = {}
    for mode in ("default", "reduce-overhead"):
        cfg.train.compile, cfg.train.compile_mode = True, mode
        task = PretrainTask(model, tokenizer, cfg, heads)
        prepared[mode] = task.prepare(Collate(tokenizer, 40, pad_to_multiple_of=8)(samples),
                                      SampleRandomness.standalone(0, len(samples)))  # fmt: skip
    for name in ("span", "prefix_lm"):
        plain, padded = prepared["default"][f"{name}_input_ids"], prepared["reduce-overhead"][f"{name}_input_ids"]
        assert padded.shape[1] % 8 == 0 and plain.shape[1] % 8 != 0, (plain.shape, padded.shape)
        assert torch.equal(padded[:, : plain.shape[1]], plain)
        mask = prepared["reduce-overhead"][f"{name}_attention_mask"]
        assert torch.equal(mask.sum(1), prepared["default"][f"{name}_attention_mask"].sum(1))


def test_the_encoder_padding_stops_at_the_texts_max_length():
    """The loop's padding to a multiple of 8 stops at max_length; the decoder objectives' went past it (50 -> 56)."""
    from meter.objectives.seq2seq import pack

    targets = Targets(start_id=1, end_id=2, pad_id=0, max_length=20, encoder_multiple=8, encoder_max_length=50)
    assert pack([[5] * 5, [5] * 50], [[3, 2], [3, 2]], targets).input_ids.shape == (2, 50)
    assert pack([[5] * 5, [5] * 9], [[3, 2], [3, 2]], targets).input_ids.shape == (2, 16)


def test_a_captioning_target_is_cut_at_the_decoders_length_not_the_texts(micro_config: Config):
    """The caption came through a Collate cut at model.text.max_length: with 12 text tokens and a decoder of 48,
    a long caption's target stopped mid-sentence (its end token after "and a")."""
    from meter.tasks.captioning import setup_captioning

    cfg = micro_config
    cfg.task, cfg.model.architecture, cfg.model.text.max_length = "captioning", "encoder-decoder", 12
    job = setup_captioning(cfg)
    caption = "a small blue circle at the top left and a large red square at the bottom right of a plain background"
    batch = job.task.prepare(job.collate([{"pixels": torch.zeros(3, 64, 64), "text": caption, "image_id": 0}]),
                             SampleRandomness.standalone(0, 1))  # fmt: skip
    labels = batch["caption_labels"][0]
    written = job.tokenizer.decode(labels[labels != IGNORE][:-1])
    assert written == caption and job.task.targets.max_length >= 24


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_a_caption_decodes_as_it_was_written(kind: str):
    """BERT's WordPiece decoded "double-decker" as "double - decker" (and woman ' s, 3 : 00, u. s.): the PTB
    tokenizer then dropped the pieces, and a caption written exactly as its reference scored CIDEr 330, not 1000."""
    from meter.data.tokenizers import train_bpe, train_wordpiece
    from meter.tasks.captioning import caption_texts

    texts = ["a double-decker bus at 3:00 near the u.s. flag, a woman's 1/2 hat.", "a red bus isn't here.",
             "a clock showing 3.5 hours on car 4,203 at 5 o'clock, 1, 2 and 3."]  # fmt: skip
    tokenizer = (train_wordpiece if kind == "wordpiece" else train_bpe)(texts * 20, 300)
    tokens = tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    assert caption_texts(tokenizer, tokens) == texts


def test_a_wordpiece_caption_with_quote_marks_is_tokenized_for_scoring_as_its_reference():
    """The decoder's clean-up glued every ' to both neighbours ("reads'all way'on", "players'uniforms") and cut
    3.5 into "3. 5": a caption written token for token as its references scored BLEU-4 73.9, CIDEr 715 (not 100 and
    1000). Quote marks now stay spaced (the PTB tokenizer drops them) and the elisions it keeps are joined."""
    from meter.data.tokenizers import train_wordpiece
    from meter.metrics.caption import tokenize_captions
    from meter.tasks.captioning import caption_texts

    texts = ["a stop sign that reads 'all way' on a pole", "the players' uniforms are red", "rock 'n' roll in the '90s",
             "o'hare airport, 'tis the season", "a man’s hat and the dogs' bowls"]  # fmt: skip
    tokenizer = train_wordpiece(texts * 20, 300)
    written = caption_texts(tokenizer, tokenizer(texts, padding=True, return_tensors="pt")["input_ids"])
    as_scored = tokenize_captions({str(i): [text] for i, text in enumerate(written)}, "python")
    assert as_scored == tokenize_captions({str(i): [text] for i, text in enumerate(texts)}, "python"), written
