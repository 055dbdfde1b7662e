"""The recipes in configs/: every one is valid, the shapes-world versions train, and the full-size paper models have
the public architectures' sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm

from meter.cli import main as meter_main
from meter.config import load_config
from meter.models.meter import build_meter, parameter_counts
from meter.models.vision import build_vision
from meter.validate import validate

CONFIGS = Path(__file__).parents[1] / "configs"
PAPER = ["clip16-roberta-pretrain", "clip16-roberta-pretrain-14m", "swinb-roberta-pretrain",
         "clip16-roberta-merged-pretrain", "clip16-roberta-encdec-pretrain"]  # fmt: skip
FINETUNE = ["clip16-roberta-vqa", "clip16-roberta-nlvr2", "clip16-roberta-snli-ve", "clip16-roberta-f30k",
            "clip16-roberta-coco-retrieval"]  # fmt: skip
SHAPES = ["shapes-clip16-roberta", "shapes-swinb-roberta", "shapes-clip16-roberta-merged",
          "shapes-clip16-roberta-encdec"]  # fmt: skip
ROBERTA_VOCAB, ROBERTA_PAD = 50265, 1


def _paper_model(name: str):
    cfg = load_config(CONFIGS / f"{name}.yaml", ["model.vision.weights=null", "model.text.weights=null"])
    return cfg, build_meter(cfg.model, ROBERTA_VOCAB, ROBERTA_PAD, {"mlm": ROBERTA_VOCAB, "itm": 2})


def _bert_layer(width: int = 768, inner: int = 3072, cross: bool = True) -> int:
    """Parameters of one METER fusion layer (BERT layout): attention(s) with output LayerNorm, then the FFN."""
    attention = 4 * (width * width + width) + 2 * width
    ffn = width * inner + inner + inner * width + width + 2 * width
    return attention * (2 if cross else 1) + ffn


@pytest.mark.parametrize("name", PAPER + FINETUNE + SHAPES)
def test_every_recipe_is_valid(name: str):
    validate(load_config(CONFIGS / f"{name}.yaml"))


def test_every_recipe_in_the_folder_is_listed_here():
    assert {p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("shapes-")} == set(PAPER + FINETUNE)


@pytest.mark.parametrize("name", PAPER + FINETUNE)
def test_the_full_size_recipes_follow_the_official_runs(name: str):
    """CLIP built with 11 of its 12 blocks, no gradient clipping, the official global batch, the 4M corpus and the
    official collator's MLM draw for pretraining, and RandAugment(2, 9) for fine-tuning."""
    cfg = load_config(CONFIGS / f"{name}.yaml")
    train = cfg.train
    assert train.clip_grad == 0
    global_batch = train.global_batch  # on any number of processes (its micro-batches: tests/test_global_batch.py)
    if cfg.task == "pretrain":
        assert global_batch == 4096
        assert [s.path for s in cfg.data.sources][:4] == ["shards/coco", "shards/vg", "shards/sbu", "shards/cc"]
        assert cfg.objectives.mlm == 0 or not cfg.objectives.mlm_at_least_one  # a caption may draw no masked word
    else:
        assert global_batch == {"vqa": 512, "nlvr2": 256, "snli_ve": 64, "retrieval": 512}[cfg.task]
        augment = cfg.data.augment
        assert (augment.name, augment.num_ops, augment.magnitude) == ("randaugment-official", 2, 9)
        assert train.init_from == "runs/clip16-roberta-pretrain/model"
    if cfg.model.vision.name == "clip-vit":
        assert cfg.model.vision.timm_kwargs["depth"] == 11
    else:
        assert (cfg.model.image_pool, cfg.model.vision.drop_path) == ("mean", 0.1)


@pytest.mark.parametrize("name", SHAPES)
def test_every_shapes_recipe_pretrains(shapes_world: Path, tmp_path: Path, name: str):
    code = meter_main([
        "pretrain", "--config", str(CONFIGS / f"{name}.yaml"), "train.max_steps=2", "train.batch_size=4",
        f"data.root={shapes_world}", f"train.out={tmp_path / 'run'}", "train.progress=false",
    ])  # fmt: skip
    assert code == 0
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_paper_model_has_the_public_sizes_by_part(caplog: pytest.LogCaptureFixture):
    """CLIP-ViT-B/16 at 288 px (11 of its 12 blocks, as the official code builds it) + RoBERTa-base + 6 co-attention
    layers per stream, width 768."""
    caplog.set_level("INFO", logger="meter.models.meter")
    _, model = _paper_model("clip16-roberta-pretrain")
    counts = parameter_counts(model)
    # OpenAI CLIP ViT-B/16's image tower has 86,192,640 parameters at 224 px, its 512-wide output projection
    # (393,216) included; METER drops the projection and the last of the 12 blocks, and 288 px adds
    # (18^2 - 14^2) positions of 768
    block = 3 * 768 * 768 + 3 * 768 + 768 * 768 + 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
    assert counts["vision"] == 86_192_640 - 768 * 512 - block + (18**2 - 14**2) * 768 == 78_809_856
    # roberta-base has 124,645,632 parameters with its pooler (768 x 768 + 768), which METER does not use
    assert counts["text"] == 124_645_632 - (768 * 768 + 768) == 124_055_040
    assert counts["fusion"] == 2 * 6 * _bert_layer() == 113_421_312
    assert counts["projections"] == 2 * (768 * 768 + 768) + 2 * 768
    assert counts["poolers"] == 2 * (768 * 768 + 768)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert 318e6 < counts["total"] - counts["heads"] < 319e6  # the heads: MLM over RoBERTa's 50,265 words, ITM
    assert "vision 78.81M, text 124.06M, projections 1.18M, fusion 113.42M" in caplog.text  # printed at build


@pytest.mark.slow
def test_swin_b_at_384_px_is_the_public_window_12_architecture():
    cfg = load_config(CONFIGS / "swinb-roberta-pretrain.yaml", ["model.vision.weights=null"])
    ours = build_vision(cfg.model.vision).backbone.state_dict()
    public = timm.create_model("swin_base_patch4_window12_384", pretrained=False, num_classes=0).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in public.items()}
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in public.values())


@pytest.mark.slow
def test_the_merged_and_encoder_decoder_variants_differ_from_the_main_model_only_where_expected():
    _, merged = _paper_model("clip16-roberta-merged-pretrain")
    assert parameter_counts(merged)["fusion"] == 6 * _bert_layer(cross=False)
    cfg, encdec = _paper_model("clip16-roberta-encdec-pretrain")
    counts = parameter_counts(encdec)
    assert counts["fusion"] == 2 * 6 * _bert_layer()
    embeddings = ROBERTA_VOCAB * 768 + cfg.model.decoder.max_length * 768 + 2 * 768  # word (tied), position, norm
    lm_head = 768 * 768 + 768 + 2 * 768 + ROBERTA_VOCAB  # transform + bias; the word matrix is the embeddings'
    assert counts["decoder"] == embeddings + 768 + 6 * _bert_layer() + lm_head  # 768: the class token
    assert counts["poolers"] == 768 * 768 + 768  # one: the class token's
    assert encdec.heads["itm"].fc.in_features == 768
