"""The plain-torch reference losses against cases computed by hand."""
import math

import pytest
import torch

from endofuse.model import losses


def test_dacl_hand_case_positive_not_in_denominator():
    # share_w == share_n == e1, spec_w = e2, spec_n = e3, tau = 0.1.
    e = torch.eye(4)
    loss = losses.dacl(e[0:1], e[0:1], e[1:2], e[2:3], temperature=0.1)
    # share rows: negatives are the two specific rows (sim 0) -> log 2 each;
    # specific rows: negatives are the three other rows (sim 0) -> log 3 each;
    # positives: sim 1 / 0.1 = 10 both ways.
    expected = (2 * math.log(2) + 2 * math.log(3)) / 4 - 10.0
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_dacl_flattens_token_maps_and_is_scale_invariant():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(3, 5, 4, generator=g) for _ in range(4)]
    a = losses.dacl(*feats)
    b = losses.dacl(*[f.flatten(1) * 7.0 for f in feats])
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_mmd_gaussian_hand_case():
    x, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    # n = 2, squared distances [[0,1],[1,0]] -> bw = 2 / (4 - 2) = 1, base bw = 1 / 2**2.
    cross = sum(math.exp(-1.0 / (0.25 * 2**i)) for i in range(5))
    expected = 5 + 5 - 2 * cross
    assert losses.mmd(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_mmd_laplacian_uses_l1_distance():
    x, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]])
    # L1 distance 3 -> bw = 6 / 2 = 3, base bw = 0.75.
    cross = sum(math.exp(-3.0 / (0.75 * 2**i)) for i in range(5))
    assert losses.mmd(x, y, kernel="laplacian").item() == pytest.approx(10 - 2 * cross, abs=1e-6)


def test_mmd_linear_is_squared_mean_distance():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    y = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # means (2, 3) and (0, 1): squared distance 8
    assert losses.mmd(x, y, kernel="linear").item() == pytest.approx(8.0)


def test_mmd_zero_for_identical_samples_and_rejects_bad_kernel():
    x = torch.randn(4, 3)
    assert losses.mmd(x, x.clone()).abs().item() < 1e-6
    with pytest.raises(ValueError, match="kernel"):
        losses.mmd(x, x, kernel="cauchy")


def test_disentangle_hand_case():
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


def test_dice_loss_perfect_and_hand_case():
    target = torch.tensor([[[0, 1], [1, 1]]])
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], dim=1) * 50
    assert losses.dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    uniform = torch.zeros(1, 2, 2, 2)  # softmax 0.5 everywhere
    # class 0: I = 0.5, sum p^2 = 1, sum g^2 = 1 -> 1 - 1/2; class 1: I = 1.5, p^2 = 1, g^2 = 3 -> 1 - 3/4
    expected = ((1 - (1 + 1e-5) / (2 + 1e-5)) + (1 - (3 + 1e-5) / (4 + 1e-5))) / 2
    assert losses.dice_loss(uniform, target).item() == pytest.approx(expected, abs=1e-6)


def test_fd_weight_ramp():
    assert losses.fd_weight(0, 100) == 0.0
    assert losses.fd_weight(25, 100) == pytest.approx(0.025)
    assert losses.fd_weight(80, 100) == pytest.approx(0.05)
