"""The demo's "Classify & search" tab over HTTP: probabilities match the model, an indexed image finds itself."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gradio")
import gradio as gr  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from endofuse.cli import main  # noqa: E402
from endofuse.demo.app import build_app, launch_app  # noqa: E402
from endofuse.demo.classify import NO_FRAME_YET, ClassifySearch, keep_segmented_frame  # noqa: E402
from endofuse.demo.engines import BUNDLED_MODEL  # noqa: E402
from endofuse.model.dataset import read_image  # noqa: E402
from endofuse.model.entrep import build_entrep  # noqa: E402
from endofuse.model.entrep_weights import save_classifier  # noqa: E402
from endofuse.train.classify_synth import CLASSES, write_classification_dataset  # noqa: E402

from conftest import ColourThresholdEngine  # noqa: E402

TINY = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=2, vision_heads=4, embed_dim=16,
            context_length=24, text_width=32, text_layers=1, text_heads=4, cls_layers=(1, 2), lora_rank=2)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_cls")
    write_classification_dataset(root / "data", train_scenes=3, test_scenes=1, size=(40, 40))
    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", list(CLASSES), **TINY).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
    ckpt = save_classifier(root / "c.pt", model)
    assert main(["index", "--checkpoint", str(ckpt), "--data", str(root / "data"), "--out", str(root / "g")]) == 0
    app = build_app(opener=lambda checkpoint, backend="auto": ColourThresholdEngine((64, 64)),
                    examples_dir=root / "examples", output_dir=root / "out", classifier=str(ckpt),
                    gallery=str(root / "g"))
    _, url, _ = launch_app(app, port=None, block=False)
    try:
        yield Client(url, verbose=False), model, root
    finally:
        app.close()


@pytest.mark.slow
def test_classify_returns_the_models_probabilities_and_the_image_itself_first(served):
    client, model, root = served
    path = sorted((root / "data" / "cls_imgs").glob("*.png"))[0]
    probs, similar = client.predict(handle_file(str(path)), 3, api_name="/classify")
    from endofuse.kernels import preprocess

    with torch.no_grad():
        expected = model(preprocess(read_image(path), (32, 32))).softmax(-1)[0]
    got = {c["label"]: c["confidence"] for c in probs["confidences"]}
    for name, p in zip(model.classes, expected.tolist(), strict=True):
        assert got[name] == pytest.approx(p, abs=1e-4)
    assert probs["label"] == model.classes[int(expected.argmax())]
    assert len(similar) == 3
    assert similar[0]["caption"].endswith("1.000")  # cosine 1: the uploaded image is in the gallery
    shown = read_image(similar[0]["image"])
    assert np.abs(shown.astype(int) - read_image(path).astype(int)).mean() < 4  # JPEG of the same pixels


@pytest.mark.slow
def test_text_search_and_its_messages(served):
    client, _, _ = served
    results = client.predict("an NBI endoscopy frame showing a large lesion", 4, api_name="/search_text")
    assert len(results) == 4
    scores = [float(r["caption"].split()[-1]) for r in results]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(AppError, match="type a description"):
        client.predict("   ", 4, api_name="/search_text")


@pytest.mark.slow
def test_use_the_current_overlay_frame_classifies_the_sessions_segmented_frame(served):
    client, model, root = served
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/classify_current"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == ["k"]  # no image, no path from the client
    with pytest.raises(AppError, match="no overlay frame yet"):
        client.predict(3, api_name="/classify_current")
    path = sorted((root / "data" / "cls_imgs").glob("*.png"))[1]
    client.predict(handle_file(str(path)), None, 0.45, BUNDLED_MODEL, "auto", api_name="/segment")
    frame, probs, similar = client.predict(3, api_name="/classify_current")
    shown = read_image(frame).astype(int)  # shown back lossy-encoded: the frame behind the overlay, untinted
    assert np.abs(shown - read_image(path).astype(int)).mean() < 4
    from endofuse.kernels import preprocess

    with torch.no_grad():
        expected = model(preprocess(read_image(path), (32, 32))).softmax(-1)[0]
    got = {c["label"]: c["confidence"] for c in probs["confidences"]}
    assert [got[c] for c in model.classes] == pytest.approx(expected.tolist(), abs=1e-4)
    assert similar[0]["caption"].endswith("1.000")
    other = Client(client.src, verbose=False)  # another browser session has no frame of its own
    with pytest.raises(AppError, match="no overlay frame yet"):
        other.predict(3, api_name="/classify_current")


def test_the_current_frame_handlers_keep_the_segmented_wli_frame_and_classify_it(tmp_path):
    torch.manual_seed(1)
    model = build_entrep("entrep-tiny", list(CLASSES), **TINY).eval()
    search = ClassifySearch(save_classifier(tmp_path / "c.pt", model))  # no gallery: probabilities only
    calls = []

    def segment(wli, nbi, alpha):  # a stand-in handler: overlay = the frame inverted
        calls.append((wli, nbi, alpha))
        return (None, "waiting") if wli is None else (255 - wli, "ok")

    handler = keep_segmented_frame(segment)
    frame = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    older = np.zeros_like(frame)
    overlay, readout, kept = handler(frame, "nbi", 0.4, older)
    assert kept is frame and np.array_equal(overlay, 255 - frame) and calls[-1] == (frame, "nbi", 0.4)
    assert handler(None, None, 0.4, kept)[2] is frame  # no overlay produced: the previous frame stays

    shown, probs, similar = search.classify_current_frame(kept, 3)
    from endofuse.demo.uploads import rgb_to_bgr
    from endofuse.kernels import preprocess

    with torch.no_grad():
        expected = search.model(preprocess(rgb_to_bgr(frame), (32, 32))).softmax(-1)[0]
    assert shown is frame and similar == []
    assert [probs[c] for c in search.model.classes] == pytest.approx(expected.tolist(), abs=1e-5)
    with pytest.raises(gr.Error, match="no overlay frame yet"):
        search.classify_current_frame(None, 3)
    assert "Image pair" in NO_FRAME_YET
