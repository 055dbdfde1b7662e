"""A model's tokenizer as files in a local folder (a model folder, a pretrained text encoder's, or the ones
`meter prepare shapes` trains): whether a folder holds one, and loading it, never from a hub."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from meter.errors import DataError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
CLASS_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json")  # one tells transformers which tokenizer


def has_tokenizer(path: str | Path) -> bool:
    """Whether a folder holds tokenizer files (an imported model folder may not)."""
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Loads a Hugging Face tokenizer from a local folder; never from a hub."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(
            f"tokenizer folder not found: {path} (give a local Hugging Face tokenizer folder, e.g. the"
            " `tokenizers/wordpiece` folder that `meter prepare shapes` writes)"
        )
    if not has_tokenizer(path):
        raise DataError(f"{path}: no tokenizer files in this folder (looked for {', '.join(TOKENIZER_FILES)})")
    if not any((path / name).is_file() for name in CLASS_FILES):  # transformers fails naming sentencepiece instead
        present = ", ".join(name for name in ("vocab.txt", "vocab.json", "merges.txt") if (path / name).is_file())
        raise DataError(f"{path}: holds the vocabulary ({present}) but not tokenizer_config.json or config.json, which "
                        "say the tokenizer's class (e.g. RobertaTokenizer); copy the text encoder's whole tokenizer "
                        "folder (tokenizer_config.json, special_tokens_map.json, ...)")  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not tokenizer.is_fast:
        raise DataError(f"{path}: meter needs a fast tokenizer (tokenizer.json) for whole-word masking")
    if tokenizer.pad_token_id is None:  # a batch could not be padded: every prediction failed, as a bug of meter
        raise DataError(f"{path}: the tokenizer has no padding token (a tokenizer.json without its "
                        "tokenizer_config.json?); copy the text encoder's whole tokenizer folder")  # fmt: skip
    return tokenizer
