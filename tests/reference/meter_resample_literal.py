"""Literal re-statements of official METER's resampling of a vision tower's positions for another resolution,
written independently of meter.models.vision_weights to cross-check it: `adapt_position_encoding`
(meter/modules/clip_model.py: CLIP's absolute position embeddings, the class token's kept) and
`swin_adapt_position_encoding` (meter/modules/swin_helpers.py: each relative-position table resized as an image),
taking and returning one tensor instead of a whole state dict."""

from __future__ import annotations

import numpy as np
import torch


def adapt_position_encoding(origin_pos_embed: torch.Tensor, patch_size: int, after: int) -> torch.Tensor:
    origin_dim2 = False
    if len(origin_pos_embed.shape) == 2:
        origin_dim2 = True
        origin_pos_embed = origin_pos_embed.unsqueeze(0)
    grid_before = int(np.sqrt(origin_pos_embed.shape[1] - 1))
    grid_after = after // patch_size
    embed_dim = origin_pos_embed.shape[-1]
    pos_embed = origin_pos_embed[0, 1:, :].reshape((grid_before, grid_before, embed_dim))
    new_size = (grid_after, grid_after)
    pos_embed = torch.nn.functional.interpolate(
        pos_embed.permute((2, 0, 1)).unsqueeze(0), size=new_size, mode="bicubic"
    )
    pos_embed = pos_embed.squeeze(0).permute((1, 2, 0)).reshape((-1, embed_dim))
    pos_embed = torch.cat((origin_pos_embed[0, 0:1, :], pos_embed), dim=0).unsqueeze(0)
    if origin_dim2:
        pos_embed = pos_embed.squeeze(0)
    return pos_embed


def swin_adapt_position_encoding(pos_embed: torch.Tensor, window_before: int, window_after: int) -> torch.Tensor:
    before = 2 * window_before - 1
    after = 2 * window_after - 1
    pos_embed = pos_embed.transpose(0, 1).view(-1, before, before)
    pos_embed = torch.nn.functional.interpolate(pos_embed.unsqueeze(0), size=(after, after), mode="bicubic")
    pos_embed = pos_embed.squeeze(0).permute((1, 2, 0))
    return pos_embed.contiguous().view(-1, pos_embed.size(-1))
