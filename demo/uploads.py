"""What the demo accepts from a browser, and the messages it gives when an upload is bad.

Everything a client sends is an upload that Gradio has already put in its own
cache folder (Gradio refuses a client-named server path before our code runs);
here we only decide whether the uploaded bytes are a usable image or video and
turn any failure into a `gr.Error` that names the upload, so a bad file shows a
message in the page instead of a traceback.
"""
from __future__ import annotations

import collections
import time
import warnings
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
# Per client address, over a sliding window: a video pair and some stills, not a disk's worth.
UPLOAD_BUDGET_BYTES = 600 * 2**20
UPLOAD_WINDOW_S = 15 * 60
# Uploads are deleted this long after they arrive (checked every UPLOAD_SWEEP_S).
UPLOAD_MAX_AGE_S = 10 * 60
UPLOAD_SWEEP_S = 60
REMOTE_PREFIXES = ("http://", "https://", "ftp://", "//")


def check_image_size(width: int, height: int, what: str) -> None:
    """Raise gr.Error unless a `width` x `height` image is within the demo's limits."""
    if max(width, height) > MAX_IMAGE_SIDE:
        raise gr.Error(f"{what} is {width}x{height}; the demo accepts at most {MAX_IMAGE_SIDE} pixels a side")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise gr.Error(f"{what} is {width}x{height}; the demo needs at least {MIN_IMAGE_SIDE} pixels a side")


def check_image_header(path: str | Path, what: str) -> None:
    """The image's size from its header (nothing decoded) within the demo's limits, else gr.Error.

    PIL refuses images above `PIL.Image.MAX_IMAGE_PIXELS` (a decompression bomb) with its own
    exception when it opens them; that becomes the demo's size message too.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as probe:
                size = probe.size
    except PIL.Image.DecompressionBombError:
        raise gr.Error(f"{what} is too large: the demo accepts at most {MAX_IMAGE_SIDE} pixels a side") from None
    except (PIL.UnidentifiedImageError, OSError) as exc:
        raise gr.Error(f"{what} is not a readable image ({type(exc).__name__})") from exc
    check_image_size(*size, what)


def refuse_remote_files(component):
    """Inputs take uploads only: a client-named http(s) URL is refused before Gradio would fetch it.

    Gradio downloads a URL given in a file payload (resolving its host on the server); the demo never
    needs that, so the component's cache step refuses such payloads without any lookup.
    """
    stock_move = component.async_move_resource_to_block_cache

    async def move(url_or_file_path):
        if url_or_file_path is not None and str(url_or_file_path).lower().startswith(REMOTE_PREFIXES):
            raise gr.Error(f"{component.label or 'input'}: only uploaded files are accepted, not URLs")
        return await stock_move(url_or_file_path)

    component.async_move_resource_to_block_cache = move
    return component


class UploadBudget:
    """ASGI middleware: each client address may upload at most `budget_bytes` per `window_s` seconds.

    Gradio's upload route accepts any file up to `MAX_UPLOAD_SIZE` per request; this bounds what one
    client can park on the server's disk. A request must say its size (Content-Length) up front.
    """

    def __init__(self, app, budget_bytes: int = UPLOAD_BUDGET_BYTES, window_s: float = UPLOAD_WINDOW_S,
                 clock=time.monotonic) -> None:
        self.app, self.budget, self.window, self.clock = app, budget_bytes, window_s, clock
        self._spent: dict[str, collections.deque] = collections.defaultdict(collections.deque)

    def used(self, client: str) -> int:
        spent, cutoff = self._spent[client], self.clock() - self.window
        while spent and spent[0][0] < cutoff:
            spent.popleft()
        return sum(size for _, size in spent)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith("/upload"):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]
        headers = dict(scope.get("headers") or [])
        try:
            size = int(headers[b"content-length"])
        except (KeyError, ValueError):
            return await _plain(send, 411, "uploads must state their size (Content-Length)")
        if self.used(client) + size > self.budget:
            mb, minutes = self.budget // 2**20, self.window / 60
            return await _plain(send, 429, f"upload budget of {mb} MB per {minutes:g} minutes used up for this "
                                           "client; try again later")
        self._spent[client].append((self.clock(), size))
        return await self.app(scope, receive, send)


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
            check_image_header(path, what)
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
    return refuse_remote_files(image)


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
