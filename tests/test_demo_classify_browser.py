"""The "Classify & search" tab in a real headless Chromium: `endofuse demo --classifier --gallery` in a subprocess."""
from __future__ import annotations

import re

import pytest
import torch
from test_demo_browser import UI_TIMEOUT_MS, browser, expect  # noqa: F401

from endofuse.cli import main
from endofuse.model.entrep import build_entrep
from endofuse.model.entrep_weights import save_classifier
from endofuse.train.classify_synth import CLASSES, write_classification_dataset

from conftest import demo_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-classify")
    write_classification_dataset(root / "data", train_scenes=3, test_scenes=1, size=(48, 48))
    torch.manual_seed(0)
    model = build_entrep("entrep-tiny", list(CLASSES), img_size=32, patch_size=8, vision_width=32, vision_layers=2,
                         vision_heads=4, embed_dim=16, context_length=24, text_width=32, text_layers=1,
                         text_heads=4, cls_layers=(1, 2), lora_rank=2)
    ckpt = save_classifier(root / "c.pt", model)
    assert main(["index", "--checkpoint", str(ckpt), "--data", str(root / "data"), "--out", str(root / "g")]) == 0
    args = ["--engine", "torch", "--classifier", str(ckpt), "--gallery", str(root / "g")]
    with demo_server(args, root / "server.log") as url:
        yield url, root


def test_classify_an_upload_and_search_by_text(browser, served):  # noqa: F811 - the imported fixture
    url, root = served
    page = browser.new_context(viewport={"width": 1280, "height": 1600}).new_page()
    page.goto(url)
    page.get_by_role("tab", name="Classify & search").click()
    image = sorted((root / "data" / "cls_imgs").glob("*.png"))[0]
    page.locator("#classify_image input[type=file]").set_input_files(str(image))
    page.locator("#classify_button").click()
    expect(page.locator("#class_probs")).to_contain_text(re.compile("normal|small_lesion|large_lesion"),
                                                         timeout=UI_TIMEOUT_MS)
    expect(page.locator("#similar_gallery img")).to_have_count(5, timeout=UI_TIMEOUT_MS)
    expect(page.locator("#similar_gallery")).to_contain_text("1.000")  # the uploaded image is in the gallery
    query = page.locator("#search_text textarea, #search_text input").first
    query.fill("an NBI endoscopy frame showing a small lesion")
    page.locator("#search_button").click()
    expect(page.locator("#text_gallery img")).to_have_count(5, timeout=UI_TIMEOUT_MS)
    page.context.close()


def test_use_the_current_overlay_frame_after_segmenting_it(browser, served):  # noqa: F811 - the imported fixture
    url, root = served
    page = browser.new_context(viewport={"width": 1280, "height": 1600}).new_page()
    page.goto(url)
    page.get_by_role("tab", name="Classify & search").click()
    page.locator("#classify_current_button").click()  # nothing segmented in this session yet
    expect(page.get_by_text("no overlay frame yet").first).to_be_visible(timeout=UI_TIMEOUT_MS)
    page.get_by_role("tab", name="Image pair").click()
    image = sorted((root / "data" / "cls_imgs").glob("*.png"))[2]
    page.locator("#wli_image input[type=file]").set_input_files(str(image))
    page.locator("#segment_button").click()
    expect(page.locator("#latency_text textarea")).to_have_value(re.compile("mode: WLI-ONLY"), timeout=UI_TIMEOUT_MS)
    page.get_by_role("tab", name="Classify & search").click()
    page.locator("#classify_current_button").click()
    expect(page.locator("#classify_image img")).to_have_count(1, timeout=UI_TIMEOUT_MS)  # the frame it classified
    expect(page.locator("#class_probs")).to_contain_text(re.compile("normal|small_lesion|large_lesion"),
                                                         timeout=UI_TIMEOUT_MS)
    expect(page.locator("#similar_gallery img")).to_have_count(5, timeout=UI_TIMEOUT_MS)
    expect(page.locator("#similar_gallery")).to_contain_text("1.000")  # the segmented frame is in the gallery
    page.context.close()
