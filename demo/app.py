"""The Gradio 6 app: tabs "Image pair", "Video pair", "Endoscope recording", "Case" and "Live", a model/engine
picker, an overlay opacity slider and an about box.

`build_app` only lays out components and wires events; the work is done by the
handlers in `pair.py` and `video.py`, bound here to one `EngineCache`.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import gradio as gr
from starlette.middleware import Middleware

from endofuse.demo.case import export_case, show_case
from endofuse.demo.engines import EngineCache, EngineOpener, available_backends, model_choices
from endofuse.demo.examples import write_example_pairs
from endofuse.demo.pair import remember_nbi_frame, segment_live_frame, segment_uploaded_pair
from endofuse.demo.uploads import (
    MAX_UPLOAD_SIZE,
    UPLOAD_MAX_AGE_S,
    UPLOAD_SWEEP_S,
    VIDEO_FILE_TYPES,
    UploadBudget,
    checked_image,
    refuse_remote_files,
)
from endofuse.demo.video import process_endoscope_video, process_video_pair
from endofuse.errors import InvalidOptionError

DEFAULT_ALPHA = 0.45
LIVE_TIME_LIMIT_S = 120  # a forgotten browser tab must not hold the CPU forever
LIVE_STREAM_EVERY_S = 0.1
LIVE_CONCURRENCY = 2

ABOUT = """\
**Demo model, not for clinical use.** The bundled weights are the *tiny*
configuration of endofuse's Align-Disentangle-Fuse network trained only on
**synthetic** WLI/NBI images from endofuse's procedural generator: never shown
patient data, not validated. Use your own trained checkpoint with
`endofuse demo --checkpoint CKPT`. Everything runs on this machine (127.0.0.1
unless started with `--host`; no share link, no analytics). Uploads: images up
to 4096 px a side, videos of type {types}, at most {size} per file.
"""

LIVE_NOTE = """\
Quick live test through the browser. Each webcam frame travels browser ->
server -> browser, which adds roughly **100-200 ms** on top of the model time
shown below (that readout is the server-side part only). The clinical path is
the `run` command next to the capture card, e.g.
`endofuse run --wli 0 --nbi 1 --live --display --report report.json`.
Leave the second camera off for the WLI-only path; an NBI frame older than
0.5 s is treated as missing. Streams stop after {limit} s.
"""


def build_app(checkpoint: str | None = None, engine: str = "auto", *, opener: EngineOpener | None = None,
              build_pipeline=None, examples_dir: Path | None = None, output_dir: Path | None = None,
              classifier: str | None = None, gallery: str | None = None) -> gr.Blocks:
    """The demo as a `gr.Blocks` (not launched).

    `checkpoint` None = the bundled demo weights; `opener` / `build_pipeline`
    default to `endofuse.realtime.engines.open_engine` / `endofuse.realtime.build_pipeline`
    (tests pass stand-ins). Outputs go to `output_dir` (a fresh temp folder by default).
    `classifier` / `gallery`: a `train --task classify` checkpoint and an `endofuse index` folder for the
    "Classify & search" tab (loaded now, so a bad path fails at startup).
    """
    engines = EngineCache(model_choices(checkpoint), opener)
    backends = available_backends()
    if engine not in backends:
        raise InvalidOptionError(f"engine {engine!r} is not available here; choose one of {backends}")
    # Open the default engine now: a missing checkpoint fails at startup, and the first click is fast.
    engines.get(engines.labels[0], engine)
    out_root = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="endofuse-demo-"))
    out_root.mkdir(parents=True, exist_ok=True)
    examples = write_example_pairs(examples_dir)
    search = keep = None
    if classifier is not None:
        from endofuse.demo.classify import ClassifySearch, keep_segmented_frame

        search, keep = ClassifySearch(classifier, gallery), keep_segmented_frame

    with gr.Blocks(title="endofuse demo", analytics_enabled=False,
                   delete_cache=(UPLOAD_SWEEP_S, UPLOAD_MAX_AGE_S)) as app:
        gr.Markdown("# endofuse: WLI/NBI tumour segmentation demo")
        with gr.Accordion("About", open=True, elem_id="about_box"):
            gr.Markdown(ABOUT.format(types=", ".join(VIDEO_FILE_TYPES), size=MAX_UPLOAD_SIZE.upper()))
        with gr.Row():
            model_choice = gr.Dropdown(engines.labels, value=engines.labels[0], label="Model", elem_id="model_choice")
            engine_choice = gr.Dropdown(backends, value=engine, label="Engine", elem_id="engine_choice")
            opacity = gr.Slider(0.0, 1.0, value=DEFAULT_ALPHA, step=0.05, label="Overlay opacity",
                                elem_id="opacity_slider")
        picker = [opacity, model_choice, engine_choice]
        # the session's latest segmented WLI frame, server-side, for "use the current overlay frame"
        latest = gr.State(None, time_to_live=UPLOAD_MAX_AGE_S) if search is not None else None

        case = gr.State(None, time_to_live=UPLOAD_MAX_AGE_S)  # the session's last recorded case folder
        with gr.Tabs():
            with gr.Tab("Image pair", id="image_pair"):
                _image_pair_tab(engines, picker, examples, latest, keep)
            with gr.Tab("Video pair", id="video_pair"):
                _video_pair_tab(engines, picker, out_root, build_pipeline)
            with gr.Tab("Endoscope recording", id="endoscope_recording"):
                _endoscope_tab(engines, picker, out_root, build_pipeline, case)
            with gr.Tab("Case", id="case"):
                _case_tab(case, out_root)
            with gr.Tab("Live", id="live"):
                _live_tab(engines, picker, latest, keep)
            with gr.Tab("Classify & search", id="classify_search"):
                _classify_tab(search, examples, latest)
    return app


def _classify_tab(search, examples, latest) -> None:
    if search is None:
        gr.Markdown("Start the demo with `--classifier CKPT` (from `endofuse train --task classify`) and "
                    "`--gallery GALLERY` (from `endofuse index`) to classify frames and search a case library.",
                    elem_id="classify_missing")
        return
    from endofuse.demo.classify import MAX_K, MAX_QUERY_CHARS

    k = gr.Slider(1, MAX_K, value=5, step=1, label="Similar images to show (k)", elem_id="search_k")
    with gr.Row():
        image = checked_image(label="Frame to classify", elem_id="classify_image", type="numpy", image_mode="RGB",
                              sources=["upload", "clipboard"], height=320)
        probs = gr.Label(label="Class probabilities", elem_id="class_probs", num_top_classes=len(search.model.classes))
    with gr.Row():
        button = gr.Button("Classify & find similar", variant="primary", elem_id="classify_button")
        current = gr.Button("Use the current overlay frame", elem_id="classify_current_button")
    similar = gr.Gallery(label="Most similar gallery images", elem_id="similar_gallery", columns=6, height=300,
                         format="jpeg", interactive=False)
    gr.Examples(examples=[[str(w)] for w, _ in examples], inputs=[image], label="Synthetic example frames")
    with gr.Row():
        text = gr.Textbox(label="Search the gallery by text", elem_id="search_text", max_length=MAX_QUERY_CHARS,
                          placeholder="an NBI endoscopy frame showing a small lesion")
        text_button = gr.Button("Search", elem_id="search_button")
    text_results = gr.Gallery(label="Text search results", elem_id="text_gallery", columns=6, height=300,
                              format="jpeg", interactive=False)
    button.click(search.classify_image, inputs=[image, k], outputs=[probs, similar], api_name="classify",
                 concurrency_limit=1)
    current.click(search.classify_current_frame, inputs=[latest, k], outputs=[image, probs, similar],
                  api_name="classify_current", concurrency_limit=1)
    text_button.click(search.search_text, inputs=[text, k], outputs=text_results, api_name="search_text",
                      concurrency_limit=1)
    text.submit(search.search_text, inputs=[text, k], outputs=text_results, api_visibility="private",
                concurrency_limit=1)


def _image_pair_tab(engines: EngineCache, picker: list, examples, latest=None, keep=None) -> None:
    with gr.Row():
        wli = checked_image(label="WLI image", elem_id="wli_image", type="numpy", image_mode="RGB",
                            sources=["upload", "clipboard"], height=320)
        nbi = checked_image(label="NBI image (optional)", elem_id="nbi_image", type="numpy", image_mode="RGB",
                            sources=["upload", "clipboard"], height=320)
    button = gr.Button("Segment", variant="primary", elem_id="segment_button")
    with gr.Row():
        # JPEG: a full-size endoscopy overlay encodes in ~25 ms vs ~800 ms as PNG (the mask stays lossless)
        overlay = gr.Image(label="Overlay", elem_id="overlay_image", format="jpeg", interactive=False, height=320)
        mask = gr.Image(label="Mask", elem_id="mask_image", format="png", image_mode="L", interactive=False, height=320)
    latency = gr.Textbox(label="Latency and mode", elem_id="latency_text", lines=2, interactive=False)
    gr.Examples(
        examples=[[str(w), str(n)] for w, n in examples] + [[str(examples[0][0]), None]],
        inputs=[wli, nbi], label="Synthetic example pairs (the last one leaves NBI empty: WLI-ONLY)",
    )
    handler = functools.partial(segment_uploaded_pair, engines)
    inputs, outputs = [wli, nbi, *picker], [overlay, mask, latency]
    if latest is not None:  # the Classify & search tab is on: keep the segmented frame for it
        handler, inputs, outputs = keep(handler), [*inputs, latest], [*outputs, latest]
    button.click(handler, inputs=inputs, outputs=outputs, api_name="segment", concurrency_limit=1)


def _video_pair_tab(engines: EngineCache, picker: list, out_root: Path, build_pipeline) -> None:
    with gr.Row():
        wli = refuse_remote_files(gr.File(label="WLI video", file_types=VIDEO_FILE_TYPES, elem_id="wli_video"))
        nbi = refuse_remote_files(gr.File(label="NBI video (optional)", file_types=VIDEO_FILE_TYPES,
                                          elem_id="nbi_video"))
    max_frames = gr.Slider(10, 3000, value=300, step=10, label="Frames to process", elem_id="max_frames")
    button = gr.Button("Process videos", variant="primary", elem_id="video_button")
    status = gr.Textbox(label="Status", elem_id="video_status", lines=3, interactive=False)
    outputs = _video_outputs()
    handler = functools.partial(_video_handler, engines, out_root, build_pipeline)
    button.click(handler, inputs=[wli, nbi, *picker, max_frames], outputs=[*outputs, status],
                 api_name="process_video", concurrency_limit=1)


def _video_outputs(prefix: str = "") -> list:
    """The video tabs' outputs: live preview, overlaid video, report.json, latency CDF (status is the caller's)."""
    preview = gr.Image(label="Overlay, live while processing", streaming=True, format="jpeg",
                       interactive=False, elem_id=f"{prefix}video_preview", height=360)
    with gr.Row():
        video = gr.Video(label="Overlaid video", elem_id=f"{prefix}overlay_video", interactive=False, height=360)
        report = gr.File(label="report.json", elem_id=f"{prefix}report_file", interactive=False)
    cdf = gr.Plot(label="Latency CDF", elem_id=f"{prefix}latency_cdf")
    return [preview, video, report, cdf]


def _endoscope_tab(engines: EngineCache, picker: list, out_root: Path, build_pipeline, case) -> None:
    gr.Markdown("One recording of the processor's output, switched by hand between WLI and NBI: each WLI frame "
                "is fused with the NBI view remembered from the last NBI look (FUSED-MEMORY) while the scope "
                "stays at the same place, WLI-ONLY elsewhere; NBI and held frames get no mask.")
    recording = refuse_remote_files(gr.File(label="Endoscope recording", file_types=VIDEO_FILE_TYPES,
                                            elem_id="endoscope_video"))
    max_frames = gr.Slider(10, 3000, value=300, step=10, label="Frames to process", elem_id="endoscope_max_frames")
    button = gr.Button("Process recording", variant="primary", elem_id="endoscope_button")
    status = gr.Textbox(label="Status", elem_id="endoscope_status", lines=3, interactive=False)
    outputs = _video_outputs("endoscope_")
    handler = functools.partial(_endoscope_handler, engines, out_root, build_pipeline)
    button.click(handler, inputs=[recording, *picker, max_frames], outputs=[*outputs, status, case],
                 api_name="process_endoscope", concurrency_limit=1)


def _endoscope_handler(engines, out_root, build_pipeline, recording, alpha, model_label, backend, max_frames):
    cases: list = []  # the run's case folder, once it has finished
    for step in process_endoscope_video(engines, recording, alpha, model_label, backend, int(max_frames), out_root,
                                        build_pipeline=build_pipeline, cases=cases):
        yield (*step, str(cases[-1]) if cases else gr.skip())


def _case_tab(case, out_root: Path) -> None:
    gr.Markdown("The case record of the last recording processed in the \"Endoscope recording\" tab: every lesion "
                "the overlay showed for the minimum on-time, its key frames (the endoscopic image only, never the "
                "processor's on-screen text) and the review page. The DICOM export carries de-identified "
                "placeholders; `endofuse dicom` sets patient data and sends to a PACS (docs/case.md).")
    show = gr.Button("Show the case", elem_id="case_show_button")
    timeline = gr.HTML(elem_id="case_timeline")
    events = gr.Markdown(elem_id="case_events")
    key_frames = gr.Gallery(label="Key frames", elem_id="case_key_frames", columns=4, height=320, format="png",
                            interactive=False)
    with gr.Row():
        review = gr.File(label="review.html", elem_id="case_review_file", interactive=False)
        export = gr.Button("Export DICOM", elem_id="case_export_button")
        dicom = gr.File(label="DICOM objects (zip)", elem_id="case_dicom_file", interactive=False)
    outputs = [timeline, key_frames, events, review]
    show.click(show_case, inputs=case, outputs=outputs, api_name="show_case")
    case.change(show_case, inputs=case, outputs=outputs, api_visibility="private")
    export.click(functools.partial(export_case, out_root=out_root), inputs=case, outputs=dicom,
                 api_name="export_case_dicom", concurrency_limit=1)


def _video_handler(engines, out_root, build_pipeline, wli, nbi, alpha, model_label, backend, max_frames):
    # gr.File passes upload paths; Gradio has already checked they are its own uploads.
    yield from process_video_pair(engines, wli, nbi, alpha, model_label, backend, int(max_frames), out_root,
                                  build_pipeline=build_pipeline)


def _live_tab(engines: EngineCache, picker: list, latest=None, keep=None) -> None:
    gr.Markdown(LIVE_NOTE.format(limit=LIVE_TIME_LIMIT_S))
    no_mirror = gr.WebcamOptions(mirror=False)  # an endoscope image must never be flipped
    with gr.Row():
        wli_cam = checked_image(label="WLI camera", sources=["webcam"], streaming=True, webcam_options=no_mirror,
                                type="numpy", elem_id="live_wli")
        nbi_cam = checked_image(label="NBI camera (optional)", sources=["webcam"], streaming=True,
                                webcam_options=no_mirror, type="numpy", elem_id="live_nbi")
        overlay = gr.Image(label="Overlay", streaming=True, format="jpeg", interactive=False, elem_id="live_overlay")
    readout = gr.Textbox(label="Latency and mode (server side)", elem_id="live_latency_text", lines=2,
                         interactive=False)
    latest_nbi = gr.State(None)
    stream_limits = dict(time_limit=LIVE_TIME_LIMIT_S, stream_every=LIVE_STREAM_EVERY_S,
                         concurrency_limit=LIVE_CONCURRENCY)
    nbi_cam.stream(remember_nbi_frame, inputs=nbi_cam, outputs=latest_nbi, api_visibility="private", **stream_limits)
    handler = functools.partial(segment_live_frame, engines)
    inputs, outputs = [wli_cam, latest_nbi, *picker], [overlay, readout]
    if latest is not None:
        handler, inputs, outputs = keep(handler), [*inputs, latest], [*outputs, latest]
    wli_cam.stream(handler, inputs=inputs, outputs=outputs, api_name="live_frame", **stream_limits)


def launch_app(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True):
    """Serve `app` on `host:port` with the demo's safety settings; returns Gradio's (app, local_url, share_url)."""
    return app.launch(
        server_name=host, server_port=port, share=False, max_file_size=MAX_UPLOAD_SIZE,
        app_kwargs={"middleware": [Middleware(UploadBudget)]},  # per-client upload budget
        show_error=False,  # only our gr.Error messages reach the page, never internal exception text
        ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False,
        footer_links=["api", "settings"], prevent_thread_lock=not block, quiet=not block,
    )
