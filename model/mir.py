"""Masked NBI reconstruction (`mir`): a training-only head, after CM-CGNS's masked image reconstruction.

CM-CGNS (violet-42/CM-CGNS, `ImageDecoder`) drops half of the image tokens,
lets the rest attend to the other modality's features through cross-attention,
decodes pixels with a light head and trains with 10 x L1. Here the image to
rebuild is the NBI frame and the other modality is the WLI *shared* tokens:

    q      = mask_token + pos            for the masked NBI patches (ratio 0.5)
    h      = q + MHA(LN(q), LN(share_w))  cross-attention to the WLI shared tokens
    h      = h + MLP(LN(h))
    patch  = Linear(h) -> 16 x 16 x 3 pixels (sigmoid: frames are in [0, 1])
    mir    = mean |patch - NBI| over the masked patches

A masked query carries no NBI content, so whatever it rebuilds comes from the
WLI shared features: the term asks them to carry what NBI shows. The model's
`forward` (the export graph) never calls this head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from endofuse.model.blocks import Mlp

PATCH = 16


def patchify(image: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C), patches in row-major grid order."""
    b, c, h, w = image.shape
    x = image.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class MaskedNBIReconstruction(nn.Module):
    """Rebuild randomly masked NBI patches from the WLI shared tokens."""

    def __init__(self, dim: int, heads: int, tokens: int, mask_ratio: float = 0.5):
        super().__init__()
        if not 0.0 < mask_ratio <= 1.0:
            raise ValueError(f"mir mask ratio must be in (0, 1], got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 2 * dim)
        self.head = nn.Linear(dim, PATCH * PATCH * 3)

    def random_mask(self, batch: int, device: torch.device) -> torch.Tensor:
        """(B, N) bool, exactly round(ratio * N) (at least 1) masked patches per sample."""
        n = self.pos.shape[1]
        count = max(1, round(self.mask_ratio * n))
        order = torch.rand(batch, n, device=device).argsort(dim=1)
        return torch.zeros(batch, n, dtype=torch.bool, device=device).scatter(1, order[:, :count], True)

    def reconstruct(self, share_wli: torch.Tensor) -> torch.Tensor:
        """Pixels (B, N, 16*16*3) predicted at every patch position from the WLI shared tokens."""
        q = (self.mask_token + self.pos).expand(share_wli.shape[0], -1, -1)
        kv = self.norm_kv(share_wli)
        h = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        h = h + self.mlp(self.norm_mlp(h))
        return torch.sigmoid(self.head(h))

    def forward(self, share_wli: torch.Tensor, nbi: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """L1 over the masked patches of `nbi` (B, 3, H, W); `mask` (B, N) bool, random when None."""
        if mask is None:
            mask = self.random_mask(nbi.shape[0], nbi.device)
        pred = self.reconstruct(share_wli)
        target = patchify(nbi.to(pred.dtype))
        return F.l1_loss(pred[mask], target[mask])
