"""Checks a config before any work starts, so that a mistake fails in the first second with a message naming the
key: names against the registries, every numeric setting's range (setting_ranges.py), the relations between
settings (validate_model.py for the model's), and settings that state an intent the run would silently ignore."""

from __future__ import annotations

import dataclasses
import os
import re
import string

from meter.config import AugmentConfig, Config, DecoderConfig, ObjectivesConfig, RetrievalConfig
from meter.data.augment import AUGMENTATIONS
from meter.data.images import check_pixel_limit
from meter.errors import ConfigError
from meter.metrics.caption import TOKENIZERS
from meter.metrics.retrieval import KS
from meter.metrics.stanford_tokenizer import java_problem
from meter.metrics.vqa import vqa_metric
from meter.models.catalog import ARCHITECTURES
from meter.models.fusion import FUSIONS
from meter.models.meter import IMAGE_POOLS
from meter.models.text import TEXT, check_hf_kwargs, check_preset_kwargs
from meter.models.vision import resolve_vision
from meter.setting_ranges import check_ranges
from meter.tasks.catalog import DOWNSTREAM
from meter.tasks.pretrain import DECODER_OBJECTIVES, check_objectives
from meter.tasks.retrieval import check_settings as check_retrieval
from meter.tasks.retrieval_official import check_official
from meter.train.distributed import check_compile_mode, check_graphs_accumulate, check_parallel
from meter.train.runtime import pick_device, pick_dtype
from meter.validate_model import check_model

TASKS = ("pretrain", *DOWNSTREAM.names())


def validate(cfg: Config) -> None:
    if cfg.task not in TASKS:
        raise ConfigError(f"task = {cfg.task!r}; choose one of: {', '.join(TASKS)}")
    check_ranges(cfg)
    _check_names(cfg)
    _check_training(cfg)
    _check_task(cfg)
    _check_ignored(cfg)
    check_model(cfg, with_decoder=cfg.model.architecture == "encoder-decoder" or cfg.task == "captioning")


def _check_names(cfg: Config) -> None:
    resolve_vision(cfg.model.vision)
    text = TEXT.get(cfg.model.text.name, key="model.text")
    check_hf_kwargs(cfg.model.text.hf_kwargs, text.model_type)
    check_preset_kwargs(cfg.model.text)
    if cfg.model.text.size not in text.sizes:  # with weights too: a misspelt size is named, not left unread
        raise ConfigError(
            f"model.text.size = {cfg.model.text.size!r} is not a size of {cfg.model.text.name}; choose one of: "
            + ", ".join(text.sizes)
        )
    FUSIONS.get(cfg.model.fusion.name, key="model.fusion")
    if cfg.model.architecture not in ARCHITECTURES:
        raise ConfigError(f"model.architecture = {cfg.model.architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
    if cfg.model.image_pool not in IMAGE_POOLS:
        raise ConfigError(f"model.image_pool = {cfg.model.image_pool!r}; choose one of: {', '.join(IMAGE_POOLS)}")
    if cfg.data.augment.name not in AUGMENTATIONS:
        raise ConfigError(f"data.augment = {cfg.data.augment.name!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    pick_dtype(cfg.train.precision, pick_device(cfg.train.device))
    check_parallel(cfg.train.parallel)
    check_compile_mode(cfg.train.compile_mode)
    check_graphs_accumulate(cfg.train)


PATH_SETTINGS = ("data.root", "train.out", "train.init_from", "model.vision.weights", "model.text.weights",
                 "model.text.tokenizer")  # fmt: skip


def _check_paths(cfg: Config) -> None:
    """An empty path read as "not set" (an unset $CKPT: fine-tuned from random weights); a path that is not UTF-8
    (Python hands over the command line's undecodable bytes as lone surrogates, which config.yaml cannot record);
    and `~`, which is no home folder after `key=`, in quotes or in a recipe (nothing expands it: a folder named ~
    was made)."""
    for key in PATH_SETTINGS:
        section, _, name = key.rpartition(".")
        value = getattr(_section(cfg, section), name)
        if value is None:
            continue
        if not str(value).strip():
            raise ConfigError(f"{key} is empty; give a path" + ("" if key in ("data.root", "train.out") else
                                                                 ", or null for none"))  # fmt: skip
        _check_utf8(key, str(value))
        if str(value).startswith("~"):
            raise ConfigError(
                f"{key} = {value!r}: ~ is expanded by the shell only at the start of a word, never after {key}=, in "
                f"quotes or in a recipe; write the home folder out ({key}={os.path.expanduser(value)}), or on the "
                f"command line use $HOME unquoted ({key}=$HOME{str(value)[1:]})"
            )
        if "$" in str(value):  # a recipe's `$SCRATCH/runs`: no shell reads the file, the folder would be named so
            raise ConfigError(f"{key} = {value!r}: variables are not expanded in settings; write the full path")


def _check_utf8(key: str, value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(value[error.start])  # a byte that did not decode, as surrogateescape keeps it; or a recipe's \ud800
        what = f"byte {code - 0xDC00:#04x}" if 0xDC80 <= code <= 0xDCFF else f"a lone surrogate U+{code:04X}"
        try:
            shown = value.encode("utf-8", "surrogateescape")  # the bytes as given
        except UnicodeEncodeError:
            shown = value.encode("utf-8", "backslashreplace")
        raise ConfigError(
            f"{key} = {shown!r} is not UTF-8 ({what}); meter records its "
            "paths as UTF-8 text: give a path whose name is UTF-8 (rename the folder, or link to it from one that is)"
        ) from None


def _section(cfg: Config, dotted: str) -> object:
    section: object = cfg
    for part in dotted.split("."):
        section = getattr(section, part)
    return section


SAMPLE_FIELDS = {"split": "train2014", "image_id": 1}  # of the types the patterns are formatted with
# pattern settings and the fields they are formatted with
PATTERNS = {"vqa.questions": ("split",), "vqa.annotations": ("split",), "vqa.image_pattern": ("split", "image_id"),
            "nlvr2.file": ("split",), "snli_ve.file": ("split",), "snli_ve.image_pattern": ("image_id",)}  # fmt: skip


def _check_patterns(cfg: Config) -> None:
    """A field a pattern does not get (`{splt}`), or a brace out of place, failed as an internal error when the
    first file name was made."""
    for key, allowed in PATTERNS.items():
        section, _, name = key.rpartition(".")
        pattern = getattr(_section(cfg, section), name)
        listed = ", ".join(f"{{{field}}}" for field in allowed)
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None]
            unknown = [field for field in fields if re.split(r"[.\[]", field)[0] not in allowed]
            if unknown:
                raise ConfigError(f"{key} = {pattern!r} has {{{unknown[0]}}}; its fields: {listed}")
            pattern.format(**{field: SAMPLE_FIELDS[field] for field in allowed})
        except (ValueError, IndexError, KeyError) as error:
            raise ConfigError(f"{key} = {pattern!r} is not a pattern ({error}); its fields: {listed}") from None


def _check_training(cfg: Config) -> None:
    _check_paths(cfg)
    _check_patterns(cfg)
    train, data = cfg.train, cfg.data
    if len(train.betas) != 2:
        raise ConfigError(f"train.betas = {train.betas} must be two numbers (AdamW's beta1, beta2), e.g. [0.9, 0.98]")
    check_pixel_limit(data.max_image_pixels)
    for i, source in enumerate(data.sources):
        if not source.path.strip():
            raise ConfigError(f"data.sources[{i}].path is empty; give a folder written by `meter prepare`")
    if data.sources and data.num_workers and data.streams_per_rank % data.num_workers:
        raise ConfigError(
            f"data.num_workers = {data.num_workers} must divide data.streams_per_rank = {data.streams_per_rank}"
            " (each worker reads whole streams)"
        )


def validate_evaluation(cfg: Config) -> None:
    """What `meter evaluate --checkpoint` reads of a config (the model is the folder's): the ranges, the file
    patterns, the task's evaluation settings; before the model loads."""
    check_ranges(cfg)
    _check_patterns(cfg)
    if cfg.task == "vqa":
        vqa_metric(cfg.vqa.metric)
    elif cfg.task == "captioning":
        _check_caption_tokenizer(cfg)


def _check_caption_tokenizer(cfg: Config) -> None:
    if cfg.captioning.tokenizer not in TOKENIZERS:
        raise ConfigError(
            f"captioning.tokenizer = {cfg.captioning.tokenizer!r}; choose one of: {', '.join(TOKENIZERS)}"
        )
    if cfg.captioning.tokenizer == "ptb" and (problem := java_problem()):
        raise ConfigError(
            f"captioning.tokenizer = 'ptb' runs Stanford's PTBTokenizer, which needs java ({problem}); install"
            " java, or use captioning.tokenizer=auto (Java's where there is java) or python"
        )


def _check_unread(cfg: Config) -> None:
    """Settings of an objective this run does not train: refused, naming what reads them (they were accepted, and
    the run's config.yaml recorded a loss that never ran). A pretraining objective switched off keeps its other
    settings: a study's row turns off an objective of a recipe that sets them."""
    objectives, plain = cfg.objectives, ObjectivesConfig()
    if cfg.task != "pretrain":
        official_itm = cfg.task == "retrieval" and cfg.retrieval.objective == "official" and cfg.retrieval.itm > 0
        unread = [field.name for field in dataclasses.fields(ObjectivesConfig)
                  if getattr(objectives, field.name) != getattr(plain, field.name)
                  and not (official_itm and field.name == "itm_group_size")]  # fmt: skip
        if unread:
            raise ConfigError(f"objectives.{unread[0]} = {getattr(objectives, unread[0])!r} is a pretraining setting; "
                              f"task = {cfg.task!r} trains its own loss and never reads it: remove it")  # fmt: skip
    if cfg.task == "retrieval":
        settings, defaults = cfg.retrieval, RetrievalConfig()
        for key, objective in RETRIEVAL_KEYS.items():
            if objective != settings.objective and getattr(settings, key) != getattr(defaults, key):
                raise ConfigError(f"retrieval.{key} = {getattr(settings, key)!r} is read by retrieval.objective = "
                                  f"{objective}; this run's is {settings.objective}: remove it")  # fmt: skip


# retrieval settings read by one retrieval.objective alone
RETRIEVAL_KEYS = {"negatives": "meter", "itc": "meter", "temperature": "meter", "negative_texts": "official",
                  "itm": "official"}  # fmt: skip


def _check_task(cfg: Config) -> None:
    _check_unread(cfg)
    for objective in DECODER_OBJECTIVES:
        if getattr(cfg.objectives, objective) > 0 and cfg.model.architecture != "encoder-decoder":
            raise ConfigError(
                f"objectives.{objective} needs a decoder: set model.architecture=encoder-decoder"
                f" (or objectives.{objective}=0)"
            )
    official = cfg.task == "retrieval" and cfg.retrieval.objective == "official"
    itm = cfg.objectives.itm if cfg.task == "pretrain" else cfg.retrieval.itm if official else 0
    if itm > 0 and cfg.train.batch_size < 2:  # every pair would be a match: ITM would learn to say yes
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size}: ITM draws its mismatched pairs from the batch, "
                          "so it needs at least 2 (use train.grad_accum to keep a small memory footprint)")  # fmt: skip
    if cfg.task == "retrieval" and not official and cfg.train.batch_size < 2:  # one pair: a loss of 0, no gradient
        raise ConfigError(f"train.batch_size = {cfg.train.batch_size}: retrieval's contrastive loss takes its"
                          " negatives from the batch, so it needs at least 2")  # fmt: skip
    if cfg.task == "pretrain":
        check_objectives(cfg.objectives)
    elif cfg.task == "vqa":
        vqa_metric(cfg.vqa.metric)
        if not cfg.vqa.train_splits:
            raise ConfigError("vqa.train_splits is empty; name at least one split to train on (e.g. [train2014])")
        if len(set(cfg.vqa.train_splits)) < len(cfg.vqa.train_splits):  # its questions twice, the answer count halved
            raise ConfigError(f"vqa.train_splits = {cfg.vqa.train_splits} names a split twice")
        if len(set(cfg.vqa.answer_splits)) < len(cfg.vqa.answer_splits):  # its answers counted twice
            raise ConfigError(f"vqa.answer_splits = {cfg.vqa.answer_splits} names a split twice")
    elif cfg.task == "retrieval":
        check_retrieval(cfg)
        if cfg.retrieval.objective == "official":
            check_official(cfg)
        if cfg.retrieval.shortlist and cfg.retrieval.shortlist < max(KS):
            raise ConfigError(
                f"retrieval.shortlist = {cfg.retrieval.shortlist} must be 0 (every pair) or at least {max(KS)}"
            )
    elif cfg.task == "captioning":
        _check_caption_tokenizer(cfg)
        if cfg.model.architecture != "encoder-decoder" and not cfg.train.init_from:  # as the run refuses it
            raise ConfigError("captioning needs a decoder: set model.architecture=encoder-decoder (or train.init_from)")


FILE_SUFFIX = re.compile(r"\.(jsonl?|arrow|parquet|csv|tsv|txt)$", re.IGNORECASE)


def _check_split_name(key: str, split: str, cfg: Config) -> None:
    """A split given as a file's path or name (`snli_ve/snli_ve_dev.jsonl` for dev): the task's pattern makes the
    file name of the split, so the file it looked for was another, named in a message about a missing file."""
    if "/" in split or "\\" in split or FILE_SUFFIX.search(split):
        section = getattr(cfg, cfg.task)
        raise ConfigError(f"{key} = {split!r} is a file's path or name; give the split's name alone, as "
                          f"{cfg.task}.eval_split = {section.eval_split!r} does (meter finds its file)")  # fmt: skip


def _check_ignored(cfg: Config) -> None:
    """Settings that ask for something this run would not do: refused rather than silently dropped."""
    text = cfg.model.text
    if text.hf_kwargs and text.weights and not cfg.train.init_from:
        raise ConfigError(
            f"model.text.hf_kwargs = {text.hf_kwargs} sets up a randomly initialised text encoder; the pretrained one "
            f"of model.text.weights = {text.weights!r} keeps its own config.json, so they would be ignored: remove "
            "them (or edit that config.json)"
        )
    if cfg.data.sources and cfg.task != "pretrain":
        raise ConfigError(
            f"data.sources is read by pretraining only; task = {cfg.task!r} reads its own files ({cfg.task}.*): "
            "remove data.sources from this recipe"
        )
    if cfg.train.best_on and cfg.task == "pretrain":
        raise ConfigError(
            f"train.best_on = {cfg.train.best_on!r} chooses a fine-tuning run's best checkpoint by its task's score; "
            "pretraining has none: remove it (a pretraining run's model is its last)"
        )
    if cfg.train.best_on.lower() in ("null", "none", "~", "false", "no", "off"):  # as YAML's null, typed to turn it off
        raise ConfigError(f"train.best_on = {cfg.train.best_on!r} would be taken for a split's name; to evaluate the "
                          "last weights, leave it empty (train.best_on= or best_on: '')")  # fmt: skip
    if cfg.train.best_on and cfg.task != "pretrain":
        _check_split_name("train.best_on", cfg.train.best_on, cfg)
    decoder, plain_decoder = cfg.model.decoder, DecoderConfig()
    builds_one = cfg.model.architecture == "encoder-decoder" or cfg.task == "captioning" or cfg.train.init_from
    changed = [
        f.name for f in dataclasses.fields(DecoderConfig) if getattr(decoder, f.name) != getattr(plain_decoder, f.name)
    ]
    changed = [key for key in changed if key != "dropout"]  # dropout 0 everywhere is a common override, and harmless
    if changed and not builds_one:  # (with init_from, the folder's architecture decides)
        raise ConfigError(f"model.decoder.{changed[0]} = {getattr(decoder, changed[0])!r} sets up a decoder; "
                          f"model.architecture = {cfg.model.architecture!r} builds none: set "
                          "model.architecture=encoder-decoder, or remove it")  # fmt: skip
    if cfg.train.compile_mode != "default" and not cfg.train.compile:
        raise ConfigError(f"train.compile_mode = {cfg.train.compile_mode!r} is torch.compile's mode; train.compile is "
                          "false, so nothing is compiled: set train.compile=true (or remove compile_mode)")  # fmt: skip
    augment, plain = cfg.data.augment, AugmentConfig()
    if augment.name == "none" and (augment.num_ops, augment.magnitude) != (plain.num_ops, plain.magnitude):
        raise ConfigError(
            f"data.augment.num_ops / magnitude = {augment.num_ops} / {augment.magnitude} set RandAugment, but "
            "data.augment.name is none: name the policy (randaugment-official or randaugment)"
        )
    if cfg.train.best_every and not cfg.train.best_on:
        raise ConfigError(f"train.best_every = {cfg.train.best_every} is how often train.best_on scores the run; "
                          "train.best_on is not set (give the split to choose the best checkpoint on)")  # fmt: skip
