"""An optional convolutional stem for ViT-family encoders trained from scratch.

A ViT's patchify layer is one linear map per patch: it must learn every shape at every offset inside the patch
on its own, which takes a ViT trained from scratch many steps ("Early Convolutions Help Transformers See Better",
Xiao et al., 2021). Two 3x3 stride-2 convolutions (BatchNorm, GELU) and a final patchify convolution keep the
token grid, the width and everything after the stem unchanged. On version 1 of the shapes world it was the one
change that lifted a tiny model's shape answers above chance in our runs (37-56% after 600-1000 fine-tuning
steps); the demo keeps it. timm's ConvStem builds the layers.
"""

from __future__ import annotations

from timm.models.vision_transformer_hybrid import ConvStem
from torch import nn

from meter.errors import ConfigError

STEM_CHANNELS = (32, 64)  # the two 3x3 stride-2 convolutions


def replace_patchify_with_conv_stem(backbone: nn.Module, name: str) -> None:
    """Swaps `backbone.patch_embed.proj` (a patch-sized, patch-strided convolution) for a convolutional stem with
    the same overall stride and output width."""
    patch_embed = getattr(backbone, "patch_embed", None)
    proj = getattr(patch_embed, "proj", None)
    has_stem = any(hasattr(patch_embed, part) for part in ("conv", "stem"))  # VOLO: convolutions before its proj
    if (
        has_stem
        or not isinstance(proj, nn.Conv2d)
        or proj.kernel_size != proj.stride
        or (proj.kernel_size[0] != proj.kernel_size[1])
    ):
        raise ConfigError(
            f"model.vision.conv_stem = true needs a ViT-family encoder with a patchify layer; {name!r} has none "
            "(it has its own stem: set conv_stem false)"
        )
    patch = proj.kernel_size[0]
    if patch % 4:
        raise ConfigError(
            f"model.vision.conv_stem = true needs a patch size divisible by 4 (two stride-2 convs); got {patch}"
        )
    last = patch // 4
    backbone.patch_embed.proj = ConvStem(
        in_chans=proj.in_channels, depth=3, channels=(*STEM_CHANNELS, proj.out_channels),
        kernel_size=(3, 3, last), stride=(2, 2, last), padding=(1, 1, 0), act_layer=nn.GELU,
    )  # fmt: skip
