from pathlib import Path

import pytest
import torch

from meter.data.collate import Collate
from meter.data.tokenizers import train_tokenizer
from meter.models.tokenizer_folder import load_tokenizer
from meter.objectives.mlm import IGNORE, mask_tokens
from meter.objectives.randomness import SampleRandomness
from meter.objectives.seq2seq import Targets, captions_of
from meter.tasks.captioning import caption_targets

TEXTS = ["a small purplediamond next to an orangetriangle", "twocircles and threesquares were drawn"] * 20


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def small_vocab_tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A deliberately small vocabulary, so that long words split into several pieces."""
    folder = tmp_path_factory.mktemp(request.param)
    vocab = 60 if request.param == "wordpiece" else 280
    train_tokenizer(request.param, TEXTS, folder, vocab_size=vocab)
    return load_tokenizer(folder)


def _batch(tokenizer, texts):
    return Collate(tokenizer, max_length=40)([{"text": t, "pixels": torch.zeros(3, 4, 4)} for t in texts])


def _mask(tokenizer, batch, seed, probability=0.15, whole_word=True):
    special = set(tokenizer.all_special_ids)
    replacements = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    random = SampleRandomness.standalone(seed, rows=len(batch["input_ids"]))
    return mask_tokens(
        batch["input_ids"], batch["word_ids"], tokenizer.mask_token_id, replacements, probability, random,
        max_length=40, whole_word=whole_word,
    )  # fmt: skip


def test_words_split_into_several_pieces(small_vocab_tokenizer):
    batch = _batch(small_vocab_tokenizer, TEXTS[:2])
    words = batch["word_ids"][0]
    assert (words[1:] == words[:-1])[words[1:] >= 0].any(), "expected a word of several tokens"


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(small_vocab_tokenizer):
    batch = _batch(small_vocab_tokenizer, TEXTS * 3)
    for seed in range(20):
        _, labels = _mask(small_vocab_tokenizer, batch, seed, probability=0.3)
        masked = labels != IGNORE
        for row in range(len(labels)):
            words = batch["word_ids"][row]
            for word in words[words >= 0].unique():
                pieces = masked[row][words == word]
                assert pieces.all() or not pieces.any()


def test_special_and_padding_tokens_are_never_masked(small_vocab_tokenizer):
    batch = _batch(small_vocab_tokenizer, ["a", *TEXTS[:5]])
    _, labels = _mask(small_vocab_tokenizer, batch, seed=0, probability=0.9)
    assert (labels[batch["word_ids"] < 0] == IGNORE).all()
    assert ((labels != IGNORE).sum(dim=1) > 0).all(), "every sequence gets at least one masked word"


def test_masks_are_fresh_per_draw_and_reproducible_per_seed(small_vocab_tokenizer):
    batch = _batch(small_vocab_tokenizer, TEXTS)
    first, _ = _mask(small_vocab_tokenizer, batch, seed=1)
    again, _ = _mask(small_vocab_tokenizer, batch, seed=1)
    other, _ = _mask(small_vocab_tokenizer, batch, seed=2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_masked_tokens_split_80_10_10(shapes_world: Path):
    tokenizer = load_tokenizer(shapes_world / "tokenizers/wordpiece")
    batch = _batch(tokenizer, ["a red circle at the top left and a small blue square at the bottom"] * 400)
    out, labels = _mask(tokenizer, batch, seed=0, probability=0.5, whole_word=False)
    chosen = labels != IGNORE
    as_mask = (out == tokenizer.mask_token_id) & chosen
    kept = (out == batch["input_ids"]) & chosen
    total = chosen.sum().item()
    assert as_mask.sum().item() / total == pytest.approx(0.8, abs=0.03)
    assert kept.sum().item() / total == pytest.approx(0.1 + 0.1 / len(tokenizer), abs=0.03)
    assert (out[~chosen] == batch["input_ids"][~chosen]).all()


def _spelled_specials(tokenizer) -> list[str]:
    """A caption whose text spells the tokenizer's special tokens mid-sentence."""
    sep, mask, cls, pad = tokenizer.sep_token, tokenizer.mask_token, tokenizer.cls_token, tokenizer.pad_token
    return [f"a {sep} purplediamond {mask} twocircles {cls} drawn {pad}", "twocircles and threesquares"]


def test_special_tokens_written_in_a_caption_are_not_words(small_vocab_tokenizer):
    tokenizer = small_vocab_tokenizer
    batch = _batch(tokenizer, _spelled_specials(tokenizer))
    ids, words, attention = batch["input_ids"], batch["word_ids"], batch["attention_mask"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids)) & (attention == 1)
    assert special[0].sum() == 6, "expected the 4 specials spelled in the text besides the two around it"
    assert (words[special] == -1).all()
    for row in range(len(ids)):  # numbered 0..n-1 without gaps: MLM and span corruption draw among n words
        valid = words[row][words[row] >= 0]
        assert torch.equal(valid.unique(), torch.arange(int(valid.max()) + 1))
    for seed in range(20):
        out, labels = _mask(tokenizer, batch, seed, probability=0.9)
        assert (labels[special] == IGNORE).all()
        assert torch.equal(out[special], ids[special])


def test_decoder_targets_do_not_hold_special_tokens_written_in_a_caption(small_vocab_tokenizer):
    tokenizer = small_vocab_tokenizer
    batch = _batch(tokenizer, _spelled_specials(tokenizer))
    captions = captions_of(batch["input_ids"], batch["word_ids"], batch["attention_mask"])
    targets = caption_targets(captions, Targets.of(tokenizer, max_length=40))
    special = torch.tensor(tokenizer.all_special_ids)
    for labels in targets.labels:
        written = labels[labels != IGNORE]
        assert written[-1] == tokenizer.sep_token_id  # the one end token, after the whole caption
        assert not torch.isin(written[:-1], special).any()


def test_unknown_token_is_a_word(shapes_world: Path):
    tokenizer = load_tokenizer(shapes_world / "tokenizers/wordpiece")
    batch = _batch(tokenizer, ["a red ☃ circle"])
    unknown = batch["input_ids"][0] == tokenizer.unk_token_id
    assert unknown.any()
    assert (batch["word_ids"][0][unknown] >= 0).all()
    masked = [(_mask(tokenizer, batch, seed, probability=0.5)[1][0][unknown] != IGNORE).all() for seed in range(20)]
    assert any(masked), "the unknown token is masked like any word"
