"""Overlay timing (`--overlay-timing sync|live`) and the overlay's age, from timestamps and on the pixels.

* `sync`: the mask is drawn on the frame it was computed from; the video waits
  for inference (its latency is the pipeline's), the overlay's age is 0.
* `live`: the mask is drawn on the newest captured WLI frame, as a hardware
  mixer does; the video shows the newest frame and the overlay is as old as
  the inference lag (age = frames and milliseconds between the two captures).
  With `--stabilise flow` the mask is first warped onto that frame by the flow
  between the two frames.

When the WLI source stamps frame codes (`realtime.frame_code`), the code is read
back from every output frame: the age and the capture-to-output latency are then
also measured on the pixels that reach the sinks.
"""
from __future__ import annotations

from array import array

import numpy as np

from endofuse.errors import InvalidOptionError
from endofuse.model.temporal import backward_flow, flow_image, warp_previous
from endofuse.realtime import frame_code
from endofuse.realtime.tracing import percentiles

OVERLAY_TIMINGS = ("sync", "live")
CODE_MODULUS = 1 << frame_code.INDEX_BITS


class OverlayTiming:
    """Chooses the frame each mask is drawn on and records the overlay's age."""

    def __init__(self, mode: str = "sync", read_codes: bool = False) -> None:
        if mode not in OVERLAY_TIMINGS:
            raise InvalidOptionError(f"--overlay-timing must be one of {', '.join(OVERLAY_TIMINGS)}, got {mode!r}")
        self.mode, self.read_codes = mode, read_codes
        self.age_frames, self.age_ms = array("d"), array("d")
        self.code_age_frames, self.code_latency_ms = array("d"), array("d")
        self.codes_unreadable = self.codes_mismatched = 0

    def place(self, logits, frame, newest, warp: bool, view=None) -> tuple:
        """(logits to draw, the frame to draw them on, its age (frames, ms)); `warp`: move the mask onto a newer
        frame by the flow between the two (`--stabilise flow`); `view(image)`: the part of the frame the logits
        cover (an endoscope stream's content area; default the whole frame)."""
        shown = self.target(frame, newest)
        if warp and shown is not frame:
            logits = self.retarget(logits, frame, shown, view)
        return logits, shown, self.age(frame, shown)

    def target(self, frame, newest):
        """The frame to draw on: `frame` (sync) or the newest captured one when it is newer (live)."""
        if self.mode == "live" and newest is not None and newest.index > frame.index:
            return newest
        return frame

    @staticmethod
    def retarget(logits: np.ndarray, frame, shown, view=None) -> np.ndarray:
        """(C, h, w) logits of `frame` warped onto `shown` by the dense flow between the two frames (their
        `view` parts)."""
        if shown is frame:
            return logits
        size, view = logits.shape[-2:], view or (lambda image: image)
        flow = backward_flow(flow_image(view(frame.image), size), flow_image(view(shown.image), size))
        return np.stack([warp_previous(np.ascontiguousarray(plane), flow) for plane in logits])

    def age(self, frame, shown) -> tuple[int, float]:
        """(frames, ms) between the capture of the mask's frame and of the frame it is drawn on."""
        return shown.index - frame.index, (shown.capture_time - frame.capture_time) * 1000.0

    @staticmethod
    def hud_line(age: tuple[int, float], mode: str) -> str:
        return "overlay sync" if mode == "sync" else f"overlay age {age[0]} fr {age[1]:.0f} ms"

    def record(self, frame, shown, age: tuple[int, float], output_image: np.ndarray, ready: float,
               has_overlay: bool = True) -> None:
        """Store the age (of frames that carry a mask: not an endoscope stream's NBI/HOLD frames); with frame
        codes, read the output's code: the age and latency on the pixels."""
        if has_overlay:
            self.age_frames.append(age[0])
            self.age_ms.append(age[1])
        if not self.read_codes:
            return
        code = frame_code.read(output_image)
        if code is None:
            self.codes_unreadable += 1
            return
        if code != shown.index % CODE_MODULUS:
            self.codes_mismatched += 1
            return
        self.code_age_frames.append((code - frame.index) % CODE_MODULUS)
        self.code_latency_ms.append((ready - shown.capture_time) * 1000.0)

    def summary(self) -> dict:
        out = {"timing": self.mode, "age_frames": _p50_p99(self.age_frames), "age_ms": _p50_p99(self.age_ms)}
        if self.read_codes:
            out["frame_code"] = {"read": len(self.code_age_frames), "unreadable": self.codes_unreadable,
                                 "mismatched": self.codes_mismatched,
                                 "age_frames": _p50_p99(self.code_age_frames),
                                 "capture_to_output_ms": _p50_p99(self.code_latency_ms)}
        return out


def _p50_p99(values) -> dict:
    p = percentiles(values)
    return {"p50": p["p50"], "p99": p["p99"], "max": p["max"]}
