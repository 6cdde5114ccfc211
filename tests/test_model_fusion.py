"""DMAF fusion: the availability mask really excludes a missing NBI; equals a per-sample plain-torch restatement;
the modality weights are independent gates with a floor and a missing NBI is stood in for by the learned map."""
import pytest
import torch
import torch.nn.functional as F

from endofuse.model.fusion import WEIGHT_FLOOR, DMAFusion

B, N, D, HEADS = 3, 9, 16, 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_parts(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(B, N, D, generator=g) for k in ("spec_w", "share_w", "spec_n", "share_n")}


@pytest.fixture
def module() -> DMAFusion:
    torch.manual_seed(0)
    return DMAFusion(D, HEADS, 32, N).eval()


def reference(module: DMAFusion, parts: dict, available: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample at a time; a missing NBI is simply not in the key set (no mask at all)."""
    outs, weights = [], []
    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(1, x.shape[1], HEADS, -1).transpose(1, 2)

    def gate(linear: torch.nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
        pooled = F.layer_norm(tokens, (D,), module.norm_kv.weight, module.norm_kv.bias, 1e-6).mean(1)
        return 0.25 + 0.75 / (1 + torch.exp(-(pooled @ linear.weight.T + linear.bias)))[0, 0]

    for i in range(B):
        p = {k: v[i : i + 1] for k, v in parts.items()}
        t_w = module.proj_wli(torch.cat([p["spec_w"], p["share_w"]], -1)) + module.modality_embed[0]
        tokens = [t_w]
        if bool(available[i]):
            tokens.append(module.proj_nbi(torch.cat([p["spec_n"], p["share_n"]], -1)) + module.modality_embed[1])
        kv = module.norm_kv(torch.cat(tokens, dim=1))
        q, k, v = split(module.query(module.norm_q(t_w))), split(module.key(kv)), split(module.value(kv))
        ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(t_w.shape)
        a_w = gate(module.gate_wli, t_w)
        y = t_w + module.out(ctx) + a_w * module.mix_wli(t_w)
        if len(tokens) == 2:
            a_n = gate(module.gate_nbi, tokens[1])
            y = y + a_n * module.mix_nbi(tokens[1])
        else:
            a_n = torch.tensor(0.0)
            y = y + module.missing_nbi
        outs.append(y + module.mlp(module.norm_mlp(y)))
        weights.append(torch.stack([a_w, a_n]))
    return torch.cat(outs), torch.stack(weights)


@torch.no_grad()
def test_matches_plain_torch_reference_with_mixed_availability(module):
    parts = make_parts(1)
    available = torch.tensor([True, False, True])
    fused, weights = module(parts, available)
    ref, ref_weights = reference(module, parts, available)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
    assert float(weights[1, 1]) == 0.0 and WEIGHT_FLOOR <= float(weights[1, 0]) <= 1.0
    assert WEIGHT_FLOOR < float(weights[0, 1]) < 1.0


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
    masked, masked_weights = module(parts, torch.zeros(B, dtype=torch.bool))
    torch.testing.assert_close(alone, masked, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(weights, masked_weights, atol=1e-6, rtol=1e-6)
    assert torch.equal(weights[:, 1], torch.zeros(B))


def test_no_gradient_reaches_nbi_projection_from_missing_samples(module):
    parts = {k: v.requires_grad_() for k, v in make_parts(4).items()}
    fused, _ = module(parts, torch.tensor([False, True, False]))
    fused[[0, 2]].sum().backward()
    assert float(parts["share_n"].grad.abs().sum()) == 0.0
    assert float(module.proj_nbi.weight.grad.abs().sum()) == 0.0
    assert float(parts["share_w"].grad.abs().sum()) > 0.0


@torch.no_grad()
def test_nbi_weight_does_not_compete_with_wli_and_keeps_its_floor(module):
    parts = make_parts(5)
    _, weights = module(parts)
    # the NBI weight depends on the NBI tokens only: other WLI tokens (a softmax share would move) leave it as is
    _, other = module(dict(parts, spec_w=parts["spec_w"] * 10 + 3, share_w=-parts["share_w"]))
    torch.testing.assert_close(other[:, 1], weights[:, 1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(other[:, 0], weights[:, 0])
    # a gate driven fully shut leaves the floor (hand-computed: 0.25 + 0.75 * sigmoid(-1e4) = 0.25), fully open 1
    module.gate_nbi.bias.fill_(-1e4)
    module.gate_wli.bias.fill_(1e4)
    _, shut = module(parts)
    assert torch.equal(shut[:, 1], torch.full((B,), WEIGHT_FLOOR)) and torch.equal(shut[:, 0], torch.ones(B))


@torch.no_grad()
def test_missing_nbi_takes_the_learned_stand_in_map(module):
    parts = make_parts(6)
    available = torch.tensor([True, False, False])
    fused, _ = module(parts, available)
    module.missing_nbi.add_(torch.randn(1, N, D))
    moved, _ = module(parts, available)
    assert torch.equal(moved[0], fused[0])  # an available NBI does not use the stand-in
    assert not torch.allclose(moved[1:], fused[1:])
    # the stand-in enters where a_n * mix_n(t_n) would: y = (y without any NBI term) + s, hand-restated
    t_w = module.proj_wli(torch.cat([parts["spec_w"], parts["share_w"]], -1)) + module.modality_embed[0]
    _, weights = module({k: parts[k] for k in ("spec_w", "share_w")})
    kv = module.norm_kv(t_w)
    q, k, v = (x.reshape(B, N, HEADS, -1).transpose(1, 2) for x in (module.query(module.norm_q(t_w)),
                                                                       module.key(kv), module.value(kv)))
    ctx = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)
    y = t_w + module.out(ctx) + weights[:, 0, None, None] * module.mix_wli(t_w) + module.missing_nbi
    torch.testing.assert_close(moved[1:], (y + module.mlp(module.norm_mlp(y)))[1:], atol=1e-5, rtol=1e-5)
