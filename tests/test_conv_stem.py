"""The optional convolutional stem of ViT-family encoders: same tokens out, trains, travels, refuses misuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from meter.config import VisionConfig
from meter.errors import ConfigError
from meter.models.vision import build_vision

SMALL_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 16}


def _encoder(name: str = "clip-vit", conv_stem: bool = True, **kwargs) -> torch.nn.Module:
    return build_vision(VisionConfig(name=name, image_size=64, conv_stem=conv_stem, timm_kwargs=SMALL_VIT, **kwargs))


def test_the_stem_keeps_the_token_grid_and_width_and_sees_across_the_whole_patch():
    torch.manual_seed(0)
    plain, stem = _encoder(conv_stem=False).eval(), _encoder().eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert stem(pixels).shape == plain(pixels).shape == (2, 1 + 4 * 4, 32)
        # a change of one pixel in the top-left patch moves that patch's token, and no token of another patch
        changed = pixels.clone()
        changed[:, :, 5, 6] += 3.0
        before, after = stem.backbone.patch_embed(pixels), stem.backbone.patch_embed(changed)
    moved = (after - before).abs().amax(dim=(0, 2))
    assert moved[0] > 1e-3
    assert torch.all(moved[1:] == 0)


def test_the_stem_trains_with_the_encoder():
    torch.manual_seed(0)
    encoder = _encoder().train()
    first = encoder.backbone.patch_embed.proj[0].conv.weight
    encoder(torch.randn(4, 3, 64, 64)).square().mean().backward()
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_a_saved_encoder_with_a_stem_loads_into_one_built_from_the_same_config(tmp_path: Path):
    torch.manual_seed(0)
    trained = _encoder().train()
    trained(torch.randn(8, 3, 64, 64))  # moves the BatchNorm running statistics away from their initial values
    torch.save(trained.state_dict(), tmp_path / "encoder.pt")
    loaded = _encoder()
    loaded.load_state_dict(torch.load(tmp_path / "encoder.pt", weights_only=True))
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(pixels), trained.eval()(pixels), rtol=0, atol=0)


def test_misuse_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="conv_stem = true needs a ViT-family encoder with a patchify layer"):
        build_vision(VisionConfig(name="timm:resnet18", image_size=64, conv_stem=True))
    with pytest.raises(ConfigError, match="it has its own stem"):  # VOLO: a second stem was stacked behind its own
        build_vision(VisionConfig(name="volo", image_size=64, conv_stem=True))
    with pytest.raises(ConfigError, match="patch size divisible by 4"):
        build_vision(
            VisionConfig(name="vit", image_size=60, conv_stem=True, timm_kwargs={**SMALL_VIT, "patch_size": 6})
        )
    with pytest.raises(ConfigError, match="replaces the patch projection that pretrained weights hold"):
        _encoder(weights=str(tmp_path / "vit.safetensors"))
