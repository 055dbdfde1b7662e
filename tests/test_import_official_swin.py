"""Importing an official METER checkpoint with a Swin vision tower (the layout of meter_swinbase_384_roberta).

The official code's Swin keeps the original Microsoft layout (each stage ends with its patch merging, attention
masks and relative-position indices saved as buffers), emits its grid tokens without a class token, and mean-pools
the fused image stream. A tiny model of ours in that configuration is written out in the official layout; the
import must rebuild it exactly.
"""

import re
from pathlib import Path

import torch
from transformers import AutoConfig

from meter.config import FusionConfig, ModelConfig, TextConfig, VisionConfig
from meter.importers.meter_official import RENAMES, import_meter_official
from meter.models.folder import load_model
from meter.models.meter import build_meter

TEXT_CONFIG = {
    "model_type": "roberta", "vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 64, "max_position_embeddings": 22, "pad_token_id": 1, "type_vocab_size": 1,
}  # fmt: skip
SWIN = {"embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 2, "patch_size": 4}


def swin_model():
    text_config = AutoConfig.for_model(**TEXT_CONFIG)
    cfg = ModelConfig(
        vision=VisionConfig(name="timm:swin_base_patch4_window12_384", image_size=64, timm_kwargs=SWIN),
        text=TextConfig(name="roberta", max_length=20),
        fusion=FusionConfig(layers=1, width=32, heads=2),
        image_pool="mean",
    )
    torch.manual_seed(0)
    model = build_meter(cfg, 120, 1, {"itm": 2, "snli_ve": 3}, text_hf_config=text_config).eval()
    with torch.no_grad():  # tables and norms start at constants: give every tensor a value of its own
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model, text_config


def official_layout(model) -> dict[str, torch.Tensor]:
    """Our weights under the official names; the vision tower in the original Swin layout, buffers included."""
    weights = {}
    for key, value in model.state_dict().items():
        if key.startswith("vision.backbone."):
            key = key.removeprefix("vision.backbone.")
            # timm merges patches at the start of a stage, the original at the end of the previous one
            key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
            weights["vit_model." + key] = value
            continue
        official = next(o + key[len(ours) :] for o, ours in RENAMES if key.startswith(ours))
        weights[official] = value
    for stage, depth in enumerate(SWIN["depths"]):
        for block in range(depth):
            prefix = f"vit_model.layers.{stage}.blocks.{block}."
            weights[prefix + "attn.relative_position_index"] = torch.zeros(4, 4, dtype=torch.long)
            if block % 2:
                weights[prefix + "attn_mask"] = torch.zeros(16, 4, 4)
    return weights


def test_swin_checkpoint_in_the_official_layout_imports_exactly(tmp_path: Path):
    model, text_config = swin_model()
    hparams = {"image_size": 64, "num_heads": 2, "max_text_len": 20, "drop_rate": 0.1, "vit": "swin_base_patch4"}
    torch.save({"state_dict": official_layout(model), "hyper_parameters": {"config": hparams}}, tmp_path / "s.ckpt")
    text_config.save_pretrained(tmp_path / "roberta")
    report = import_meter_official(tmp_path / "s.ckpt", tmp_path / "roberta", tmp_path / "m")
    assert not report.unplaced
    assert "vit_model.layers.1.blocks.1.attn_mask" in report.tolerated
    assert "vit_model.layers.0.blocks.0.attn.relative_position_index" in report.tolerated
    imported, description = load_model(tmp_path / "m")
    vision = description.config.model.vision
    assert vision.timm_kwargs == SWIN and description.config.model.image_pool == "mean"
    assert vision.drop_path == 0.1  # the official Swin's, fine-tuning included (swin_transformer.py:436)
    assert description.config.task == "snli_ve"
    pixels, ids, mask = torch.randn(2, 3, 64, 64), torch.tensor([[0, 7, 9, 2], [0, 5, 2, 1]]), torch.ones(2, 4)
    mask[1, 3] = 0
    with torch.no_grad():
        expected, got = model(pixels, ids, mask), imported.eval()(pixels, ids, mask)
    assert got.image.shape == (2, 64, 32)  # 8 x 8 grid tokens, no summary token prepended
    torch.testing.assert_close(got.joint, expected.joint, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.image, expected.image, rtol=0, atol=1e-6)
    torch.testing.assert_close(imported.heads["snli_ve"](got.joint), model.heads["snli_ve"](expected.joint))


def test_mean_pooled_models_get_no_summary_token_and_pool_the_grid(tmp_path: Path):
    model, _ = swin_model()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        grid = model.vision.backbone.forward_features(pixels).flatten(1, 2)
        tokens = model.encode_image(pixels)
        fused = model.fuse(model.encode_text(torch.tensor([[0, 7, 2]]), torch.ones(1, 3)), torch.ones(1, 3), tokens)
    assert torch.equal(tokens, grid)
    torch.testing.assert_close(fused.joint[:, 32:], model.image_pooler(fused.image.mean(dim=1, keepdim=True)))
