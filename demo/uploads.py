"""What the demo accepts from a browser, and the messages it gives when an upload is bad.

Everything a client sends is an upload that Gradio has already put in its own
cache folder (Gradio refuses a client-named server path before our code runs);
here we only decide whether the uploaded bytes are a usable image or video and
turn any failure into a `gr.Error` that names the upload, so a bad file shows a
message in the page instead of a traceback.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import gradio as gr
import numpy as np
import PIL.Image

# One limit for every upload (Gradio enforces it while receiving, before it is
# written to disk). Endoscopy stills are < 10 MB; a minute of 1080p video fits.
MAX_UPLOAD_SIZE = "200mb"
VIDEO_FILE_TYPES = [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"]
MAX_IMAGE_SIDE = 4096  # larger frames than any endoscope; refuses decompression bombs early
MIN_IMAGE_SIDE = 16


def check_image_size(width: int, height: int, what: str) -> None:
    """Raise gr.Error unless a `width` x `height` image is within the demo's limits."""
    if max(width, height) > MAX_IMAGE_SIDE:
        raise gr.Error(f"{what} is {width}x{height}; the demo accepts at most {MAX_IMAGE_SIDE} pixels a side")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise gr.Error(f"{what} is {width}x{height}; the demo needs at least {MIN_IMAGE_SIDE} pixels a side")


def _upload_name(payload) -> str:
    name = getattr(payload, "orig_name", None) or Path(getattr(payload, "path", None) or "upload").name
    return f"'{name}'"


def checked_image(**image_kwargs) -> gr.Image:
    """A `gr.Image` input whose undecodable or oversized uploads become a message naming the file.

    Gradio decodes an upload (PIL) before the event function runs, so the check
    wraps this component's own `preprocess`. (Not a subclass: Gradio's component
    metaclass writes a .pyi stub beside the module of every new component class.)
    """
    image = gr.Image(**image_kwargs)
    stock_preprocess = image.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        what = f"{image.label or 'image'} upload {_upload_name(payload)}"
        path = getattr(payload, "path", None)
        if path:  # read the header only: refuse huge images before decoding them
            try:
                with PIL.Image.open(path) as probe:
                    check_image_size(*probe.size, what)
            except (PIL.UnidentifiedImageError, OSError) as exc:
                raise gr.Error(f"{what} is not a readable image ({type(exc).__name__})") from exc
        try:
            decoded = stock_preprocess(payload)
        except gr.Error:
            raise
        except Exception as exc:  # PIL raises many types for damaged files
            raise gr.Error(f"{what} is not a readable image ({type(exc).__name__}: {exc})") from exc
        if isinstance(decoded, np.ndarray):
            check_image_size(decoded.shape[1], decoded.shape[0], what)
        return decoded

    image.preprocess = preprocess
    return image


def rgb_to_bgr(image_rgb: np.ndarray | None) -> np.ndarray | None:
    """Gradio hands over RGB arrays; the pipeline works in OpenCV's BGR order."""
    if image_rgb is None:
        return None
    return np.ascontiguousarray(image_rgb[..., 2::-1])


def bgr_to_rgb(image_bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image_bgr[..., ::-1])


def check_video_upload(path: str | None, what: str) -> str | None:
    """Return `path` if it is a video OpenCV can read a first frame from, else raise gr.Error naming it."""
    if path is None:
        return None
    name = Path(path).name
    if Path(path).suffix.lower() not in VIDEO_FILE_TYPES:
        raise gr.Error(f"{what} '{name}' is not a video file; accepted types: {', '.join(VIDEO_FILE_TYPES)}")
    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read()
    finally:
        capture.release()
    if not ok or frame is None:
        raise gr.Error(f"{what} '{name}' could not be decoded (no readable first frame)")
    check_image_size(frame.shape[1], frame.shape[0], f"{what} '{name}'")
    return str(path)
