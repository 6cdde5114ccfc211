"""Triton preprocess / overlay kernels (interpreter on CPU, native on CUDA) against the CPU paths."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from endofuse.kernels import overlay, preprocess
from endofuse.kernels._backend import HAS_TRITON, interpreter_enabled

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    if request.param == "cpu" and not interpreter_enabled():
        pytest.skip("CPU tensors need TRITON_INTERPRET=1 (set by conftest unless overridden)")
    return request.param


def test_preprocess_kernel_matches_cpu_path_in_one_batch(device):
    rng = np.random.default_rng(3)
    # WLI and NBI of different sizes; one is upscaled, one downscaled, odd sizes on purpose.
    frames = [rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)]
    fused = preprocess([torch.from_numpy(f).to(device) for f in frames], (24, 30), backend="triton")
    assert fused.device.type == device and fused.shape == (2, 3, 24, 30)
    reference = preprocess(frames, (24, 30), backend="torch")
    torch.testing.assert_close(fused.cpu(), reference, rtol=0, atol=1e-6)
    # and both are the half-pixel bilinear resize of the RGB frame
    rgb = torch.from_numpy(frames[1][:, :, ::-1].copy()).permute(2, 0, 1)[None].double()
    expected = F.interpolate(rgb, size=(24, 30), mode="bilinear", align_corners=False)[0] / 255.0
    torch.testing.assert_close(fused[1].cpu().double(), expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("classes", [2, 3])
def test_overlay_kernel_matches_cpu_path(device, classes):
    rng = np.random.default_rng(classes)
    frame = rng.integers(0, 256, (19, 26, 3), dtype=np.uint8)
    logits = torch.from_numpy(rng.normal(size=(1, classes, 6, 7)).astype(np.float32))
    fused = overlay(torch.from_numpy(frame).to(device), logits.to(device), 0.4, (10, 200, 30), backend="triton")
    reference = overlay(frame, logits, 0.4, (10, 200, 30), backend="torch")
    assert isinstance(fused.image, torch.Tensor) and fused.image.device.type == device
    mask = fused.mask.cpu().numpy()
    assert 0 < mask.sum() < mask.size, "want a mix of foreground and background"
    # Masks may differ only where the upsampled logits tie to float rounding.
    up = F.interpolate(logits.double(), size=frame.shape[:2], mode="bilinear", align_corners=False)[0]
    top2 = up.topk(2, dim=0).values
    near_tie = (top2[0] - top2[1]).numpy() < 1e-5
    assert not ((mask != reference.mask) & ~near_tie).any()
    agree = mask == reference.mask
    diff = np.abs(fused.image.cpu().numpy().astype(int) - reference.image.astype(int))
    assert diff[agree].max() <= 1, "blend differs by more than 1 (rounding) where the masks agree"
