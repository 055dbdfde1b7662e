"""Tokenizers trained on a corpus with the `tokenizers` library and saved as Hugging Face tokenizer folders.

Two kinds, the two families of the study's text encoders:
- `wordpiece`: BERT-style (lower-cased, `[CLS] ... [SEP]`, `##` continuation pieces);
- `bpe`: RoBERTa-style byte-level BPE (`<s> ... </s>`, `Ġ` marks a leading space).
Both load back with `meter.models.tokenizer_folder.load_tokenizer(folder)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast, PreTrainedTokenizerBase, RobertaTokenizerFast

TOKENIZER_KINDS = ("wordpiece", "bpe")


def _wordpiece_pipeline(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    texts = list(texts)
    tok = _wordpiece_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")))
    # The trainer numbers continuation pieces (##x) in hash order, and merges between equally frequent pairs
    # follow those numbers. Giving every ##x a fixed number first (as a reserved token) makes training
    # deterministic; the vocabulary is then rebuilt without the reservations.
    normalize = tok.normalizer.normalize_str
    characters = sorted({c for text in texts for c in normalize(text) if not c.isspace()})
    reserved = specials + [f"##{c}" for c in characters]
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=reserved, show_progress=False)
    )
    learned = sorted(t for t in tok.get_vocab() if t not in specials)  # WordPiece ids carry no meaning: sorted
    tok = _wordpiece_pipeline(
        Tokenizer(models.WordPiece({t: i for i, t in enumerate(specials + learned)}, unk_token="[UNK]"))
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )  # fmt: skip


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids: 0 = <s>, 1 = pad, 2 = </s>
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    tok.decoder = decoders.ByteLevel()
    return RobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
        mask_token="<mask>",
    )  # fmt: skip


def train_tokenizer(
    kind: str, texts: Iterable[str], out: str | Path, vocab_size: int = 1000
) -> PreTrainedTokenizerBase:
    """Trains a tokenizer of `kind` on `texts` and saves it as a Hugging Face folder at `out`."""
    trainer = {"wordpiece": train_wordpiece, "bpe": train_bpe}.get(kind)
    if trainer is None:
        raise ValueError(f"tokenizer kind {kind!r} is not one of {TOKENIZER_KINDS}")
    tokenizer = trainer(texts, vocab_size)
    tokenizer.save_pretrained(str(out))
    return tokenizer
