"""The typed config tree: dataclasses, YAML load/dump, and dotted command-line overrides.

Every part owns its section. An unknown key or a value of the wrong type is a `ConfigError` that names the key and
what is allowed. A string given where a section is expected sets that section's `name`, so `model.vision=swin`
reads naturally on the command line and in YAML.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from meter.atomic_files import write_text_atomically
from meter.errors import ConfigError


@dataclass
class VisionConfig:
    name: str = "vit"  # a registered vision encoder (`meter models`), or timm:<any timm model name>
    size: str = "tiny"  # a preset of that encoder: tiny (tests, CPU demo) or base (the paper)
    image_size: int = 64  # position embeddings (Swin: windows) follow it; pretrained ones are resampled
    weights: str | None = None  # local file (safetensors or state dict, OpenAI CLIP layout too); None = random init
    drop_path: float = 0.0
    conv_stem: bool = False  # ViT family, from scratch: a convolutional stem in place of the patchify layer
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra arguments for timm.create_model


@dataclass
class TextConfig:
    name: str = "bert"  # a registered text encoder (`meter models`): bert, roberta, electra, albert, deberta, ...
    size: str = "tiny"  # tiny or base; ignored when `weights` names a pretrained folder
    weights: str | None = None  # local Hugging Face model folder; None = random init from the preset
    tokenizer: str | None = None  # local Hugging Face tokenizer folder; None = `weights`
    max_length: int = 40
    hf_kwargs: dict[str, Any] = field(default_factory=dict)  # extra transformers config values for the preset


@dataclass
class FusionConfig:
    name: str = "co-attention"  # co-attention or merged
    layers: int = 2
    width: int = 128
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1


@dataclass
class DecoderConfig:
    """The decoder of model.architecture=encoder-decoder; its width is the fusion width."""

    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    max_length: int = 64  # longest decoder sequence (span targets, generated captions), start token included


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    architecture: str = "encoder"  # encoder, or encoder-decoder (a decoder on the fused output)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_pool: str = "first"  # how the image stream is pooled: first token, or mean of all tokens
    # std of the normal init of every randomly initialised part (BERT's 0.02 is the paper's, tuned for width 768;
    # small widths learn faster from a larger one, as the shapes-world recipes use)
    init_std: float = 0.02


@dataclass
class SourceConfig:
    path: str = ""  # a folder written by `meter prepare` (holding manifest.json), relative to data.root
    weight: float = 1.0  # passes per epoch: 1 every pair once, 2 twice, 0.5 half its shards (the rest next epoch)


RANDAUGMENT_MAX_MAGNITUDE = 30  # RandAugment's M: 0 (no change) to 30 (each operation at its full strength)


@dataclass
class AugmentConfig:
    """Augmentation of training images only (never evaluation's); official METER fine-tunes with randaugment 2, 9."""

    # none, randaugment-official (METER's own policy) or randaugment (torchvision's); drawn per sample from
    # train.seed, epoch and index
    name: str = "none"
    num_ops: int = 2  # RandAugment's N: operations applied to each image, at least 1
    magnitude: int = 9  # RandAugment's M, 0..30


@dataclass
class DataConfig:
    root: str = "data/shapes"  # dataset root; the paths below are relative to it
    images: str = "images"
    karpathy: str = "karpathy/dataset_coco.json"
    num_workers: int = 0  # processes decoding images, in training and evaluation alike; 0: the main process
    worker_timeout: float = 300.0  # seconds a data worker may take to give a batch; then the run stops, naming it
    max_bad_samples: float = 0.01  # fraction of samples that may be skipped as unreadable before the run stops
    blind: bool = False  # replace every image by a constant (the text-only baseline)
    image_cache_mb: int = 0  # keep transformed images in memory up to this size (a small corpus: decode once)
    # an image whose header declares more pixels is a bad sample, refused before decoding (training, evaluation,
    # prediction); the default is Pillow's own decompression-bomb guard, which refuses larger images anyway
    max_image_pixels: int = 178_956_970
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # `data.augment=randaugment` (then the cache
    # above holds decoded images, augmented and transformed at each read)
    # pretraining from shards (`meter prepare`) instead of the Karpathy captions above, when sources are given
    sources: list[SourceConfig] = field(default_factory=list)
    shuffle_buffer: int = 1000  # pairs shuffled together in each stream (held as encoded images)
    open_shards: int = 4  # shards each stream reads at once, taken in turn: batches mix shards and sources
    streams_per_rank: int = 8  # shard streams of each process; data.num_workers must divide it


@dataclass
class ObjectivesConfig:
    mlm: float = 1.0  # loss weight; 0 switches the objective off
    itm: float = 1.0
    mim: float = 0.0  # masked image modelling (see mim_target); off as in the paper's best recipe
    mlm_probability: float = 0.15
    # a caption whose draw masked no word gets one (small corpora: every caption teaches); off in the paper's recipes,
    # as the official collator leaves a short caption unmasked (with it, 4-word phrases are masked at 25%, not 15%)
    mlm_at_least_one: bool = True
    whole_word_masking: bool = True
    itm_group_size: int = 16  # negatives come from groups of this many samples (keep the per-process batch a multiple)
    mim_mask_ratio: float = 0.6  # fraction of patches masked per image (SimMIM's; the paper's MIM rows mask 0.15)
    # what a masked patch is predicted as: `pixels` regresses its normalised pixels (SimMIM/MAE); `in-batch` picks it
    # out of every patch of the batch (the paper's masked patch classification with in-batch negatives)
    mim_target: str = "pixels"
    span: float = 0.0  # T5-style span corruption, reconstructed by the decoder (encoder-decoder only)
    prefix_lm: float = 0.0  # the decoder continues a caption from an encoded prefix (encoder-decoder only)
    span_probability: float = 0.15  # fraction of words replaced by sentinels
    span_mean_length: float = 3.0  # mean span length, in words


@dataclass
class VqaConfig:
    train_splits: list[str] = field(default_factory=lambda: ["train2014"])
    eval_split: str = "val2014"
    questions: str = "vqa/v2_OpenEnded_mscoco_{split}_questions.json"
    annotations: str = "vqa/v2_mscoco_{split}_annotations.json"
    image_pattern: str = "{split}/COCO_{split}_{image_id:012d}.png"  # relative to data.images
    # the image folder split of a question split, where they differ: `{split}` in image_pattern becomes it
    image_splits: dict[str, str] = field(default_factory=lambda: {"test-dev2015": "test2015"})  # official layout
    # the leaderboard's file for a split answers every question of a larger one (EvalAI's test-dev phase takes a
    # file for all of test2015 and scores its test-dev part): its other questions get the vocabulary's first answer
    submission_splits: dict[str, str] = field(default_factory=lambda: {"test-dev2015": "test2015"})
    min_answer_count: int = 9  # an answer enters the vocabulary if it is the consensus answer this often
    # the splits whose consensus answers are counted for the vocabulary ([]: vqa.train_splits). The official
    # vocabulary (3,129 answers) counts train2014 and val2014 whatever a model trains on: [train2014, val2014]
    answer_splits: list[str] = field(default_factory=list)
    # the soft targets count the annotators' answers as written, as the official recipe does; true: in the
    # vocabulary's form (metrics.vqa.vocabulary_form: "Two" and "two" count for "2", "a" for "")
    normalize_targets: bool = False
    # the official accuracy's version: official-2021 (today's leaderboard) or official-2017 (papers before 2021)
    metric: str = "official-2021"
    # train also on the questions none of whose annotators' answers is in the vocabulary (all-zero targets); the
    # official recipe (write_vqa.py) leaves them out of training. Evaluation scores every question either way
    keep_untargeted: bool = False


@dataclass
class Nlvr2Config:
    train_split: str = "train"
    eval_split: str = "dev"  # dev or test1 (the public test)
    file: str = "nlvr2/data/{split}.json"  # JSON lines, relative to data.root
    image_dirs: dict[str, str] = field(  # per split, relative to data.root; a line's `directory` is below it
        default_factory=lambda: {"train": "nlvr2/images/train", "dev": "nlvr2/dev", "test1": "nlvr2/test1"}
    )


@dataclass
class SnliVeConfig:
    train_split: str = "train"
    eval_split: str = "dev"  # dev or test
    file: str = "snli_ve/snli_ve_{split}.jsonl"  # relative to data.root
    images: str = "images/flickr30k-images"  # the Flickr30k image folder, relative to data.root
    image_pattern: str = "{image_id}.jpg"  # takes {image_id} (the Flickr30K_ID)


@dataclass
class RetrievalConfig:
    karpathy: str = "karpathy/dataset_flickr30k.json"  # or karpathy/dataset_coco.json, relative to data.root
    images: str = "images/flickr30k-images"  # below it: each entry's filepath/filename (COCO: set to "images")
    train_splits: list[str] = field(default_factory=lambda: ["train"])  # COCO: [train, restval]
    eval_split: str = "test"
    max_eval_images: int = 0  # evaluate on the first N images of eval_split (0: all; Flickr30k 1K, COCO 5K)
    # meter: hard negatives both ways + a contrastive loss that trains the shortlist; official: METER's own recipe
    objective: str = "meter"
    negatives: int = 3  # (meter) hard negatives per positive pair in the ranking loss, in each direction
    itc: float = 1.0  # (meter) weight of the contrastive loss that trains the shortlist's unimodal embeddings; 0: off
    temperature: float = 0.05  # (meter) of that contrastive loss
    negative_texts: int = 15  # (official) random captions of other images ranked against each image's caption
    itm: float = 1.0  # (official) weight of the ITM loss kept on while fine-tuning (the official sum weighs it 1)
    # candidates per query the fused model re-scores (at least 10); 0: every pair; unset: 16 for a model whose
    # projections the contrastive loss trained, else every pair
    shortlist: int | None = None


@dataclass
class CaptioningConfig:
    karpathy: str = "karpathy/dataset_coco.json"  # relative to data.root
    images: str = "images"  # below it: each entry's filepath/filename
    train_splits: list[str] = field(default_factory=lambda: ["train", "restval"])
    eval_split: str = "test"
    max_eval_images: int = 0  # evaluate on the first N images of eval_split (0: all)
    beam_size: int = 1  # 1: greedy search
    length_penalty: float = 1.0  # beam search ranks finished captions by log-probability / length ** this
    max_length: int = 0  # tokens a generated caption may have (0: as many as the decoder has positions)
    tokenizer: str = "auto"  # for BLEU/CIDEr: ptb (Stanford's, needs java), python (PTB rules), auto (ptb if java)


@dataclass
class TrainConfig:
    out: str = "runs/shapes"
    init_from: str | None = None  # a checkpoint folder to start from (fine-tuning a pretrained model)
    max_steps: int = 200  # optimizer steps; the LR schedule spans them
    stop_at: int = 0  # stop after this step (a time-limited job); resume later with --resume latest. 0: max_steps
    batch_size: int = 64  # per process, per micro-batch
    grad_accum: int = 1
    # the samples of one optimizer step over all processes (the official `batch_size`): set, train.grad_accum follows
    # from it, global_batch / (batch_size x processes), whatever number of processes runs; 0: batch_size x processes
    # x grad_accum
    global_batch: int = 0
    lr: float = 1e-4  # the pretrained encoders' learning rate
    lr_mult_cross_modal: float = 5.0  # projections, fusion, poolers
    lr_mult_head: float = 5.0  # task heads
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    clip_grad: float = 1.0  # 0 disables clipping
    checkpoint_every: int = 100
    keep_last: int = 2
    export: bool = True  # at the end of a run, write its final model as a model folder to <out>/model
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda or cuda:N (one process)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), fp32, bf16
    compile: bool = False  # torch.compile the vision encoder, text encoder and fusion
    # torch.compile's mode: default, reduce-overhead (CUDA graphs), max-autotune, max-autotune-no-cudagraphs
    compile_mode: str = "default"
    # recompute each repeated layer's activations in the backward instead of keeping them: far less memory (576 px
    # fine-tuning), about a third more compute; the same gradients
    activation_checkpointing: bool = False
    parallel: str = "ddp"  # under torchrun: ddp (replicated weights) or fsdp (FSDP2 fully_shard: sharded weights)
    max_nonfinite_steps: int = 5  # a non-finite loss skips its step; this many in a row stop the run
    # deterministic kernels (what a bitwise-exact resume needs on a GPU): cuBLAS's fixed workspace, and on CUDA torch's
    # strict mode (attention without split-key atomics; an operation with no deterministic kernel stops the run)
    deterministic: bool = False
    progress: bool = True
    eval_batch_size: int = 128
    # the official choice of the weights to evaluate: score this split (e.g. dev) after each epoch, or every
    # `best_every` steps, and after the last step; keep the best as <out>/best, which the run's evaluation scores.
    # "": the final weights
    best_on: str = ""
    best_every: int = 0  # steps between those evaluations; 0: once an epoch


@dataclass
class Config:
    task: str = "pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    vqa: VqaConfig = field(default_factory=VqaConfig)
    nlvr2: Nlvr2Config = field(default_factory=Nlvr2Config)
    snli_ve: SnliVeConfig = field(default_factory=SnliVeConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    captioning: CaptioningConfig = field(default_factory=CaptioningConfig)


# defaults that changed (setting: old default, new default): a run recorded with the old one reads as recorded with
# the new, being the same run (a resume, a study's cell); each changed only how a finished run is scored
CHANGED_DEFAULTS = {"captioning.tokenizer": ("python", "auto")}


def at_current_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings by dotted key, each at an old default given its new one (CHANGED_DEFAULTS)."""
    return {key: CHANGED_DEFAULTS[key][1] if key in CHANGED_DEFAULTS and value == CHANGED_DEFAULTS[key][0] else value
            for key, value in settings.items()}  # fmt: skip


# settings added with a default other than what runs computed before them (setting: the earlier behaviour): a run
# recorded without one reads as recorded with that value, so that its resume under today's default is a change
ADDED_SETTINGS = {"vqa.keep_untargeted": True}

C = TypeVar("C")


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


PLURALS = {int: "integers", float: "numbers", str: "strings"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        if item is Any:
            return "a list"
        return f"a list of {PLURALS.get(item, _describe(item))}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a section"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp`; returns it converted (int -> float, dict -> dataclass)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r} must be {_describe(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and "name" in _fields(tp):
            return tp(name=value)
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=key)
        raise ConfigError(f"{key} = {value!r} must be a section (a mapping of settings)")
    if origin is list:
        if not isinstance(value, list | tuple):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            scalar = number or (isinstance(value, str) and not set(value) & set("[]{},:"))
            example = f", e.g. [{value}]" if scalar else ""
            raise ConfigError(f"{key} = {value!r} must be {_describe(tp)}{example}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r} must be a mapping")
        key_type, value_type = typing.get_args(tp) or (Any, Any)  # each entry of its types: {train: 5} is no path
        return {_coerce(k, key_type, f"{key} key {k!r}"): _coerce(v, value_type, f"{key}.{k}")
                for k, v in value.items()}  # fmt: skip
    if tp is Any:  # free-form (hf_kwargs, timm_kwargs): YAML 1.1 reads `1e-12` (no dot) as text, Python as a number
        return float(value) if isinstance(value, str) and SCIENTIFIC.fullmatch(value) else value
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key} = {value!r} must be {_describe(tp)}")


SCIENTIFIC = re.compile(r"[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+")


def _unknown_key(key: str, allowed: list[str], written: str = "") -> ConfigError:
    """`written`: the key as a recipe wrote it. A dotted one (`train.lr: 1e-4` at the top level) is an override's
    form: YAML reads it as one key named "train.lr", so the message says how to nest it."""
    parts = written.split(".")
    if len(parts) > 1 and parts[0] in allowed:
        nested = "".join(f"{part}: {{" for part in parts[:-1]) + f"{parts[-1]}: ..." + "}" * (len(parts) - 1)
        return ConfigError(f"{key}: a recipe nests its settings (the dotted form is a command-line override's): write "
                           f"{': then '.join(parts)}: ..., each on its own line indented under the one before, or "
                           f"{nested}; the keys here: {', '.join(allowed)}")  # fmt: skip
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{key} is not a setting{hint}; choose one of: {', '.join(allowed)}")


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Builds the dataclass `cls` from a (possibly partial) mapping; missing keys keep their defaults."""
    fields = _fields(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise _unknown_key(key, list(fields), str(name))
        kwargs[name] = _coerce(value, fields[name], key)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _takes_string(tp: Any) -> bool:
    """Whether a setting of type `tp` can hold text (a section does: its name)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_takes_string(arg) for arg in typing.get_args(tp))
    return tp is str or tp is Any or (dataclasses.is_dataclass(tp) and "name" in _fields(tp))


def _override_value(raw: str, tp: Any, key: str) -> Any:
    """The value of `key=raw` for a setting of type `tp`: `raw` parsed as YAML (`3`, `1e-4`, `[a, b]`, `null`), or,
    where that fails or gives the wrong type and the setting takes text, `raw` as written (`{split}/{id}.png`)."""
    # YAML would read the rest as a comment: `train.out=runs/vqa #2` wrote to runs/vqa (quoted, YAML keeps it)
    if re.search(r"\s#", raw) and raw.strip()[:1] not in ("'", '"'):
        if _takes_string(tp):
            return raw
        raise ConfigError(f"{key} = {raw!r} must be {_describe(tp)} (' #' and what follows is not part of one)")
    try:
        value = yaml.load(raw, Loader=_RecipeLoader) if raw.strip() else ""
    except yaml.YAMLError as error:
        if _takes_string(tp):
            return raw
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{key} = {raw!r} must be {_describe(tp)} (it does not parse as YAML: {problem})") from None
    if raw.strip() in ("None", "none"):  # Python spelling of null, as users type it
        value = None
    if _takes_string(tp) and not (dataclasses.is_dataclass(tp) and isinstance(value, dict)):  # a section's own
        try:  # settings keep their errors
            _coerce(value, tp, key)
        except ConfigError:
            return raw  # `vqa.eval_split=yes` (a YAML bool) or `train.out=a: b` (a YAML mapping) is the text
    return value


def apply_override(cfg: Any, override: str) -> None:
    """Applies one `dotted.key=value` override in place; the value is parsed as YAML (`3`, `1e-4`, `[a, b]`), or
    taken as written when the setting takes text and the YAML reading does not fit it."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value (e.g. train.max_steps=200)")
    key, raw = override.split("=", 1)
    key = key.strip()
    target = cfg
    parts = key.split(".")
    if not all(parts):  # `.train.lr=1`, `train..lr=1`, `=1`: named as written, not as a setting called ""
        raise ConfigError(f"override {override!r}: the key {key!r} has an empty part; write section.setting=value "
                          "(e.g. train.lr=1e-4)")  # fmt: skip
    walked = []
    for part in parts[:-1]:
        walked.append(part)
        fields = _fields(type(target))
        if part not in fields:
            raise _unknown_key(".".join(walked), list(fields))
        target = getattr(target, part)
        if not dataclasses.is_dataclass(target):
            raise ConfigError(f"{'.'.join(walked)} is a value, not a section; it has no {parts[len(walked)]!r}")
    fields = _fields(type(target))
    last = parts[-1]
    if last not in fields:
        raise _unknown_key(key, list(fields))
    value = _override_value(raw, fields[last], key)
    current = getattr(target, last)
    if dataclasses.is_dataclass(current) and isinstance(value, str):
        current.name = _section_name(current, value, key)  # `model.vision=swin` sets the section's name
        return
    if dataclasses.is_dataclass(current) and isinstance(value, dict):  # laid over the section, as a recipe is:
        setattr(target, last, merge(current, value, key))  # `model.fusion={layers: 1}` keeps the rest as it was
        return
    setattr(target, last, _coerce(value, fields[last], key))


class _RecipeLoader(yaml.SafeLoader):
    """Safe YAML (no Python tags) that also refuses a key set twice in one section: the second would silently win;
    and numbers YAML 1.1 reads in another base: `032` is 26 (octal), `1:30` is 90 (base 60)."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        _check_plain_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        _check_plain_number(node)
        return super().construct_yaml_float(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"{key.value!r} is set twice in one section", key.start_mark
                    )
                seen.add(key.value)
        return super().construct_mapping(node, deep)


_RecipeLoader.add_constructor("tag:yaml.org,2002:int", _RecipeLoader.construct_yaml_int)
_RecipeLoader.add_constructor("tag:yaml.org,2002:float", _RecipeLoader.construct_yaml_float)


def _check_plain_number(node: yaml.ScalarNode) -> None:
    text = node.value.replace("_", "").lstrip("+-")
    if ":" in text or re.fullmatch(r"0[0-9]+", text):
        raise yaml.constructor.ConstructorError(
            None, None, f"{node.value!r} is read by YAML as an octal or base-60 number; write it without the leading "
            "zero or the colon (or quote it for text)", node.start_mark,
        )  # fmt: skip


def read_recipe(path: Path) -> Any:
    """A YAML file's content; a ConfigError naming the file and the line of what is wrong with it."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x})") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror})") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = error.problem or error.context or "not valid YAML"
        if "python/" in problem:
            problem += "; a recipe is plain YAML (Python tags are never run)"
        elif error.context and error.context_mark and error.problem:
            problem += f" ({error.context} at line {error.context_mark.line + 1})"
        raise ConfigError(f"{where}: {problem}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None


def load_config(path: str | Path | None, overrides: list[str] = (), base: Config | None = None) -> Config:
    """Reads a YAML recipe (or starts from defaults) and applies `key=value` overrides in order."""
    cfg = copy.deepcopy(base) if base is not None else Config()
    if path is not None:
        path = recipe_file(path)
        data = read_recipe(path)
        if data is None or data == {}:  # a recipe that sets nothing would silently train the defaults
            raise ConfigError(f"{path} holds no settings (an empty recipe would train the defaults); see configs/")
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of settings at the top level")
        try:
            cfg = merge(cfg, data)
        except ConfigError as error:  # a key or value of the file: which file (an override names itself)
            raise ConfigError(f"{path}: {error.args[0]}") from None
    for i, override in enumerate(overrides):
        try:
            apply_override(cfg, override)
        except ConfigError as error:
            whole = _split_override(list(overrides), i)
            if whole is None:
                raise
            raise ConfigError(f"{error.args[0]}; the shell split an unquoted value at its spaces: quote it whole, "
                              f"'{whole}'") from None  # fmt: skip
    return cfg


def _split_override(overrides: list[str], i: int) -> str | None:
    """The override the shell split at a space, when `overrides[i]` is a piece of one: `train.x=[a,` then `b]` (an
    item without `=` is never an override of its own); None when it is not."""
    start = i
    while start > 0 and "=" not in overrides[start]:
        start -= 1
    end = i + 1
    while end < len(overrides) and "=" not in overrides[end]:
        end += 1
    if "=" not in overrides[start] or end - start < 2:
        return None
    return " ".join(overrides[start:end])


def recipe_file(given: str | Path) -> Path:
    """A recipe file as given; a bare name that is not a file here, the recipe shipped in meter/configs (as
    `--config shapes-tiny.yaml` from any folder, as `meter study` finds them; `./name.yaml` is a file's path)."""
    path = Path(given)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder: give a recipe file (.yaml) in it")
    bare = str(given) == path.name
    shipped = Path(str(resources.files("meter.configs").joinpath(path.name)))
    if bare and shipped.is_file():
        return shipped
    if shipped.is_file():  # `configs/shapes-vqa.yaml` from outside the repository: the shipped one by its name
        raise ConfigError(f"config file not found: {path} (a recipe of that name is shipped with meter: "
                          f"--config {path.name})")  # fmt: skip
    shipped_too = " (nor a recipe of that name shipped in meter/configs)" if bare else ""
    raise ConfigError(f"config file not found: {path}{shipped_too}{closest_recipe_hint(path.name)}")


def closest_recipe_hint(name: str) -> str:
    """` (did you mean 'shapes-vqa.yaml'?)`: the shipped recipe nearest `name` (`shapes-vqa`, `shape-vqa.yml`), or
    nothing."""
    shipped = [recipe.name for recipe in resources.files("meter.configs").iterdir() if recipe.name.endswith(".yaml")]
    close = difflib.get_close_matches(name, shipped, n=1) or difflib.get_close_matches(f"{name}.yaml", shipped, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _section_name(section: Any, value: str, key: str) -> str:
    """`key=value` given to a section: its name (`model.vision=swin`), where it has one; a section of settings only
    (`model=merged` meant as `model.fusion=merged`) is named, where its value was dropped silently."""
    fields = _fields(type(section))
    if "name" not in fields:
        raise ConfigError(f"{key} = {value!r}: {key} is a section of settings ({', '.join(fields)}), not a value; "
                          f"set one of them (e.g. {key}.{next(iter(fields))}=...)")  # fmt: skip
    return _coerce(value, str, f"{key}.name")


def merge(cfg: C, data: dict[str, Any], prefix: str = "") -> C:
    """Returns a copy of `cfg` with the settings in `data` laid over it, section by section."""
    fields = _fields(type(cfg))
    updates = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise _unknown_key(key, list(fields), str(name))
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            updates[name] = merge(current, value, key)
        elif dataclasses.is_dataclass(current) and isinstance(value, str):
            updates[name] = dataclasses.replace(current, name=_section_name(current, value, key))
        else:
            updates[name] = _coerce(value, fields[name], key)
    return dataclasses.replace(cfg, **updates)


def save_config(cfg: Any, path: str | Path) -> None:
    write_text_atomically(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_from_dict(data: dict[str, Any]) -> Config:
    return merge(Config(), data)
