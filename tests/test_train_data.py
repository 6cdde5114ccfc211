"""Dataset folders in the reference format, validation, paired augmentations, `endofuse synth`."""
import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from endofuse import cli
from endofuse.errors import EndofuseError
from endofuse.model.dataset import holdout_split, load_split, read_mask
from endofuse.model.synthetic import make_pair
from endofuse.train.augment import PairAugment
from endofuse.train.data import PairDataset
from endofuse.train.synth_command import pair_seed

SIZE = (64, 72)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert cli.main(["synth", str(out), "--pairs", "4", "--test-pairs", "2", "--size", "64x72", "--seed", "3"]) == 0
    return out


def bilinear_rgb(bgr: np.ndarray, size: int) -> np.ndarray:
    """The model input by an independent route: torch's half-pixel bilinear resize (float64) of the RGB frame / 255."""
    rgb = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].double()
    return (F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)[0] / 255.0).numpy()


def _write_csv(path: Path, rows, encoding="utf-8", name="Training.csv"):
    with open(path / name, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(["wli_path", "nbi_path", "label_path"])
        writer.writerows(rows)


def test_synth_writes_reference_format_with_the_generator_pixels(synth_dir):
    train, test = load_split(synth_dir, "train"), load_split(synth_dir, "test")
    assert len(train) == 4 and len(test) == 2
    assert {r.wli.name for r in train}.isdisjoint({r.wli.name for r in test})
    # The files hold exactly what make_pair produced (PNG is lossless).
    wli, nbi, mask = make_pair(pair_seed(3, 1), SIZE)
    r = train[1]
    assert r.wli.name.endswith("_1.png") and r.nbi.name.endswith("_2.png") and r.label.name.endswith("_1_label.png")
    np.testing.assert_array_equal(cv2.imread(str(r.wli)), wli)
    np.testing.assert_array_equal(cv2.imread(str(r.nbi)), nbi)
    np.testing.assert_array_equal(read_mask(r.label), mask)


def test_dataset_items_match_an_independent_resize(synth_dir):
    records = load_split(synth_dir, "train")
    item = PairDataset(records, img_size=32)[2]
    assert item["wli"].shape == (3, 32, 32) and item["nbi"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    bgr = cv2.imread(str(records[2].wli))
    np.testing.assert_allclose(item["wli"].numpy(), bilinear_rgb(bgr, 32), atol=2e-4)
    label = cv2.imread(str(records[2].label), cv2.IMREAD_GRAYSCALE)
    expected_mask = cv2.resize((label > 127).astype(np.uint8), (32, 32), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(item["mask"].numpy(), expected_mask)


def test_every_bad_row_is_reported_at_once_with_row_numbers(tmp_path, synth_dir):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    good = load_split(synth_dir, "train")[0]
    for src in (good.wli, good.nbi, good.label):
        (imgs / src.name).write_bytes(src.read_bytes())
    w, n, lab = (f"imgs/{p.name}" for p in (good.wli, good.nbi, good.label))
    (imgs / "truncated.png").write_bytes(good.wli.read_bytes()[:200])
    cv2.imwrite(str(imgs / "small_label.png"), np.zeros((10, 10), np.uint8))
    _write_csv(tmp_path, [
        [w, n, lab],                      # row 1: fine
        ["imgs/nope_1.png", n, lab],      # row 2: missing WLI
        [w, "imgs/truncated.png", lab],   # row 3: unreadable NBI
        [w, n, "imgs/small_label.png"],   # row 4: mask size differs from WLI
        [w, n],                           # row 5: too few columns
    ])
    with pytest.raises(EndofuseError) as info:
        load_split(tmp_path, "train")
    message = str(info.value)
    assert "4 bad row(s)" in message
    assert "row 2 (line 3): wli file missing" in message and "nope_1.png" in message
    assert "row 3 (line 4): nbi image unreadable" in message and "truncated.png" in message
    assert "row 4 (line 5): mask" in message and "is 10x10 but its WLI frame" in message
    assert "row 5 (line 6): expected 3 paths" in message
    assert "row 1 " not in message


def test_gbk_csv_train_csv_name_rgb_masks_and_nbi_of_its_own_size(tmp_path):
    imgs = tmp_path / "图像"
    imgs.mkdir()
    wli, nbi, mask = make_pair(11, (60, 70), nbi_size=(60, 52))
    cv2.imwrite(str(imgs / "病例_1.png"), wli)
    cv2.imwrite(str(imgs / "病例_2.png"), nbi)
    rgb_mask = np.repeat((mask * 255)[..., None], 3, axis=2)
    cv2.imwrite(str(imgs / "病例_1_label.png"), rgb_mask)
    _write_csv(tmp_path, [["图像/病例_1.png", "图像/病例_2.png", "图像/病例_1_label.png"]] * 2,
               encoding="gbk", name="Train.csv")
    assert (tmp_path / "Train.csv").read_bytes().decode("gbk")  # really GBK, not UTF-8
    with pytest.raises(UnicodeDecodeError):
        (tmp_path / "Train.csv").read_bytes().decode("utf-8")
    records = load_split(tmp_path, "train")
    item = PairDataset(records, img_size=48)[0]
    np.testing.assert_array_equal(item["mask"].numpy(), cv2.resize(mask, (48, 48), interpolation=cv2.INTER_NEAREST))
    np.testing.assert_allclose(item["nbi"].numpy(), bilinear_rgb(nbi, 48), atol=2e-4)


def test_corrupt_file_met_after_validation_names_the_file(tmp_path, synth_dir):
    import shutil
    shutil.copytree(synth_dir, tmp_path / "d")
    records = load_split(tmp_path / "d", "train")
    records[1].nbi.write_bytes(b"not a png at all")
    dataset = PairDataset(records, img_size=32)
    dataset[0]
    with pytest.raises(EndofuseError, match=records[1].nbi.name):
        dataset[1]


def test_missing_split_csv_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="Training.csv or Train.csv"):
        load_split(tmp_path, "train")


def test_paired_augmentation_keeps_mask_aligned():
    rng = np.random.default_rng(0)
    _, _, mask = make_pair(4, (64, 64))
    # Paint the mask into both frames; any geometric mismatch would show after augmentation.
    wli = np.repeat((mask * 200 + 20)[..., None], 3, axis=2).astype(np.uint8)
    nbi = wli.copy()
    aug = PairAugment(brightness=0, contrast=0, saturation=0, flip_p=1.0)
    a_wli, a_nbi, a_mask = aug(wli, nbi, mask, rng)
    assert not np.array_equal(a_mask, mask)  # geometry really changed
    inside = cv2.erode(a_mask, np.ones((3, 3), np.uint8)) > 0
    outside = cv2.dilate(a_mask, np.ones((3, 3), np.uint8)) == 0
    lit = a_wli[..., 0] > 120
    assert lit[inside].all() and not lit[outside & (a_wli[..., 0] > 0)].any()
    np.testing.assert_array_equal(a_wli, a_nbi)


def test_colour_jitter_is_independent_per_modality():
    img = np.full((32, 32, 3), 120, np.uint8)
    img[:, :16] = (40, 90, 200)
    aug = PairAugment(flip_p=0, max_rotate_deg=0, max_scale=0, max_shift=0)
    a_wli, a_nbi, _ = aug(img, img.copy(), np.zeros((32, 32), np.uint8), np.random.default_rng(1))
    assert not np.array_equal(a_wli, a_nbi)


def test_holdout_split_is_deterministic_and_disjoint(synth_dir):
    records = load_split(synth_dir, "train")
    train_a, val_a = holdout_split(records, 0.25, seed=5)
    train_b, val_b = holdout_split(records, 0.25, seed=5)
    assert train_a == train_b and val_a == val_b and len(val_a) == 1 and len(train_a) == 3
    assert {r.row for r in train_a}.isdisjoint({r.row for r in val_a})


def test_synth_cli_without_output_kind_fails_cleanly(tmp_path, capsys):
    assert cli.main(["synth", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pairs" in err


def test_synth_video_writes_an_mp4_pair(tmp_path):
    assert cli.main(["synth", str(tmp_path), "--video", "1", "--fps", "10", "--size", "64x80"]) == 0
    for name in ("wli", "nbi", "mask"):
        cap = cv2.VideoCapture(str(tmp_path / f"{name}.mp4"))
        ok, frame = cap.read()
        assert ok and frame.shape == (64, 80, 3)
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
        cap.release()


def test_real_sample_validates_and_loads(sample_data_dir):
    records = load_split(sample_data_dir, "train")
    assert len(records) == 5
    dataset = PairDataset(records, img_size=64)
    for i in range(len(records)):
        full = read_mask(records[i].label)
        # Method file: tumour covers 0.6 % to 59 % of the image.
        assert 0.005 < full.mean() < 0.6
        item = dataset[i]
        assert item["wli"].shape == (3, 64, 64) and set(item["mask"].unique().tolist()) <= {0, 1}
    # One real pair has NBI narrower than WLI (710 vs 805 wide): both load at model size.
    widths = {cv2.imread(str(r.nbi)).shape[1] != cv2.imread(str(r.wli)).shape[1] for r in records}
    assert True in widths
