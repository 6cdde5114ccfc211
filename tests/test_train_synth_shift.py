"""`endofuse synth --shift`: only the test pairs change, by the documented colour/blur/misregistration."""
import csv

import cv2
import numpy as np

from endofuse import cli
from endofuse.model.synthetic import DomainShift, SyntheticScene, make_pair


def test_colour_calibration_by_hand_without_blur():
    shift = DomainShift(color_gain=0.2, gamma=0.0, blur_sigma=(1e-3, 1e-3), shift=0.025, rotation=3.0, zoom=0.03)
    plain = make_pair(7, (48, 64))
    shifted = make_pair(7, (48, 64), shift=shift)
    rng = np.random.default_rng([7, 2])
    for frame, out in zip(plain[:2], shifted[:2], strict=True):
        gain = rng.uniform(0.8, 1.2, 3)
        rng.uniform(0, 0)  # the gamma draw (range 0 here)
        rng.uniform(1e-3, 1e-3)  # the blur draw
        expected = np.round(np.clip(frame / 255.0 * gain, 0, 1) * 255).astype(np.uint8)
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert np.array_equal(plain[2], shifted[2])  # same misregistration limits: same mask, aligned to WLI


def test_shift_blurs_and_misregisters_more():
    d = DomainShift()
    wide = SyntheticScene(3, (64, 64), misregistration=(d.shift, d.rotation, d.zoom))
    usual = SyntheticScene(3, (64, 64))
    # same random draws, wider ranges: the NBI warp moves further from the identity
    assert np.abs(wide.nbi_warp - np.eye(3)).sum() > np.abs(usual.nbi_warp - np.eye(3)).sum()
    # at 320 px width sigma is 1 to 2.5 px: far more detail lost than a colour gain can add
    wli, _, _ = make_pair(3, (160, 320), shift=d)
    sharp, _, _ = make_pair(3, (160, 320))
    assert cv2.Laplacian(wli, cv2.CV_32F).var() < cv2.Laplacian(sharp, cv2.CV_32F).var()


def test_cli_shift_changes_test_pairs_only(tmp_path):
    base, shifted = tmp_path / "base", tmp_path / "shifted"
    common = ["--pairs", "2", "--test-pairs", "2", "--size", "32x48", "--seed", "5"]
    assert cli.main(["synth", str(base), *common]) == 0
    assert cli.main(["synth", str(shifted), *common, "--shift"]) == 0
    for split, same in (("Training.csv", True), ("Test.csv", False)):
        with open(base / split, newline="") as f:
            rows = list(csv.reader(f))[1:]
        for row in rows:
            a = cv2.imread(str(base / row[0]))
            b = cv2.imread(str(shifted / row[0]))
            assert np.array_equal(a, b) == same, (split, row[0])
