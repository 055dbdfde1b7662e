"""What `meter plan` knows of each task without running it: the data files it reads, how many training examples
they hold (when they exist), its heads, and which passes one training step runs (for the memory estimate).

Each entry mirrors its task module's `setup_*` (tasks/*.py) and takes its constants from there; a task registered
later that has no entry here is planned without heads or data, and the plan says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meter.config import Config
from meter.data.formats.captions import PRETRAIN_SPLITS, read_karpathy
from meter.data.formats.common import distinct
from meter.data.formats.snli_ve import SNLI_VE_LABELS
from meter.data.shard_manifest import MANIFEST, read_manifest
from meter.errors import MeterError
from meter.plan.memory import Forward
from meter.tasks import nlvr2, retrieval, snli_ve
from meter.tasks.build import read_karpathy_splits
from meter.tasks.rank_head import ITM
from meter.tasks.vqa import (
    UNANNOTATED_PREFIX,
    config_vocabulary,
    read_vqa_split,
    training_questions,
    vocabulary_splits,
)

UNKNOWN = "unknown until the data is read"


@dataclass
class DataFacts:
    """The training split as the plan could read it: examples is None when its files are missing or unreadable."""

    examples: int | None
    description: str
    classes: int | None = None  # VQA: the answer vocabulary the run will build


@dataclass
class Head:
    name: str
    size: int | None  # outputs; None: unknown until the data is read
    meaning: str


@dataclass(frozen=True)
class TaskPlan:
    files: Callable[[Config], list[tuple[str, Path]]]  # (config key, path) of every data file or folder it reads
    read: Callable[[Config], DataFacts]  # counts the training examples; raises MeterError when it cannot
    heads: Callable[[Config, int, DataFacts], list[Head]]  # (config, vocabulary size, data)
    forward: Callable[[Config, int], Forward]  # (config, vocabulary size)
    token_types: int = 2
    with_decoder: bool = False  # the task adds a decoder to an encoder-only train.init_from model


def _root(cfg: Config) -> Path:
    return Path(cfg.data.root)


def _captions(records: list, splits: list[str] | tuple[str, ...]) -> DataFacts:
    captions = sum(len(distinct(r.captions)) for r in records)  # the pairs it trains on (CaptionPairs)
    return DataFacts(captions, f"{captions:,} captions of {len(records):,} images ({', '.join(splits)})")


# pretraining ---------------------------------------------------------------------------------------------------


def _pretrain_files(cfg: Config) -> list[tuple[str, Path]]:
    if cfg.data.sources:
        return [(f"data.sources[{i}].path", _root(cfg) / s.path / MANIFEST) for i, s in enumerate(cfg.data.sources)]
    return [("data.karpathy", _root(cfg) / cfg.data.karpathy), ("data.images", _root(cfg) / cfg.data.images)]


def _pretrain_read(cfg: Config) -> DataFacts:
    if cfg.data.sources:  # pairs an epoch, weighted as the shard stream mixes them (ShardCorpus.__len__)
        sources = [(read_manifest(_root(cfg) / s.path), s.weight) for s in cfg.data.sources]
        pairs = round(sum(m.pairs * w for m, w in sources if w > 0))
        return DataFacts(
            pairs,
            f"{pairs:,} pairs an epoch from "
            + ", ".join(f"{m.source} ({m.pairs:,} pairs x {w:g})" for m, w in sources),
        )
    root = _root(cfg)
    return _captions(read_karpathy(root / cfg.data.karpathy, root / cfg.data.images, PRETRAIN_SPLITS), PRETRAIN_SPLITS)


def _pretrain_heads(cfg: Config, vocabulary: int, data: DataFacts) -> list[Head]:
    heads = []  # as tasks.pretrain.pretrain_heads
    if cfg.objectives.mlm > 0:
        heads.append(Head("mlm", vocabulary, "masked-token prediction over the tokenizer's vocabulary"))
    if cfg.objectives.itm > 0:
        heads.append(Head("itm", 2, "image-text match / mismatch"))
    return heads


def span_target_tokens(cfg: Config) -> int:
    """Decoder positions of a span-corruption target: the corrupted words, one sentinel a span, start and end."""
    objectives, text = cfg.objectives, cfg.model.text.max_length
    tokens = math.ceil(text * objectives.span_probability * (1 + 1 / objectives.span_mean_length)) + 2
    return min(tokens, cfg.model.decoder.max_length)


def _pretrain_forward(cfg: Config, vocabulary: int) -> Forward:
    objectives, text = cfg.objectives, cfg.model.text.max_length
    # PretrainTask.forward: one vision pass serves MLM, ITM and the decoder objectives; each of them encodes and
    # fuses its own text; MIM encodes the masked image again; only ITM pools
    runs = [name for name in ("mlm", "itm", "mim", "span", "prefix_lm") if getattr(objectives, name) > 0]
    decoders = {"span": span_target_tokens(cfg), "prefix_lm": min(text // 2 + 2, cfg.model.decoder.max_length)}
    logits = [(objectives.mlm_probability * text, vocabulary)] if objectives.mlm > 0 else []
    logits += [(decoders[name], vocabulary) for name in runs if name in decoders]
    in_batch = objectives.mim > 0 and objectives.mim_target == "in-batch"  # MIM logits over the micro-batch's patches
    return Forward(
        images=1 + (objectives.mim > 0),
        texts=[text] * len(runs),
        fusions=[(1, text, name == "itm") for name in runs],
        decoders=[(decoders[name], text) for name in runs if name in decoders],
        token_logits=logits,
        in_batch_mask_ratio=objectives.mim_mask_ratio if in_batch else 0.0,
    )


# downstream tasks ----------------------------------------------------------------------------------------------


def _one_pass(cfg: Config, vocabulary: int) -> Forward:
    text = cfg.model.text.max_length
    return Forward(images=1, texts=[text], fusions=[(1, text, True)])


def _vqa_files(cfg: Config) -> list[tuple[str, Path]]:
    files = []
    read = [*cfg.vqa.train_splits, *vocabulary_splits(cfg)]
    for split in dict.fromkeys([*read, cfg.vqa.eval_split]):
        files.append((f"vqa.questions ({split})", _root(cfg) / cfg.vqa.questions.format(split=split)))
        if split in read or not split.startswith(UNANNOTATED_PREFIX):  # test-dev's are not published
            files.append((f"vqa.annotations ({split})", _root(cfg) / cfg.vqa.annotations.format(split=split)))
    whole = cfg.vqa.submission_splits.get(cfg.vqa.eval_split)
    if whole:  # the submission answers every question of it
        files.append((f"vqa.questions ({whole}, the submission's)", _root(cfg) / cfg.vqa.questions.format(split=whole)))
    return [*files, ("data.images", _root(cfg) / cfg.data.images)]


def _vqa_read(cfg: Config) -> DataFacts:
    records = [r for split in cfg.vqa.train_splits for r in read_vqa_split(cfg, split)]
    answers = config_vocabulary(cfg, records)
    kept = training_questions(cfg, records, answers)
    dropped = len(records) - len(kept)
    left_out = f", {dropped:,} without a vocabulary answer left out" if dropped else ""
    described = f"{len(kept):,} questions ({', '.join(cfg.vqa.train_splits)}{left_out})"
    return DataFacts(len(kept), described, len(answers))


def _vqa_heads(cfg: Config, vocabulary: int, data: DataFacts) -> list[Head]:
    splits = ", ".join(vocabulary_splits(cfg))
    rule = f"answers given as the consensus at least {cfg.vqa.min_answer_count} times in {splits}"
    return [Head("vqa", data.classes, rule)]


def _nlvr2_files(cfg: Config) -> list[tuple[str, Path]]:
    files = []
    for split in dict.fromkeys([cfg.nlvr2.train_split, cfg.nlvr2.eval_split]):
        files.append((f"nlvr2.file ({split})", _root(cfg) / cfg.nlvr2.file.format(split=split)))
        if split in cfg.nlvr2.image_dirs:
            files.append((f"nlvr2.image_dirs ({split})", _root(cfg) / cfg.nlvr2.image_dirs[split]))
    return files


def _nlvr2_read(cfg: Config) -> DataFacts:
    records = nlvr2.read_nlvr2_split(cfg, cfg.nlvr2.train_split)
    return DataFacts(len(records), f"{len(records):,} sentence-image-pair examples ({cfg.nlvr2.train_split})")


def _nlvr2_forward(cfg: Config, vocabulary: int) -> Forward:
    text = cfg.model.text.max_length  # Nlvr2Task.logits: one text pass, two images, two pooled fusions
    return Forward(images=2, texts=[text], fusions=[(1, text, True), (1, text, True)])


def _snli_ve_files(cfg: Config) -> list[tuple[str, Path]]:
    splits = dict.fromkeys([cfg.snli_ve.train_split, cfg.snli_ve.eval_split])
    files = [(f"snli_ve.file ({split})", _root(cfg) / cfg.snli_ve.file.format(split=split)) for split in splits]
    return [*files, ("snli_ve.images", _root(cfg) / cfg.snli_ve.images)]


def _snli_ve_read(cfg: Config) -> DataFacts:
    records = snli_ve.read_snli_ve_split(cfg, cfg.snli_ve.train_split)
    return DataFacts(len(records), f"{len(records):,} image-hypothesis examples ({cfg.snli_ve.train_split})")


def _karpathy_files(section: str) -> Callable[[Config], list[tuple[str, Path]]]:
    def files(cfg: Config) -> list[tuple[str, Path]]:
        settings = getattr(cfg, section)
        return [
            (f"{section}.karpathy", _root(cfg) / settings.karpathy),
            (f"{section}.images", _root(cfg) / settings.images),
        ]

    return files


def _karpathy_read(section: str) -> Callable[[Config], DataFacts]:
    def read(cfg: Config) -> DataFacts:
        splits = getattr(cfg, section).train_splits
        return _captions(read_karpathy_splits(cfg, section, splits), splits)

    return read


def _retrieval_heads(cfg: Config, vocabulary: int, data: DataFacts) -> list[Head]:
    heads = [Head(retrieval.HEAD, 1, "one matching score per image-text pair")]
    if cfg.retrieval.objective == "official" and cfg.retrieval.itm > 0:  # retrieval_official.official_heads
        heads.append(Head(ITM, 2, "image-text match / mismatch, trained beside the ranking (retrieval.itm)"))
    return heads


def _retrieval_forward(cfg: Config, vocabulary: int) -> Forward:
    """RetrievalTask.forward: each pair's positive and `negatives` hard negatives in each direction are fused. The
    official objective (OfficialRetrievalTask.forward): each image with its caption and `negative_texts` others,
    every one encoded and fused, and with ITM one more fused pair per image."""
    text, settings = cfg.model.text.max_length, cfg.retrieval
    if settings.objective == "official":
        candidates = 1 + settings.negative_texts
        fusions = [(candidates, text, True)] + ([(1, text, True)] if settings.itm > 0 else [])
        return Forward(images=1, texts=[text] * candidates, fusions=fusions, texts_together=candidates)
    negatives = min(cfg.retrieval.negatives, cfg.train.batch_size - 1)
    fusions = [(1 + 2 * negatives, text, True)] if negatives > 0 else []
    return Forward(images=1, texts=[text], fusions=fusions)


def _captioning_forward(cfg: Config, vocabulary: int) -> Forward:
    """The encoder reads the special tokens only; the decoder writes the caption (teacher-forced)."""
    prompt, caption = 2, min(cfg.model.text.max_length + 1, cfg.model.decoder.max_length)
    return Forward(
        images=1,
        texts=[prompt],
        fusions=[(1, prompt, False)],
        decoders=[(caption, prompt)],
        token_logits=[(caption, vocabulary)],
    )


def _fixed_heads(name: str, classes: int, meaning: str) -> Callable[[Config, int, DataFacts], list[Head]]:
    return lambda cfg, vocabulary, data: [Head(name, classes, meaning)]


TASK_PLANS: dict[str, TaskPlan] = {
    "pretrain": TaskPlan(_pretrain_files, _pretrain_read, _pretrain_heads, _pretrain_forward),
    "vqa": TaskPlan(_vqa_files, _vqa_read, _vqa_heads, _one_pass),
    "nlvr2": TaskPlan(
        _nlvr2_files,
        _nlvr2_read,
        _fixed_heads(nlvr2.Nlvr2Task.head, len(nlvr2.CLASSES), "true / false of the image pair (two joint features)"),
        _nlvr2_forward,
        token_types=nlvr2.TOKEN_TYPES,
    ),
    "snli_ve": TaskPlan(
        _snli_ve_files,
        _snli_ve_read,
        _fixed_heads(snli_ve.SnliVeTask.head, len(SNLI_VE_LABELS), " / ".join(SNLI_VE_LABELS)),
        _one_pass,
    ),
    "retrieval": TaskPlan(
        _karpathy_files("retrieval"),
        _karpathy_read("retrieval"),
        _retrieval_heads,
        _retrieval_forward,
    ),
    "captioning": TaskPlan(
        _karpathy_files("captioning"),
        _karpathy_read("captioning"),
        lambda cfg, vocabulary, data: [],
        _captioning_forward,
        with_decoder=True,
    ),
}


def _unplanned(name: str) -> TaskPlan:
    def read(cfg: Config) -> DataFacts:
        raise MeterError(f"`meter plan` does not know how task {name!r} reads its data")

    return TaskPlan(lambda cfg: [], read, lambda cfg, vocabulary, data: [], _one_pass)


def task_plan(name: str) -> TaskPlan:
    return TASK_PLANS.get(name) or _unplanned(name)


def read_data(cfg: Config, plan: TaskPlan) -> DataFacts:
    """The training split's size when its files exist and read; else why it is unknown (the readers name the missing
    file)."""
    try:
        return plan.read(cfg)
    except MeterError as error:
        return DataFacts(None, f"unknown ({error})")
