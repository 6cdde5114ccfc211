"""The hybrid ResNetV2 + ViT encoder (TransUNet's R50-ViT-B/16 and smaller variants)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from endofuse.model.blocks import ResNetStem, TransformerBlock


@dataclass
class EncoderOutput:
    """What one modality's encoder hands to the fusion and the decoder."""

    tokens: torch.Tensor  # (B, N, D) after the final LayerNorm
    shallow: list[torch.Tensor]  # block outputs at the tap depths, before the final norm
    skips: list[torch.Tensor]  # stem feature maps, deepest first (/8, /4, /2)


class HybridViTEncoder(nn.Module):
    """ResNetV2 stem -> 1x1 patch embedding of the stride-16 map -> pre-norm ViT blocks."""

    def __init__(
        self,
        img_size: int,
        stem_width: int,
        stem_units: tuple[int, int, int],
        norm_groups: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        taps: tuple[int, ...],
    ):
        super().__init__()
        if any(not 1 <= t <= depth for t in taps):
            raise ValueError(f"shallow taps {taps} must lie in 1..{depth} (1-based block indices)")
        self.taps = tuple(taps)
        self.stem = ResNetStem(stem_width, stem_units, norm_groups)
        self.patch_embed = nn.Conv2d(self.stem.out_channels, dim, kernel_size=1)
        grid = img_size // 16
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, with_shallow: bool = False) -> EncoderOutput:
        feature_map, skips = self.stem(x)
        tokens = self.patch_embed(feature_map).flatten(2).transpose(1, 2)
        tokens = self.pos_drop(tokens + self.pos_embed)
        shallow = []
        for depth, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if with_shallow and depth in self.taps:
                shallow.append(tokens)
        return EncoderOutput(self.norm(tokens), shallow, skips)
