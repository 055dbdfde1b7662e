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
PAPER = ["clip16-roberta-pretrain", "swinb-roberta-pretrain", "clip16-roberta-merged-pretrain",
         "clip16-roberta-encdec-pretrain"]  # fmt: skip
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


@pytest.mark.parametrize("name", PAPER + SHAPES)
def test_every_recipe_is_valid(name: str):
    validate(load_config(CONFIGS / f"{name}.yaml"))


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
    """CLIP-ViT-B/16 at 288 px + RoBERTa-base + 6 co-attention layers per stream, width 768."""
    caplog.set_level("INFO", logger="meter.models.meter")
    _, model = _paper_model("clip16-roberta-pretrain")
    counts = parameter_counts(model)
    # OpenAI CLIP ViT-B/16's image tower has 86,192,640 parameters at 224 px, its 512-wide output projection
    # (393,216) included; METER drops the projection, and 288 px adds (18^2 - 14^2) positions of 768
    assert counts["vision"] == 86_192_640 - 768 * 512 + (18**2 - 14**2) * 768 == 85_897_728
    # roberta-base has 124,645,632 parameters with its pooler (768 x 768 + 768), which METER does not use
    assert counts["text"] == 124_645_632 - (768 * 768 + 768) == 124_055_040
    assert counts["fusion"] == 2 * 6 * _bert_layer() == 113_421_312
    assert counts["projections"] == 2 * (768 * 768 + 768) + 2 * 768
    assert counts["poolers"] == 2 * (768 * 768 + 768)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert 325e6 < counts["total"] - counts["heads"] < 326e6  # the heads: MLM over RoBERTa's 50,265 words, ITM
    assert "vision 85.90M, text 124.06M, projections 1.18M, fusion 113.42M" in caplog.text  # printed at build


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
