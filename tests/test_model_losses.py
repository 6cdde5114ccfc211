"""Reference losses (endofuse.model.losses) and the recipe's loss weights against cases computed by hand."""
import math

import pytest
import torch

from endofuse.model import losses
from endofuse.train import recipes


def test_disentangle_on_hand_picked_directions():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    diag = torch.tensor([1.0, 1.0])
    # (B=1, N=2, D=2) token maps
    share_w = torch.stack([e1, e1])[None]
    share_n = torch.stack([e1, diag])[None]  # cos 1 and 1/sqrt(2)
    spec_w = torch.stack([e2, e2])[None]  # orthogonal to share_w -> orth_wli 0
    spec_n = torch.stack([-e2, e1])[None]  # cos with spec_w: -1, 0; with share_n: 0, 1/sqrt(2)
    terms = losses.disentangle(spec_w, spec_n, share_w, share_n)
    align = 1 - (1 + 1 / math.sqrt(2)) / 2
    diff = (1 + (-1 + 0) / 2) / 2
    orth_nbi = (0 + 0.5) / 2
    assert terms["align"].item() == pytest.approx(align, abs=1e-6)
    assert terms["diff"].item() == pytest.approx(diff, abs=1e-6)
    assert terms["orth_wli"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["orth_nbi"].item() == pytest.approx(orth_nbi, abs=1e-6)
    assert terms["mi"].item() == pytest.approx((align + diff + orth_nbi) / 4, abs=1e-6)


def test_disentangle_with_a_specific_token_parallel_to_the_shared_one():
    e = torch.eye(3)
    share_w = e[0].expand(1, 2, 3)          # cos(share_w, share_n) = 1 on both tokens
    share_n = e[0].expand(1, 2, 3)
    spec_w = torch.stack([e[1], e[0]]).unsqueeze(0)   # token 0 orthogonal, token 1 parallel to share
    spec_n = torch.stack([-e[1], e[2]]).unsqueeze(0)  # cos(spec_w, spec_n) = -1, 0
    terms = losses.disentangle(spec_w, spec_n, share_w, share_n)
    assert terms["align"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["diff"].item() == pytest.approx((1 + (-1 + 0) / 2) / 2)
    assert terms["orth_wli"].item() == pytest.approx((0 + 1) / 2)
    assert terms["orth_nbi"].item() == pytest.approx(0.0, abs=1e-6)
    expected_mi = (0.0 + 0.25 + 0.5 + 0.0) / 4
    assert terms["mi"].item() == pytest.approx(expected_mi)


def test_dacl_positive_not_in_denominator():
    # share_w == share_n == e1, spec_w = e2, spec_n = e3, tau = 0.1.
    e = torch.eye(4)
    loss = losses.dacl(e[0:1], e[0:1], e[1:2], e[2:3], temperature=0.1)
    # share rows: negatives are the two specific rows (sim 0) -> log 2 each;
    # specific rows: negatives are the three other rows (sim 0) -> log 3 each;
    # positives: sim 1 / 0.1 = 10 both ways.
    expected = (2 * math.log(2) + 2 * math.log(3)) / 4 - 10.0
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_dacl_four_rows_by_hand():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    c, d = torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]])
    # rows share_w, share_n, spec_w, spec_n; sims = dot / 0.1; positives (0,1),(1,0) have sim 0
    lse = [
        math.log(math.exp(10) + math.exp(-10)),  # share_w: negatives spec_w, spec_n
        math.log(2.0),  # share_n: negatives spec_w (0), spec_n (0)
        math.log(math.exp(10) + 1 + math.exp(-10)),  # spec_w: no positive, all others
        math.log(2 * math.exp(-10) + 1),  # spec_n
    ]
    got = losses.dacl(a, b, c, d, temperature=0.1)
    assert got.item() == pytest.approx(sum(lse) / 4 - 0.0, abs=1e-5)


def test_dacl_scales_vectors_away_and_flattens_tokens():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(3, 4, 5, generator=g) for _ in range(4)]
    scaled = [m * s for m, s in zip(maps, (2.0, 0.5, 3.0, 7.0), strict=True)]
    torch.testing.assert_close(losses.dacl(*maps), losses.dacl(*scaled))  # L2-normalised rows
    flat = losses.dacl(*[m.flatten(1) * 7.0 for m in maps])  # token maps are flattened per sample
    assert flat.item() == pytest.approx(losses.dacl(*maps).item(), rel=1e-5)
    with pytest.raises(ValueError, match="four tensors of one shape"):
        losses.dacl(maps[0], maps[1][:2], maps[2], maps[3])


def test_mmd_gaussian_one_dimensional_by_hand():
    x, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    # n = 2, squared distance 1 twice: bandwidth 2 / (4 - 2) = 1, divided by 2**(5 // 2) = 4
    cross = sum(math.exp(-1.0 / (0.25 * 2**i)) for i in range(5))
    assert losses.mmd(x, y).item() == pytest.approx(5 + 5 - 2 * cross, abs=1e-6)


def test_mmd_laplacian_uses_l1_distance():
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    # L1 distance 3 -> bw = 6 / 2 = 3, base bw = 0.75.
    cross = sum(math.exp(-3.0 / (0.75 * 2**i)) for i in range(5))
    assert losses.mmd(x, y, kernel="laplacian").item() == pytest.approx(10 - 2 * cross, abs=1e-6)
    # one dimension, |d| = 2: bandwidth 4 / 2 / 4 = 0.5
    x1, y1 = torch.tensor([[0.0]]), torch.tensor([[2.0]])
    cross_l1 = sum(math.exp(-2.0 / (0.5 * 2**i)) for i in range(5))
    assert losses.mmd(x1, y1, kernel="laplacian").item() == pytest.approx(10 - 2 * cross_l1, abs=1e-5)


def test_mmd_linear_is_squared_mean_distance():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    y = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # means (2, 3) and (0, 1): squared distance 8
    assert losses.mmd(x, y, kernel="linear").item() == pytest.approx(8.0)
    assert losses.mmd(torch.tensor([[0.0]]), torch.tensor([[2.0]]), kernel="linear").item() == pytest.approx(4.0)


def test_mmd_zero_for_identical_samples_and_rejects_bad_kernels():
    x = torch.randn(4, 3)
    assert losses.mmd(x, x.clone()).abs().item() < 1e-6
    for kernel in ("cauchy", "cosine"):
        with pytest.raises(ValueError, match="kernel must be one of"):
            losses.mmd(x, x, kernel=kernel)


def test_dice_loss_perfect_and_uniform():
    target = torch.tensor([[[0, 1], [1, 1]]])
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], dim=1) * 50
    assert losses.dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    uniform = torch.zeros(1, 2, 2, 2)  # softmax 0.5 everywhere
    # class 0: I = 0.5, sum p^2 = 1, sum g^2 = 1 -> 1 - 1/2; class 1: I = 1.5, p^2 = 1, g^2 = 3 -> 1 - 3/4
    expected = ((1 - (1 + 1e-5) / (2 + 1e-5)) + (1 - (3 + 1e-5) / (4 + 1e-5))) / 2
    assert losses.dice_loss(uniform, target).item() == pytest.approx(expected, abs=1e-6)


def test_dice_and_segmentation_loss_on_uniform_logits():
    logits = torch.zeros(1, 2, 2, 2)  # softmax 0.5 everywhere
    target = torch.ones(1, 2, 2, dtype=torch.long)
    s = 1e-5
    dice_bg = 1 - s / (1 + s)  # no background pixels: intersect 0, sum p^2 = 4 * 0.25
    dice_fg = 1 - (2 * 2 + s) / (1 + 4 + s)
    assert losses.dice_loss(logits, target).item() == pytest.approx((dice_bg + dice_fg) / 2, abs=1e-6)
    expected = 0.5 * math.log(2) + 0.5 * (dice_bg + dice_fg) / 2
    assert recipes.segmentation_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("epoch, weight", [(0, 0.0), (25, 0.025), (50, 0.05), (80, 0.05), (99, 0.05)])
def test_fd_weight_ramps_to_0_05_by_mid_training(epoch, weight):
    assert recipes.fd_weight(epoch, 100) == pytest.approx(weight)


def test_token_grid_ce_by_hand():
    # a 4x4 mask on a 2x2 token grid: token 0 all lesion, token 1 half, tokens 2 and 3 background
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1
    target[0, :2, 2] = 1
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [2.0, 0.0], [0.0, 0.0]]])
    # per token: -sum_c soft_c * log p_c, p from softmax of the row
    expected = (
        math.log(2.0)  # token 0: soft (0, 1), p = (1/2, 1/2)
        + 0.5 * -math.log(1 / 4) + 0.5 * -math.log(3 / 4)  # token 1: soft (1/2, 1/2), p = (1/4, 3/4)
        + -math.log(math.exp(2) / (math.exp(2) + 1))  # token 2: soft (1, 0)
        + math.log(2.0)  # token 3: soft (1, 0), p = (1/2, 1/2)
    ) / 4
    assert losses.token_grid_ce(logits, target).item() == pytest.approx(expected, abs=1e-6)
