"""NbiMemory on scripted timelines (modes written out by hand), and the view measure against numpy."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from endofuse.errors import InvalidOptionError
from endofuse.realtime.pairing.nbi_memory import (
    DEFAULT_VIEW_GATE,
    FUSED_MEMORY,
    HOLD,
    NBI_VIEW,
    MemoryPolicy,
    NbiMemory,
    view_signature,
    view_similarity,
)
from endofuse.realtime.segment import WLI_ONLY

FPS = 30.0
HERE = np.eye(4, dtype=np.float32)[0]  # signatures with known similarities: HERE . HERE = 1
ELSEWHERE = np.eye(4, dtype=np.float32)[1]  # HERE . ELSEWHERE = 0
NEAR = (0.9 * HERE + np.sqrt(1 - 0.81) * ELSEWHERE).astype(np.float32)  # HERE . NEAR = 0.9

T = "TRANSITION"


def play(memory: NbiMemory, script: list[tuple], fps: float = FPS) -> list:
    """script: (modality, view) or (modality, view, time_s) or (modality, view, time_s, usable) per frame."""
    decisions = []
    for i, step in enumerate(script):
        modality, view = step[0], step[1]
        time_s = step[2] if len(step) > 2 else i / fps
        usable = step[3] if len(step) > 3 else True
        decisions.append(memory.update(modality, time_s, frame=f"frame{i}", view=view, usable=usable))
    return decisions


def test_wli_nbi_wli_fuses_with_the_newest_nbi_frame_and_its_age():
    script = [("WLI", HERE)] * 3 + [(T, None)] * 2 + [("NBI", None)] * 4 + [(T, None)] * 2 + [("WLI", HERE)] * 3
    decisions = play(NbiMemory(MemoryPolicy(max_age_s=10.0, view_gate=0.75)), script)
    assert [d.mode for d in decisions] == [WLI_ONLY] * 3 + [HOLD] * 2 + [NBI_VIEW] * 4 + [HOLD] * 2 + [FUSED_MEMORY] * 3
    assert [d.reason for d in decisions[:3]] == ["nbi_never_seen"] * 3
    fused = decisions[-3:]
    assert all(d.nbi == "frame8" for d in fused)  # the last NBI frame (index 8), not the transition after it
    assert [d.age_s for d in fused] == pytest.approx([(i - 8) / FPS for i in (11, 12, 13)])
    assert all(d.similarity == pytest.approx(1.0) for d in fused)


def test_memory_older_than_the_limit_goes_wli_only():
    # NBI at 0.0 s and 0.5 s; WLI at 1.0, 2.4, 2.6 s: ages 0.5, 1.9, 2.1 against a 2 s limit
    script = [("NBI", None, 0.0), ("NBI", None, 0.5), ("WLI", HERE, 1.0), ("WLI", HERE, 2.4), ("WLI", HERE, 2.6)]
    memory = NbiMemory(MemoryPolicy(max_age_s=2.0, view_gate=0.75))
    decisions = play(memory, script)
    assert [d.mode for d in decisions] == [NBI_VIEW, NBI_VIEW, FUSED_MEMORY, FUSED_MEMORY, WLI_ONLY]
    assert decisions[-1].reason == "memory_too_old" and decisions[-1].age_s == pytest.approx(2.1)
    summary = memory.summary()
    assert summary["wli_only_reasons"]["memory_too_old"] == 1
    assert summary["memory_age_ms"]["max"] == pytest.approx(1900.0)
    assert summary["memory_age_ms"]["p50"] == pytest.approx((500.0 + 1900.0) / 2)


def test_view_change_falls_back_and_coming_back_fuses_again():
    script = ([("WLI", HERE)] + [("NBI", None)] * 3
              + [("WLI", NEAR), ("WLI", ELSEWHERE), ("WLI", ELSEWHERE), ("WLI", HERE)])
    memory = NbiMemory(MemoryPolicy(max_age_s=10.0, view_gate=0.75))
    decisions = play(memory, script)
    assert [d.mode for d in decisions[4:]] == [FUSED_MEMORY, WLI_ONLY, WLI_ONLY, FUSED_MEMORY]
    assert [d.similarity for d in decisions[4:]] == pytest.approx([0.9, 0.0, 0.0, 1.0], abs=1e-6)
    # the anchor is the WLI frame before the NBI look, not the newest WLI frame
    assert memory.summary()["view_gate_fallbacks"] == 2


def test_gate_zero_disables_the_view_check():
    script = [("WLI", HERE)] + [("NBI", None)] * 2 + [("WLI", ELSEWHERE)] * 2
    decisions = play(NbiMemory(MemoryPolicy(max_age_s=10.0, view_gate=0.0)), script)
    assert [d.mode for d in decisions[3:]] == [FUSED_MEMORY] * 2
    assert all(d.similarity is None for d in decisions[3:])


def test_nbi_never_seen_is_wli_only_throughout():
    script = [("WLI", HERE)] * 5 + [(T, None)] + [("WLI", ELSEWHERE)] * 3
    memory = NbiMemory()
    decisions = play(memory, script)
    assert [d.mode for d in decisions] == [WLI_ONLY] * 5 + [HOLD] + [WLI_ONLY] * 3
    summary = memory.summary()
    assert summary["modes"] == {FUSED_MEMORY: 0, WLI_ONLY: 8, NBI_VIEW: 0, HOLD: 1}
    assert summary["wli_only_reasons"]["nbi_never_seen"] == 8 and summary["nbi_looks"] == 0
    assert np.isnan(summary["memory_age_ms"]["p50"])


def test_switch_during_a_stall_ages_by_capture_time_not_frame_count():
    # The source stalls for 3 s while the clinician switches: one frame later the memory is already 3 s old.
    script = [("WLI", HERE, 0.0), ("NBI", None, 0.1), ("NBI", None, 0.2), ("WLI", HERE, 3.2), ("WLI", HERE, 3.3)]
    decisions = play(NbiMemory(MemoryPolicy(max_age_s=2.0, view_gate=0.75)), script)
    assert [d.mode for d in decisions] == [WLI_ONLY, NBI_VIEW, NBI_VIEW, WLI_ONLY, WLI_ONLY]
    assert decisions[3].age_s == pytest.approx(3.0)
    # the same switch without a stall fuses
    script = [("WLI", HERE, 0.0), ("NBI", None, 0.1), ("NBI", None, 0.2), ("WLI", HERE, 0.3)]
    assert play(NbiMemory(MemoryPolicy(max_age_s=2.0)), script)[-1].mode == FUSED_MEMORY


def test_hold_frames_change_nothing():
    # A blurred NBI frame is not remembered; a blurred WLI frame between is neither fused nor an anchor.
    script = [("WLI", HERE), ("NBI", None), ("NBI", None, 2 / FPS, False), ("WLI", ELSEWHERE, 3 / FPS, False),
              ("WLI", HERE)]
    decisions = play(NbiMemory(), script)
    assert [d.mode for d in decisions] == [WLI_ONLY, NBI_VIEW, HOLD, HOLD, FUSED_MEMORY]
    assert decisions[2].reason == decisions[3].reason == "quality"
    assert decisions[-1].nbi == "frame1" and decisions[-1].age_s == pytest.approx(3 / FPS)


def test_stream_starting_in_nbi_anchors_on_the_first_wli_frame():
    script = [("NBI", None)] * 3 + [(T, None)] + [("WLI", HERE), ("WLI", NEAR), ("WLI", ELSEWHERE)]
    decisions = play(NbiMemory(MemoryPolicy(max_age_s=10.0, view_gate=0.75)), script)
    assert [d.mode for d in decisions[4:]] == [FUSED_MEMORY, FUSED_MEMORY, WLI_ONLY]


def test_a_second_nbi_look_replaces_memory_and_anchor():
    script = ([("WLI", HERE)] + [("NBI", None)] * 2 + [("WLI", HERE)] + [("WLI", ELSEWHERE)]
              + [("NBI", None)] * 2 + [("WLI", ELSEWHERE), ("WLI", HERE)])
    memory = NbiMemory(MemoryPolicy(max_age_s=10.0, view_gate=0.75))
    decisions = play(memory, script)
    assert [d.mode for d in decisions] == [WLI_ONLY, NBI_VIEW, NBI_VIEW, FUSED_MEMORY, WLI_ONLY, NBI_VIEW, NBI_VIEW,
                                           FUSED_MEMORY, WLI_ONLY]
    assert decisions[7].nbi == "frame6" and memory.summary()["nbi_looks"] == 2


def test_a_frame_older_than_the_last_is_held_and_never_ages_the_memory_backwards():
    memory = NbiMemory()
    play(memory, [("NBI", None, 1.0)])
    assert memory.update("WLI", 0.5, view=HERE).mode == HOLD
    assert memory.summary()["out_of_order"] == 1


def test_policy_refuses_bad_values_in_one_line():
    with pytest.raises(InvalidOptionError, match="--nbi-memory"):
        MemoryPolicy(max_age_s=-1)
    with pytest.raises(InvalidOptionError, match="--view-gate"):
        MemoryPolicy(view_gate=1.5)


def test_view_similarity_is_the_pearson_correlation_of_the_thumbnails():
    rng = np.random.default_rng(0)
    a = cv2.normalize(cv2.GaussianBlur(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8), (0, 0), 4), None, 0, 255,
                      cv2.NORM_MINMAX)
    b = np.roll(a, (4, 6), axis=(0, 1))  # the same view, moved

    def thumbnail(img):  # an independent twin: central crop, 4x4 nearest samples per cell averaged, grey, blur
        inner = img[13:77, 18:102].astype(np.float64)
        rows = (np.arange(128) * 64 / 128).astype(int)  # nearest sample positions of a 64x84 -> 128x128 resize
        cols = (np.arange(128) * 84 / 128).astype(int)
        cells = np.round(inner[rows][:, cols].reshape(32, 4, 32, 4, 3).mean(axis=(1, 3)))  # to uint8, as cv2
        grey = np.round(cells @ [0.114, 0.587, 0.299])  # BGR weights of cv2's grey
        return cv2.GaussianBlur(grey.astype(np.float32), (5, 5), 1.0).ravel()

    expected = np.corrcoef(thumbnail(a), thumbnail(b))[0, 1]
    assert 0.3 < expected < 0.99  # a case where the measure means something
    assert view_similarity(view_signature(a), view_signature(b)) == pytest.approx(expected, abs=2e-3)
    assert view_similarity(view_signature(a), view_signature(a)) == pytest.approx(1.0, abs=1e-5)
    assert view_similarity(view_signature(np.zeros_like(a)), view_signature(a)) == 0.0  # a black frame


def test_default_gate_passes_small_moves_and_fails_other_views_on_real_frames(sample_data_dir):
    with open(sample_data_dir / "Test.csv", newline="") as f:
        frames = [cv2.imread(str(sample_data_dir / row["wli_path"])) for row in csv.DictReader(f)]
    for frame in frames:
        h, w = frame.shape[:2]
        shifted = cv2.warpAffine(frame, np.float32([[1, 0, 0.03 * w], [0, 1, 0.02 * h]]), (w, h),
                                 borderMode=cv2.BORDER_REFLECT)
        assert view_similarity(view_signature(frame), view_signature(shifted)) >= DEFAULT_VIEW_GATE
    for i, a in enumerate(frames):
        for b in frames[i + 1:]:
            assert view_similarity(view_signature(a), view_signature(b)) < DEFAULT_VIEW_GATE
