"""A model's tokenizer as files in a local folder (a model folder, a pretrained text encoder's, or the ones
`meter prepare shapes` trains): whether a folder holds one, and loading it, never from a hub."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from meter.errors import DataError, first_line

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
CLASS_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json")  # one tells transformers which tokenizer
JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "config.json")


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
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except ImportError as error:  # a library the tokenizer needs (sentencepiece), not a damaged file
        raise DataError(f"{path}: loading its tokenizer needs a library that is not installed: {error}") from None
    except Exception as error:  # a damaged file fails as anything (KeyError, TypeError, the Rust tokenizers' plain
        raise _damaged(path, error) from None  # Exception); nothing but the folder's files is read here
    _check_has_words(path, tokenizer)
    if not tokenizer.is_fast:
        raise DataError(f"{path}: meter needs a fast tokenizer (tokenizer.json) for whole-word masking")
    if tokenizer.pad_token_id is None:  # a batch could not be padded: every prediction failed, as a bug of meter
        raise DataError(f"{path}: the tokenizer has no padding token (a tokenizer.json without its "
                        "tokenizer_config.json?); copy the text encoder's whole tokenizer folder")  # fmt: skip
    return tokenizer


def _damaged(path: Path, error: Exception) -> DataError:
    """A tokenizer transformers could not load, with the file to blame where one can be named."""
    reason = first_line(error) or type(error).__name__
    if "install" in str(error).lower():  # transformers asking for a library: not a damaged copy
        spiece = (path / "spiece.model").is_file()
        return DataError(f"{path}: transformers reads this tokenizer only with a library that is not installed ("
                         f"{reason})" + ("; its spiece.model needs sentencepiece (pip install sentencepiece), or give "
                                         "the folder a tokenizer.json" if spiece else ""))  # fmt: skip
    for name in JSON_FILES:  # a truncated or empty download is not JSON
        file = path / name
        if not file.is_file():
            continue
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as bad:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return DataError(f"{file}: not a readable JSON file ({bad}); a damaged or partly copied tokenizer "
                             "file: copy the text encoder's tokenizer folder again")  # fmt: skip
    present = {name for name in ("vocab.json", "merges.txt", "tokenizer.json") if (path / name).is_file()}
    if present == {"vocab.json"}:  # a BPE vocabulary without its merges
        return DataError(f"{path}: holds vocab.json but not merges.txt (nor tokenizer.json), which a BPE tokenizer "
                         "needs too; copy the text encoder's whole tokenizer folder again")  # fmt: skip
    return DataError(f"{path}: cannot load the tokenizer in this folder ({type(error).__name__}: {reason}); a damaged"
                     " or partly copied file: copy the text encoder's whole tokenizer folder again")  # fmt: skip


def _check_has_words(path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """A folder whose vocabulary file is missing loads as its special tokens alone (tokenizer_config.json names
    them): every word became [UNK], or nothing at all, and training ran on empty text."""
    words = set(tokenizer.get_vocab().values()) - set(tokenizer.all_special_ids)
    if not words:
        raise DataError(f"{path}: the tokenizer has no vocabulary, only its {len(tokenizer)} special tokens (no "
                        "tokenizer.json, vocab.txt, vocab.json or sentencepiece model in the folder?); copy the text "
                        "encoder's whole tokenizer folder")  # fmt: skip
