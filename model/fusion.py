"""DMAF-style modality-aware fusion: masked attention over both modalities' tokens.

After DMAF-Net (dynamic modality-aware fusion for incomplete multi-modal
segmentation; its code is not published, so this follows the paper's
description). Instead of replacing a missing NBI stream with a learned token
(`fusion="token"`), the NBI keys are masked out of the attention, so a missing
modality cannot interfere: its values get exactly zero weight.

    t_w = proj_w([spec_w, share_w]) + e_w        WLI tokens (B, N, D) + modality embedding
    t_n = proj_n([spec_n, share_n]) + e_n        NBI tokens
    ctx, A = MHA(LN(t_w), LN([t_w; t_n]), key mask: NBI keys of samples without NBI)
    a_m  = mean over heads and queries of A's mass on modality m's keys  -> (B, 2), sums to 1
    y    = t_w + out(ctx) + a_w * mix_w(t_w) + a_n * mix_n(t_n)          (a_n = 0 without NBI)
    fused = y + MLP(LN(y))

Queries live on the WLI grid because the decoder's skips come from the WLI encoder.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from endofuse.model.blocks import Mlp


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d)) v on (B, h, N, d) with `key_mask` (B, M) True = excluded.

    Returns (context, attention map (B, h, N, M)). Excluded keys get weight exactly 0;
    at least one key per sample must stay.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(key_mask[:, None, None, :], float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


class DMAFusion(nn.Module):
    """Fuse the four disentangled token maps with an NBI-availability mask.

    `forward(parts, nbi_available)`: `parts` has `spec_w, share_w` and, unless NBI
    is absent for the whole batch, `spec_n, share_n`; `nbi_available` is a (B,) bool
    tensor or None (all present when NBI parts are given). Returns
    (fused tokens (B, N, D), modality weights (B, 2) = [WLI, NBI]).
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.proj_wli = nn.Linear(2 * dim, dim)
        self.proj_nbi = nn.Linear(2 * dim, dim)
        self.modality_embed = nn.Parameter(torch.zeros(2, dim))
        nn.init.trunc_normal_(self.modality_embed, std=0.02)
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.mix_wli = nn.Linear(dim, dim)
        self.mix_nbi = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, parts: dict[str, torch.Tensor], nbi_available: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t_w = self.proj_wli(torch.cat([parts["spec_w"], parts["share_w"]], dim=-1)) + self.modality_embed[0]
        b, n, d = t_w.shape
        q = self._heads(self.query(self.norm_q(t_w)))
        if "spec_n" not in parts:  # no NBI in the whole batch: the WLI keys alone (same as all NBI masked)
            kv = self.norm_kv(t_w)
            ctx, _ = masked_attention(q, self._heads(self.key(kv)), self._heads(self.value(kv)), None)
            y = t_w + self.out(ctx.transpose(1, 2).reshape(b, n, d)) + self.mix_wli(t_w)
            weights = torch.cat([t_w.new_ones(b, 1), t_w.new_zeros(b, 1)], dim=1)
            return y + self.mlp(self.norm_mlp(y)), weights
        t_n = self.proj_nbi(torch.cat([parts["spec_n"], parts["share_n"]], dim=-1)) + self.modality_embed[1]
        m = t_n.shape[1]
        if nbi_available is None:
            nbi_available = torch.ones(b, dtype=torch.bool, device=t_w.device)
        missing = ~nbi_available
        # a missing sample's NBI tokens are zeroed first, so even non-finite values cannot leak through 0 * v
        t_n = torch.where(missing[:, None, None], torch.zeros_like(t_n), t_n)
        kv = self.norm_kv(torch.cat([t_w, t_n], dim=1))
        key_mask = torch.cat([torch.zeros(b, n, dtype=torch.bool, device=t_w.device),
                              missing[:, None].expand(b, m)], dim=1)
        ctx, attn = masked_attention(q, self._heads(self.key(kv)), self._heads(self.value(kv)), key_mask)
        mass_nbi = attn[..., n:].sum(-1).mean(dim=(1, 2))  # (B,) attention mass on NBI keys
        weights = torch.stack([1.0 - mass_nbi, mass_nbi], dim=1)
        nbi_mix = torch.where(missing[:, None, None], torch.zeros_like(t_n), self.mix_nbi(t_n))
        y = (t_w + self.out(ctx.transpose(1, 2).reshape(b, n, d))
             + weights[:, 0, None, None] * self.mix_wli(t_w) + weights[:, 1, None, None] * nbi_mix)
        return y + self.mlp(self.norm_mlp(y)), weights

