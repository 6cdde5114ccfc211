"""The procedural WLI/NBI generator (endofuse.model.synthetic)."""
import cv2
import numpy as np
import pytest

from endofuse.model.synthetic import SyntheticScene, make_pair, octagon_mask

SIZE = (120, 136)


def test_make_pair_is_deterministic_per_seed_and_differs_across_seeds():
    a, b = make_pair(7, SIZE), make_pair(7, SIZE)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    c = make_pair(8, SIZE)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[2], c[2])


@pytest.mark.parametrize("seed", range(6))
def test_pair_shapes_types_and_mask_coverage(seed):
    wli, nbi, mask = make_pair(seed, SIZE)
    assert wli.shape == (*SIZE, 3) and nbi.shape == (*SIZE, 3) and mask.shape == SIZE
    assert wli.dtype == nbi.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    # Real data: tumour covers 0.6 % to 59 % of the image.
    assert 0.005 < mask.mean() < 0.6


def test_octagonal_black_border_and_mask_inside_it():
    wli, nbi, mask = make_pair(0, SIZE)
    fov = octagon_mask(SIZE)
    h, w = SIZE
    # Corners are cut: the four corner pixels and everything outside the octagon are black.
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        assert fov[y, x] == 0
    assert wli[fov == 0].max() == 0 and nbi[fov == 0].max() == 0
    assert mask[fov == 0].max() == 0
    # The field of view itself is lit.
    assert wli[fov == 1].mean() > 40 and nbi[fov == 1].mean() > 40
    # Hand-computed: an octagon cutting 20% of min(H, W) off each corner keeps 1 - 2 * 0.2^2 * min^2 / (H*W).
    cut = round(0.2 * min(h, w))
    expected = 1 - 2 * cut * cut / (h * w)
    assert abs(fov.mean() - expected) < 0.02


def _high_pass_energy(image_bgr: np.ndarray, region: np.ndarray) -> float:
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    detail = grey - cv2.GaussianBlur(grey, (0, 0), 2.0)
    return float(np.abs(detail[region > 0]).mean())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lesion_micro_vessels_are_strong_in_nbi_and_faint_in_wli(seed):
    size = (288, 320)
    wli, nbi, mask = make_pair(seed, size)
    # Erode so that NBI's small mis-registration cannot push the region off the lesion.
    core = cv2.erode(mask, np.ones((15, 15), np.uint8))
    assert core.sum() > 200
    fov = cv2.erode(octagon_mask(size), np.ones((9, 9), np.uint8))
    outside = fov * (1 - cv2.dilate(mask, np.ones((31, 31), np.uint8)))
    nbi_ratio = _high_pass_energy(nbi, core) / _high_pass_energy(nbi, outside)
    wli_ratio = _high_pass_energy(wli, core) / _high_pass_energy(wli, outside)
    assert nbi_ratio > 3.0, nbi_ratio
    assert nbi_ratio > 2.0 * wli_ratio, (nbi_ratio, wli_ratio)


def test_nbi_is_slightly_misregistered_but_close():
    scene = SyntheticScene(seed=5, size=SIZE)
    warp = scene.nbi_warp
    identity = np.eye(3)
    offset = np.abs(warp - identity)
    assert offset.max() > 1e-3, "NBI must not be pixel-registered to WLI"
    # Map the frame corners: they move by at most ~6 % of the frame size.
    h, w = SIZE
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], float).T
    moved = warp @ corners
    assert np.abs(moved - corners)[:2].max() < 0.08 * max(h, w)


def test_nbi_may_have_its_own_size():
    wli, nbi, mask = make_pair(2, (100, 104), nbi_size=(100, 88))
    assert wli.shape == (100, 104, 3) and nbi.shape == (100, 88, 3) and mask.shape == (100, 104)
    # The octagon is drawn for the NBI frame's own size.
    assert nbi[octagon_mask((100, 88)) == 0].max() == 0


def test_scene_moves_smoothly():
    scene = SyntheticScene(seed=3, size=SIZE)
    w0, n0, m0 = scene.frame(2.0)
    w1, n1, m1 = scene.frame(2.0 + 1 / 30)
    w2, n2, m2 = scene.frame(6.0)
    step = np.abs(w0.astype(int) - w1).mean()
    far = np.abs(w0.astype(int) - w2).mean()
    assert 0 < step < far / 3
    # The mask follows the scene: one frame apart it barely changes.
    assert np.mean(m0 != m1) < 0.02 and np.mean(m0 != m2) > np.mean(m0 != m1)
    np.testing.assert_array_equal(scene.frame(2.0)[0], w0)


def test_too_small_size_is_rejected():
    with pytest.raises(ValueError, match="at least 16x16"):
        SyntheticScene(0, (8, 8))
