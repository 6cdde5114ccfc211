"""Label encodings: every two-valued mask reads as the same 0/1 mask; ambiguous masks are refused by name."""
import cv2
import numpy as np
import pytest

from endofuse.errors import EndofuseError
from endofuse.model.dataset import read_mask

RNG = np.random.default_rng(0)
TRUTH = (RNG.random((24, 30)) > 0.6).astype(np.uint8)  # the reference 0/1 mask


def colour(fg, bg=(0, 0, 0), channels=3):
    image = np.zeros((*TRUTH.shape, channels), np.uint8)
    image[TRUTH == 0, :3] = bg
    image[TRUTH == 1, :3] = fg
    if channels == 4:
        image[..., 3] = 255
    return image


ENCODINGS = {
    "grey 0/1": TRUTH,
    "grey 0/255": TRUTH * np.uint8(255),
    "grey 0/128": TRUTH * np.uint8(128),
    "grey 3/7": np.where(TRUTH == 1, 7, 3).astype(np.uint8),
    "16-bit 0/65535": TRUTH.astype(np.uint16) * np.uint16(65535),
    "RGB white": colour((255, 255, 255)),
    "RGB 0/1": colour((1, 1, 1)),
    "RGB palette red": colour((0, 0, 128)),
    "RGBA white": colour((255, 255, 255), channels=4),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_two_valued_encodings_read_as_the_same_mask(name, tmp_path):
    path = tmp_path / "label.png"
    assert cv2.imwrite(str(path), ENCODINGS[name])
    np.testing.assert_array_equal(read_mask(path), TRUTH)


def test_single_valued_masks(tmp_path):
    for value, expected in ((0, 0), (1, 1), (255, 1)):
        path = tmp_path / f"v{value}.png"
        cv2.imwrite(str(path), np.full((5, 6), value, np.uint8))
        np.testing.assert_array_equal(read_mask(path), np.full((5, 6), expected, np.uint8))


AMBIGUOUS = {
    "three grey levels": np.where(TRUTH == 1, 255, np.where(RNG.random(TRUTH.shape) > 0.9, 100, 0)).astype(np.uint8),
    "three colours": colour((0, 0, 255)) + (np.arange(TRUTH.size).reshape(TRUTH.shape) % 7 == 0)[..., None]
    * np.array([0, 200, 0], np.uint8),
    "two colours, no black": colour((0, 0, 255), bg=(255, 0, 0)),
}


@pytest.mark.parametrize("name", sorted(AMBIGUOUS))
def test_ambiguous_masks_are_refused_naming_the_file(name, tmp_path):
    path = tmp_path / "soft_label.png"
    assert cv2.imwrite(str(path), AMBIGUOUS[name])
    with pytest.raises(EndofuseError, match="soft_label.png"):
        read_mask(path)


def test_jpeg_mask_is_refused_rather_than_thresholded(tmp_path):
    path = tmp_path / "label.jpg"
    assert cv2.imwrite(str(path), TRUTH * np.uint8(255), [cv2.IMWRITE_JPEG_QUALITY, 70])
    with pytest.raises(EndofuseError, match=r"label\.jpg: \d+ distinct values"):
        read_mask(path)
