"""The demo's "Case" tab: the endoscope recording tab records a case; the tab shows its timeline and key frames,
offers the review page and exports the DICOM objects as a zip."""
from __future__ import annotations

import zipfile

import pytest

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402
from test_demo_endoscope import engines  # noqa: E402

from endofuse.demo.case import export_case, show_case  # noqa: E402
from endofuse.demo.engines import BUNDLED_MODEL  # noqa: E402
from endofuse.demo.video import process_endoscope_video  # noqa: E402
from endofuse.realtime.record.case import load_case  # noqa: E402


@pytest.fixture(scope="module")
def demo_case(synthetic_endoscope_recording, tmp_path_factory):
    video, _, _ = synthetic_endoscope_recording
    out = tmp_path_factory.mktemp("demo-case")
    cases: list = []
    steps = list(process_endoscope_video(engines(), str(video), 0.45, BUNDLED_MODEL, "torch", 40, out, cases=cases))
    return steps, cases, out


def test_the_recording_tab_records_a_case(demo_case):
    steps, cases, out = demo_case
    (case,) = cases
    assert case.parent.parent == out and len(steps[-1]) == 5  # the tab's own outputs are unchanged
    record = load_case(case)
    assert record["frames"]["count"] == 40 and record["events"], "the stand-in shows the synthetic lesion"


def test_case_view_shows_timeline_key_frames_and_review_page(demo_case):
    _, (case,), _ = demo_case
    record = load_case(case)
    timeline, key_frames, text, review = show_case(str(case))
    assert timeline.count('class="event-bar"') == len(record["events"])
    expected = [key for event in record["events"] for key in event["key_frames"]]
    assert [path for path, _ in key_frames] == [str(case / (k.get("overlay") or k["raw"])) for k in expected]
    assert text.count("**Event") == len(record["events"]) and review.endswith("review.html")
    with pytest.raises(gr.Error, match="Process a recording"):
        show_case(None)


def test_export_gives_the_dicom_objects(demo_case, tmp_path):
    pytest.importorskip("pydicom", reason="the [dicom] extra is not installed")
    pytest.importorskip("av", reason="the [dicom] extra is not installed")
    _, (case,), _ = demo_case
    record = load_case(case)
    archive = export_case(str(case), tmp_path)
    names = zipfile.ZipFile(archive).namelist()
    keys = [k for event in record["events"] for k in event["key_frames"]]
    wli = sum(k["kind"] == "wli" for k in keys)
    assert sum(n.startswith("raw_") for n in names) == len(keys) and "video.dcm" in names
    assert sum(n.startswith("seg_") for n in names) == wli == sum(n.startswith("overlay_") for n in names)


def test_served_case_tab_follows_the_recording_tab(synthetic_endoscope_recording, tmp_path):
    """Over HTTP, in one browser session: process a recording, then the Case tab shows its case and exports it."""
    from gradio_client import Client, handle_file

    from endofuse.demo.app import build_app, launch_app

    from conftest import ColourThresholdEngine

    video, _, _ = synthetic_endoscope_recording
    app = build_app(opener=lambda checkpoint, backend="auto": ColourThresholdEngine((32, 32)),
                    examples_dir=tmp_path / "examples", output_dir=tmp_path / "out")
    _, url, _ = launch_app(app, port=None, block=False)
    try:
        client = Client(url, verbose=False)
        with pytest.raises(Exception, match="Process a recording"):
            client.predict(api_name="/show_case")  # nothing recorded in this session yet
        client.predict(handle_file(str(video)), 0.45, BUNDLED_MODEL, "torch", 40, api_name="/process_endoscope")
        timeline, key_frames, text, review = client.predict(api_name="/show_case")
        (case,) = list((tmp_path / "out").glob("video-*/case"))
        record = load_case(case)
        assert record["frames"]["count"] == 40 and timeline.count('class="event-bar"') == len(record["events"])
        assert len(key_frames) == sum(len(e["key_frames"]) for e in record["events"]) > 0
        assert open(review, encoding="utf-8").read() == (case / "review.html").read_text(encoding="utf-8")
    finally:
        app.close()
