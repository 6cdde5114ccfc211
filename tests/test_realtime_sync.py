"""The synchroniser on scripted timestamps, checked against a brute-force nearest-frame reference."""
from dataclasses import dataclass

import numpy as np
import pytest

from endofuse.realtime.pairing.sync import MISSING, PAIRED, STALE, Synchroniser, SyncPolicy

from conftest import brute_force

FPS = 30.0
POLICY = SyncPolicy.for_fps(FPS)  # tolerance 1/60 s, staleness 3/30 s


@dataclass
class Stamp:
    index: int
    sync_time: float


def run_lossless(wli_times, nbi_times, policy=POLICY):
    """Feed NBI frames as a lossless pipeline does (until NBI reaches the WLI time), pair every WLI frame."""
    sync = Synchroniser(policy)
    nbi = [Stamp(i, t) for i, t in enumerate(nbi_times)]
    decisions, fed = [], 0
    for i, t in enumerate(wli_times):
        while not sync.ready_for(t):
            if fed == len(nbi):
                sync.end_nbi()
                break
            sync.add_nbi(nbi[fed])
            fed += 1
        decisions.append(sync.pair(Stamp(i, t)))
    return sync, decisions


def check_against_reference(wli_times, nbi_times, policy=POLICY):
    sync, decisions = run_lossless(wli_times, nbi_times, policy)
    for wli_time, decision in zip(wli_times, decisions, strict=True):
        status, best = brute_force(wli_time, list(nbi_times), policy)
        assert decision.status == status, (wli_time, decision, status)
        assert (decision.nbi.sync_time if decision.nbi else None) == best
    return sync, decisions


def test_identical_clocks_pair_everything_with_zero_skew():
    times = np.arange(100) / FPS
    sync, decisions = check_against_reference(times, times)
    assert [d.nbi.index for d in decisions] == list(range(100))
    summary = sync.summary()
    assert (summary["paired"], summary["stale_pairs"], summary["nbi_missing"]) == (100, 0, 0)
    assert summary["skew_abs_ms"]["max"] == 0


def test_jitter_within_tolerance_pairs_each_frame_with_its_own():
    rng = np.random.default_rng(0)
    times = np.arange(200) / FPS
    nbi = times + rng.uniform(-0.4, 0.4, 200) / FPS / 2  # +-40 % of the tolerance
    sync, decisions = check_against_reference(times, np.sort(nbi))
    assert sync.summary()["paired"] == 200
    assert sync.summary()["skew_abs_ms"]["max"] <= 1000 * 0.4 / FPS / 2 + 1e-6


def test_drift_is_followed_and_counted_as_stale_where_it_exceeds_the_tolerance():
    wli = np.arange(300) / FPS
    nbi = np.arange(300) / (FPS * 1.002) + 0.004  # a slightly fast NBI clock plus an offset
    sync, decisions = check_against_reference(wli, nbi)
    counts = sync.summary()
    assert counts["paired"] + counts["stale_pairs"] + counts["nbi_missing"] == 300
    assert counts["paired"] > 0


def test_different_fps_nbi_at_half_rate_alternates_paired_and_stale():
    wli = np.arange(60) / FPS
    nbi = np.arange(30) / (FPS / 2)
    sync, decisions = check_against_reference(wli, nbi)
    statuses = [d.status for d in decisions]
    assert statuses[:6] == [PAIRED, STALE] * 3
    assert sync.summary()["paired"] == 30 and sync.summary()["stale_pairs"] == 30


@pytest.mark.parametrize("wli_fps, nbi_fps", [(30.0, 25.0), (60.0, 25.0)])  # rate pairs with exact ties
def test_two_rates_tie_to_the_earlier_nbi_frame_on_any_epoch(wli_fps, nbi_fps):
    # Every 0.1 s (30 vs 25 fps) a WLI frame lies exactly between two NBI frames. On a timeline
    # epoch + index / fps the epoch's rounding must not decide which one it gets: the reference
    # works in exact fractions (ties to the earlier frame) and ignores the epoch.
    from fractions import Fraction

    for epoch in (0.0, 1234.567, 98765.4321):
        wli = [epoch + k / wli_fps for k in range(60)]
        nbi = [epoch + j / nbi_fps for j in range(80)]  # NBI covers the whole WLI clip at every rate pair
        _, decisions = run_lossless(wli, nbi, SyncPolicy.for_fps(wli_fps))
        for k, decision in enumerate(decisions):
            t = Fraction(k) / Fraction(wli_fps)
            nearest = min(range(80), key=lambda j: (abs(Fraction(j) / Fraction(nbi_fps) - t), j))
            assert decision.nbi.index == nearest, (epoch, k)


def test_nbi_faster_than_wli_picks_the_nearest():
    wli = np.arange(40) / FPS + 0.003
    nbi = np.arange(100) / 60.0
    check_against_reference(wli, nbi)


def test_nbi_stall_goes_wli_only_after_the_staleness_bound_and_resumes():
    wli = np.arange(90) / FPS
    stall = (wli >= 1.0) & (wli < 2.0)  # NBI silent for one second
    nbi = wli[~stall]
    sync, decisions = check_against_reference(wli, nbi)
    statuses = np.array([d.status for d in decisions])
    in_stall = np.flatnonzero(stall)
    # The stall's first frames still get the last NBI frame while it is fresh enough (and,
    # in a lossless run, its last frames the returning NBI frame) ...
    assert set(statuses[in_stall[:3]]) == {STALE} and set(statuses[in_stall[-3:]]) == {STALE}
    # ... WLI-only in between, fused again once NBI is back.
    assert set(statuses[in_stall[3:-3]]) == {MISSING}
    assert all(s == PAIRED for s in statuses[~stall])
    assert sync.summary()["nbi_missing"] == len(in_stall) - 6


def test_nbi_ending_leaves_wli_only():
    wli = np.arange(30) / FPS
    sync, decisions = check_against_reference(wli, wli[:10])
    assert sync.nbi_ended
    assert [d.status for d in decisions[13:]] == [MISSING] * 17


def test_duplicates_are_ignored_and_counted():
    sync = Synchroniser(POLICY)
    assert sync.add_nbi(Stamp(0, 0.0))
    assert not sync.add_nbi(Stamp(0, 0.0))  # same frame twice
    assert not sync.add_nbi(Stamp(7, 0.0))  # another index with the same time
    assert sync.counts["nbi_duplicates"] == 2
    assert sync.pair(Stamp(0, 0.0)).status == PAIRED
    assert sync.pair(Stamp(0, 0.0)) is None  # duplicate WLI frame: no second output
    assert sync.counts["wli_rejected"] == 1


def test_out_of_order_nbi_is_inserted_in_time_order():
    sync = Synchroniser(POLICY)
    for index, t in [(0, 0.0), (2, 2 / FPS), (1, 1 / FPS), (3, 3 / FPS)]:
        sync.add_nbi(Stamp(index, t))
    assert sync.counts["nbi_out_of_order"] == 1
    assert [sync.pair(Stamp(i, i / FPS)).nbi.index for i in range(4)] == [0, 1, 2, 3]


def test_out_of_order_wli_is_rejected_never_shown_backwards():
    sync = Synchroniser(POLICY)
    sync.add_nbi(Stamp(0, 0.0))
    assert sync.pair(Stamp(1, 1 / FPS)) is not None
    assert sync.pair(Stamp(0, 0.0)) is None
    assert sync.counts["wli_rejected"] == 1


def test_nbi_older_than_the_horizon_is_dropped_as_too_late():
    sync = Synchroniser(POLICY)
    sync.pair(Stamp(0, 1.0))
    assert not sync.add_nbi(Stamp(0, 0.5))  # can never be used: WLI has moved past it
    assert sync.counts["nbi_too_late"] == 1


def test_buffer_stays_bounded():
    sync = Synchroniser(SyncPolicy(0.01, 0.02, max_buffer=16))
    for i in range(1000):
        sync.add_nbi(Stamp(i, i * 0.001))
    assert len(sync._frames) == 16 and len(sync._seen_nbi_indices) == 16


def test_live_pairing_uses_only_what_has_arrived():
    # Live: NBI frame k arrives after WLI frame k was paired -> the previous NBI frame is used (stale).
    sync = Synchroniser(POLICY)
    sync.add_nbi(Stamp(0, 0.0))
    decision = sync.pair(Stamp(1, 1 / FPS))
    assert decision.status == STALE and decision.nbi.index == 0
    assert decision.skew_s == pytest.approx(-1 / FPS)


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        SyncPolicy(0.1, 0.05)
    with pytest.raises(ValueError, match="fps"):
        SyncPolicy.for_fps(0)
