"""MIR head and the distillation terms against hand-computed / loop references; where their gradients go."""
import pytest
import torch
import torch.nn.functional as F

from endofuse.model.distill import prototype_distill, relation_distill, token_class_weights
from endofuse.model.mir import MaskedNBIReconstruction, patchify


def test_patchify_by_hand():
    image = torch.arange(2 * 3 * 32 * 48, dtype=torch.float32).reshape(2, 3, 32, 48)
    patches = patchify(image)
    assert patches.shape == (2, 6, 16 * 16 * 3)
    # patch 4 = grid row 1, column 1; entry (y, x, c) at (y * 16 + x) * 3 + c
    for y, x, c in [(0, 0, 0), (5, 7, 2), (15, 15, 1)]:
        assert patches[1, 4, (y * 16 + x) * 3 + c] == image[1, c, 16 + y, 16 + x]


def test_mir_loss_is_l1_over_masked_patches_only():
    torch.manual_seed(0)
    head = MaskedNBIReconstruction(dim=8, heads=2, tokens=4)
    share = torch.randn(2, 4, 8)
    nbi = torch.rand(2, 3, 32, 32)
    mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
    loss = head(share, nbi, mask)
    pred, target = head.reconstruct(share).detach(), patchify(nbi)
    manual = sum(float((pred[b, n] - target[b, n]).abs().sum()) for b, n in [(0, 0), (0, 3), (1, 1)]) / (3 * 768)
    assert loss.item() == pytest.approx(manual, rel=1e-5)
    # unmasked NBI pixels do not matter
    other = nbi.clone()
    other[0, :, :16, 16:] = 0.0  # patch 1 of sample 0 is unmasked
    assert head(share, other, mask).item() == pytest.approx(loss.item(), rel=1e-6)


def test_random_mask_ratio_and_gradients():
    torch.manual_seed(1)
    head = MaskedNBIReconstruction(dim=8, heads=2, tokens=10, mask_ratio=0.5)
    mask = head.random_mask(3, torch.device("cpu"))
    assert mask.sum(1).tolist() == [5, 5, 5]
    share = torch.randn(3, 10, 8, requires_grad=True)
    nbi = torch.rand(3, 3, 16, 160)
    head(share, nbi).backward()
    assert float(share.grad.abs().sum()) > 0  # the WLI shared features learn
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in head.parameters())


def loop_covariance(x: torch.Tensor) -> torch.Tensor:
    m, d = x.shape
    mean = x.mean(0)
    c = torch.zeros(d, d)
    for i in range(m):
        v = (x[i] - mean)[:, None]
        c += v @ v.t()
    return c / m


def test_relation_distill_matches_loops():
    torch.manual_seed(2)
    s, t = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)

    def gap(a, b):
        return float(((a - b) ** 2).sum() / ((a ** 2).sum() + (b ** 2).sum()))

    local = sum(gap(loop_covariance(sn[b]), loop_covariance(tn[b])) for b in range(3)) / 3
    global_ = gap(loop_covariance(sn.mean(1)), loop_covariance(tn.mean(1)))
    assert float(relation_distill(s, t)) == pytest.approx(0.5 * (local + global_), rel=1e-5)
    assert float(relation_distill(t, t)) == pytest.approx(0.0, abs=1e-7)


def test_relation_distill_by_hand_and_collapse_is_one_whatever_the_common_vector():
    # one sample, two tokens (1, 0) and (0, 1): C_t = [[.25, -.25], [-.25, .25]]; a student whose
    # tokens are both (1, 0) has C_s = 0, so the local gap is 1; one sample: global covariances are 0 -> 0
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    student = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert float(relation_distill(student, teacher)) == pytest.approx(0.5)
    # trained fused tokens: a large common vector + a small spread over positions (1-5 % of the norm).
    # A student collapsed to the per-sample token mean (no spatial structure) must still read as a full gap.
    torch.manual_seed(3)
    common = torch.randn(1, 1, 32) * 50
    teacher = common + torch.randn(4, 16, 32)
    collapsed = teacher.mean(dim=1, keepdim=True).expand_as(teacher)
    noisy = teacher + 0.01 * torch.randn_like(teacher)
    value = float(relation_distill(collapsed, teacher))
    # the local gap is exactly 1 (C_s = 0); the global one is small (the means still match)
    assert 0.5 <= value < 0.55
    assert float(relation_distill(noisy, teacher)) < 1e-3 * value


def test_prototype_distill_by_hand():
    # 2x2 token grid of 16 px patches, 2 classes; sample 0: left half tumour, sample 1: all background
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[0, :, :16] = 1
    target[0, :8, 16:] = 1  # half of token 1 is tumour
    w = token_class_weights(target, 2, 2)
    assert w[0, :, 1].tolist() == [1.0, 0.5, 1.0, 0.0]
    torch.manual_seed(3)
    s, t = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    protos = []
    for feats in (s, t):
        tumour = (feats[0, 0] + 0.5 * feats[0, 1] + feats[0, 2]) / 2.5
        background = (0.5 * feats[0, 1] + feats[0, 3] + feats[1].sum(0)) / 5.5
        protos.append((background, tumour))
    expected = sum(1 - float(F.cosine_similarity(a, b, dim=0)) for a, b in zip(*protos, strict=True)) / 2
    assert float(prototype_distill(s, t, target, 2)) == pytest.approx(expected, rel=1e-5)
    # only background present -> the tumour class is left out of the mean
    only_bg = prototype_distill(s, t, torch.zeros_like(target), 2)
    bg = F.cosine_similarity(s.reshape(-1, 3).mean(0), t.reshape(-1, 3).mean(0), dim=0)
    assert float(only_bg) == pytest.approx(1 - float(bg), rel=1e-5)


def test_distillation_gradients_reach_the_student_only():
    s = torch.randn(2, 4, 3, requires_grad=True)
    t = torch.randn(2, 4, 3, requires_grad=True)
    target = torch.randint(0, 2, (2, 32, 32))
    (relation_distill(s, t) + prototype_distill(s, t, target, 2)).backward()
    assert float(s.grad.abs().sum()) > 0 and t.grad is None
