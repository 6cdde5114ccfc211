"""The demo's endpoints, called over HTTP with gradio_client on real files the tests write.

The app runs in-process on 127.0.0.1 with `ColourThresholdEngine` (realtime's
test stand-in: tumour where the resized WLI's red channel > 0.5), so the
expected mask of a drawn red rectangle is known without running the model.
"""
from __future__ import annotations

import json

import cv2
import httpx
import numpy as np
import pytest

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from endofuse.demo import pair as pair_module  # noqa: E402
from endofuse.demo.app import build_app, launch_app  # noqa: E402
from endofuse.demo.engines import BUNDLED_MODEL, EngineCache, model_choices  # noqa: E402
from endofuse.demo.pair import NBI_MAX_AGE_S, remember_nbi_frame, segment_live_frame  # noqa: E402

from conftest import ColourThresholdEngine  # noqa: E402

STAGES = ("preprocess", "infer", "postprocess", "overlay", "total")
RECT = (120, 90, 300, 230)  # x0, y0, x1, y1 of the red "lesion" in the WLI test image
WLI_SIZE = (360, 480)  # (H, W)


class RecordingOpener:
    """Opens one ColourThresholdEngine per (checkpoint, backend) and remembers them."""

    def __init__(self) -> None:
        self.engines: list[ColourThresholdEngine] = []

    def __call__(self, checkpoint, backend="auto"):
        engine = ColourThresholdEngine((64, 64))
        self.engines.append(engine)
        return engine


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, url, opener) for an app served on 127.0.0.1 for the whole module."""
    opener = RecordingOpener()
    root = tmp_path_factory.mktemp("demo")
    app = build_app(opener=opener, examples_dir=root / "examples", output_dir=root / "out")
    _, url, _ = launch_app(app, port=None, block=False)
    try:
        yield Client(url, verbose=False), url, opener, app
    finally:
        app.close()


@pytest.fixture()
def pair_files(tmp_path):
    """A WLI PNG with a red rectangle on dark tissue, and an NBI PNG of another size."""
    wli = np.full((*WLI_SIZE, 3), (60, 70, 90), np.uint8)  # BGR, red channel 90/255 < 0.5
    x0, y0, x1, y1 = RECT
    wli[y0:y1, x0:x1] = (40, 40, 230)  # red 230/255 > 0.5
    nbi = np.full((300, 420, 3), (120, 140, 60), np.uint8)
    wli_path, nbi_path = tmp_path / "wli.png", tmp_path / "nbi.png"
    cv2.imwrite(str(wli_path), wli)
    cv2.imwrite(str(nbi_path), nbi)
    return wli_path, nbi_path, wli


def expected_mask() -> np.ndarray:
    mask = np.zeros(WLI_SIZE, np.uint8)
    x0, y0, x1, y1 = RECT
    mask[y0:y1, x0:x1] = 1
    return mask


def segment(client: Client, wli, nbi, alpha=0.45, backend="auto"):
    return client.predict(handle_file(str(wli)), None if nbi is None else handle_file(str(nbi)), alpha,
                          BUNDLED_MODEL, backend, api_name="/segment")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def test_segment_endpoint_returns_mask_overlay_and_readout(served, pair_files):
    client, _, opener, _ = served
    wli_path, nbi_path, wli = pair_files
    overlay_path, mask_path, readout = segment(client, wli_path, nbi_path)

    mask = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE)
    assert mask.shape == WLI_SIZE, "mask must be at the WLI frame's native size"
    assert set(np.unique(mask)) <= {0, 255}
    assert iou(mask > 0, expected_mask() > 0) > 0.95

    overlay = cv2.imread(overlay_path)
    assert overlay.shape == wli.shape
    assert readout.startswith("mode: FUSED")
    for stage in STAGES:
        assert f"{stage} " in readout and " ms" in readout, readout
    assert opener.engines[-1].calls[-1] is True, "the NBI image must reach the engine"


def test_leaving_nbi_empty_runs_the_wli_only_path(served, pair_files):
    client, _, opener, _ = served
    wli_path, _, _ = pair_files
    _, mask_path, readout = segment(client, wli_path, None)
    assert readout.startswith("mode: WLI-ONLY")
    assert opener.engines[-1].calls[-1] is False
    assert iou(cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) > 0, expected_mask() > 0) > 0.95


def test_opacity_slider_changes_how_strongly_the_lesion_is_tinted(served, pair_files):
    client, _, _, _ = served
    wli_path, nbi_path, wli = pair_files
    x0, y0, x1, y1 = RECT
    inner = (slice(y0 + 15, y1 - 15), slice(x0 + 15, x1 - 15))  # away from the contour line

    def tint(alpha: float) -> float:
        overlay = cv2.imread(segment(client, wli_path, nbi_path, alpha=alpha)[0]).astype(np.float32)
        return float(np.abs(overlay[inner] - wli[inner].astype(np.float32)).mean())

    weak, strong = tint(0.1), tint(0.9)
    assert weak < strong and strong > 20, (weak, strong)


def test_engine_picker_opens_each_backend_once(served, pair_files):
    client, _, opener, _ = served
    wli_path, nbi_path, _ = pair_files
    before = len(opener.engines)
    segment(client, wli_path, nbi_path, backend="torch")
    segment(client, wli_path, nbi_path, backend="torch")
    assert len(opener.engines) - before <= 1


@pytest.mark.parametrize("missing, hidden", [((), set()), (("nncf",), {"openvino-int8"}),
                                             (("openvino",), {"openvino", "openvino-int8"})])
def test_engine_picker_offers_openvino_only_where_it_imports(monkeypatch, missing, hidden):
    import importlib.util

    from endofuse.demo.engines import available_backends
    from endofuse.realtime.engines import BACKENDS

    # Every package imports except the `missing` ones, whatever this machine has installed.
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else object())
    monkeypatch.setattr("endofuse.demo.engines.tensorrt_available", lambda: True)
    offered = available_backends()
    assert [b for b in BACKENDS if b not in hidden] == offered


def test_bad_upload_gives_a_message_naming_the_file_and_the_app_keeps_working(served, pair_files, tmp_path):
    client, _, _, _ = served
    wli_path, nbi_path, _ = pair_files
    broken = tmp_path / "broken_frame.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(AppError, match="broken_frame.png.*not a readable image"):
        segment(client, broken, nbi_path)
    with pytest.raises(AppError, match="NBI.*broken_frame.png"):
        segment(client, wli_path, broken)
    assert segment(client, wli_path, nbi_path)[2].startswith("mode: FUSED")


def test_oversized_image_is_refused_with_the_limit(served, tmp_path):
    client, _, _, _ = served
    huge = tmp_path / "too_wide.png"
    cv2.imwrite(str(huge), np.zeros((20, 5000, 3), np.uint8))
    with pytest.raises(AppError, match="too_wide.png.*5000x20.*at most 4096"):
        segment(client, huge, None)


def test_missing_wli_image_is_a_message(served, pair_files):
    client, _, _, _ = served
    with pytest.raises(AppError, match="Upload a WLI image first"):
        client.predict(None, handle_file(str(pair_files[1])), 0.45, BUNDLED_MODEL, "auto", api_name="/segment")


def test_a_server_path_named_by_the_client_is_never_read(served, tmp_path):
    _, url, _, _ = served
    secret = tmp_path / "secret.png"
    cv2.imwrite(str(secret), np.full((32, 32, 3), 200, np.uint8))
    secret_text = tmp_path / "secret.txt"
    secret_text.write_text("TOP-SECRET-CONTENT")
    payload = {"data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, None, 0.45, BUNDLED_MODEL, "auto"]}
    with httpx.Client(base_url=url, timeout=30) as http:
        event = http.post("/gradio_api/call/segment", json=payload).json()["event_id"]
        stream = http.get(f"/gradio_api/call/segment/{event}").text
        assert "event: error" in stream and "mode:" not in stream, stream
        for path in (secret, secret_text):
            response = http.get(f"/gradio_api/file={path}")
            assert response.status_code >= 400 and b"TOP-SECRET" not in response.content


def test_live_handler_pairs_only_a_fresh_second_camera_frame(pair_files, monkeypatch):
    # gradio_client 2.7 cannot consume a `.stream` event (it has no 'process_streaming'
    # message), so the live handler is called directly; the browser test drives the tab.
    engines = EngineCache(model_choices(None), RecordingOpener())
    wli_rgb = cv2.imread(str(pair_files[0]))[..., ::-1]
    nbi_rgb = cv2.imread(str(pair_files[1]))[..., ::-1]
    clock = [100.0]
    monkeypatch.setattr(pair_module.time, "monotonic", lambda: clock[0])
    state = remember_nbi_frame(nbi_rgb)

    overlay, readout = segment_live_frame(engines, wli_rgb, state, 0.45, BUNDLED_MODEL, "auto")
    assert overlay.shape == wli_rgb.shape and readout.startswith("mode: FUSED")
    clock[0] += NBI_MAX_AGE_S + 0.01  # the second camera stalled
    assert segment_live_frame(engines, wli_rgb, state, 0.45, BUNDLED_MODEL, "auto")[1].startswith("mode: WLI-ONLY")
    assert segment_live_frame(engines, None, state, 0.45, BUNDLED_MODEL, "auto") == (None, "waiting for the webcam")


def test_served_with_the_safety_settings(served):
    _, url, _, app = served
    assert url.startswith("http://127.0.0.1:")
    assert app.share is False and app.analytics_enabled is False
    assert app.max_file_size == 200 * 1024 * 1024
    config = httpx.get(url.rstrip("/") + "/config", timeout=30).json()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"wli_image", "nbi_image", "segment_button", "overlay_image", "latency_text"} <= ids
    assert not app.allowed_paths, "the demo must not open any server folder to clients"
    webcams = [c["props"] for c in config["components"]
               if c.get("props", {}).get("elem_id") in ("live_wli", "live_nbi")]
    assert len(webcams) == 2 and all(p["webcam_options"]["mirror"] is False and p["streaming"] for p in webcams)
    live = next(fn for fn in app.fns.values() if fn.api_name == "live_frame")
    assert live.time_limit and live.concurrency_limit and live.concurrency_limit <= 4


def write_video(path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()


@pytest.fixture()
def video_pair(tmp_path):
    """12-frame WLI/NBI videos of the synthetic moving scene (NBI at another size)."""
    from endofuse.model.synthetic import SyntheticScene

    scene = SyntheticScene(seed=3, size=(144, 176))
    frames = [scene.frame(t / 10) for t in range(12)]
    wli_path, nbi_path = tmp_path / "wli.mp4", tmp_path / "nbi.mp4"
    write_video(wli_path, [wli for wli, _, _ in frames])
    write_video(nbi_path, [cv2.resize(nbi, (160, 128)) for _, nbi, _ in frames])
    return wli_path, nbi_path


def process_video(client: Client, wli, nbi, max_frames: int):
    job = client.submit(handle_file(str(wli)), None if nbi is None else handle_file(str(nbi)), 0.45, BUNDLED_MODEL,
                        "auto", max_frames, api_name="/process_video")
    final = job.result(timeout=120)
    return job.outputs(), final


def video_frame_count(path: str) -> tuple[int, tuple[int, int]]:
    capture = cv2.VideoCapture(path)
    count, size = 0, None
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        count, size = count + 1, frame.shape[:2]
    capture.release()
    return count, size


def test_process_video_endpoint_streams_then_offers_video_report_and_cdf(served, video_pair):
    client, _, opener, _ = served
    outputs, (preview, video, report_path, cdf, status) = process_video(client, *video_pair, max_frames=10)
    assert len(outputs) >= 2, "at least one streamed preview frame before the final outputs"
    assert video.endswith(".webm") and video_frame_count(video) == (10, (144, 176))
    report = json.loads(open(report_path).read())
    assert report["frames"] == 10 and report["nbi"] is not None
    assert report["paired"] + report["stale_pairs"] + report["nbi_missing"] == 10
    assert cdf["type"] == "matplotlib"
    assert status.startswith("10 frames") and "p50" in status


def test_process_video_without_nbi_is_wli_only(served, video_pair):
    client, _, _, _ = served
    _, (_, video, report_path, _, _) = process_video(client, video_pair[0], None, max_frames=10)
    report = json.loads(open(report_path).read())
    assert report["nbi"] is None and report["paired"] == 0 and report["frames"] == 10


def test_bad_video_uploads_give_messages(served, tmp_path):
    client, _, _, _ = served
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    with pytest.raises(AppError, match="Invalid file type"):
        process_video(client, text, None, max_frames=10)
    fake = tmp_path / "corrupt_clip.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    with pytest.raises(AppError, match="corrupt_clip.mp4.*could not be decoded"):
        process_video(client, fake, None, max_frames=10)


def test_uploads_over_the_size_limit_are_refused_by_the_server(monkeypatch, tmp_path, pair_files):
    # The real limit is 200 MB; the same launch path with a 1 KB limit shows the server
    # enforces it (raw HTTP: gradio_client would refuse before sending).
    import endofuse.demo.app as app_module

    monkeypatch.setattr(app_module, "MAX_UPLOAD_SIZE", "1kb")
    app = build_app(opener=RecordingOpener(), examples_dir=tmp_path / "examples", output_dir=tmp_path / "out")
    _, url, _ = launch_app(app, port=None, block=False)
    try:
        upload = url.rstrip("/") + "/gradio_api/upload"
        big = httpx.post(upload, files={"files": ("big.png", pair_files[0].read_bytes())}, timeout=30)
        small = httpx.post(upload, files={"files": ("small.png", b"x" * 100)}, timeout=30)
        assert pair_files[0].stat().st_size > 1024
        assert big.status_code == 413 and small.status_code == 200
    finally:
        app.close()


def test_the_benchmarked_http_click_is_a_real_segment_call(served, pair_files):
    # benchmarks/demo_roundtrip.py times this request sequence; it must do the whole job.
    from conftest import load_benchmark

    http_segment = load_benchmark("demo_roundtrip").http_segment

    _, url, _, _ = served
    with httpx.Client(base_url=url.rstrip("/"), timeout=60) as http:
        readout = http_segment(http, pair_files[0], pair_files[1], BUNDLED_MODEL, "auto")
    assert readout.startswith("mode: FUSED") and "total" in readout
