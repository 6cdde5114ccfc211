"""The "Image pair" and "Live" handlers: one WLI frame (+ optional NBI) in, overlay, mask and readout out."""
from __future__ import annotations

import time

import gradio as gr
import numpy as np

from endofuse.demo.engines import EngineCache
from endofuse.demo.uploads import bgr_to_rgb, rgb_to_bgr
from endofuse.errors import EndofuseError
from endofuse.realtime import segment_pair

STAGES = ("preprocess", "infer", "postprocess", "overlay", "total")
USER_ERRORS = (EndofuseError, ValueError, FileNotFoundError)


def format_readout(mode: str, timings_ms: dict[str, float], engine) -> str:
    """The latency readout: mode, engine and model on one line, then every stage in ms."""
    stages = " | ".join(f"{stage} {timings_ms[stage]:.1f} ms" for stage in STAGES if stage in timings_ms)
    label = getattr(engine, "model_label", "")
    return f"mode: {mode} | engine: {getattr(engine, 'name', '?')} | model: {label}\n{stages}"


def segment_uploaded_pair(engines: EngineCache, wli_rgb: np.ndarray | None, nbi_rgb: np.ndarray | None,
                          alpha: float, model_label: str, backend: str):
    """Image-pair tab: returns (overlay RGB, mask 0/255, readout). NBI left empty -> WLI-ONLY."""
    if wli_rgb is None:
        raise gr.Error("Upload a WLI image first (the NBI image is optional).")
    try:
        engine = engines.get(model_label, backend)
        result = segment_pair(engine, rgb_to_bgr(wli_rgb), rgb_to_bgr(nbi_rgb), alpha=float(alpha))
    except USER_ERRORS as exc:
        raise gr.Error(str(exc)) from exc
    readout = format_readout(result.mode, result.timings_ms, engine)
    return bgr_to_rgb(result.overlay), result.mask * np.uint8(255), readout


# A second camera's frame is paired with the WLI frame only while it is this fresh;
# an older one is stale and the frame goes through the WLI-only path instead.
NBI_MAX_AGE_S = 0.5


def remember_nbi_frame(nbi_rgb: np.ndarray | None) -> tuple[np.ndarray, float] | None:
    """Live tab: keep the second camera's latest frame with its arrival time (per browser session)."""
    return None if nbi_rgb is None else (nbi_rgb, time.monotonic())


def fresh_nbi(nbi_state: tuple[np.ndarray, float] | None, max_age_s: float = NBI_MAX_AGE_S) -> np.ndarray | None:
    if nbi_state is None:
        return None
    frame, arrived = nbi_state
    return frame if time.monotonic() - arrived <= max_age_s else None


def segment_live_frame(engines: EngineCache, wli_rgb: np.ndarray | None, nbi_state, alpha: float,
                       model_label: str, backend: str):
    """Live tab: one webcam frame (+ the second camera's latest, if fresh) -> (overlay RGB, readout)."""
    if wli_rgb is None:
        return None, "waiting for the webcam"
    overlay, _mask, readout = segment_uploaded_pair(engines, wli_rgb, fresh_nbi(nbi_state), alpha, model_label, backend)
    return overlay, readout
