"""What a resume checks of the data and the tokenizer it goes on with: the data its checkpoint counted its place in
the epoch on (read at the run's data.root, or at another: a requeued job's data copied to a node's own disk), and the
tokenizer its embeddings were trained with."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from meter.data.fingerprint import RECORDS, samples_fingerprint
from meter.errors import DataError
from meter.models.tokenizer_folder import load_tokenizer

SAMPLES = "samples:"  # an earlier checkpoint's record of a map-style dataset: its size alone


def corpus_fingerprint(dataset: Dataset, root: str | Path) -> str:
    """A shard corpus's fingerprint, or a map-style dataset's records (files relative to `root`, data.root), or
    its size where its records are not known."""
    if hasattr(dataset, "fingerprint"):
        return dataset.fingerprint()
    if not hasattr(dataset, "__len__"):
        return ""
    return samples_fingerprint(dataset, root) or f"{SAMPLES}{len(dataset)}"


def _size(fingerprint: str) -> str:
    return fingerprint.removeprefix(SAMPLES).removeprefix(RECORDS).split(":")[0]


def check_same_corpus(checkpoint: Path, recorded: str, corpus: str, root: str, first_root: str) -> None:
    """Refuses to resume on data other than the checkpoint's. `first_root`: the data.root the run started with."""
    moved = Path(root).resolve() != Path(first_root).resolve()  # ./data, data/ and its absolute path are one place
    if moved and recorded.startswith(SAMPLES):  # a size is no proof that the data elsewhere is the same
        raise DataError(
            f"{checkpoint} records only the size of its training data (written by an earlier meter), which cannot "
            f"tell the data at data.root = {root} is the run's: resume with data.root={first_root}"
        )
    if moved and recorded and not recorded.startswith(RECORDS):
        raise DataError(
            f"{checkpoint} was trained on shards (data.sources), which a resume knows by their names and counts, not "
            "their captions and images, and shards indexed in place are read where their manifest names them "
            f"whatever data.root is: a shard corpus does not move; resume with data.root={first_root}"
        )
    if not recorded or recorded == corpus or (recorded.startswith(SAMPLES) and _size(recorded) == _size(corpus)):
        return
    where = f"this run's (data.root = {root})"
    go_on = (f"give data.root the data it ran on{f' (the run started at {first_root})' if moved else ''}, or start "
             "the run again")  # fmt: skip
    if recorded.startswith((SAMPLES, RECORDS)) and _size(recorded) != _size(corpus):
        raise DataError(
            f"{checkpoint} was written while the training data held {_size(recorded)} samples; {where} holds "
            f"{_size(corpus)}: a resume goes on in the data it ran on (its place in the epoch is counted on them); "
            + go_on
        )
    if recorded.startswith(RECORDS):
        absolute = (" (a path set absolute, such as data.images or vqa.questions, stays where it was: give it "
                    "relative to data.root)") if moved else ""  # fmt: skip
        raise DataError(
            f"{checkpoint} was written on other training data: {where} holds as many samples ({_size(corpus)}), "
            f"but other files, texts or labels{absolute} (written again since, or other data): a resume goes on in "
            "the data it ran on (its place in the epoch is counted on them); " + go_on
        )
    raise DataError(
        f"{checkpoint} was written while data.sources held other shards (prepared again since, or another source): "
        "the streams' places in the epoch are counted on the shards, so part of the epoch would be read twice and "
        "part never; resume with the shards it ran on, or start the run again"
    )


def check_same_tokenizer(checkpoint: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuses to resume with a tokenizer other than the one the checkpoint saved: its embeddings are rows of that
    vocabulary (a tokenizer trained again, or another data.root's, gives other ids to the same words; one of another
    size stopped inside the weights' loading). A checkpoint without one is not checked."""
    if not (checkpoint / "tokenizer_config.json").is_file():
        return
    saved, now = load_tokenizer(checkpoint).get_vocab(), tokenizer.get_vocab()
    if saved == now:
        return
    differ = sum(saved.get(token) != index for token, index in now.items())
    raise DataError(
        f"{checkpoint} was trained with another tokenizer than this run's ({len(saved):,} tokens saved, {len(now):,} "
        f"now, {differ:,} of them with another id or new): its embeddings are rows of the saved vocabulary; resume "
        "with the tokenizer it was trained with (the checkpoint holds a copy), or start the run again"
    )
