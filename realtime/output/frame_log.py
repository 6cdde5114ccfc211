"""`endofuse run --log FRAMES.csv`: one CSV row per output frame, written as the frame leaves the pipeline.

Columns (`LOG_COLUMNS`): `frame` (index in the input), `time_s` (the frame's
time since the start: its place in a recording, the capture clock for a live
source), `modality` (WLI / NBI / TRANSITION as detected; empty for two
inputs), `mode` (FUSED, FUSED-MEMORY, WLI-ONLY, NBI, HOLD), `nbi_frame` (the
NBI frame fused with it), `nbi_age_ms` (how much older that NBI frame is),
`view_similarity` (against the view before the NBI look; empty when not
gated), `quality_flags` (blur / glare / dark, `;`-separated), `status` (the
pairing: paired / stale / missing / memory / no_mask), `shown_frame` (the
frame written out, with the mask drawn on it: `frame` itself with
`--overlay-timing sync`, the newest captured one with `live`), `overlay_age_frames` and `overlay_age_ms`
(how much older the mask is than the frame it is drawn on; empty on NBI/HOLD
frames, which carry no mask), `latency_ms`, `mask_pixels` (0: no lesion shown).
Empty cells mean "does not apply".

Each row is flushed as it is written, so a crash or Ctrl-C keeps every frame
logged so far; `close` ends the file.
"""
from __future__ import annotations

import csv
import os

import numpy as np

from endofuse.outputs import WriteError, check_output_file, reason

LOG_COLUMNS = ("frame", "time_s", "modality", "mode", "nbi_frame", "nbi_age_ms", "view_similarity", "quality_flags",
               "status", "shown_frame", "overlay_age_frames", "overlay_age_ms", "latency_ms", "mask_pixels")


def _num(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def log_row(result) -> tuple:
    """One output frame (a `pipeline.FrameResult`) as the cells of `LOG_COLUMNS`; the case record reads them too."""
    extras = result.extras
    age_s = extras.get("nbi_age_s")
    if age_s is None and result.nbi_index is not None and result.skew_ms is not None:
        age_s = -result.skew_ms / 1000  # two inputs: the NBI frame's age is minus its skew
    return (result.index, _num(extras.get("time_s"), 4), extras.get("modality", ""), result.mode,
            "" if result.nbi_index is None else result.nbi_index, _num(None if age_s is None else age_s * 1000, 1),
            _num(extras.get("view_similarity"), 4), ";".join(extras.get("quality_flags", ())),
            result.status, extras.get("shown_index", result.index), extras.get("overlay_age_frames", ""),
            _num(extras.get("overlay_age_ms"), 1), _num(result.latency_ms, 2), int(np.count_nonzero(result.mask)))


class FrameLogSink:
    """A sink (`write(result)`, `close()`) that logs every output frame to a CSV file."""

    def __init__(self, path: str | os.PathLike, what: str = "--log") -> None:
        self.what = what  # how errors name the file: the flag, or the case folder's log
        self.path = check_output_file(path, what)
        self.rows = 0
        try:
            self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._writer = csv.writer(self._file)
            self._writer.writerow(LOG_COLUMNS)
        except OSError as exc:
            raise WriteError(f"{self.what} '{self.path}': {reason(exc)}") from exc

    def write(self, result) -> None:
        row = log_row(result)
        try:
            self._writer.writerow(row)
            self._file.flush()
        except OSError as exc:
            raise WriteError(f"{self.what} '{self.path}': {reason(exc)} (after {self.rows} rows)") from exc
        self.rows += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

