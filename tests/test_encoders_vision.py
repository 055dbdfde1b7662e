"""Vision encoders: one output shape, the pooled token first, pretrained weights from local files at any resolution."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from meter.config import VisionConfig
from meter.errors import ConfigError, DataError
from meter.models.vision import VISION, build_vision

# small enough for 384 px on a CPU: patch 16, one block
SMALL_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 16}
SMALL = {
    "vit": SMALL_VIT, "deit": SMALL_VIT, "clip-vit": SMALL_VIT, "clip-vit-b32": {**SMALL_VIT, "patch_size": 32},
    "beit": SMALL_VIT, "cait": {**SMALL_VIT, "depth_token_only": 1},
    "volo": {"layers": (1, 1, 1, 1), "embed_dims": (16, 32, 32, 32), "num_heads": (1, 2, 2, 2), "stem_hidden_dim": 8,
             "post_layers": ("ca",)},
    # four stages like Swin-B, so that the windows are Swin-B's: 7 at 224 px, 9 at 288, 12 at 384
    "swin": {"embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "patch_size": 4},
}  # fmt: skip


def _encoder(name: str, image_size: int, weights: Path | None = None):
    cfg = VisionConfig(name=name, image_size=image_size, timm_kwargs=SMALL[name],
                       weights=str(weights) if weights else None)  # fmt: skip
    return build_vision(cfg).eval()


def _save(encoder, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in encoder.backbone.state_dict().items()}, str(path))
    return path


def _grid_tokens(name: str, image_size: int) -> int:
    stride = {"clip-vit-b32": 32, "swin": 32, "volo": 16}.get(name, 16)
    return (image_size // stride) ** 2


@pytest.mark.parametrize("name", VISION.names())
def test_every_vision_encoder_returns_its_pooled_feature_then_its_tokens(name: str):
    encoder = _encoder(name, 64)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = encoder(pixels)
        pooled = encoder.backbone.forward_head(encoder.backbone.forward_features(pixels), pre_logits=True)
    assert tokens.shape == (2, 1 + _grid_tokens(name, 64), encoder.width)
    torch.testing.assert_close(tokens[:, 0], pooled)


@pytest.mark.parametrize("name", ["swin", "beit"])
def test_swin_and_beit_pool_the_mean_of_their_tokens(name: str):
    encoder = _encoder(name, 64)
    with torch.no_grad():
        tokens = encoder(torch.randn(2, 3, 64, 64))
    if name == "swin":  # the final norm comes before the mean: the CLS-like token is the tokens' mean
        torch.testing.assert_close(tokens[:, 0], tokens[:, 1:].mean(dim=1))
    else:  # BEiT normalises after the mean (fc_norm), and its tokens the same way: every token is normalised
        assert torch.allclose(tokens.mean(dim=-1), torch.zeros(2, tokens.shape[1]), atol=1e-4)


def test_swin_window_follows_the_resolution_and_odd_sizes_are_refused():
    for size, window in [(224, 7), (288, 9), (384, 12)]:
        encoder = _encoder("swin", size)
        assert encoder.backbone.layers[-1].blocks[0].window_size == (window, window)
    with pytest.raises(ConfigError, match="model.vision.image_size = 100"):
        _encoder("swin", 100)


def _smooth_field(rows: int, cols: int, channels: int) -> torch.Tensor:
    """A low-frequency function of the position of each cell's centre in [0, 1]^2: (rows, cols, channels)."""
    y = (torch.arange(rows) + 0.5) / rows
    x = (torch.arange(cols) + 0.5) / cols
    c = torch.arange(channels) / channels
    return torch.sin(2 * y[:, None, None] + c) + torch.cos(1.5 * x[None, :, None] - c)


def _grid_of(pos_embed: torch.Tensor, prefix: int) -> torch.Tensor:
    """The position table as a (rows, cols, channels) grid, without its prefix (class token) rows."""
    if pos_embed.ndim == 4:  # VOLO: (1, H, W, C)
        return pos_embed[0]
    side = math.isqrt(pos_embed.shape[1] - prefix)
    return pos_embed[0, prefix:].reshape(side, side, -1)


def _set_grid(pos_embed: torch.Tensor, prefix: int) -> None:
    grid = _grid_of(pos_embed, prefix)
    grid.copy_(_smooth_field(*grid.shape))


@pytest.mark.parametrize("name", ["vit", "deit", "clip-vit", "clip-vit-b32", "cait", "volo"])
def test_pretrained_position_embeddings_are_resampled_to_the_resolution(name: str, tmp_path: Path):
    source = _encoder(name, 224)
    prefix = 0 if name in ("cait", "volo") else 1  # CaiT and VOLO add their class token after the positions
    with torch.no_grad():
        _set_grid(source.backbone.pos_embed, prefix)
    weights = _save(source, tmp_path / "weights.safetensors")
    pixels = torch.randn(1, 3, 224, 224)
    same = _encoder(name, 224, weights)
    with torch.no_grad():
        assert torch.equal(same(pixels), source(pixels))
    for size in (288, 384):
        resized = _encoder(name, size, weights)
        with torch.no_grad():
            tokens = resized(torch.randn(1, 3, size, size))
        assert tokens.shape == (1, 1 + _grid_tokens(name, size), source.width)
        grid = _grid_of(resized.backbone.pos_embed.detach(), prefix)
        # bicubic resampling of a smooth field: the new cells hold the field at their own centres
        assert (grid - _smooth_field(*grid.shape)).abs().max() < 0.1
        if prefix:
            assert torch.equal(resized.backbone.pos_embed[0, 0], source.backbone.pos_embed[0, 0])
        untouched = {k: v for k, v in source.backbone.state_dict().items() if "pos_embed" not in k}
        for key, value in untouched.items():
            assert torch.equal(resized.backbone.state_dict()[key], value), key


@pytest.mark.parametrize("name", ["swin", "beit"])
def test_pretrained_relative_position_tables_are_resized_to_the_window(name: str, tmp_path: Path):
    source = _encoder(name, 224)
    weights = _save(source, tmp_path / "weights.safetensors")
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(_encoder(name, 224, weights)(pixels), source(pixels))
    tables = {k: v for k, v in source.backbone.state_dict().items() if k.endswith("relative_position_bias_table")}
    assert tables
    for size in (288, 384):
        resized = _encoder(name, size, weights)
        with torch.no_grad():
            tokens = resized(torch.randn(1, 3, size, size))
        assert tokens.shape == (1, 1 + _grid_tokens(name, size), source.width)
        state = resized.backbone.state_dict()
        for key, table in tables.items():
            module = resized.backbone.get_submodule(key.rsplit(".", 1)[0])
            window = module.window_size  # Swin: the block's window; BEiT: the patch grid
            assert state[key].shape[0] >= (2 * window[0] - 1) * (2 * window[1] - 1) > table.shape[0]


def _openai_clip_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's CLIP visual keys in OpenAI's layout (`visual.conv1.weight`, `...resblocks.0.attn.in_proj_weight`)."""
    renames = [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
               ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]  # fmt: skip
    out = {}
    for key, value in state.items():
        if key == "cls_token":
            key, value = "class_embedding", value.reshape(-1)
        elif key == "pos_embed":
            key, value = "positional_embedding", value[0]
        elif key.startswith("norm."):
            key = key.replace("norm.", "ln_post.")
        for old, new in renames:
            key = key.replace(old, new)
        out[f"visual.{key}"] = value
    width = state["cls_token"].shape[-1]
    out["visual.proj"] = torch.randn(width, 16)  # CLIP's projection to the joint space: METER does not use it
    out["token_embedding.weight"] = torch.randn(10, 16)  # the text tower, ignored
    return out


def test_clip_weights_in_openai_layout_load_and_give_the_same_tokens(tmp_path: Path):
    source = _encoder("clip-vit", 224)
    openai = _openai_clip_layout(source.backbone.state_dict())
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in openai
    torch.save(openai, tmp_path / "ViT-B-16.pt")  # a plain state dict: it loads with weights_only=True
    loaded = _encoder("clip-vit", 224, tmp_path / "ViT-B-16.pt")
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(pixels), source(pixels))
        assert _encoder("clip-vit", 288, tmp_path / "ViT-B-16.pt")(torch.randn(1, 3, 288, 288)).shape[1] == 1 + 18**2


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _torchscript_of(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A TorchScript archive holding `state` under its own keys, as OpenAI distributes CLIP (torch.jit.save)."""
    root = _Holder()
    for key, value in state.items():
        *modules, leaf = key.split(".")
        module = root
        for name in modules:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        module.register_parameter(leaf, nn.Parameter(value.clone()))
    torch.jit.save(torch.jit.script(root), str(path))
    return path


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save are deprecated, and OpenAI's files too
def test_a_torchscript_clip_is_refused_with_the_command_that_converts_it(tmp_path: Path):
    """OpenAI's CLIP ViT-B-16.pt is a TorchScript archive: it failed with torch's advice to load it with
    weights_only=False (running the code it holds). The command the refusal gives makes a file that loads."""
    source = _encoder("clip-vit", 224)
    archive = _torchscript_of(_openai_clip_layout(source.backbone.state_dict()), tmp_path / "ViT-B-16.pt")
    with pytest.raises(DataError, match=r"ViT-B-16.pt: a TorchScript archive .* not a state dict") as refused:
        _encoder("clip-vit", 224, archive)
    assert "weights_only=False" not in str(refused.value)
    command = re.search(r'python -c "(.*?)"', str(refused.value)).group(1)
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, check=True, capture_output=True)
    converted = _encoder("clip-vit", 224, tmp_path / "state_dict.pt")
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(converted(pixels), source(pixels))


def test_only_position_tensors_resampled_are_logged_openai_clips_too(tmp_path: Path, caplog):
    """OpenAI CLIP's `visual.positional_embedding` (timm's filter makes it pos_embed) was resampled without a line;
    a flattened patch projection timm reshapes to a convolution was logged as "resampled"."""
    caplog.set_level("INFO", logger="meter.models.vision_weights")
    source = _encoder("clip-vit", 224)
    torch.save(_openai_clip_layout(source.backbone.state_dict()), tmp_path / "ViT-B-16.pt")
    _encoder("clip-vit", 224, tmp_path / "ViT-B-16.pt")
    assert "resampled" not in caplog.text
    _encoder("clip-vit", 288, tmp_path / "ViT-B-16.pt")
    assert "ViT-B-16.pt: resampled pos_embed: grid 14x14 -> 18x18 (+1 class token, kept)" in caplog.text
    caplog.clear()
    state = {k: v.contiguous() for k, v in _encoder("vit", 224).backbone.state_dict().items()}
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].flatten(1).contiguous()  # a linear's layout
    save_file(state, str(tmp_path / "flat.safetensors"))
    _encoder("vit", 224, tmp_path / "flat.safetensors")
    assert "vision weights: " in caplog.text and "resampled" not in caplog.text


def test_a_clip_built_one_block_shallower_takes_the_first_blocks_of_the_file(tmp_path: Path, caplog):
    """The official METER builds 11 of CLIP-ViT-B/16's 12 blocks: the file's last block is left out, quietly."""
    deep = build_vision(VisionConfig(name="clip-vit", image_size=64, timm_kwargs={**SMALL_VIT, "depth": 3}))
    weights = _save(deep, tmp_path / "clip-3-blocks.safetensors")
    caplog.set_level("INFO", logger="meter.models.vision_weights")
    shallow = build_vision(VisionConfig(name="clip-vit", image_size=64, timm_kwargs={**SMALL_VIT, "depth": 2},
                                        weights=str(weights)))  # fmt: skip
    for key, value in shallow.backbone.state_dict().items():
        assert torch.equal(value, deep.backbone.state_dict()[key]), key
    assert "is built with 2 blocks; the file's blocks 2 are not used" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_weights_of_another_architecture_are_a_clear_error(tmp_path: Path):
    weights = _save(_encoder("vit", 224), tmp_path / "vit.safetensors")
    with pytest.raises(DataError, match=r"vit.safetensors: .* (lacks|do not fit) .*swin_base_patch4_window7_224"):
        _encoder("swin", 224, weights)
    with pytest.raises(DataError, match="vision weights not found"):
        _encoder("vit", 224, tmp_path / "missing.safetensors")


@pytest.mark.parametrize(("file", "named", "reason"), [
    ("vit", "beit", r"AttributeError: 'NoneType' object has no attribute 'shape'"),  # BEiT's filter: no pos_embed
    ("cait", "vit", r"RuntimeError: shape .* is invalid for input"),  # ViT's filter: a grid without its class token
])  # fmt: skip
def test_weights_timms_conversion_cannot_read_are_named_as_another_architectures(
    tmp_path: Path, file: str, named: str, reason: str
):
    """timm's checkpoint filter of the encoder named failed inside it (an AttributeError, a RuntimeError)."""
    weights = _save(_encoder(file, 224), tmp_path / f"{file}.safetensors")
    with pytest.raises(DataError, match=rf"{file}.safetensors: not a checkpoint of {named}_.*224 \(timm's conversion "
                                        rf"for it failed: {reason}.*\); .*model.vision.name"):  # fmt: skip
        _encoder(named, 224, weights)


def test_any_timm_model_that_yields_a_feature_grid_works_through_the_same_adapter():
    cfg = VisionConfig(name="timm:resnet18", image_size=64)
    encoder = build_vision(cfg).eval()
    with torch.no_grad():
        tokens = encoder(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 1 + 2 * 2, 512)  # the mean (global average pool) then the 2x2 grid
    torch.testing.assert_close(tokens[:, 0], tokens[:, 1:].mean(dim=1))


def test_weights_of_another_patch_size_or_with_layer_scale_are_refused_not_adapted(tmp_path: Path):
    """A patch-8 file given to a patch-16 encoder had its patch projection resampled by timm (FlexiViT): a model
    neither of them is. A DeiT with layer scale given to one without it loaded, its layer scales dropped with a line
    saying the file's blocks were "deeper" ones the model lacks."""
    patch8 = VisionConfig(name="vit", image_size=64, timm_kwargs={**SMALL_VIT, "patch_size": 8})
    small = _save(build_vision(patch8), tmp_path / "patch8.safetensors")
    with pytest.raises(DataError, match=r"patch8.safetensors: its patches are 8 px; they do not fit .*16 px"):
        _encoder("vit", 64, small)
    scaled = VisionConfig(name="deit", image_size=64, timm_kwargs={**SMALL_VIT, "init_values": 0.1})
    layer_scale = _save(build_vision(scaled), tmp_path / "ls.safetensors")
    with pytest.raises(DataError, match=r"ls.safetensors: its blocks hold 2 weights .* blocks do not have, e.g. "
                                        r"\['blocks.0.ls1.gamma'"):  # fmt: skip
        _encoder("deit", 64, layer_scale)
