"""Small reusable blocks of the hybrid R50-ViT encoder and the TransUNet decoder.

Each block takes its sizes as arguments so the `paper`, `small` and `tiny`
configurations share one implementation. Numerics follow the reference
(docs/model.md): weight-standardised convs with eps 1e-5,
GroupNorm eps 1e-6 inside bottlenecks, exact-erf GELU, scores / sqrt(head_dim).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from endofuse.kernels import attention  # softmax(q k^T / sqrt(d)) v: Triton on CUDA, torch elsewhere


class StdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardised per output channel (biased var, eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """ResNetV2 bottleneck as the reference runs it (norm after conv, stride on the 3x3)."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = StdConv2d(in_ch, mid_ch, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, mid_ch, eps=1e-6)
        self.conv2 = StdConv2d(mid_ch, mid_ch, 3, stride=stride, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, mid_ch, eps=1e-6)
        self.conv3 = StdConv2d(mid_ch, out_ch, 1, bias=False)
        self.norm3 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            # GroupNorm(C, C) with the default eps 1e-5, as in the reference
            self.downsample = nn.Sequential(
                StdConv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.GroupNorm(out_ch, out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return F.relu(residual + y)


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad bottom/right up to `size` (the reference pads skips 1-2 px short of in/4, in/8)."""
    short = size - x.shape[-1]
    return F.pad(x, (0, short, 0, size - x.shape[-2])) if short > 0 else x


class ResNetStem(nn.Module):
    """ResNetV2 root + three stages; returns the stride-16 map and skips deepest first."""

    def __init__(self, width: int, units: tuple[int, int, int], groups: int):
        super().__init__()
        self.root_conv = StdConv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.root_norm = nn.GroupNorm(groups, width, eps=1e-6)
        stages, in_ch = [], width
        for index, n_units in enumerate(units):
            out_ch, mid_ch = width * 4 * 2**index, width * 2**index
            stage = [Bottleneck(in_ch, out_ch, mid_ch, 1 if index == 0 else 2, groups)]
            stage += [Bottleneck(out_ch, out_ch, mid_ch, 1, groups) for _ in range(n_units - 1)]
            stages.append(nn.Sequential(*stage))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self.out_channels = in_ch
        self.skip_channels = (width * 8, width * 4, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        in_size = x.shape[-1]
        x = F.relu(self.root_norm(self.root_conv(x)))
        skips = [x]
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0)
        for index, stage in enumerate(self.stages[:-1]):
            x = stage(x)
            # the padded copy is the skip; the unpadded map goes on (reference behaviour)
            skips.append(_pad_to(x, in_size // (4 * 2**index)))
        x = self.stages[-1](x)
        return x, skips[::-1]


class MultiHeadSelfAttention(nn.Module):
    """MHSA with separate q/k/v/out projections (bias), routed through `attention`."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        context = attention(q, k, v).transpose(1, 2).reshape(x.shape)
        return self.out(context)


class Mlp(nn.Module):
    """Linear -> exact GELU -> dropout -> Linear -> dropout."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + MHSA(LN(x)), then x + MLP(LN(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiHeadSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConvBNReLU(nn.Sequential):
    """conv3x3 (no bias) -> BatchNorm2d -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU())


class DecoderBlock(nn.Module):
    """Bilinear x2 (align_corners=True), optional skip concat, two ConvBNReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = ConvBNReLU(in_ch + skip_ch, out_ch)
        self.conv2 = ConvBNReLU(out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class AttentionMeanPool(nn.Module):
    """Token pooling: mean over tokens + softmax(Linear(x) over tokens)-weighted sum."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(tokens), dim=1)
        return tokens.mean(dim=1) + (weights * tokens).sum(dim=1)
