"""TransUNet cascaded upsampler with WLI-only skips, plus the segmentation head."""
from __future__ import annotations

import torch
import torch.nn as nn

from endofuse.model.blocks import ConvBNReLU, DecoderBlock


class CascadedDecoder(nn.Module):
    """tokens (B, N, D) on a grid x grid map -> logits (B, classes, 16*grid, 16*grid)."""

    def __init__(
        self,
        dim: int,
        grid: int,
        head_channels: int,
        channels: tuple[int, ...],
        skip_channels: tuple[int, ...],
        n_skip: int,
        num_classes: int,
    ):
        super().__init__()
        if not 0 <= n_skip <= len(skip_channels):
            raise ValueError(f"n_skip must be in 0..{len(skip_channels)}, got {n_skip}")
        self.grid = grid
        self.n_skip = n_skip
        self.conv_more = ConvBNReLU(dim, head_channels)
        in_channels = (head_channels, *channels[:-1])
        used_skips = [skip_channels[i] if i < n_skip else 0 for i in range(len(channels))]
        self.blocks = nn.ModuleList(
            DecoderBlock(cin, cskip, cout) for cin, cskip, cout in zip(in_channels, used_skips, channels, strict=True)
        )
        self.head = nn.Conv2d(channels[-1], num_classes, 3, padding=1)

    def forward(self, tokens: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        b, _, d = tokens.shape
        x = self.conv_more(tokens.transpose(1, 2).reshape(b, d, self.grid, self.grid))
        for index, block in enumerate(self.blocks):
            x = block(x, skips[index] if index < self.n_skip else None)
        return self.head(x)
