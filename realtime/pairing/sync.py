"""Pairing WLI frames with NBI frames by capture time (pure logic, no threads).

WLI drives: every WLI frame produces an output. It is paired with the NBI
frame nearest in time:

* |skew| <= tolerance (default half a WLI frame period): `paired`;
* tolerance < |skew| <= staleness bound: still fused, counted as `stale`;
* no NBI frame within the staleness bound (NBI stalled, ended, not started):
  `missing` -> the WLI-only path, flagged in the result.

NBI frames arriving twice (same index or time) are ignored, out-of-order ones
are inserted in time order, NBI frames too old to ever be used are pruned. A
WLI frame not newer than the previous one (duplicate / out of order) is
rejected (`pair` returns None): an overlay must never go back in time.
"""
from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass
from typing import Protocol

from endofuse.errors import InvalidOptionError
from endofuse.realtime.tracing import percentiles

PAIRED, STALE, MISSING = "paired", "stale", "missing"
# Float slack on the thresholds: file timelines are index / fps, and (k+1)/fps - k/fps
# may exceed 1/fps by an ulp; a frame exactly on the tolerance counts as inside.
EPSILON_S = 1e-9


class Timed(Protocol):
    index: int
    sync_time: float


@dataclass(frozen=True)
class SyncPolicy:
    """Pairing thresholds in seconds."""

    tolerance_s: float
    staleness_s: float
    max_buffer: int = 256  # NBI frames kept at most, whatever their times

    def __post_init__(self) -> None:
        if self.tolerance_s < 0 or self.staleness_s < self.tolerance_s:
            raise InvalidOptionError(
                f"need 0 <= tolerance <= staleness, got tolerance {self.tolerance_s} s, staleness {self.staleness_s} s"
            )

    @classmethod
    def for_fps(cls, wli_fps: float, tolerance_frames: float = 0.5, staleness_frames: float = 3.0) -> SyncPolicy:
        """Thresholds in WLI frame periods: tolerance half a period, staleness three periods."""
        if not wli_fps > 0:
            raise InvalidOptionError(f"WLI fps must be > 0, got {wli_fps}")
        return cls(tolerance_frames / wli_fps, staleness_frames / wli_fps)


@dataclass(frozen=True)
class Pairing:
    """The decision for one WLI frame; `nbi` is None in WLI-only mode."""

    wli: Timed
    nbi: Timed | None
    status: str
    skew_s: float | None  # nbi time - wli time (positive: NBI captured later)


class Synchroniser:
    def __init__(self, policy: SyncPolicy) -> None:
        self.policy = policy
        self._times: list[float] = []  # sorted NBI sync times, parallel to _frames
        self._frames: list[Timed] = []
        self._seen_nbi_indices: set[int] = set()
        self._last_wli_time: float | None = None
        self._horizon = float("-inf")  # NBI frames older than this can never be used
        self.nbi_ended = False
        self.counts = {PAIRED: 0, STALE: 0, MISSING: 0, "nbi_duplicates": 0, "nbi_out_of_order": 0,
                       "nbi_too_late": 0, "wli_rejected": 0}
        self.skews_ms = array("d")

    # ---- NBI side -------------------------------------------------------
    def add_nbi(self, frame: Timed) -> bool:
        """Buffer an NBI frame; False when it is a duplicate or already too old to be used."""
        if frame.index in self._seen_nbi_indices or self._has_time(frame.sync_time):
            self.counts["nbi_duplicates"] += 1
            return False
        if frame.sync_time < self._horizon:
            self.counts["nbi_too_late"] += 1
            return False
        if self._times and frame.sync_time < self._times[-1]:
            self.counts["nbi_out_of_order"] += 1
        position = bisect.bisect(self._times, frame.sync_time)
        self._times.insert(position, frame.sync_time)
        self._frames.insert(position, frame)
        self._seen_nbi_indices.add(frame.index)
        if len(self._frames) > self.policy.max_buffer:
            self._drop_oldest(len(self._frames) - self.policy.max_buffer)
        return True

    def end_nbi(self) -> None:
        """The NBI stream has ended (or was given up): later WLI frames go WLI-only."""
        self.nbi_ended = True

    def newest_nbi_time(self) -> float | None:
        return self._times[-1] if self._times else None

    def ready_for(self, wli_time: float) -> bool:
        """Lossless (file) mode: True once the NBI frame nearest to `wli_time` is surely buffered.

        That is when NBI has reached `wli_time` (the next frame after it is the
        first candidate in the future) or has ended.
        """
        newest = self.newest_nbi_time()
        return self.nbi_ended or (newest is not None and newest >= wli_time)

    # ---- WLI side -------------------------------------------------------
    def pair(self, wli: Timed) -> Pairing | None:
        """Pair a WLI frame; None (and counted) when it is not newer than the previous WLI frame."""
        if self._last_wli_time is not None and wli.sync_time <= self._last_wli_time:
            self.counts["wli_rejected"] += 1
            return None
        self._last_wli_time = wli.sync_time
        self._prune(wli.sync_time - self.policy.staleness_s - EPSILON_S)
        nearest = self._nearest(wli.sync_time)
        if nearest is None:
            self.counts[MISSING] += 1
            return Pairing(wli, None, MISSING, None)
        skew = nearest.sync_time - wli.sync_time
        if abs(skew) <= self.policy.tolerance_s + EPSILON_S:
            status = PAIRED
        elif abs(skew) <= self.policy.staleness_s + EPSILON_S:
            status = STALE
        else:
            self.counts[MISSING] += 1
            return Pairing(wli, None, MISSING, None)
        self.counts[status] += 1
        self.skews_ms.append(skew * 1000.0)
        return Pairing(wli, nearest, status, skew)

    def summary(self) -> dict:
        """Counts plus the distribution of |skew| over fused frames and its signed mean."""
        skews = [abs(s) for s in self.skews_ms]
        return {
            "paired": self.counts[PAIRED],
            "stale_pairs": self.counts[STALE],
            "nbi_missing": self.counts[MISSING],
            "nbi_duplicates": self.counts["nbi_duplicates"],
            "nbi_out_of_order": self.counts["nbi_out_of_order"],
            "nbi_too_late": self.counts["nbi_too_late"],
            "wli_rejected": self.counts["wli_rejected"],
            "skew_abs_ms": percentiles(skews),
            "skew_mean_ms": (sum(self.skews_ms) / len(self.skews_ms)) if self.skews_ms else float("nan"),
        }

    # ---- internals ------------------------------------------------------
    def _has_time(self, t: float) -> bool:
        i = bisect.bisect_left(self._times, t)
        return i < len(self._times) and self._times[i] == t

    def _nearest(self, t: float) -> Timed | None:
        if not self._times:
            return None
        i = bisect.bisect_left(self._times, t)
        if i == 0 or i == len(self._times):
            return self._frames[min(i, len(self._times) - 1)]
        # Ties go to the earlier frame: it was certainly captured when the WLI frame was. A tie within
        # EPSILON_S counts: on a timeline epoch + index / fps, two rates (30 and 25 fps at 0.1 s) tie
        # exactly, and the epoch's rounding would otherwise pick either frame.
        earlier, later = self._times[i - 1], self._times[i]
        return self._frames[i - 1 if t - earlier <= later - t + EPSILON_S else i]

    def _prune(self, horizon: float) -> None:
        self._horizon = max(self._horizon, horizon)
        count = bisect.bisect_left(self._times, self._horizon)
        if count:
            self._drop_oldest(count)

    def _drop_oldest(self, count: int) -> None:
        for frame in self._frames[:count]:
            self._seen_nbi_indices.discard(frame.index)
        del self._times[:count], self._frames[:count]
