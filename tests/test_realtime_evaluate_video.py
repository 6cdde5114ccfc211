"""`endofuse evaluate --video`: per-frame Dice/IoU and temporal metrics of a tiny video vs hand-computed values."""
from __future__ import annotations

import json

import numpy as np
import pytest

from endofuse import cli
from endofuse.errors import InvalidInputError
from endofuse.realtime.commands.evaluate_video import evaluate_video
from endofuse.realtime.output.stabilise import StabiliseConfig

from conftest import ConfidentEngine, write_video

SQUARE = (slice(16, 48), slice(16, 48))  # 32 x 32 = 1024 px, on the codec's 16-px blocks


def write_clip(folder, labelled=range(3, 10), predicted=(1, 5, 6, 7, 8, 9), frames=12, mask_size=(64, 64)):
    """wli/nbi: a pure red square in the `predicted` frames; mask: a white square in the `labelled` frames."""
    folder.mkdir()
    video, masks = [], []
    for t in range(frames):
        image = np.zeros((64, 64, 3), np.uint8)
        if t in predicted:
            image[SQUARE + (2,)] = 255
        video.append(image)
        mask = np.zeros((*mask_size, 3), np.uint8)
        if t in labelled:
            mask[SQUARE] = 255
        masks.append(mask)
    for name in ("wli", "nbi"):
        write_video(folder / f"{name}.mp4", video)
    write_video(folder / "mask.mp4", masks)
    return folder


def test_off_reproduces_hand_computed_dice_and_temporal_metrics(tmp_path):
    metrics = evaluate_video(ConfidentEngine((64, 64)), write_clip(tmp_path / "clip"), StabiliseConfig("off"))
    t = metrics["temporal"]
    # shown: frame 1 (no lesion there) and 5..9; labelled 3..9. Dice 1 on 0, 2, 5..9, 10, 11 (both empty
    # counts 1), ~0 on 1 (false), 3 and 4 (missed): 9 of 12
    dice = [f["dice"] for f in metrics["per_frame"]]
    want = [1, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert dice == pytest.approx(want, abs=1e-6)
    assert [f["iou"] for f in metrics["per_frame"]] == pytest.approx(want, abs=1e-6)
    assert t["dice"] == pytest.approx(9 / 12, abs=1e-6)
    # shown 0 1 0 0 0 1 1 1 1 1 0 0: 4 toggles in 12 frames at 30 fps; consecutive equal pairs 2-3, 3-4, 5..9, 10-11
    assert t["toggles"] == 4 and t["toggles_per_min"] == pytest.approx(4 / (12 / 30 / 60))
    assert t["consecutive_iou"] == pytest.approx(7 / 11, abs=1e-6)
    assert t["mtc"] == pytest.approx(7 / 11, abs=1e-6)  # a still scene: the flow moves nothing
    assert (t["shown_runs"], t["short_runs"], t["false_runs"], t["short_false_runs"]) == (2, 2, 1, 1)
    assert t["first_shown_delay_frames"] == [2] and t["first_shown_delay_ms"] == [pytest.approx(2000 / 30)]


def test_the_stabiliser_hides_the_false_blip_and_delays_the_lesion_by_n_minus_one(tmp_path):
    config = StabiliseConfig("ema", 0.6, 0.4, min_frames=3, ema_weight=1.0)
    t = evaluate_video(ConfidentEngine((64, 64)), write_clip(tmp_path / "clip"), config)["temporal"]
    # shown 7..9 only: Dice 1 on 0, 1, 2, 7..11 (8 frames), 0 on 3..6
    assert t["dice"] == pytest.approx(8 / 12, abs=1e-6)
    assert (t["false_runs"], t["toggles"], t["first_shown_delay_frames"]) == (0, 2, [4])


def test_a_mask_video_of_another_size_is_one_line_naming_it(tmp_path):
    folder = write_clip(tmp_path / "clip", mask_size=(48, 64))
    with pytest.raises(InvalidInputError, match=r"mask\.mp4' frame 0: 64x48, the WLI frames are 64x64"):
        evaluate_video(ConfidentEngine((64, 64)), folder, StabiliseConfig("off"))


def test_cli_on_a_synth_video_with_the_demo_weights(tmp_path, capsys):
    clips, out = tmp_path / "clips", tmp_path / "eval"
    assert cli.main(["synth", str(clips), "--video", "0.4", "--fps", "20", "--size", "64x80"]) == 0
    assert cli.main(["evaluate", "--video", str(clips), "--out", str(out), "--min-frames", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["per_frame"]) == metrics["temporal"]["frames"] == 8
    assert metrics["temporal"]["settings"]["min_frames"] == 2
    assert "Dice" in capsys.readouterr().out
    assert cli.main(["evaluate", "--video", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e2")]) == 1
    assert "is not a folder" in capsys.readouterr().err
