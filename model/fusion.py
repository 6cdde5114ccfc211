"""DMAF-style modality-aware fusion: masked attention over both modalities' tokens.

After DMAF-Net (dynamic modality-aware fusion for incomplete multi-modal
segmentation; its code is not published, so this follows the paper's
description). The NBI keys of a sample without NBI are masked out of the
attention, so a missing modality cannot interfere: its values get exactly zero
weight.

    t_w = proj_w([spec_w, share_w]) + e_w        WLI tokens (B, N, D) + modality embedding
    t_n = proj_n([spec_n, share_n]) + e_n        NBI tokens
    ctx = MHA(LN(t_w), LN([t_w; t_n]), key mask: NBI keys of samples without NBI)
    a_m = f + (1 - f) * sigmoid(gate_m(mean over positions of LN(t_m)))   (B,) per modality; a_n = 0 without NBI
    y   = t_w + out(ctx) + a_w * mix_w(t_w) + (a_n * mix_n(t_n)  or, without NBI, s)
    fused = y + MLP(LN(y))

Why the modality weights are independent gates with a floor f (not shares of one
softmax) and why a missing NBI is stood in for by a learned map s (N, D): with the
weights competing and a missing NBI simply zeroed, modality dropout drove the NBI
weight to ~0 within two epochs, and an NBI weight near 0 also starves the NBI path
of the gradient it needs to become useful. The training-only `contributions`
(each modality's term alone) feed a per-modality auxiliary head in the model,
so the NBI term has to carry the lesion by itself.

Queries live on the WLI grid because the decoder's skips come from the WLI encoder.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from endofuse.model.blocks import Mlp

# lowest weight an available modality can get, so neither modality's term is switched off for good
WEIGHT_FLOOR = 0.25


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
    tensor or None (all present when NBI parts are given); `tokens` is N (the
    stand-in map's size). Returns (fused tokens (B, N, D), modality weights (B, 2) =
    [WLI, NBI]).
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, tokens: int):
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
        # drawn from a forked random state, so a seed initialises every other weight of the model as without
        # them (short trainings are sensitive to the initialisation)
        with torch.random.fork_rng(devices=[]):
            self.gate_wli = nn.Linear(dim, 1)
            self.gate_nbi = nn.Linear(dim, 1)
            self.missing_nbi = nn.Parameter(torch.zeros(1, tokens, dim))
            nn.init.trunc_normal_(self.missing_nbi, std=0.02)

    def _tokens(self, parts: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        proj, index = (self.proj_wli, 0) if modality == "w" else (self.proj_nbi, 1)
        return proj(torch.cat([parts[f"spec_{modality}"], parts[f"share_{modality}"]], dim=-1)) + \
            self.modality_embed[index]

    def _weight(self, gate: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) weight in [WEIGHT_FLOOR, 1] from the modality's mean normalised token."""
        return WEIGHT_FLOOR + (1.0 - WEIGHT_FLOOR) * torch.sigmoid(gate(self.norm_kv(tokens).mean(1))).squeeze(-1)

    def contributions(self, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mix_w(t_w), mix_n(t_n)): each modality's term alone, for the per-modality auxiliary head."""
        return self.mix_wli(self._tokens(parts, "w")), self.mix_nbi(self._tokens(parts, "n"))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, parts: dict[str, torch.Tensor], nbi_available: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t_w = self._tokens(parts, "w")
        b, n, d = t_w.shape
        q = self._heads(self.query(self.norm_q(t_w)))
        a_w = self._weight(self.gate_wli, t_w)
        if "spec_n" not in parts:  # no NBI in the whole batch: the WLI keys alone (same as all NBI masked)
            kv = self.norm_kv(t_w)
            ctx, _ = masked_attention(q, self._heads(self.key(kv)), self._heads(self.value(kv)), None)
            y = (t_w + self.out(ctx.transpose(1, 2).reshape(b, n, d)) + a_w[:, None, None] * self.mix_wli(t_w)
                 + self.missing_nbi)
            return y + self.mlp(self.norm_mlp(y)), torch.stack([a_w, torch.zeros_like(a_w)], dim=1)
        t_n = self._tokens(parts, "n")
        m = t_n.shape[1]
        if nbi_available is None:
            nbi_available = torch.ones(b, dtype=torch.bool, device=t_w.device)
        missing = ~nbi_available
        # a missing sample's NBI tokens are zeroed first, so even non-finite values cannot leak through 0 * v
        t_n = torch.where(missing[:, None, None], torch.zeros_like(t_n), t_n)
        kv = self.norm_kv(torch.cat([t_w, t_n], dim=1))
        key_mask = torch.cat([torch.zeros(b, n, dtype=torch.bool, device=t_w.device),
                              missing[:, None].expand(b, m)], dim=1)
        ctx, _ = masked_attention(q, self._heads(self.key(kv)), self._heads(self.value(kv)), key_mask)
        a_n = torch.where(missing, torch.zeros_like(a_w), self._weight(self.gate_nbi, t_n))
        nbi_term = torch.where(missing[:, None, None], self.missing_nbi.expand(b, -1, -1),
                               a_n[:, None, None] * self.mix_nbi(t_n))
        y = (t_w + self.out(ctx.transpose(1, 2).reshape(b, n, d))
             + a_w[:, None, None] * self.mix_wli(t_w) + nbi_term)
        return y + self.mlp(self.norm_mlp(y)), torch.stack([a_w, a_n], dim=1)
