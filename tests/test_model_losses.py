"""Reference losses (endofuse.model.losses) against hand-computed small cases."""
import math

import pytest
import torch

from endofuse.model import losses


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
    scaled = [m * s for m, s in zip(maps, (2.0, 0.5, 3.0, 7.0))]
    torch.testing.assert_close(losses.dacl(*maps), losses.dacl(*scaled))  # L2-normalised rows
    with pytest.raises(ValueError, match="four tensors of one shape"):
        losses.dacl(maps[0], maps[1][:2], maps[2], maps[3])


def test_mmd_gaussian_one_dimensional_by_hand():
    x, y = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    # n = 2, squared distance 1 twice: bandwidth 2 / (4 - 2) = 1, divided by 2**(5 // 2) = 4
    cross = sum(math.exp(-1.0 / (0.25 * 2**i)) for i in range(5))
    assert losses.mmd(x, y).item() == pytest.approx(5 + 5 - 2 * cross, abs=1e-5)
    # laplacian: L1 distance, same numbers in one dimension with |d| = 2
    y2 = torch.tensor([[2.0]])
    cross_l1 = sum(math.exp(-2.0 / (0.5 * 2**i)) for i in range(5))  # bandwidth 4/2 / 4 = 0.5
    assert losses.mmd(x, y2, kernel="laplacian").item() == pytest.approx(10 - 2 * cross_l1, abs=1e-5)
    assert losses.mmd(x, y2, kernel="linear").item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        losses.mmd(x, y, kernel="cosine")


def test_dice_and_segmentation_loss_on_uniform_logits():
    logits = torch.zeros(1, 2, 2, 2)  # softmax 0.5 everywhere
    target = torch.ones(1, 2, 2, dtype=torch.long)
    s = 1e-5
    dice_bg = 1 - s / (1 + s)  # no background pixels: intersect 0, sum p^2 = 4 * 0.25
    dice_fg = 1 - (2 * 2 + s) / (1 + 4 + s)
    assert losses.dice_loss(logits, target).item() == pytest.approx((dice_bg + dice_fg) / 2, abs=1e-6)
    expected = 0.5 * math.log(2) + 0.5 * (dice_bg + dice_fg) / 2
    assert losses.segmentation_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("epoch, weight", [(0, 0.0), (25, 0.025), (50, 0.05), (99, 0.05)])
def test_fd_weight_ramps_to_0_05_by_mid_training(epoch, weight):
    assert losses.fd_weight(epoch, 100) == pytest.approx(weight)
