"""The demo as a user gets it: `endofuse demo` in a subprocess (bundled weights),
driven by a real headless Chromium (Debian's package) through Playwright.

Set ENDOFUSE_DEMO_SCREENSHOT=docs/images/demo.png to keep the screenshot for the README.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import cv2
import pytest

from conftest import demo_server

CHROMIUM = Path(os.environ.get("ENDOFUSE_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium tries to reach Google services,
# which a closed network refuses; the fake media flags give the Live tab a webcam.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
# A real `endofuse demo` subprocess and a browser: the longest tests in the suite.
pytestmark = pytest.mark.slow
UI_TIMEOUT_MS = 60_000

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.is_file():
    pytest.skip(f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does this)",
                allow_module_level=True)
expect = playwright_api.expect


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """`endofuse demo --port P --engine torch` (defaults otherwise: 127.0.0.1, bundled weights)."""
    # --engine torch: "auto" would pick ONNX Runtime and export the model first
    # (~30 s on 2 busy cores, once per checkpoint; the engines tests cover that path).
    with demo_server(["--engine", "torch"], tmp_path_factory.mktemp("demo-server") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser, demo_url):
    """A fresh page on the demo; fails the test if the page asked any host but the demo server."""
    context = browser.new_context(viewport={"width": 1280, "height": 1400}, permissions=["camera"])
    page = context.new_page()
    foreign: list[str] = []
    page.on("request", lambda request: None if request.url.startswith((demo_url, "data:", "blob:"))
            else foreign.append(request.url))
    page.goto(demo_url)
    yield page
    context.close()
    assert not foreign, f"the demo page must work offline, but it requested {foreign[:5]}"


@pytest.fixture()
def user_pair(tmp_path):
    """A pair the user brings: a synthetic scene not among the built-in examples, NBI at another size."""
    from endofuse.model.synthetic import make_pair

    wli, nbi, _ = make_pair(11, size=(420, 460))
    wli_path, nbi_path = tmp_path / "my_wli.png", tmp_path / "my_nbi.png"
    cv2.imwrite(str(wli_path), wli)
    cv2.imwrite(str(nbi_path), cv2.resize(nbi, (400, 380)))
    return wli_path, nbi_path


def readout(page):
    return page.locator("#latency_text textarea")


def test_upload_a_pair_segment_and_screenshot(page, user_pair, tmp_path):
    page.locator("#wli_image input[type=file]").set_input_files(str(user_pair[0]))
    page.locator("#nbi_image input[type=file]").set_input_files(str(user_pair[1]))
    page.locator("#segment_button").click()
    expect(readout(page)).to_have_value(re.compile(r"^mode: FUSED.*\n.*total \d+\.\d ms"), timeout=UI_TIMEOUT_MS)
    overlay = page.locator("#overlay_image img")
    expect(overlay).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('#overlay_image img').naturalWidth > 0")
    assert overlay.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [460, 420], \
        "the overlay is shown at the WLI frame's native size"
    assert "not for clinical use" in page.locator("#about_box").inner_text()

    shot = tmp_path / "demo.png"
    page.screenshot(path=str(shot), full_page=True)
    assert cv2.imread(str(shot)) is not None
    if os.environ.get("ENDOFUSE_DEMO_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["ENDOFUSE_DEMO_SCREENSHOT"])


def test_examples_are_one_click_away_including_wli_only(page):
    examples = page.locator("table tbody tr")  # Gradio's examples table; the last row leaves NBI empty
    examples.first.click()
    expect(page.locator("#nbi_image img")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.locator("#segment_button").click()
    expect(readout(page)).to_have_value(re.compile(r"^mode: FUSED"), timeout=UI_TIMEOUT_MS)
    examples.last.click()
    expect(page.locator("#nbi_image img")).to_have_count(0, timeout=UI_TIMEOUT_MS)
    page.locator("#segment_button").click()
    expect(readout(page)).to_have_value(re.compile(r"^mode: WLI-ONLY"), timeout=UI_TIMEOUT_MS)


def test_a_bad_upload_shows_a_message_and_the_page_keeps_working(page, user_pair, tmp_path):
    broken = tmp_path / "broken_scan.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot an image at all" + bytes(range(256)))
    page.locator("#wli_image input[type=file]").set_input_files(str(broken))
    page.locator("#segment_button").click()
    expect(page.get_by_text(re.compile(r"broken_scan\.png.*not a readable image")).first).to_be_visible(
        timeout=UI_TIMEOUT_MS)
    page.locator("#wli_image input[type=file]").set_input_files(str(user_pair[0]))
    page.locator("#segment_button").click()
    expect(readout(page)).to_have_value(re.compile(r"^mode: (FUSED|WLI-ONLY)"), timeout=UI_TIMEOUT_MS)


def test_live_tab_streams_a_webcam_through_the_model(page):
    page.get_by_role("tab", name="Live").click()
    page.locator("#live_wli").get_by_text("Click to Access Webcam").click()
    # Record only once the (fake) camera delivers frames: a click before that starts no stream on a busy machine
    page.wait_for_function("() => { const v = document.querySelector('#live_wli video');"
                           " return v !== null && v.readyState >= 2 && v.videoWidth > 0; }", timeout=UI_TIMEOUT_MS)
    page.locator("#live_wli").get_by_role("button", name="capture photo").click()  # Gradio's "Record" button
    expect(page.locator("#live_latency_text textarea")).to_have_value(re.compile(r"^mode: WLI-ONLY"),
                                                                     timeout=UI_TIMEOUT_MS)
    expect(page.locator("#live_overlay img")).to_be_visible(timeout=UI_TIMEOUT_MS)


@pytest.fixture()
def user_videos(tmp_path):
    from endofuse.model.synthetic import SyntheticScene

    scene = SyntheticScene(seed=4, size=(144, 176))
    frames = [scene.frame(t / 10) for t in range(12)]
    paths = tmp_path / "my_wli.mp4", tmp_path / "my_nbi.mp4"
    for path, index in zip(paths, (0, 1), strict=True):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (176, 144))
        for frame in frames:
            writer.write(frame[index])
        writer.release()
    return paths


def test_video_tab_streams_then_shows_video_report_and_cdf(page, user_videos):
    page.get_by_role("tab", name="Video pair").click()
    page.locator("#wli_video input[type=file]").set_input_files(str(user_videos[0]))
    page.locator("#nbi_video input[type=file]").set_input_files(str(user_videos[1]))
    page.locator("#video_button").click()
    expect(page.locator("#video_status textarea")).to_have_value(re.compile(r"^12 frames -> overlay\.webm"),
                                                                 timeout=UI_TIMEOUT_MS)
    expect(page.locator("#video_preview img")).to_be_visible()
    expect(page.locator("#overlay_video video")).to_be_visible()
    expect(page.locator("#report_file")).to_contain_text("report.json")
    expect(page.locator("#latency_cdf img, #latency_cdf svg").first).to_be_visible()
