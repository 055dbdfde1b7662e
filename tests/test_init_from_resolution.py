"""Fine-tuning a model folder (train.init_from) at another resolution, dropout and text length; the architecture stays
the folder's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from meter.config import Config, load_config
from meter.errors import ConfigError
from meter.models.folder import EXPORT, WEIGHTS, ModelFolder, read_model_folder, save_model_folder
from meter.models.layers import SelfProjections
from meter.models.meter import build_meter
from meter.models.tokenizer_folder import load_tokenizer
from meter.runs import run_finetune
from meter.tasks.build import build_model, load_for_eval, task_tokenizer, tokenizer_path
from tests.reference import meter_resample_literal

SWIN = "model.vision.timm_kwargs={embed_dim: 16, depths: [1, 1], num_heads: [1, 2], patch_size: 4}"
HEADS = {"itm": 2}


def _folder(base: Config, path: Path, overrides: list[str]) -> Path:
    """A model folder of a random micro model built from `base` with `overrides`, as a pretraining run writes it."""
    cfg = load_config(None, overrides, base=base)
    tokenizer = load_tokenizer(tokenizer_path(cfg))
    torch.manual_seed(0)
    model = build_meter(cfg.model, len(tokenizer), tokenizer.pad_token_id, HEADS)
    save_model_folder(path, model, tokenizer, ModelFolder(cfg, HEADS))
    return path


def _finetune(base: Config, folder: Path, overrides: list[str]):
    cfg = load_config(None, [f"train.init_from={folder}", *overrides], base=base)
    return build_model(cfg, task_tokenizer(cfg), HEADS), cfg


@pytest.mark.parametrize("vision", ["vit", "clip-vit"])
def test_a_folder_at_32_px_fine_tunes_at_64_px_with_its_position_grid_resampled(
    vision: str, micro_config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    folder = _folder(micro_config, tmp_path / "m", [f"model.vision={vision}", "model.vision.image_size=32"])
    saved = load_file(folder / WEIGHTS)
    with caplog.at_level(logging.INFO):
        model, cfg = _finetune(micro_config, folder, [f"model.vision={vision}", "model.vision.image_size=64"])
    pos_embed = model.vision.backbone.pos_embed.detach()
    assert saved["vision.backbone.pos_embed"].shape == (1, 1 + 2 * 2, 32) and pos_embed.shape == (1, 1 + 4 * 4, 32)
    # as official METER resamples (timm's default antialiased kernel differed by up to a tenth of the values)
    expected = meter_resample_literal.adapt_position_encoding(saved["vision.backbone.pos_embed"], 16, 64)
    torch.testing.assert_close(pos_embed, expected, rtol=0, atol=1e-6)
    assert torch.equal(pos_embed[0, 0], saved["vision.backbone.pos_embed"][0, 0])  # the class token's is kept
    for key, value in model.state_dict().items():
        if key != "vision.backbone.pos_embed" and not key.startswith("heads."):
            assert torch.equal(value, saved[key]), key
    assert cfg.model.vision.image_size == 64
    assert "pos_embed: grid 2x2 -> 4x4 (+1 class token, kept)" in caplog.text
    with torch.no_grad():
        assert model.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, 1 + 16, 32)


def test_the_fine_tuned_model_is_saved_evaluated_and_loaded_at_the_new_resolution(micro_config: Config, tmp_path: Path):
    folder = _folder(micro_config, tmp_path / "m", ["model.vision.image_size=32"])
    out = tmp_path / "vqa"
    cfg = load_config(None, ["task=vqa", f"train.init_from={folder}", "model.vision.image_size=64",
                             "train.max_steps=1", f"train.out={out}"], base=micro_config)  # fmt: skip
    run_finetune(cfg)
    assert read_model_folder(out / EXPORT).config.model.vision.image_size == 64
    loaded = load_for_eval(out / EXPORT, torch.device("cpu"))
    assert loaded.images.blank.shape == (3, 64, 64)
    assert loaded.model.vision.backbone.pos_embed.shape == (1, 1 + 16, 32)


def test_a_swin_folder_fine_tunes_at_a_larger_size_with_larger_windows(
    micro_config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    swin = ["model.vision=swin", SWIN]
    folder = _folder(micro_config, tmp_path / "m", [*swin, "model.vision.image_size=64"])  # window 8
    saved = load_file(folder / WEIGHTS)
    with caplog.at_level(logging.INFO):
        model, cfg = _finetune(micro_config, folder, [*swin, "model.vision.image_size=96"])  # window 12
    state = model.state_dict()
    tables = [k for k in saved if k.endswith("relative_position_bias_table")]
    assert len(tables) == 2
    for key in tables:
        attention = model.get_submodule(key.removesuffix(".relative_position_bias_table"))
        assert attention.window_size == (12, 12)
        assert saved[key].shape[0] == 15 * 15 and state[key].shape[0] == 23 * 23
        expected = meter_resample_literal.swin_adapt_position_encoding(saved[key], 8, 12)  # official METER's way
        torch.testing.assert_close(state[key], expected, rtol=0, atol=1e-6)
    assert cfg.model.vision.image_size == 96
    assert "relative_position_bias_table of layers.0.blocks.0.attn, layers.1.blocks.0.attn: window 8x8 -> 12x12" in (
        caplog.text
    )
    with torch.no_grad():
        assert model.encode_image(torch.randn(1, 3, 96, 96)).shape == (1, 1 + 12 * 12, 32)


def test_a_swin_folder_with_its_window_written_in_it_fine_tunes_with_the_window_of_the_new_size(
    micro_config: Config, tmp_path: Path
):
    """An imported official Swin names its timm model and writes its window (image size / 32): fine-tuned at another
    size it kept the old window, where the official code (and meter's own Swin) takes the new size's grid."""
    pinned = ["model.vision=timm:swin_base_patch4_window12_384", "model.vision.image_size=64",
              SWIN.removesuffix("}") + ", window_size: 8}"]  # fmt: skip
    folder = _folder(micro_config, tmp_path / "m", pinned)
    saved = load_file(folder / WEIGHTS)
    model, cfg = _finetune(micro_config, folder, ["model.vision.image_size=96"])
    assert cfg.model.vision.timm_kwargs["window_size"] == 12
    state = model.state_dict()
    for key in (k for k in saved if k.endswith("relative_position_bias_table")):
        assert model.get_submodule(key.removesuffix(".relative_position_bias_table")).window_size == (12, 12)
        expected = meter_resample_literal.swin_adapt_position_encoding(saved[key], 8, 12)  # official METER's way
        torch.testing.assert_close(state[key], expected, rtol=0, atol=1e-6)
    kept = _folder(micro_config, tmp_path / "k", [*pinned[:2], SWIN.removesuffix("}") + ", window_size: 4}"])
    assert _finetune(micro_config, kept, ["model.vision.image_size=96"])[1].model.vision.timm_kwargs["window_size"] == 4


def _dropouts(module: nn.Module) -> set[float]:
    return {m.p for m in module.modules() if isinstance(m, nn.Dropout)}


def test_dropout_and_drop_path_come_from_the_config_and_text_dropout_it_does_not_name_stays_the_folders(
    micro_config: Config, tmp_path: Path
):
    text = "model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64"
    vision = "model.vision.timm_kwargs={embed_dim: 32, depth: 2, num_heads: 2, patch_size: 16}"
    folder = _folder(micro_config, tmp_path / "m", [
        vision, "model.fusion.dropout=0.0", text + ", hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}",
    ])  # fmt: skip
    model, cfg = _finetune(micro_config, folder, [
        vision, "model.fusion.dropout=0.3", "model.vision.drop_path=0.2",
        text + ", hidden_dropout_prob: 0.15, attention_probs_dropout_prob: 0.25}",
    ])  # fmt: skip
    attention = {m.dropout for m in model.fusion.modules() if isinstance(m, SelfProjections)}
    assert _dropouts(model.fusion) == {0.3} and attention == {0.3}
    assert model.vision.backbone.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    hf = model.text.model.config
    assert (hf.hidden_dropout_prob, hf.attention_probs_dropout_prob) == (0.15, 0.25)
    assert _dropouts(model.text) == {0.15, 0.25}
    assert cfg.model.fusion.dropout == 0.3 and cfg.model.vision.drop_path == 0.2
    assert cfg.model.text.hf_kwargs["hidden_dropout_prob"] == 0.15
    kept, _ = _finetune(micro_config, folder, [vision, text + "}"])  # no text dropout named; fusion's default
    assert _dropouts(kept.text) == {0.0} and _dropouts(kept.fusion) == {0.1}


def test_text_max_length_may_grow_within_the_position_table_and_not_beyond(micro_config: Config, tmp_path: Path):
    text = ("model.text.hf_kwargs={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
            "intermediate_size: 64, max_position_embeddings: 64}")  # fmt: skip
    folder = _folder(micro_config, tmp_path / "m", [text, "model.text.max_length=40"])
    _, cfg = _finetune(micro_config, folder, [text, "model.text.max_length=60"])
    assert cfg.model.text.max_length == 60
    with pytest.raises(ConfigError, match="model.text.max_length = 80: .* position table of 64 tokens"):
        _finetune(micro_config, folder, [text, "model.text.max_length=80"])


def test_a_width_change_is_ignored_with_a_warning_naming_both_values(
    micro_config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    folder = _folder(micro_config, tmp_path / "m", [])
    with caplog.at_level(logging.WARNING):
        model, cfg = _finetune(micro_config, folder, ["model.fusion.width=64", "model.fusion.heads=8"])
    assert model.width == 32 and cfg.model.fusion.width == 32 and cfg.model.fusion.heads == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert f"model.fusion.width = 64 is ignored: the model of {folder} has fusion.width = 32" in warnings[0]
    assert "model.fusion.heads = 8 is ignored" in warnings[1]


@pytest.mark.parametrize(("asked", "warned"), [([], True), (["model.vision.drop_path=0.1"], False)])
def test_a_folder_trained_with_drop_path_fine_tuned_without_it_is_warned_of(
    micro_config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture, asked: list[str], warned: bool
):
    """Official METER keeps Swin's drop path 0.1 in fine-tuning; a fine-tuning config that leaves it at its default
    turned it off with an INFO line only."""
    swin = ["model.vision=swin", SWIN]
    folder = _folder(micro_config, tmp_path / "m", [*swin, "model.vision.drop_path=0.1"])
    with caplog.at_level(logging.INFO):
        _finetune(micro_config, folder, [*swin, *asked])
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "drop_path" in r.getMessage()
    ]
    assert bool(warnings) == warned
    if warned:
        assert "trained with model.vision.drop_path = 0.1 and is fine-tuned without it" in warnings[0]
