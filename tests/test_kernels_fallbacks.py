"""The plain-torch / OpenCV paths of endofuse.kernels against independent references."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from endofuse.kernels import attention, dacl_loss, mmd_loss, overlay, preprocess
from endofuse.model import losses


def _grads(fn, *inputs):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.sum().backward() if out.dim() else out.backward()
    return out.detach(), [leaf.grad for leaf in leaves]


def test_attention_torch_matches_explicit_softmax():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 32, dtype=torch.float64) for _ in range(3))
    expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(32), dim=-1) @ v
    torch.testing.assert_close(attention(q, k, v, backend="torch"), expected)


@pytest.mark.parametrize("batch, dim", [(1, 12), (2, 7), (5, 33)])
def test_dacl_torch_matches_reference_with_grads(batch, dim):
    torch.manual_seed(batch)
    feats = [torch.randn(batch, 3, dim, dtype=torch.float64) for _ in range(4)]
    out, grads = _grads(lambda *t: dacl_loss(*t, temperature=0.1, backend="torch"), *feats)
    ref, ref_grads = _grads(lambda *t: losses.dacl(*t, temperature=0.1), *feats)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "linear"])
def test_mmd_torch_matches_reference_with_grads(kernel):
    torch.manual_seed(1)
    x, y = torch.randn(6, 40, dtype=torch.float64), torch.randn(6, 40, dtype=torch.float64) + 0.2
    out, grads = _grads(lambda a, b: mmd_loss(a, b, kernel=kernel, backend="torch"), x, y)
    ref, ref_grads = _grads(lambda a, b: losses.mmd(a, b, kernel=kernel), x, y)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-6)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, rtol=1e-3, atol=1e-5)


def test_mmd_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        mmd_loss(torch.zeros(2, 3), torch.zeros(2, 3), kernel="cosine")


def test_preprocess_cpu_matches_torch_bilinear():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), rng.integers(0, 256, (64, 20, 3), dtype=np.uint8)]
    batch = preprocess(frames, (24, 30), backend="torch")
    assert batch.shape == (2, 3, 24, 30) and batch.dtype == torch.float32
    for i, frame in enumerate(frames):
        rgb = torch.from_numpy(frame[:, :, ::-1].copy()).permute(2, 0, 1)[None].double()
        expected = F.interpolate(rgb, size=(24, 30), mode="bilinear", align_corners=False)[0] / 255.0
        # float32 tap coordinates: up to ~1e-4 of a pixel off the float64 reference
        torch.testing.assert_close(batch[i].double(), expected, rtol=0, atol=2e-4)


def test_preprocess_cpu_of_a_view_equals_its_copy_and_torch():
    # A mirrored crop is a non-contiguous view: the flat tap indices must read the copy's bytes.
    frame = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)[5:45, ::-1]
    batch = preprocess([frame, np.ascontiguousarray(frame)], (17, 23), backend="torch")
    torch.testing.assert_close(batch[0], batch[1], rtol=0, atol=0)
    rgb = torch.from_numpy(frame[:, :, ::-1].copy()).permute(2, 0, 1)[None].double()
    expected = F.interpolate(rgb, size=(17, 23), mode="bilinear", align_corners=False)[0] / 255.0
    torch.testing.assert_close(batch[0].double(), expected, rtol=0, atol=2e-4)


def test_preprocess_rejects_non_uint8_frame_naming_it():
    with pytest.raises(ValueError, match="frame 1"):
        preprocess([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)], 8)


def brute_force_rim(mask: np.ndarray, radius: int = 2) -> np.ndarray:
    """Foreground pixels with a background pixel inside the frame within `radius` (Chebyshev)."""
    rim = np.zeros_like(mask, bool)
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask), strict=True):
        window = mask[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1]
        rim[y, x] = (window == 0).any()
    return rim


def test_overlay_cpu_against_hand_built_mask():
    # Foreground logits on a 4x4 block of an 8x8 map, upsampled x4: the blend and the 2-px
    # rim are checked against torch's bilinear argmax and a brute-force neighbourhood scan.
    logits = torch.zeros(2, 8, 8)
    logits[1, 2:6, 2:6] = 10.0
    logits[1] -= 5.0
    frame = np.full((32, 32, 3), 100, np.uint8)
    frame[:, :16, 0] = 7  # not uniform, so the blend reads the frame
    result = overlay(frame, logits, alpha=0.5, color=(0, 0, 200), backend="torch")
    up = F.interpolate(logits[None], size=(32, 32), mode="bilinear", align_corners=False)[0]
    expected_mask = (up.argmax(0) != 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(result.mask, expected_mask)
    rim = brute_force_rim(expected_mask)
    interior = expected_mask.astype(bool) & ~rim
    assert rim.sum() > 0 and interior.sum() > 0
    blended = np.floor(frame.astype(np.float64) * 0.5 + np.array([0, 0, 200]) * 0.5 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(result.image[interior], blended[interior])
    np.testing.assert_array_equal(result.image[rim], np.tile([0, 0, 200], (rim.sum(), 1)))
    np.testing.assert_array_equal(result.image[expected_mask == 0], frame[expected_mask == 0])


def test_overlay_rim_ignores_frame_edge():
    logits = torch.stack([torch.zeros(6, 6), torch.ones(6, 6)])  # all foreground
    result = overlay(np.zeros((12, 12, 3), np.uint8), logits, alpha=1.0, color=(1, 2, 3), backend="torch")
    assert result.mask.all()
    np.testing.assert_array_equal(result.image, np.tile(np.array([1, 2, 3], np.uint8), (12, 12, 1)))


def test_overlay_torch_frame_returns_torch():
    frame = torch.zeros(10, 12, 3, dtype=torch.uint8)
    result = overlay(frame, torch.randn(1, 2, 5, 6), 0.3, (255, 0, 0), backend="torch")
    assert isinstance(result.image, torch.Tensor) and result.image.shape == (10, 12, 3)
    assert result.mask.dtype == torch.uint8


@pytest.mark.parametrize("zero_row", [False, True])
def test_dacl_written_out_backward_matches_autograd(zero_row):
    from endofuse.kernels.dacl import loss_from_gram, loss_from_gram_backward

    torch.manual_seed(7)
    rows = torch.randn(12, 9, dtype=torch.float64)
    if zero_row:
        rows[5] = 0.0  # F.normalize maps it to zero; its gradient must stay finite
    gram = (rows @ rows.t()).requires_grad_(True)
    loss_from_gram(gram, 3, 0.1).backward(torch.tensor(1.7, dtype=torch.float64))
    written = loss_from_gram_backward(gram.detach(), 3, 0.1, torch.tensor(1.7, dtype=torch.float64))
    assert torch.isfinite(written).all()
    torch.testing.assert_close(written, gram.grad)
