"""DMAF fusion: the availability mask really excludes a missing NBI; equals a per-sample plain-torch restatement."""
import math

import pytest
import torch
import torch.nn.functional as F

from endofuse.model.fusion import DMAFusion

B, N, D, HEADS = 3, 9, 16, 4


def make_parts(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(B, N, D, generator=g) for k in ("spec_w", "share_w", "spec_n", "share_n")}


@pytest.fixture
def module() -> DMAFusion:
    torch.manual_seed(0)
    return DMAFusion(D, HEADS, 32).eval()


def reference(module: DMAFusion, parts: dict, available: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample at a time; a missing NBI is simply not in the key set (no mask at all)."""
    outs, weights = [], []
    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, x.shape[1], HEADS, -1).transpose(1, 2)

    for i in range(B):
        p = {k: v[i : i + 1] for k, v in parts.items()}
        t_w = module.proj_wli(torch.cat([p["spec_w"], p["share_w"]], -1)) + module.modality_embed[0]
        tokens = [t_w]
        if bool(available[i]):
            tokens.append(module.proj_nbi(torch.cat([p["spec_n"], p["share_n"]], -1)) + module.modality_embed[1])
        kv = module.norm_kv(torch.cat(tokens, dim=1))
        q, k, v = split(module.query(module.norm_q(t_w))), split(module.key(kv)), split(module.value(kv))
        ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(t_w.shape)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // HEADS), -1)
        a_n = attn[..., N:].sum(-1).mean() if len(tokens) == 2 else torch.tensor(0.0)
        y = t_w + module.out(ctx) + (1 - a_n) * module.mix_wli(t_w)
        if len(tokens) == 2:
            y = y + a_n * module.mix_nbi(tokens[1])
        outs.append(y + module.mlp(module.norm_mlp(y)))
        weights.append(torch.stack([1 - a_n, a_n]))
    return torch.cat(outs), torch.stack(weights)


@torch.no_grad()
def test_matches_plain_torch_reference_with_mixed_availability(module):
    parts = make_parts(1)
    available = torch.tensor([True, False, True])
    fused, weights = module(parts, available)
    ref, ref_weights = reference(module, parts, available)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
    assert float(weights[1, 1]) == 0.0 and float(weights[1, 0]) == 1.0
    assert 0.0 < float(weights[0, 1]) < 1.0


@torch.no_grad()
def test_nbi_values_do_not_change_output_when_marked_missing(module):
    parts = make_parts(2)
    available = torch.tensor([False, True, False])
    fused, _ = module(parts, available)
    other = dict(parts, spec_n=torch.randn(B, N, D) * 100, share_n=torch.full((B, N, D), float("nan")))
    other["share_n"][1] = parts["share_n"][1]
    other["spec_n"][1] = parts["spec_n"][1]
    fused_other, _ = module(other, available)
    assert torch.equal(fused[0], fused_other[0]) and torch.equal(fused[2], fused_other[2])
    torch.testing.assert_close(fused[1], fused_other[1])
    # ... and an available NBI does change the output (the mask is not excluding everything)
    changed, _ = module(dict(parts, share_n=parts["share_n"] + 1.0), available)
    assert not torch.allclose(changed[1], fused[1])


@torch.no_grad()
def test_whole_batch_without_nbi_equals_all_masked(module):
    parts = make_parts(3)
    wli_only = {k: parts[k] for k in ("spec_w", "share_w")}
    alone, weights = module(wli_only)
    masked, _ = module(parts, torch.zeros(B, dtype=torch.bool))
    torch.testing.assert_close(alone, masked, atol=1e-6, rtol=1e-6)
    assert torch.equal(weights, torch.tensor([[1.0, 0.0]] * B))


def test_no_gradient_reaches_nbi_projection_from_missing_samples(module):
    parts = {k: v.requires_grad_() for k, v in make_parts(4).items()}
    fused, _ = module(parts, torch.tensor([False, True, False]))
    fused[[0, 2]].sum().backward()
    assert float(parts["share_n"].grad.abs().sum()) == 0.0
    assert float(module.proj_nbi.weight.grad.abs().sum()) == 0.0
    assert float(parts["share_w"].grad.abs().sum()) > 0.0
